//! The node agent against real containerd: restarts, resource enforcement.

use std::time::Duration;

use berth_tests::{
    cli, cli_json, containerd_containers, ctr, events, poll, run_script_until_running, run_tasks,
    run_until_running, wait_stopped, AgentProc, Env, ServerProc,
};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_restarted_agent_readopts_its_containers_and_reports_vanished_ones() -> anyhow::Result<()>
{
    let (env, server, agent) = node().await?;
    let addr = server.addr.to_string();
    let ids = run_tasks(
        &addr,
        &[
            "run",
            "--count",
            "4",
            "--stop-timeout",
            "1s",
            &env.image,
            "--",
            "sleep",
            "600",
        ],
    )
    .await?;
    assert_eq!(ids.len(), 4);
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
    let lost = format!("{}-demo", ids[3]);
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
    assert_eq!(containerd_containers(sock, &namespace).await?.len(), 3);

    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let vanished = wait_stopped(&addr, &ids[3], TIMEOUT).await?;
    assert_eq!(vanished["stopCode"], "NodeLost", "{vanished}");
    assert!(
        vanished["stoppedReason"]
            .as_str()
            .unwrap_or_default()
            .contains("vanished while the agent was down"),
        "{vanished}"
    );
    for id in &ids[..3] {
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
    // Exactly the three surviving containers and three RUNNING tasks: nothing duplicated.
    let mut left = containerd_containers(sock, &namespace).await?;
    left.sort();
    let mut expected: Vec<String> = ids[..3].iter().map(|id| format!("{id}-demo")).collect();
    expected.sort();
    assert_eq!(left, expected);

    // The re-adopted tasks are still under control.
    let out = cli(&addr, &["stop", &ids[0]]).await?;
    assert!(out.status.success());
    let stopped = wait_stopped(&addr, &ids[0], TIMEOUT).await?;
    assert_eq!(stopped["stopCode"], "UserInitiated");
    let mut left = containerd_containers(sock, &namespace).await?;
    left.sort();
    let mut expected: Vec<String> = ids[1..3].iter().map(|id| format!("{id}-demo")).collect();
    expected.sort();
    assert_eq!(left, expected);
    Ok(())
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_such() -> anyhow::Result<()> {
    let (env, server, _agent) = node().await?;
    let addr = server.addr.to_string();
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

/// A server and one agent on a fresh containerd and registry.
async fn node() -> anyhow::Result<(Env, ServerProc, AgentProc)> {
    let crate::Cluster { env, server, agent } = crate::Cluster::start().await?;
    Ok((env, server, agent))
}

#[tokio::test]
async fn exec_returns_output_and_exit_code_and_logs_follow_live_output() -> anyhow::Result<()> {
    let (env, server, _agent) = node().await?;
    let addr = server.addr.to_string();
    let script = "echo first; while [ ! -f /tmp/go ]; do sleep 0.1; done; echo second; sleep 600";
    let id = run_script_until_running(&addr, &env.image, script).await?;

    let out = cli(
        &addr,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 4",
        ],
    )
    .await?;
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = cli(&addr, &["exec", &id, "--container", "nope", "--", "true"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no container \"nope\""));

    // `logs -f` started before "second" is printed sees it arrive.
    let mut follow = berth_tests::cli_command(&addr)
        .args(["logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = follow.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    assert_eq!(lines.next_line().await?.as_deref(), Some("first"));
    let out = cli(&addr, &["exec", &id, "--", "touch", "/tmp/go"]).await?;
    assert!(out.status.success());
    let second = tokio::time::timeout(TIMEOUT, lines.next_line()).await??;
    assert_eq!(second.as_deref(), Some("second"));
    // The follow ends by itself when the task stops.
    cli(&addr, &["stop", &id]).await?;
    let end = tokio::time::timeout(TIMEOUT, lines.next_line()).await??;
    assert_eq!(end, None);
    Ok(())
}

#[tokio::test]
async fn a_failing_health_check_makes_the_container_unhealthy_and_stops_the_task(
) -> anyhow::Result<()> {
    let (env, server, _agent) = node().await?;
    let addr = server.addr.to_string();
    let manifest = env.path("health.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: checked\nspec:\n  cpu: 256\n  memory: 64\n  containers:\n    - name: app\n      image: {}\n      command: [sh, -c, 'touch /tmp/healthy; while [ -f /tmp/healthy ]; do sleep 0.1; done; sleep 600']\n      stopTimeout: 1s\n      healthCheck:\n        command: [CMD-SHELL, test -f /tmp/healthy]\n        interval: 1s\n        timeout: 1s\n        retries: 2\n",
            env.image
        ),
    )?;
    let out = cli(&addr, &["apply", "-f", &manifest.to_string_lossy()]).await?;
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = run_until_running(&addr, &["run", "--task-definition", "checked"]).await?;
    poll("container to be HEALTHY", TIMEOUT, || async {
        let t = cli_json(&addr, &["get", "task", &id]).await.ok()?;
        (t["containers"][0]["healthStatus"] == "HEALTHY").then_some(())
    })
    .await?;
    let out = cli(&addr, &["exec", &id, "--", "rm", "/tmp/healthy"]).await?;
    assert!(out.status.success());
    let task = wait_stopped(&addr, &id, TIMEOUT).await?;
    assert_eq!(task["containers"][0]["healthStatus"], "UNHEALTHY", "{task}");
    let reason = task["stoppedReason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("Task failed container health checks"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn cpu_and_memory_usage_reach_describe_and_the_cpu_quota_holds() -> anyhow::Result<()> {
    let (env, server, _agent) = node().await?;
    let addr = server.addr.to_string();
    // A busy loop limited to half a CPU by its cgroup quota.
    let id = run_until_running(
        &addr,
        &[
            "run",
            "--cpu",
            "512",
            "--memory",
            "64",
            "--stop-timeout",
            "1s",
            &env.image,
            "--",
            "sh",
            "-c",
            "while :; do :; done",
        ],
    )
    .await?;
    let metrics = poll("a usage sample of a busy task", TIMEOUT, || async {
        let t = cli_json(&addr, &["get", "task", &id]).await.ok()?;
        let m = t.get("metrics")?.clone();
        (m["cpuUnits"].as_f64()? > 100.0).then_some(m)
    })
    .await?;
    let cpu = metrics["cpuUnits"].as_f64().unwrap_or_default();
    assert!(cpu < 700.0, "the 512-unit quota was exceeded: {metrics}");
    assert!(
        metrics["memoryBytes"].as_u64().unwrap_or_default() > 0,
        "{metrics}"
    );
    let out = cli(&addr, &["describe", "task", &id]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Usage:") && text.contains("of 512)"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn logs_keep_streams_apart_rotate_and_filter_by_tail_and_since() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start_with(&env, &addr, "node-1", &["--log-max-bytes", "600"]).await?;
    let script = "for i in $(seq 1 40); do echo line-$i; done";
    let out = cli(
        &addr,
        &["run", "--wait", &env.image, "--", "sh", "-c", script],
    )
    .await?;
    assert_eq!(out.status.code(), Some(0));
    let id = String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();

    let tail = cli(&addr, &["logs", &id, "--tail", "2"]).await?;
    assert_eq!(String::from_utf8_lossy(&tail.stdout), "line-39\nline-40\n");

    // The 600-byte limit rotated the file; one older file is kept, the oldest lines are gone.
    let dir = env.path("agent-node-1").join("logs").join(&id);
    assert!(
        dir.join("demo.log.1").exists(),
        "no rotated file in {}",
        dir.display()
    );
    let all = cli(&addr, &["logs", &id]).await?;
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(
        text.ends_with("line-40\n") && !text.starts_with("line-1\n"),
        "{text}"
    );

    let future = cli(&addr, &["logs", &id, "--since", "2999-01-01T00:00:00Z"]).await?;
    assert!(future.status.success());
    assert!(future.stdout.is_empty() && future.stderr.is_empty());
    let recent = cli(
        &addr,
        &["logs", &id, "--since", "1h", "--tail", "1", "--timestamps"],
    )
    .await?;
    let line = String::from_utf8_lossy(&recent.stdout).into_owned();
    assert!(
        line.ends_with(" line-40\n") && line.starts_with("20"),
        "{line}"
    );

    // stdout and stderr stay apart.
    let script = "echo out; echo err >&2";
    let out = cli(
        &addr,
        &["run", "--wait", &env.image, "--", "sh", "-c", script],
    )
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let id = String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let logs = cli(&addr, &["logs", &id]).await?;
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "err\n");
    Ok(())
}

#[tokio::test]
async fn a_password_protected_registry_needs_the_agents_credentials() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let private =
        berth_dev::Registry::start_with_password(&env.path("private"), "puller", "s3cret").await?;
    let image = format!("{}/secret:1", private.addr);
    let busybox = berth_dev::find_program("busybox").expect("busybox-static");
    berth_dev::push_busybox_image_as(&busybox, &image, Some(("puller", "s3cret"))).await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();

    let without = AgentProc::start(&env, &addr, "node-1").await?;
    let out = cli(&addr, &["run", &image, "--", "echo", "in"]).await?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let task = wait_stopped(&addr, &id, TIMEOUT).await?;
    assert_eq!(task["stopCode"], "TaskFailedToStart");
    let reason = task["stoppedReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("pull access denied") && reason.contains(&image),
        "{reason}"
    );
    // The same agent pulls with credentials from a secret the task definition names (ECS
    // repositoryCredentials); another tag, so the pull goes to the registry.
    let image2 = format!("{}/secret:2", private.addr);
    berth_dev::push_busybox_image_as(&busybox, &image2, Some(("puller", "s3cret"))).await?;
    let out = cli(
        &addr,
        &[
            "secret",
            "create",
            "registry",
            "--from-literal",
            "username=puller",
            "--from-literal",
            "password=s3cret",
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = env.path("private.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata: {{name: private}}\nspec:\n  cpu: 128\n  memory: 64\n  containers:\n    - name: app\n      image: {image2}\n      command: [echo, via-secret]\n      repositoryCredentials: {{credentialsParameter: registry}}\n"
        ),
    )?;
    let out = cli(&addr, &["apply", "-f", &manifest.to_string_lossy()]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&addr, &["run", "--wait", "--task-definition", "private"]).await?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-secret\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    without.kill().await?;

    let creds = env.path("registry-creds");
    std::fs::write(
        &creds,
        format!("# host user password\n{} puller s3cret\n", private.addr),
    )?;
    let creds = creds.to_string_lossy().into_owned();
    let _with =
        AgentProc::start_with(&env, &addr, "node-1", &["--registry-auth-file", &creds]).await?;
    let out = cli(&addr, &["run", "--wait", &image, "--", "echo", "in"]).await?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");
    Ok(())
}

#[tokio::test]
async fn containers_of_a_task_start_in_dependency_order_and_share_localhost() -> anyhow::Result<()>
{
    let (env, server, agent) = node().await?;
    let addr = server.addr.to_string();
    let manifest = env.path("multi.yaml");
    let image = &env.image;
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: berth.dev/v1
kind: TaskDefinition
metadata:
  name: multi
spec:
  cpu: 512
  memory: 128
  containers:
    - name: init
      image: {image}
      command: [sh, -c, "echo init-done"]
      essential: false
    - name: web
      image: {image}
      command: [sh, -c, "echo hello-from-web | nc -l -p 8080"]
      essential: false
      stopTimeout: 1s
      dependsOn:
        - containerName: init
          condition: SUCCESS
    - name: client
      image: {image}
      command: [sh, -c, "for i in $(seq 1 100); do nc 127.0.0.1 8080 && exit 0; sleep 0.1; done; exit 1"]
      dependsOn:
        - containerName: web
          condition: START
"#
        ),
    )?;
    let out = cli(&addr, &["apply", "-f", &manifest.to_string_lossy()]).await?;
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&addr, &["run", "--task-definition", "multi"]).await?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let task = wait_stopped(&addr, &id, TIMEOUT).await?;
    let by_name = |n: &str| {
        task["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_name("init")["exitCode"], 0, "{task}");
    // The client reached the web container over the task's shared loopback.
    assert_eq!(by_name("client")["exitCode"], 0, "{task}");
    assert_eq!(task["stopCode"], "EssentialContainerExited");
    let logs = cli(&addr, &["logs", &id, "--container", "client"]).await?;
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello-from-web\n");
    assert!(
        containerd_containers(&env.containerd.socket, &agent.namespace)
            .await?
            .is_empty()
    );
    assert!(!std::path::Path::new(&format!(
        "/run/netns/berth-{}",
        id.replace('-', "")[..24].to_owned()
    ))
    .exists());
    Ok(())
}

#[tokio::test]
async fn a_containerd_restart_is_survived() -> anyhow::Result<()> {
    // Without warm namespaces: the footprint left at the end is the task's alone.
    let crate::Cluster {
        mut env,
        server,
        agent,
    } = crate::Cluster::start_with(crate::network::NO_WARM).await?;
    let addr = server.addr.to_string();
    let id = run_until_running(
        &addr,
        &[
            "run",
            "--stop-timeout",
            "1s",
            &env.image,
            "--",
            "sleep",
            "600",
        ],
    )
    .await?;
    env.containerd.restart().await?;
    // The task keeps running, and the agent still controls it through the new containerd.
    let out = cli(&addr, &["exec", &id, "--", "echo", "alive"]).await;
    let out = match out {
        Ok(o) if o.status.success() => o,
        _ => {
            poll("exec through the restarted containerd", TIMEOUT, || async {
                let o = cli(&addr, &["exec", &id, "--", "echo", "alive"])
                    .await
                    .ok()?;
                o.status.success().then_some(o)
            })
            .await?
        }
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    let t = cli_json(&addr, &["get", "task", &id]).await?;
    assert_eq!(t["lastStatus"], "RUNNING", "{t}");
    cli(&addr, &["stop", &id]).await?;
    let stopped = wait_stopped(&addr, &id, TIMEOUT).await?;
    assert_eq!(stopped["stopCode"], "UserInitiated");
    // Ended by the SIGTERM (through its init), its exit status read through the new containerd.
    assert_eq!(stopped["containers"][0]["exitCode"], 143, "{stopped}");
    assert!(
        containerd_containers(&env.containerd.socket, &agent.namespace)
            .await?
            .is_empty()
    );
    // Its network went with it: no address, veth or firewall rule is left.
    let net = env.network(&agent.name);
    assert_eq!(
        crate::network::footprint(&env, &agent.name, &net)?,
        crate::network::Footprint::NONE
    );
    Ok(())
}

#[tokio::test]
async fn pulls_report_progress_and_unused_images_over_the_budget_are_deleted() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    let second = format!("{}/demo2:latest", env.registry.addr);
    let busybox = berth_dev::find_program("busybox").expect("busybox-static");
    berth_dev::push_busybox_image(&busybox, &second).await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let agent = AgentProc::start_with(&env, &addr, "node-1", &["--image-budget-mib", "1"]).await?;

    let out = cli(&addr, &["run", "--wait", &env.image, "--", "true"]).await?;
    assert_eq!(out.status.code(), Some(0));
    let id = String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let task = wait_stopped(&addr, &id, TIMEOUT).await?;
    let progress = format!("pulled layer 1/1 of {}", env.image);
    assert!(
        events(&task).iter().any(|e| e.starts_with(&progress)),
        "{task}"
    );

    // Pulling a second image puts the agent over its 1 MiB budget: the first, now unused,
    // is deleted; the one being started is kept.
    let out = cli(&addr, &["run", "--wait", &second, "--", "true"]).await?;
    assert_eq!(out.status.code(), Some(0));
    let images = ctr(
        &env.containerd.socket,
        &agent.namespace,
        &["images", "list", "--quiet"],
    )
    .await?;
    let images = String::from_utf8_lossy(&images.stdout).into_owned();
    assert_eq!(images.trim(), second, "images left: {images}");
    Ok(())
}
