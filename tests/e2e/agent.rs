//! The node agent against real containerd: restarts, resource enforcement.

use std::time::Duration;

use berth_tests::{
    cli, cli_json, containerd_containers, ctr, poll, wait_stopped, AgentProc, Env, ServerProc,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn events(task: &Value) -> Vec<String> {
    task["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_restarted_agent_readopts_its_containers_and_reports_vanished_ones() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    let out = cli(
        &addr,
        &[
            "run",
            "--count",
            "3",
            "--stop-timeout",
            "1s",
            &env.image,
            "--",
            "sleep",
            "600",
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        poll("task to run", TIMEOUT, || async {
            let t = cli_json(&addr, &["get", "task", id]).await.ok()?;
            (t["lastStatus"] == "RUNNING").then_some(())
        })
        .await?;
    }
    let namespace = agent.namespace.clone();
    agent.kill().await?;

    // While no agent watches, one task's container disappears entirely.
    let lost = format!("{}-demo", ids[2]);
    let sock = &env.containerd.socket;
    ctr(
        sock,
        &namespace,
        &["tasks", "kill", "--signal", "SIGKILL", &lost],
    )
    .await?;
    poll("killed container to exit", TIMEOUT, || async {
        let out = ctr(sock, &namespace, &["tasks", "delete", &lost])
            .await
            .ok()?;
        out.status.success().then_some(())
    })
    .await?;
    let out = ctr(sock, &namespace, &["containers", "delete", &lost]).await?;
    assert!(
        out.status.success(),
        "ctr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(containerd_containers(sock, &namespace).await?.len(), 2);

    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let vanished = wait_stopped(&addr, &ids[2], TIMEOUT).await?;
    assert!(
        vanished["stoppedReason"]
            .as_str()
            .unwrap_or_default()
            .contains("vanished while the agent was down"),
        "{vanished}"
    );
    for id in &ids[..2] {
        poll("task to be re-adopted", TIMEOUT, || async {
            let t = cli_json(&addr, &["get", "task", id]).await.ok()?;
            events(&t)
                .iter()
                .any(|e| e == "re-adopted after an agent restart")
                .then_some(())
        })
        .await?;
        let t = cli_json(&addr, &["get", "task", id]).await?;
        assert_eq!(t["lastStatus"], "RUNNING", "{t}");
    }
    // Exactly the two surviving containers: nothing duplicated, nothing orphaned.
    let mut left = containerd_containers(sock, &namespace).await?;
    left.sort();
    let mut expected: Vec<String> = ids[..2].iter().map(|id| format!("{id}-demo")).collect();
    expected.sort();
    assert_eq!(left, expected);

    // The re-adopted tasks are still under control.
    let out = cli(&addr, &["stop", &ids[0]]).await?;
    assert!(out.status.success());
    let stopped = wait_stopped(&addr, &ids[0], TIMEOUT).await?;
    assert_eq!(stopped["stopCode"], "UserInitiated");
    assert_eq!(
        containerd_containers(sock, &namespace).await?,
        vec![format!("{}-demo", ids[1])]
    );
    Ok(())
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_such() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    // `tail` keeps an ever longer line of zero bytes in memory.
    let out = cli(
        &addr,
        &[
            "run",
            "--wait",
            "--memory",
            "16",
            &env.image,
            "--",
            "tail",
            "/dev/zero",
        ],
    )
    .await?;
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task_id = String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let task = wait_stopped(&addr, &task_id, TIMEOUT).await?;
    assert_eq!(task["containers"][0]["exitCode"], 137);
    assert_eq!(task["containers"][0]["reason"], "OutOfMemory", "{task}");
    assert!(
        task["stoppedReason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("OutOfMemoryError"),
        "{task}"
    );
    Ok(())
}
