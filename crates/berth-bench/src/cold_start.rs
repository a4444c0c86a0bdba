//! Cold starts through the ingress: a service at zero tasks (image cached on the node), one
//! request, and the time to the first byte of its answer, as the woken task gives it; beside
//! it, in the same run, the same request to the service awake.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_tests::{cli, cli_json, http_get, poll, Env, IngressProc, ServerProc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cluster::scratch_dir;
use crate::results::{record_percentiles, Results};

const HOST: &str = "cold.local";
const TRIALS: usize = 20;
/// Warm requests after each wake.
const WARM_PER_TRIAL: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(60);

/// `TRIALS` times: the service is scaled to zero by hand (its task stops; the ingress has no
/// backend left), then one request is sent and timed to the first byte of its answer, which
/// must be a 200 marked as a cold start; then `WARM_PER_TRIAL` requests to the awake service.
/// The elections and failed writes meanwhile (the autoscaler's wakes, the agent's reports)
/// too.
pub(crate) async fn cold_start(results: &mut Results) -> anyhow::Result<()> {
    let env = Env::start_in(scratch_dir("berth-cold-start")?).await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let _agent = crate::cluster::agent(&env, &addr, "cold").await?;
    let ingress = IngressProc::start(&env, &addr, "edge").await?;
    let front = ingress.addr.to_string();
    apply(&env, &addr).await?;
    // Awake first: the image is pulled and the route is known.
    poll("the ingress to route to the service", TIMEOUT, || async {
        let (code, _) = http_get(&front, HOST, "/").await.ok()?;
        (code == 200).then_some(())
    })
    .await
    .with_context(|| format!("see {}", ingress.log.display()))?;
    let watched = crate::cluster::Watched::begin(&[&server]).await?;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut unmarked = 0;
    for trial in 0..TRIALS {
        to_zero(&addr).await?;
        let (ms, code, head) = first_byte(&front).await?;
        anyhow::ensure!(code == 200, "trial {trial}: HTTP {code}: {head}");
        if !head.to_ascii_lowercase().contains("x-berth-cold-start-ms:") {
            // Answered without waiting: the service was not at zero after all.
            unmarked += 1;
            continue;
        }
        cold.push(ms);
        for _ in 0..WARM_PER_TRIAL {
            let (ms, code, _) = first_byte(&front).await?;
            anyhow::ensure!(code == 200, "warm request: HTTP {code}");
            warm.push(ms);
        }
    }
    results.insert("cold_start.trials".into(), cold.len() as f64);
    record_percentiles(results, "cold_start.cold_", &mut cold);
    record_percentiles(results, "cold_start.warm_", &mut warm);
    // A failed scale ends the scenario: none failed when it gets here.
    watched.record(results, "cold_start", 0).await?;
    anyhow::ensure!(
        unmarked == 0,
        "{unmarked} of {TRIALS} requests were not held as cold starts"
    );
    Ok(())
}

/// One busybox httpd task behind the ingress, scaling to zero; no health check (a started task
/// is ready when its port answers, which the ingress waits for).
async fn apply(env: &Env, addr: &str) -> anyhow::Result<()> {
    let manifest = format!(
        "apiVersion: berth.dev/v1
kind: Service
metadata:
  name: cold
spec:
  desiredCount: 1
  deregistrationDelay: 0s
  ingress: [{{host: {HOST}, containerName: httpd, containerPort: 8080}}]
  autoscaling:
    minCount: 0
    maxCount: 1
    targetTracking: [{{metric: RequestsPerTask, target: 1000}}]
    scaleToZero: {{idleAfter: 30m, activationTimeout: 30s}}
  template:
    cpu: 256
    memory: 32
    containers:
      - name: httpd
        image: {image}
        command: [sh, -c, 'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www']
        portMappings: [{{containerPort: 8080}}]
        stopTimeout: 1s
",
        image = env.image
    );
    crate::api::apply_manifest(env, addr, "cold.yaml", &manifest).await
}

/// Scales the service to zero by hand and waits until every task of it has stopped, and a
/// moment more for the ingress to hear that it has no backend.
async fn to_zero(addr: &str) -> anyhow::Result<()> {
    // The ingress reports what arrived in the last second: once the last report of the warm
    // requests is in, a scale-down by hand starts the autoscaler's window afresh (otherwise
    // those requests would wake the service again at once).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = cli(addr, &["scale", "cold", "0"]).await?;
    anyhow::ensure!(
        out.status.success(),
        "scale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll("the service to be at zero", TIMEOUT, || async {
        let tasks = cli_json(addr, &["get", "tasks"]).await.ok()?;
        tasks
            .as_array()?
            .iter()
            .all(|t| t["lastStatus"] == "STOPPED")
            .then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// One request on a new connection: milliseconds to the first byte of the answer, its status
/// code and its head.
async fn first_byte(front: &str) -> anyhow::Result<(f64, u16, String)> {
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(front).await?;
        let started = Instant::now();
        conn.write_all(
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut rest = Vec::with_capacity(1024);
        (&mut conn).take(64 * 1024).read_to_end(&mut rest).await?;
        let mut text = vec![first[0]];
        text.extend(rest);
        let text = String::from_utf8_lossy(&text).into_owned();
        let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        anyhow::Ok((ms, code, head))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("no answer within a minute")?
}
