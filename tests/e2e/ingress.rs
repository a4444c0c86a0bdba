//! The ingress in front of a service on two nodes, under a steady load of requests: a rolling
//! deployment, a scale-in and a node drain lose none of them, and a task killed with SIGKILL
//! loses at most the requests it had in flight and leaves routing within a second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_tests::{cli, cli_json, http_get, poll, AgentProc, Env, IngressProc, ServerProc};

use crate::TIMEOUT;

/// Loops sending requests, one at a time each.
const WORKERS: usize = 6;

fn manifest(image: &str, version: &str, count: u32) -> String {
    format!(
        "apiVersion: berth.dev/v1
kind: Service
metadata:
  name: web
spec:
  desiredCount: {count}
  deregistrationDelay: 2s
  deploymentConfiguration:
    minimumHealthyPercent: 100
    maximumPercent: 200
  ingress:
    - host: web.local
      containerName: httpd
      containerPort: 8080
  template:
    cpu: 64
    memory: 32
    containers:
      - name: httpd
        image: {image}
        command: [sh, -c, 'mkdir -p /www && echo {version} > /www/index.html && exec httpd -f -p 8080 -h /www']
        portMappings:
          - containerPort: 8080
        stopTimeout: 5s
        healthCheck:
          command: [CMD-SHELL, 'wget -q -O /dev/null http://127.0.0.1:8080/']
          interval: 1s
          timeout: 1s
          retries: 2
"
    )
}

