//! End-to-end: real `berth server` and `berth agent` processes, real containerd and runc, a
//! real registry, the real CLI.

mod agent;
mod autoscaling;
mod cli;
mod clock;
mod cluster;
mod console;
mod ecs;
mod ingress;
mod metering;
mod network;
mod nodes;
mod pulls;
mod retention;
mod rotation;
mod sandbox;
mod secrets;
mod security;
mod serverless;
mod services;
mod tls_cluster;

use std::time::{Duration, Instant};

use berth_tests::{
    cli, cli_json, containerd_containers, poll, wait_stopped, AgentProc, Env, ServerProc,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Dropped field by field in this order: the agent (no container started after it), the
/// server, then the environment, whose drop removes what containers are left.
struct Cluster {
    agent: AgentProc,
    server: ServerProc,
    env: Env,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// A server and agent `node-1` started with `agent_flags`.
    async fn start_with(agent_flags: &[&str]) -> anyhow::Result<Self> {
        let env = Env::start().await?;
        let server = ServerProc::start(&env.path("server"), None).await?;
        let agent =
            AgentProc::start_with(&env, &server.addr.to_string(), "node-1", agent_flags).await?;
        Ok(Self { env, server, agent })
    }

    fn addr(&self) -> String {
        self.server.addr.to_string()
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `berth ARGS` against `server`, which must succeed; its standard output.
async fn ok(server: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = cli(server, args).await?;
    anyhow::ensure!(
        out.status.success(),
        "berth {}: {}",
        args.join(" "),
        stderr(&out)
    );
    Ok(stdout(&out))
}

#[tokio::test]
async fn echo_hello_runs_to_completion_and_logs_hello() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let out = cli(
        &c.addr(),
        &["run", "--wait", &c.env.image, "--", "echo", "hello"],
    )
    .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello\n");
    let task_id = stderr(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let task = wait_stopped(&c.addr(), &task_id, TIMEOUT).await?;
    assert_eq!(task["containers"][0]["exitCode"], 0);
    assert_eq!(task["stopCode"], "EssentialContainerExited");
    assert_eq!(task["node"], c.agent.name.as_str());
    let logs = cli(&c.addr(), &["logs", &task_id]).await?;
    assert_eq!(stdout(&logs), "hello\n", "stderr: {}", stderr(&logs));

    // The first run pulled the image; a second run finds it present and does not pull again.
    let events = |t: &serde_json::Value| -> Vec<String> {
        t["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        events(&task)
            .iter()
            .any(|e| e.starts_with(&format!("pulled image {}", c.env.image))),
        "{task}"
    );
    let out = cli(
        &c.addr(),
        &["run", "--wait", &c.env.image, "--", "echo", "again"],
    )
    .await?;
    assert_eq!(stdout(&out), "again\n", "stderr: {}", stderr(&out));
    let second_id = stderr(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let second = wait_stopped(&c.addr(), &second_id, TIMEOUT).await?;
    let second_events = events(&second);
    assert!(
        second_events.iter().any(|e| e.contains("already present")),
        "{second}"
    );
    assert!(
        !second_events.iter().any(|e| e.starts_with("pulled image")),
        "{second}"
    );

    // The same image by digest.
    let digest = task["containers"][0]["imageDigest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let by_digest = format!("{}@{digest}", c.env.image.trim_end_matches(":latest"));
    let out = cli(
        &c.addr(),
        &["run", "--wait", &by_digest, "--", "echo", "bydigest"],
    )
    .await?;
    assert_eq!(stdout(&out), "bydigest\n", "stderr: {}", stderr(&out));
    Ok(())
}

#[tokio::test]
async fn exit_code_is_reported_and_returned() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let out = cli(
        &c.addr(),
        &["run", "--wait", &c.env.image, "--", "sh", "-c", "exit 3"],
    )
    .await?;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let task_id = stderr(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let task = wait_stopped(&c.addr(), &task_id, TIMEOUT).await?;
    assert_eq!(task["containers"][0]["exitCode"], 3);
    assert_eq!(task["stopCode"], "EssentialContainerExited");
    Ok(())
}

#[tokio::test]
async fn unknown_image_fails_to_start_with_a_reason_naming_it() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let image = format!("{}/does-not-exist:1.0", c.env.registry.addr);
    let out = cli(&c.addr(), &["run", &image]).await?;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let task_id = stdout(&out).trim().to_owned();
    let task = wait_stopped(&c.addr(), &task_id, TIMEOUT).await?;
    assert_eq!(task["stopCode"], "TaskFailedToStart");
    let reason = task["stoppedReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&image),
        "reason {reason:?} does not name {image}"
    );
    assert!(
        reason.contains("manifest unknown"),
        "reason {reason:?} does not quote the registry"
    );
    assert!(
        task.get("startedAt").is_none(),
        "a task that never ran has no startedAt"
    );

    // A registry nobody listens at is "unreachable", not "not found".
    let out = cli(&c.addr(), &["run", "127.0.0.1:1/none:1"]).await?;
    let task_id = stdout(&out).trim().to_owned();
    let task = wait_stopped(&c.addr(), &task_id, TIMEOUT).await?;
    let reason = task["stoppedReason"].as_str().unwrap_or_default();
    assert!(reason.contains("unreachable"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn memory_limit_is_enforced_by_the_cgroup() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let read_limit =
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    let out = cli(
        &c.addr(),
        &[
            "run",
            "--wait",
            "--memory",
            "64",
            &c.env.image,
            "--",
            "sh",
            "-c",
            read_limit,
        ],
    )
    .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), (64u64 * 1024 * 1024).to_string());
    Ok(())
}

#[tokio::test]
async fn stop_reaches_pid_1_through_the_init_or_kills_it_after_the_stop_timeout(
) -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    // `sleep` as PID 1 ignores SIGTERM (the kernel gives PID 1 no default signal actions):
    // under the default init it is not PID 1 and dies of SIGTERM (143); with --no-init the
    // agent must SIGKILL it after the stop timeout (137).
    let run = |extra: &'static [&'static str]| {
        let (addr, image) = (c.addr(), c.env.image.clone());
        async move {
            let mut args = vec!["run"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&[&image, "--", "sleep", "600"]);
            let out = cli(&addr, &args).await?;
            anyhow::ensure!(out.status.success(), "stderr: {}", stderr(&out));
            anyhow::Ok(stdout(&out).trim().to_owned())
        }
    };
    let with_init = run(&["--stop-timeout", "60s"]).await?;
    let without = run(&["--no-init", "--stop-timeout", "2s"]).await?;
    for task_id in [&with_init, &without] {
        poll("task to run", TIMEOUT, || async {
            let t = cli_json(&c.addr(), &["get", "task", task_id]).await.ok()?;
            (t["lastStatus"] == "RUNNING").then_some(())
        })
        .await?;
    }
    assert_eq!(
        containerd_containers(&c.env.containerd.socket, &c.agent.namespace)
            .await?
            .len(),
        2
    );

    let out = cli(&c.addr(), &["stop", &with_init]).await?;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let task = wait_stopped(&c.addr(), &with_init, TIMEOUT).await?;
    assert_eq!(task["stopCode"], "UserInitiated");
    assert_eq!(task["containers"][0]["exitCode"], 143, "{task}");

    let asked = Instant::now();
    let out = cli(&c.addr(), &["stop", &without]).await?;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let task = wait_stopped(&c.addr(), &without, TIMEOUT).await?;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "stop took {took:?}, more than stopTimeout + 2s"
    );
    assert_eq!(task["containers"][0]["exitCode"], 137, "{task}");
    assert_eq!(
        containerd_containers(&c.env.containerd.socket, &c.agent.namespace).await?,
        Vec::<String>::new()
    );
    Ok(())
}

#[tokio::test]
async fn state_survives_kill_9_and_the_agent_reconnects() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let manifest = c.env.path("web.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: web\nspec:\n  cpu: 256\n  memory: 64\n  containers:\n    - name: app\n      image: {}\n      command: [echo, from-manifest]\n",
            c.env.image
        ),
    )?;
    let out = cli(&c.addr(), &["apply", "-f", &manifest.to_string_lossy()]).await?;
    assert_eq!(
        stdout(&out),
        "taskdefinition/web:1 registered\n",
        "stderr: {}",
        stderr(&out)
    );
    let out = cli(&c.addr(), &["run", "--wait", "--task-definition", "web"]).await?;
    assert_eq!(stdout(&out), "from-manifest\n", "stderr: {}", stderr(&out));

    let tasks_before = cli_json(&c.addr(), &["get", "tasks"]).await?;
    let defs_before = cli_json(&c.addr(), &["get", "taskdefs"]).await?;
    let addr = c.server.addr;
    let data_dir = c.server.data_dir.clone();
    c.server.kill().await?;
    let server = ServerProc::start(&data_dir, Some(addr)).await?;
    let server_addr = server.addr.to_string();
    assert_eq!(
        cli_json(&server_addr, &["get", "tasks"]).await?,
        tasks_before
    );
    assert_eq!(
        cli_json(&server_addr, &["get", "taskdefs"]).await?,
        defs_before
    );

    // The agent finds the restarted server by itself: a new task runs on it.
    let out = cli(
        &server_addr,
        &["run", "--wait", "--task-definition", "web:1"],
    )
    .await?;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "from-manifest\n");
    drop(c.agent);
    Ok(())
}

#[tokio::test]
async fn a_bad_manifest_names_file_line_and_field_and_stores_nothing() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let manifest = env.path("bad.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: ok\nspec:\n  cpu: 256\n  memory: 64\n  containers:\n    - name: app\n      image: busybox\n---\napiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: broken\nspec:\n  cpu: 256\n  memory: 64\n  containers:\n    - name: app\n      image: busybox\n      memroy: 32\n",
    )?;
    let path = manifest.to_string_lossy().into_owned();
    let out = cli(&addr, &["apply", "-f", &path]).await?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{path}:22:7")),
        "error {err:?} does not name the file and line"
    );
    assert!(
        err.contains("memroy"),
        "error {err:?} does not name the field"
    );
    // Nothing was stored, not even the valid first document.
    assert_eq!(
        cli_json(&addr, &["get", "taskdefs"]).await?,
        serde_json::json!([])
    );
    Ok(())
}
