//! Node lifecycle: lost nodes, self-fencing agents, drain and activate, removal.

use std::time::Duration;

use berth_tests::{
    cli, cli_json, containerd_containers, poll, run_tasks, run_until_running, wait_stopped,
    AgentProc, Env, ServerProc,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
/// A short node TTL so that the tests see nodes lost within seconds.
const TTL: &[&str] = &["--node-ttl", "3s"];

async fn server(env: &Env) -> anyhow::Result<ServerProc> {
    let s = ServerProc::spawn(1, &env.path("server"), None, TTL).await?;
    s.wait_ready().await?;
    Ok(s)
}

/// A `sleep 600` task that has reached RUNNING.
async fn running_task(addr: &str, image: &str) -> anyhow::Result<String> {
    run_until_running(
        addr,
        &["run", "--stop-timeout", "1s", image, "--", "sleep", "600"],
    )
    .await
}

async fn node(addr: &str, name: &str) -> anyhow::Result<Value> {
    cli_json(addr, &["get", "node", name]).await
}

#[tokio::test]
async fn a_silent_node_goes_down_its_tasks_are_lost_and_it_cleans_up_when_back(
) -> anyhow::Result<()> {
    let env = Env::start().await?;
    // Nodes DOWN for 15 s are removed.
    let server = ServerProc::spawn(
        1,
        &env.path("server"),
        None,
        &[TTL, &["--node-retention", "15s"]].concat(),
    )
    .await?;
    server.wait_ready().await?;
    let addr = server.addr.to_string();
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    let namespace = agent.namespace.clone();
    let id = running_task(&addr, &env.image).await?;

    agent.kill().await?;
    let task = wait_stopped(&addr, &id, TIMEOUT).await?;
    assert_eq!(task["stopCode"], "NodeLost", "{task}");
    assert_eq!(node(&addr, "node-1").await?["status"], "DOWN");

    // The node comes back: ACTIVE again, and it removes the container of the lost task.
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    poll("the node to register again", TIMEOUT, || async {
        (node(&addr, "node-1").await.ok()?["status"] == "ACTIVE").then_some(())
    })
    .await?;
    poll(
        "the lost task's container to be removed",
        TIMEOUT,
        || async {
            containerd_containers(&env.containerd.socket, &namespace)
                .await
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .await?;

    // A node that stays DOWN for the node retention is removed; the one back stays.
    let gone = AgentProc::start(&env, &addr, "node-2").await?;
    gone.kill().await?;
    poll("node-2 to be DOWN", TIMEOUT, || async {
        (node(&addr, "node-2").await.ok()?["status"] == "DOWN").then_some(())
    })
    .await?;
    poll("node-2 to be removed", TIMEOUT, || async {
        let out = cli(&addr, &["get", "node", "node-2"]).await.ok()?;
        (!out.status.success()).then_some(())
    })
    .await?;
    assert_eq!(node(&addr, "node-1").await?["status"], "ACTIVE");
    Ok(())
}

#[tokio::test]
async fn a_removed_node_loses_its_tasks_and_its_agent_cannot_attach_again() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = server(&env).await?;
    let addr = server.addr.to_string();
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    let id = running_task(&addr, &env.image).await?;

    let out = cli(&addr, &["node", "remove", "node-1"]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("node node-1 removed"), "{stdout}");
    let names = |nodes: &Value| -> Vec<String> {
        let names = nodes.as_array().into_iter().flatten();
        names
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(names(&cli_json(&addr, &["get", "nodes"]).await?).is_empty());
    let task = cli_json(&addr, &["get", "task", &id]).await?;
    assert_eq!(task["lastStatus"], "STOPPED", "{task}");
    assert_eq!(task["stopCode"], "NodeLost", "{task}");
    assert_eq!(
        task["stoppedReason"], "node node-1 was removed by an operator",
        "{task}"
    );

    // The agent's stream ends, and each attempt to attach again is refused: its certificate is
    // revoked. Three refusals span more than a heartbeat (the agent backs off 0.1 s, 0.2 s,
    // 0.4 s…), and the node has not come back.
    let log = env.path("agent-node-1").join("agent.log");
    poll("the agent to be refused three times", TIMEOUT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let ended = text.contains("node node-1 was removed from the cluster");
        let refused = text
            .matches("is not accepted: it was revoked or the node removed")
            .count();
        (ended && refused >= 3).then_some(())
    })
    .await?;
    assert!(names(&cli_json(&addr, &["get", "nodes"]).await?).is_empty());
    // Without a server to hear from, the agent fences itself: its container goes.
    poll("the removed node's container to stop", TIMEOUT, || async {
        containerd_containers(&env.containerd.socket, &agent.namespace)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await?;

    let again = cli(&addr, &["node", "remove", "node-1"]).await?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("node node-1 not found"),
        "{stderr}"
    );

    // The name is free again: a node joins under it with a new token.
    agent.kill().await?;
    std::fs::remove_dir_all(env.path("agent-node-1").join("tls"))?;
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    assert_eq!(node(&addr, "node-1").await?["status"], "ACTIVE");
    Ok(())
}

#[tokio::test]
async fn an_agent_that_loses_every_server_stops_its_tasks_itself() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = server(&env).await?;
    let addr = server.addr;
    let data = server.data_dir.clone();
    let agent = AgentProc::start(&env, &addr.to_string(), "node-1").await?;
    let id = running_task(&addr.to_string(), &env.image).await?;
    assert_eq!(
        containerd_containers(&env.containerd.socket, &agent.namespace)
            .await?
            .len(),
        1
    );

    server.kill().await?;
    // Within 80% of the 3 s TTL the agent fences itself: no container is left.
    poll("the agent to stop its task", TIMEOUT, || async {
        containerd_containers(&env.containerd.socket, &agent.namespace)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await?;

    let server = ServerProc::spawn(1, &data, Some(addr), TTL).await?;
    server.wait_ready().await?;
    let task = wait_stopped(&addr.to_string(), &id, TIMEOUT).await?;
    assert_eq!(task["stopCode"], "NodeLost", "{task}");
    let reason = task["stoppedReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("self-fencing") || reason.contains("was lost"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn a_drained_node_gets_no_new_tasks_until_activated() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = server(&env).await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let out = cli_json(&addr, &["node", "drain", "node-1"]).await?;
    assert_eq!(out["status"], "DRAINING");
    let out = cli(&addr, &["run", &env.image, "--", "true"]).await?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    poll("the task to be refused a node", TIMEOUT, || async {
        let t = cli_json(&addr, &["get", "task", &id]).await.ok()?;
        let events = t["events"]
            .as_array()?
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        (events.contains("unable to place") && events.contains("1 not ACTIVE")).then_some(())
    })
    .await?;
    assert_eq!(
        cli_json(&addr, &["get", "task", &id]).await?["lastStatus"],
        "PENDING"
    );
    let out = cli_json(&addr, &["node", "activate", "node-1"]).await?;
    assert_eq!(out["status"], "ACTIVE");
    let task = wait_stopped(&addr, &id, TIMEOUT).await?;
    assert_eq!(task["containers"][0]["exitCode"], 0, "{task}");
    let err = cli(&addr, &["node", "drain", "nope"]).await?;
    assert!(String::from_utf8_lossy(&err.stderr).contains("node nope not found"));
    Ok(())
}

#[tokio::test]
async fn placement_constraints_choose_and_refuse_nodes_with_reasons() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = server(&env).await?;
    let addr = server.addr.to_string();
    let _a = AgentProc::start_with(&env, &addr, "node-a", &["--attr", "zone=a"]).await?;
    let _b = AgentProc::start_with(&env, &addr, "node-b", &["--attr", "zone=b"]).await?;

    // distinctInstance: two tasks of the family on two different nodes.
    let ids = run_tasks(
        &addr,
        &[
            "run",
            "--count",
            "2",
            "--placement-constraint",
            "distinctInstance",
            "--stop-timeout",
            "1s",
            &env.image,
            "--",
            "sleep",
            "600",
        ],
    )
    .await?;
    let mut nodes = Vec::new();
    for id in &ids {
        let node = poll("the task to be placed", TIMEOUT, || async {
            let t = cli_json(&addr, &["get", "task", id]).await.ok()?;
            t["node"].as_str().map(str::to_owned)
        })
        .await?;
        nodes.push(node);
    }
    nodes.sort();
    assert_eq!(nodes, ["node-a", "node-b"]);

    // memberOf: only zone b.
    let out = cli(
        &addr,
        &[
            "run",
            "--placement-constraint",
            "attribute:zone == b",
            &env.image,
            "--",
            "true",
        ],
    )
    .await?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let task = wait_stopped(&addr, &id, TIMEOUT).await?;
    assert_eq!(task["node"], "node-b", "{task}");

    // A zone no node is in: PENDING, with the reason in numbers.
    let out = cli(
        &addr,
        &[
            "run",
            "--placement-constraint",
            "attribute:zone in [c]",
            &env.image,
            "--",
            "true",
        ],
    )
    .await?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    poll("the reason the task cannot be placed", TIMEOUT, || async {
        let t = cli_json(&addr, &["get", "task", &id]).await.ok()?;
        let events: Vec<&str> = t["events"]
            .as_array()?
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        events
            .iter()
            .any(|e| {
                e.contains("0 of 2 nodes can run it: 2 filtered by memberOf(attribute:zone in [c])")
            })
            .then_some(())
    })
    .await?;
    for id in &ids {
        cli(&addr, &["stop", id]).await?;
    }
    Ok(())
}

/// The service's tasks that have not stopped, as `(task ID, node, lastStatus)`.
async fn service_tasks(addr: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let tasks = cli_json(addr, &["get", "tasks"]).await?;
    Ok(tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["group"] == "service:sleeper" && t["lastStatus"] != "STOPPED")
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (s("taskId"), s("node"), s("lastStatus"))
        })
        .collect())
}

#[tokio::test]
async fn service_tasks_move_off_a_drained_node_and_are_replaced_when_a_node_is_lost(
) -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = server(&env).await?;
    let addr = server.addr.to_string();
    let _a1 = AgentProc::start(&env, &addr, "node-1").await?;
    let a2 = AgentProc::start(&env, &addr, "node-2").await?;
    let manifest = env.path("sleeper.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: berth.dev/v1\nkind: Service\nmetadata:\n  name: sleeper\nspec:\n  desiredCount: 2\n  placement:\n    strategy: [{{type: spread, field: node}}]\n  template:\n    cpu: 128\n    memory: 32\n    containers:\n      - name: app\n        image: {}\n        command: [sleep, '600']\n        stopTimeout: 1s\n",
            env.image
        ),
    )?;
    let out = cli(
        &addr,
        &[
            "apply",
            "-f",
            &manifest.display().to_string(),
            "--wait",
            "--timeout",
            "60s",
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = service_tasks(&addr).await?;
    let on_1: Vec<String> = before
        .iter()
        .filter(|(_, n, _)| n == "node-1")
        .map(|(id, _, _)| id.clone())
        .collect();
    assert_eq!(
        on_1.len(),
        1,
        "spread puts one task on each node: {before:?}"
    );

    // Drain node-1: its task is replaced on node-2 first, then stopped.
    cli_json(&addr, &["node", "drain", "node-1"]).await?;
    poll("the service to leave node-1", TIMEOUT, || async {
        let now = service_tasks(&addr).await.ok()?;
        (now.len() == 2 && now.iter().all(|(_, n, s)| n == "node-2" && s == "RUNNING"))
            .then_some(())
    })
    .await?;
    let moved = wait_stopped(&addr, &on_1[0], TIMEOUT).await?;
    assert_eq!(moved["stopCode"], "ServiceSchedulerInitiated", "{moved}");
    assert_eq!(moved["stoppedReason"], "its node is draining", "{moved}");

    // node-1 takes tasks again; node-2 dies: its tasks are lost and replaced on node-1.
    cli_json(&addr, &["node", "activate", "node-1"]).await?;
    a2.kill().await?;
    poll(
        "the lost tasks to be replaced on node-1",
        TIMEOUT,
        || async {
            let now = service_tasks(&addr).await.ok()?;
            (now.len() == 2 && now.iter().all(|(_, n, s)| n == "node-1" && s == "RUNNING"))
                .then_some(())
        },
    )
    .await?;
    let tasks = cli_json(&addr, &["get", "tasks"]).await?;
    let lost = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["node"] == "node-2" && t["stopCode"] == "NodeLost")
        .count();
    assert_eq!(lost, 2, "{tasks}");
    Ok(())
}