async fn apply(env: &Env, addr: &str, version: &str, count: u32) -> anyhow::Result<()> {
    let path = env.path(&format!("web-{version}-{count}.yaml"));
    std::fs::write(&path, manifest(&env.image, version, count))?;
    let out = cli(addr, &["apply", "-f", &path.to_string_lossy()]).await?;
    anyhow::ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// What the load saw: answers by body, and the failures.
#[derive(Default)]
struct Seen {
    answers: BTreeMap<String, u64>,
    failures: Vec<String>,
}

/// Requests through the ingress from `workers` loops until `stop` (at most `cap` requests and
/// `limit` of time in all), recording what came back.
fn load(
    ingress: String,
    workers: usize,
    cap: u64,
    limit: Duration,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    let per_worker = cap / workers as u64;
    for _ in 0..workers {
        let (ingress, stop, seen) = (ingress.clone(), stop.clone(), seen.clone());
        set.spawn(async move {
            for _ in 0..per_worker {
                if stop.load(Ordering::SeqCst) || started.elapsed() > limit {
                    return;
                }
                let answer = http_get(&ingress, "web.local", "/").await;
                {
                    let mut seen = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    match answer {
                        Ok((200, body)) => {
                            *seen.answers.entry(body.trim().to_owned()).or_default() += 1;
                        }
                        Ok((code, body)) => seen.failures.push(format!("{code} {body}")),
                        Err(e) => seen.failures.push(format!("{e:#}")),
                    }
                }
                // About 200 requests per second per worker at most.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    set
}

/// The service's RUNNING tasks wanted RUNNING with their node.
async fn running(addr: &str) -> anyhow::Result<Vec<(String, String)>> {
    let tasks = cli_json(addr, &["get", "tasks"]).await?;
    Ok(tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["lastStatus"] == "RUNNING" && t["desiredStatus"] == "RUNNING")
        .map(|t| {
            (
                t["taskId"].as_str().unwrap_or_default().to_owned(),
                t["node"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Waits until the primary deployment completed with `count` healthy tasks.
async fn settled(addr: &str, count: usize) -> anyhow::Result<()> {
    poll(
        &format!("web to settle at {count}"),
        TIMEOUT * 2,
        || async {
            let svc = cli_json(addr, &["get", "service", "web"]).await.ok()?;
            let d = &svc["deployments"][0];
            let done = svc["deployments"].as_array()?.len() == 1
                && d["rolloutState"] == "COMPLETED"
                && d["healthyCount"] == count as u64
                && svc["runningCount"] == count as u64;
            (done && running(addr).await.ok()?.len() == count).then_some(())
        },
    )
    .await
}

/// How many requests the ingress sent to `task`, by its metrics.
async fn served_by(ingress: &IngressProc, task: &str) -> anyhow::Result<u64> {
    let text = ingress.metrics().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("berth_ingress_task_requests_total") && l.contains(task))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

#[tokio::test]
async fn the_ingress_keeps_every_request_through_a_deployment_a_scale_in_and_a_drain(
) -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let _a = AgentProc::start(&env, &addr, "node-a").await?;
    let _b = AgentProc::start(&env, &addr, "node-b").await?;
    let ingress = IngressProc::start(&env, &addr, "edge").await?;
    let front = ingress.addr.to_string();

    apply(&env, &addr, "v1", 4).await?;
    settled(&addr, 4).await?;
    poll("the ingress to route to web", TIMEOUT, || async {
        let (code, body) = http_get(&front, "web.local", "/").await.ok()?;
        (code == 200 && body.trim() == "v1").then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}; see {}", ingress.log.display()))?;
    // Hosts no service declares are answered 404.
    let (code, _) = http_get(&front, "other.local", "/").await?;
    assert_eq!(code, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let load_started = Instant::now();
    let mut workers = load(
        front.clone(),
        WORKERS,
        60_000,
        Duration::from_secs(240),
        stop.clone(),
        seen.clone(),
    );

    // A rolling deployment v1 -> v2.
    apply(&env, &addr, "v2", 4).await?;
    settled(&addr, 4).await?;
    poll("answers from v2 only", TIMEOUT, || async {
        let (_, body) = http_get(&front, "web.local", "/").await.ok()?;
        (body.trim() == "v2").then_some(())
    })
    .await?;
    // A scale-out to 6, then a scale-in to 2.
    for count in [6, 2] {
        let out = cli(&addr, &["scale", "web", &count.to_string()]).await?;
        assert!(out.status.success(), "{out:?}");
        settled(&addr, count).await?;
    }
    // A drain of the node that runs tasks: they move to the other one first.
    let on = running(&addr).await?;
    let node = on[0].1.clone();
    let out = cli(&addr, &["node", "drain", &node]).await?;
    assert!(out.status.success(), "{out:?}");
    poll(
        "the drained node to run none of web",
        TIMEOUT * 2,
        || async {
            let now = running(&addr).await.ok()?;
            (now.len() == 2 && now.iter().all(|(_, n)| *n != node)).then_some(())
        },
    )
    .await?;
    settled(&addr, 2).await?;

    stop.store(true, Ordering::SeqCst);
    while workers.join_next().await.is_some() {}
    {
        let seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: u64 = seen.answers.values().sum();
        eprintln!(
            "answers through the changes: {:?} in {:?}",
            seen.answers,
            load_started.elapsed()
        );
        assert!(
            seen.failures.is_empty(),
            "{} of {} requests failed: {:?}",
            seen.failures.len(),
            total + seen.failures.len() as u64,
            &seen.failures[..seen.failures.len().min(10)]
        );
        assert!(total > 500, "only {total} requests were made");
        assert!(
            seen.answers.get("v1").copied().unwrap_or(0) > 0
                && seen.answers.get("v2").copied().unwrap_or(0) > 0,
            "{:?}",
            seen.answers
        );
    }

    // SIGKILL one task's container under load: at most its in-flight requests fail, and the
    // ingress stops sending it any within a second.
    let cli_out = cli(&addr, &["node", "activate", &node]).await?;
    assert!(cli_out.status.success());
    let victim = running(&addr).await?[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut workers = load(
        front.clone(),
        WORKERS,
        6_000,
        Duration::from_secs(30),
        stop.clone(),
        seen.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let container = format!("{}-httpd", victim.0);
    let ns = format!("berth-e2e-{}", victim.1);
    let out = berth_tests::ctr(
        &env.containerd.socket,
        &ns,
        &["tasks", "kill", "-s", "KILL", &container],
    )
    .await?;
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_a_second = served_by(&ingress, &victim.0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        served_by(&ingress, &victim.0).await?,
        after_a_second,
        "the ingress still routes to the killed task after a second"
    );
    stop.store(true, Ordering::SeqCst);
    while workers.join_next().await.is_some() {}
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(
        seen.failures.len() <= WORKERS,
        "more than the {WORKERS} requests in flight failed: {:?}",
        seen.failures
    );
    Ok(())
}
