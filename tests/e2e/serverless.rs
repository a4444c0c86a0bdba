//! Scale to zero end to end, with real containers behind a real ingress: a service with
//! minCount 0 goes to zero after `idleAfter` without a request, and the next request wakes
//! it: held by the ingress while one task starts, answered by it, marked as a cold start.

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
    maxCount: 2
    targetTracking: [{{metric: RequestsPerTask, target: 100}}]
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
        said.iter()
            .any(|e| e.starts_with("scaled to zero 1 -> 0: no request through any ingress for")),
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
    Ok(())
}
