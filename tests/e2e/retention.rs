//! Retention end to end, with a short `--task-retention`: a stopped task stays visible with
//! its logs for the retention, then goes from the state and from its node's disk, and asking
//! for it says it was removed by retention; a deregistered revision nothing uses goes too,
//! and its family's latest revision stays.

use std::time::{Duration, Instant};

use berth_tests::{cli, cli_json, poll, wait_stopped, AgentProc, Env, ServerProc};

use crate::{ok, stderr, stdout, TIMEOUT};

const RETENTION: Duration = Duration::from_secs(4);

/// `berth run --wait --family FAMILY IMAGE -- echo TEXT`; the task's ID.
async fn run_echo(addr: &str, image: &str, family: &str, text: &str) -> anyhow::Result<String> {
    let out = cli(
        addr,
        &[
            "run", "--wait", "--family", family, image, "--", "echo", text,
        ],
    )
    .await?;
    anyhow::ensure!(out.status.success(), "berth run: {}", stderr(&out));
    assert_eq!(stdout(&out), format!("{text}\n"));
    Ok(stderr(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

#[tokio::test]
async fn stopped_tasks_their_logs_and_unused_revisions_go_after_the_retention() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    // A stopped task also stays until the metering ledger's bucket it stopped in is closed:
    // short buckets, so that the retention alone decides here.
    let args = ["--task-retention", "4s", "--usage-bucket", "1s"];
    let server = ServerProc::spawn(1, &env.path("server"), None, &args).await?;
    server.wait_ready().await?;
    let addr = server.addr.to_string();
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    let logs_dir = env.path(&format!("agent-{}", agent.name)).join("logs");

    // Two revisions of one family, one task each.
    let first = run_echo(&addr, &env.image, "keepme", "first").await?;
    let second = run_echo(&addr, &env.image, "keepme", "second").await?;
    let stopped = wait_stopped(&addr, &second, TIMEOUT).await?;
    assert_eq!(stopped["taskDefinition"], "keepme:2", "{stopped}");
    let stopped_by = Instant::now();
    // Visible, with its logs, while the retention runs.
    assert_eq!(ok(&addr, &["logs", &first]).await?, "first\n");
    assert!(logs_dir.join(&first).is_dir());
    ok(&addr, &["delete", "taskdef", "keepme"]).await?;

    // Gone within the retention plus 10 s.
    poll(
        "the first task to be removed",
        RETENTION + Duration::from_secs(10) + Duration::from_secs(5),
        || async {
            let out = cli(&addr, &["describe", "task", &first]).await.ok()?;
            (!out.status.success()).then_some(())
        },
    )
    .await?;
    assert!(
        stopped_by.elapsed() >= RETENTION - Duration::from_secs(1),
        "removed after {:?}, before the retention",
        stopped_by.elapsed()
    );
    for args in [vec!["describe", "task", &first], vec!["logs", &first]] {
        let out = cli(&addr, &args).await?;
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("was removed by retention")
                && stderr(&out).contains("--task-retention"),
            "berth {}: {}",
            args[0],
            stderr(&out)
        );
    }
    let tasks = cli_json(&addr, &["get", "tasks"]).await?;
    assert!(
        !tasks.to_string().contains(&first),
        "a removed task is still listed: {tasks}"
    );
    // Its node removed its logs.
    poll("the agent to remove the logs", TIMEOUT, || async {
        (!logs_dir.join(&first).exists() && !logs_dir.join(&second).exists()).then_some(())
    })
    .await?;

    // keepme:1 is INACTIVE and unused: it goes. keepme:2 is the family's latest: it stays,
    // so revision numbers are never reused.
    poll("keepme:1 to be deleted", TIMEOUT, || async {
        let out = cli(&addr, &["get", "taskdef", "keepme:1"]).await.ok()?;
        (!out.status.success()).then_some(())
    })
    .await?;
    let latest = cli_json(&addr, &["get", "taskdef", "keepme:2"]).await?;
    assert_eq!(latest["status"], "INACTIVE", "{latest}");
    // Removed by retention is remembered for another retention, then forgotten.
    poll("the removed task to be forgotten", TIMEOUT, || async {
        let out = cli(&addr, &["describe", "task", &first]).await.ok()?;
        stderr(&out).contains("not found").then_some(())
    })
    .await?;
    Ok(())
}
