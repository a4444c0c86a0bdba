//! Services end to end: busybox httpd tasks with a wget health check on real containerd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_tests::{cli, cli_json, ctr, poll, AgentProc, Env, ServerProc};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A service manifest: `tag` of the registry's `web` repository, serving `tag` over HTTP.
fn manifest(registry: &str, tag: &str) -> String {
    format!(
        "\
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: web
spec:
  desiredCount: 3
  deploymentConfiguration:
    minimumHealthyPercent: 100
    maximumPercent: 200
    circuitBreaker: {{enable: true, rollback: true}}
    healthyDeadline: 30s
  template:
    cpu: 128
    memory: 32
    containers:
      - name: httpd
        image: {registry}/web:{tag}
        command: [sh, -c, 'echo {tag} > /tmp/index.html && exec httpd -f -p 8080 -h /tmp']
        stopTimeout: 1s
        healthCheck:
          command: [CMD-SHELL, 'wget -q -O /dev/null http://127.0.0.1:8080/index.html']
          interval: 1s
          timeout: 1s
          retries: 2
"
    )
}

/// The service's tasks that are RUNNING with a HEALTHY container, as `(task ID, image)`.
async fn healthy_tasks(addr: &str) -> anyhow::Result<Vec<(String, String)>> {
    let tasks = cli_json(addr, &["get", "tasks"]).await?;
    Ok(tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["group"] == "service:web"
                && t["lastStatus"] == "RUNNING"
                && t["containers"][0]["healthStatus"] == "HEALTHY"
        })
        .map(|t| {
            (
                t["taskId"].as_str().unwrap_or_default().to_owned(),
                t["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect())
}

async fn apply(
    addr: &str,
    env: &Env,
    tag: &str,
    wait: bool,
) -> anyhow::Result<std::process::Output> {
    let path = env.path(&format!("web-{tag}.yaml"));
    std::fs::write(&path, manifest(&env.registry.addr.to_string(), tag))?;
    let path = path.display().to_string();
    let mut args = vec!["apply", "-f", &path];
    if wait {
        args.extend(["--wait", "--timeout", "90s"]);
    }
    cli(addr, &args).await
}

async fn service(addr: &str) -> anyhow::Result<Value> {
    cli_json(addr, &["get", "service", "web"]).await
}

#[tokio::test]
async fn a_service_heals_rolls_out_trips_its_breaker_rolls_back_scales_and_is_deleted(
) -> anyhow::Result<()> {
    let env = Env::start().await?;
    let busybox = berth_dev::find_program("busybox").expect("busybox-static");
    for tag in ["v1", "v2"] {
        berth_dev::push_busybox_image(&busybox, &format!("{}/web:{tag}", env.registry.addr))
            .await?;
    }
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let agent = AgentProc::start(&env, &addr, "node-1").await?;

    // Create with 3 replicas; --wait returns once all three are healthy.
    let out = apply(&addr, &env, "v1", true).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = service(&addr).await?;
    assert_eq!(svc["runningCount"], 3, "{svc}");
    assert_eq!(svc["deployments"][0]["rolloutState"], "COMPLETED", "{svc}");
    let healthy = healthy_tasks(&addr).await?;
    assert_eq!(healthy.len(), 3);

    // A task whose container dies is replaced.
    let victim = healthy[0].0.clone();
    ctr(
        &env.containerd.socket,
        &agent.namespace,
        &[
            "tasks",
            "kill",
            "--signal",
            "SIGKILL",
            &format!("{victim}-httpd"),
        ],
    )
    .await?;
    poll("the killed task to be replaced", TIMEOUT, || async {
        let now = healthy_tasks(&addr).await.ok()?;
        (now.len() == 3 && now.iter().all(|(id, _)| *id != victim)).then_some(())
    })
    .await?;

    // v1 -> v2 while a watcher checks that 3 healthy tasks exist at every observation.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (addr, stop) = (addr.clone(), stop.clone());
        tokio::spawn(async move {
            let mut low = Vec::new();
            let mut observations = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(h) = healthy_tasks(&addr).await {
                    observations += 1;
                    if h.len() < 3 {
                        low.push(h.len());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (observations, low)
        })
    };
    let out = apply(&addr, &env, "v2", true).await?;
    stop.store(true, Ordering::Relaxed);
    let (observations, low) = watcher.await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(observations > 5, "only {observations} observations");
    assert!(low.is_empty(), "fewer than 3 healthy tasks seen: {low:?}");
    let healthy = healthy_tasks(&addr).await?;
    assert_eq!(healthy.len(), 3);
    assert!(
        healthy.iter().all(|(_, image)| image.ends_with("/web:v2")),
        "{healthy:?}"
    );
    let v2 = service(&addr).await?["taskDefinition"].clone();

    // A broken image trips the circuit breaker; the service rolls back to v2.
    let out = apply(&addr, &env, "broken", true).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("circuit breaker"), "{stderr}");
    let svc = service(&addr).await?;
    assert_eq!(svc["taskDefinition"], v2, "{svc}");
    assert_eq!(svc["deployments"][0]["rolloutState"], "COMPLETED", "{svc}");
    assert_eq!(svc["deployments"][0]["taskDefinition"], v2, "{svc}");
    let events: Vec<&str> = svc["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        events.iter().any(|e| e.contains("rolling back to")),
        "{events:?}"
    );
    let healthy = healthy_tasks(&addr).await?;
    assert_eq!(healthy.len(), 3);
    assert!(healthy.iter().all(|(_, image)| image.ends_with("/web:v2")));

    // Scale 3 -> 6 -> 1.
    for n in [6, 1] {
        let out = cli(
            &addr,
            &["scale", "web", &n.to_string(), "--wait", "--timeout", "90s"],
        )
        .await?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(healthy_tasks(&addr).await?.len(), n);
    }

    // Delete: the tasks stop, then the service disappears.
    let out = cli(&addr, &["delete", "service", "web"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll("the service to disappear", TIMEOUT, || async {
        let list = cli_json(&addr, &["get", "services"]).await.ok()?;
        list.as_array().is_some_and(Vec::is_empty).then_some(())
    })
    .await?;
    let tasks = cli_json(&addr, &["get", "tasks"]).await?;
    assert!(
        tasks
            .as_array()
            .into_iter()
            .flatten()
            .all(|t| t["lastStatus"] == "STOPPED"),
        "{tasks}"
    );
    Ok(())
}
