//! Scale to zero end to end, with real containers behind a real ingress: a service with
//! minCount 0 goes to zero after `idleAfter` without a request, and the next request wakes
//! it: held by the ingress while one task starts, answered by it, marked as a cold start. Then
//! a load step of ten times the target request rate per task scales it out within seconds; a
//! trickle scales it back in, and silence takes it to zero again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_tests::{
    cli, cli_json, events, http_exchange, http_get, poll, AgentProc, Env, IngressProc, ServerProc,
};

use crate::TIMEOUT;

#[tokio::test]
async fn an_idle_service_goes_to_zero_and_the_next_request_wakes_it() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let ingress = IngressProc::start(&env, &addr, "edge").await?;
    let front = ingress.addr.to_string();
    let manifest = env.path("zero.yaml");
    std::fs::write(
        &manifest,
        format!(
            "\
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: zero
spec:
  desiredCount: 1
  deregistrationDelay: 0s
  ingress: [{{host: zero.local, containerName: httpd, containerPort: 8080}}]
  autoscaling:
    minCount: 0
    maxCount: 3
    targetTracking: [{{metric: RequestsPerTask, target: 2}}]
    scaleOutCooldown: 1s
    scaleInCooldown: 5s
    scaleToZero: {{idleAfter: 30s, activationTimeout: 30s}}
  template:
    cpu: 64
    memory: 32
    containers:
      - name: httpd
        image: {}
        command: [sh, -c, 'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www']
        portMappings: [{{containerPort: 8080}}]
        stopTimeout: 1s
        healthCheck:
          command: [CMD-SHELL, 'wget -q -O /dev/null http://127.0.0.1:8080/']
          interval: 1s
          timeout: 1s
          retries: 2
",
            env.image
        ),
    )?;
    let out = cli(&addr, &["apply", "-f", &manifest.display().to_string()]).await?;
    anyhow::ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll("the ingress to route to zero", TIMEOUT, || async {
        let (code, body) = http_get(&front, "zero.local", "/").await.ok()?;
        (code == 200 && body.trim() == "hello").then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}; see {}", ingress.log.display()))?;

    // No request for 30 s: to zero, with its event, and no task left running.
    let quiet = Instant::now();
    let svc = poll("the service to scale to zero", TIMEOUT * 2, || async {
        let svc = cli_json(&addr, &["get", "service", "zero"]).await.ok()?;
        (svc["desiredCount"] == 0 && svc["runningCount"] == 0).then_some(svc)
    })
    .await?;
    assert!(
        quiet.elapsed() >= Duration::from_secs(25),
        "went to zero {:?} after the last request, before idleAfter",
        quiet.elapsed()
    );
    let said = events(&svc);
    assert!(
        said.iter().any(|e| e.starts_with("scaled to zero ")
            && e.contains(" -> 0: no request through any ingress for")),
        "{said:?}"
    );

    // The next request waits for a task and gets its answer.
    let asked = Instant::now();
    let (code, head, body) =
        http_exchange(&front, "zero.local", "/", Duration::from_secs(40)).await?;
    let first_byte = asked.elapsed();
    assert_eq!((code, body.trim()), (200, "hello"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-berth-cold-start-ms:"),
        "a cold start is marked: {head}"
    );
    eprintln!("cold start: first byte after {first_byte:?}");
    let svc = cli_json(&addr, &["get", "service", "zero"]).await?;
    assert_eq!(svc["desiredCount"], 1);
    let said = events(&svc);
    assert!(
        said.iter().any(|e| e.starts_with("woke 0 -> 1")),
        "{said:?}"
    );
    // Awake, requests are answered without waiting.
    let (code, head, _) = http_exchange(&front, "zero.local", "/", Duration::from_secs(5)).await?;
    assert_eq!(code, 200);
    assert!(
        !head.to_ascii_lowercase().contains("x-berth-cold-start-ms:"),
        "{head}"
    );

    // A load step: 20 requests a second, ten times the target per task. Proportional
    // scale-out, within 10 s.
    let step = Load::start(&front, 20, Duration::from_secs(20));
    let stepped = Instant::now();
    let svc = poll(
        "the service to scale out",
        Duration::from_secs(20),
        || async {
            let svc = cli_json(&addr, &["get", "service", "zero"]).await.ok()?;
            (svc["desiredCount"].as_u64()? > 1).then_some(svc)
        },
    )
    .await?;
    let scaled_out = stepped.elapsed();
    assert!(
        scaled_out <= Duration::from_secs(10),
        "scaled out {scaled_out:?} after the load step"
    );
    eprintln!("load step: scaled out after {scaled_out:?}");
    let said = events(&svc);
    assert!(
        said.iter()
            .any(|e| e.starts_with("scaled out 1 -> ") && e.contains("RequestsPerTask")),
        "{said:?}"
    );
    // Up to maxCount while the load lasts.
    poll(
        "the service to reach maxCount",
        Duration::from_secs(15),
        || async {
            let svc = cli_json(&addr, &["get", "service", "zero"]).await.ok()?;
            (svc["desiredCount"] == 3).then_some(())
        },
    )
    .await?;
    let answered = step.stop().await;
    assert!(answered > 0, "the load got no answer");

    // A trickle (one request a second, a sixth of the target per task of three): back in,
    // stepwise.
    let trickle = Load::start(&front, 1, Duration::from_secs(60));
    let svc = poll(
        "the service to scale in",
        Duration::from_secs(60),
        || async {
            let svc = cli_json(&addr, &["get", "service", "zero"]).await.ok()?;
            (svc["desiredCount"].as_u64()? < 3).then_some(svc)
        },
    )
    .await?;
    let said = events(&svc);
    assert!(
        said.iter().any(|e| e.starts_with("scaled in 3 -> 2")),
        "{said:?}"
    );
    trickle.stop().await;

    // Silence: to zero once more, after idleAfter.
    let quiet = Instant::now();
    poll(
        "the service to scale to zero again",
        TIMEOUT * 2,
        || async {
            let svc = cli_json(&addr, &["get", "service", "zero"]).await.ok()?;
            (svc["desiredCount"] == 0 && svc["runningCount"] == 0).then_some(())
        },
    )
    .await?;
    assert!(quiet.elapsed() >= Duration::from_secs(25));

    // A broken revision deployed at zero (an image no registry serves) is not taken as done:
    // `apply --wait` says it waits, and the deployment stays in progress.
    let text = std::fs::read_to_string(&manifest)?;
    let broken = env.path("broken.yaml");
    std::fs::write(
        &broken,
        text.replace(
            &format!("image: {}", env.image),
            "image: 127.0.0.1:1/missing:latest",
        ),
    )?;
    let out = cli(
        &addr,
        &[
            "apply",
            "-f",
            &broken.display().to_string(),
            "--wait",
            "--timeout",
            "30s",
        ],
    )
    .await?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("waits at zero tasks"), "{said}");
    let svc = cli_json(&addr, &["get", "service", "zero"]).await?;
    assert_eq!(
        svc["deployments"][0]["rolloutState"], "IN_PROGRESS",
        "{svc}"
    );
    // The first request wakes it: the breaker trips on the broken tasks, the service rolls
    // back, and the held request is answered by the revision that worked.
    let (code, head, body) =
        http_exchange(&front, "zero.local", "/", Duration::from_secs(40)).await?;
    assert_eq!((code, body.trim()), (200, "hello"), "{head}");
    let svc = poll("the rollback to complete", TIMEOUT, || async {
        let svc = cli_json(&addr, &["get", "service", "zero"]).await.ok()?;
        (svc["deployments"][0]["rolloutState"] == "COMPLETED").then_some(svc)
    })
    .await?;
    let said = events(&svc);
    assert!(
        said.iter()
            .any(|e| e.contains("circuit breaker") && e.contains("rolling back")),
        "{said:?}"
    );
    Ok(())
}

/// Requests to the ingress at a steady rate, each on its own connection (a slow answer does
/// not slow the next request), for at most `limit`: bounded in time and in count.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(front: &str, per_second: u64, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let front = front.to_owned();
        let (flag, count) = (stop.clone(), answered.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second.max(1)));
            while !flag.load(Ordering::Relaxed) && started.elapsed() < limit {
                tick.tick().await;
                let (front, count) = (front.clone(), count.clone());
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(
                        Duration::from_secs(5),
                        http_get(&front, "zero.local", "/"),
                    )
                    .await;
                    if let Ok(Ok((200, _))) = answer {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Self {
            stop,
            answered,
            task,
        }
    }

    /// Stops sending; answers how many requests were answered with 200.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.answered.load(Ordering::Relaxed)
    }
}
