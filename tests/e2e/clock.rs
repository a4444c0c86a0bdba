//! The leader's wall clock jumps an hour forward and back during a deployment (libfaketime,
//! for the server process only; its monotonic clock runs on): no deadline fires early, nothing
//! rolls back, no node is lost.

use std::time::Duration;

use berth_tests::{cli, cli_json, poll, AgentProc, Env, ServerProc};

const TIMEOUT: Duration = Duration::from_secs(90);
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Service `web` at `tag`: its HTTP health check passes `delay` seconds after start.
fn manifest(registry: &str, tag: &str, delay: u32) -> String {
    format!(
        "\
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: web
spec:
  desiredCount: 2
  deploymentConfiguration:
    minimumHealthyPercent: 100
    maximumPercent: 200
    circuitBreaker: {{enable: true, rollback: true}}
    healthyDeadline: 60s
    progressDeadline: 300s
  template:
    cpu: 128
    memory: 32
    containers:
      - name: httpd
        image: {registry}/web:{tag}
        command: [sh, -c, 'sleep {delay}; echo {tag} > /tmp/index.html && exec httpd -f -p 8080 -h /tmp']
        stopTimeout: 1s
        healthCheck:
          command: [CMD-SHELL, 'wget -q -O /dev/null http://127.0.0.1:8080/index.html']
          interval: 1s
          timeout: 1s
          retries: 2
          startPeriod: 20s
"
    )
}

/// Moves the server's wall clock to `offset` from the real one (`+1h`, `-1h`, `+0`).
fn set_clock(file: &std::path::Path, offset: &str) -> anyhow::Result<()> {
    std::fs::write(file, format!("{offset}\n"))?;
    Ok(())
}

#[tokio::test]
async fn a_wall_clock_jump_on_the_leader_fails_no_deployment_and_loses_no_node(
) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install libfaketime (make test does)"
    );
    let env = Env::start().await?;
    let busybox = berth_dev::find_program("busybox").expect("busybox-static");
    for tag in ["v1", "v2"] {
        berth_dev::push_busybox_image(&busybox, &format!("{}/web:{tag}", env.registry.addr))
            .await?;
    }
    let clock = env.path("faketime");
    set_clock(&clock, "+0")?;
    let clock_path = clock.display().to_string();
    let server = ServerProc::spawn_with_env(
        1,
        &env.path("server"),
        None,
        &[],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &clock_path),
            ("FAKETIME_CACHE_DURATION", "1"),
            // Only the wall clock moves: timers and TTLs run on the monotonic one.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await?;
    server.wait_ready().await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let registry = env.registry.addr.to_string();
    let apply = |tag: &'static str, delay: u32, wait: bool| {
        let path = env.path(&format!("web-{tag}.yaml"));
        let text = manifest(&registry, tag, delay);
        let addr = addr.clone();
        async move {
            std::fs::write(&path, text)?;
            let path = path.display().to_string();
            let mut args = vec!["apply", "-f", &path];
            if wait {
                args.extend(["--wait", "--timeout", "90s"]);
            }
            let out = cli(&addr, &args).await?;
            anyhow::ensure!(
                out.status.success(),
                "apply {tag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::Ok(())
        }
    };
    apply("v1", 0, true).await?;
    let tasks = cli_json(&addr, &["get", "tasks"]).await?;
    let v1_task = tasks[0]["taskId"].as_str().unwrap_or_default().to_owned();
    // An exec is logged (audit), with the server's clock: proof that the clock moved.
    let exec_args = ["exec", v1_task.as_str(), "--", "true"];
    let exec = || cli(&addr, &exec_args);

    // v2's tasks become healthy 8 s after they start; meanwhile the clock jumps.
    apply("v2", 8, false).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_clock(&clock, "+1h")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    exec().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_clock(&clock, "-1h")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    exec().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_clock(&clock, "+0")?;

    // The jumps took effect: the server logged an hour ahead.
    let log = std::fs::read_to_string(env.path("server").join("server.log"))?;
    let hour = |line: &str| line.get(11..13).and_then(|h| h.parse::<u32>().ok());
    let hours: std::collections::BTreeSet<u32> = log
        .lines()
        .filter_map(|l| hour(l.trim_start_matches("\u{1b}[2m")))
        .collect();
    assert!(
        hours.len() >= 3,
        "the server's clock never moved (hours logged: {hours:?})"
    );

    let svc = poll("v2's deployment to complete", TIMEOUT, || async {
        let svc = cli_json(&addr, &["get", "service", "web"]).await.ok()?;
        let primary = &svc["deployments"][0];
        (primary["rolloutState"] == "COMPLETED" || primary["rolloutState"] == "FAILED")
            .then_some(svc)
    })
    .await?;
    let primary = &svc["deployments"][0];
    assert_eq!(primary["rolloutState"], "COMPLETED", "{svc}");
    assert_eq!(primary["taskDefinition"], "web:2", "{svc}");
    let events = svc["events"].to_string();
    assert!(
        !events.contains("rolling back") && !events.contains("failed"),
        "{events}"
    );
    let node = cli_json(&addr, &["get", "node", "node-1"]).await?;
    assert_eq!(node["status"], "ACTIVE", "{node}");
    let tasks = cli_json(&addr, &["get", "tasks"]).await?;
    assert!(
        !tasks.to_string().contains("NodeLost"),
        "a task was lost: {tasks}"
    );
    Ok(())
}
