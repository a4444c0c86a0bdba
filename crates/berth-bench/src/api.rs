//! Talking to the servers under test: requests, and waits on their `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_tests::scrape;

pub(crate) fn spec(family: &str, cpu: u32, memory: u32) -> pb::TaskDefinitionSpec {
    pb::TaskDefinitionSpec {
        family: family.into(),
        cpu,
        memory,
        containers: vec![pb::ContainerDefinition {
            name: "app".into(),
            image: "bench/app:1".into(),
            essential: true,
            stop_timeout: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Waits until the server at `addr` counts at least `nodes` ACTIVE nodes (asking once a
/// second: listing 10,000 nodes often would load the server being measured).
pub(crate) async fn wait_nodes(addr: &str, nodes: u64) -> anyhow::Result<()> {
    let series = "berth_nodes{state=\"ACTIVE\"}";
    let every = Duration::from_secs(1);
    wait_metric(addr, series, nodes, Duration::from_secs(300), every).await
}

/// Waits until `series` in the `/metrics` of the server at `addr` reaches `at_least`, asking
/// `every` so long.
pub(crate) async fn wait_metric(
    addr: &str,
    series: &str,
    at_least: u64,
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = metric(addr, series).await;
        if now.is_some_and(|n| n >= at_least) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{series} is {now:?} after {timeout:?}, not {at_least}"
        );
        tokio::time::sleep(every).await;
    }
}

/// A client that takes answers as large as a list of 150,000 tasks.
pub(crate) async fn big_client(addr: &str) -> anyhow::Result<berth_tests::Api> {
    Ok(berth_tests::api(addr)
        .await?
        .max_decoding_message_size(1 << 30))
}

/// A sample from the server's `/metrics` (cheap to ask often, unlike a list), e.g.
/// `berth_tasks{state="RUNNING"}`.
pub(crate) async fn metric(addr: &str, series: &str) -> Option<u64> {
    let body = scrape(addr, addr, berth_tests::Scrape::Token).await.ok()?;
    let needle = format!("{series} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
}

/// Several series of one scrape of the server at `addr`'s `/metrics`, in the order asked
/// (none for a series it does not show, all none when it does not answer).
pub(crate) async fn metrics(addr: &str, series: &[&str]) -> Vec<Option<u64>> {
    let body = scrape(addr, addr, berth_tests::Scrape::Token)
        .await
        .unwrap_or_default();
    series
        .iter()
        .map(|name| {
            let needle = format!("{name} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&needle))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// What [`submit`] did.
pub(crate) struct Submitted {
    /// When each task's batch was submitted (ms since the epoch), by task ID.
    pub(crate) at: BTreeMap<String, f64>,
    /// `RunTask` calls that failed (each was made again, with the same client token).
    pub(crate) failed: usize,
}

/// Runs `tasks` tasks of `family` in batches of 1,000. A batch whose call fails is sent again
/// with the same client token (so it runs once), up to 10 times.
pub(crate) async fn submit(
    client: &mut berth_tests::Api,
    family: &str,
    tasks: u32,
) -> anyhow::Result<Submitted> {
    let mut submitted = Submitted {
        at: BTreeMap::new(),
        failed: 0,
    };
    let (mut left, mut batch) = (tasks, 0);
    let run = epoch_ms();
    while left > 0 {
        let count = left.min(1000);
        let at = epoch_ms();
        let request = pb::RunTaskRequest {
            namespace: String::new(),
            task_definition: family.into(),
            count,
            client_token: format!("{family}-{run}-{batch}"),
            ..Default::default()
        };
        let mut tries = 0;
        let r = loop {
            match client.run_task(request.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(e) if tries < 10 => {
                    eprintln!("RunTask of {count} failed ({e}); sending it again");
                    submitted.failed += 1;
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => anyhow::bail!("RunTask of {count} failed 11 times, the last: {e}"),
            }
        };
        if std::env::var_os("BERTH_BENCH_TIMELINE").is_some() {
            eprintln!(
                "RunTask {batch}: sent at +{:.0} ms, answered at +{:.0} ms",
                at - run,
                epoch_ms() - run
            );
        }
        for t in r.tasks {
            submitted.at.insert(t.task_id, at);
        }
        left -= count;
        batch += 1;
    }
    Ok(submitted)
}

pub(crate) fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// The `/metrics` series of running tasks.
pub(crate) const RUNNING: &str = "berth_tasks{state=\"RUNNING\"}";

/// Waits until `tasks` tasks run, asking `/metrics` on `addr` four times a second (the
/// throughput comes from the tasks' own start times, not from when this notices).
pub(crate) async fn wait_running(addr: &str, tasks: u64, timeout: Duration) -> anyhow::Result<()> {
    wait_metric(addr, RUNNING, tasks, timeout, Duration::from_millis(250)).await
}

/// Writes `manifest` to the scratch file `name` and applies it with the CLI.
pub(crate) async fn apply_manifest(
    env: &berth_tests::Env,
    addr: &str,
    name: &str,
    manifest: &str,
) -> anyhow::Result<()> {
    let path = env.path(name);
    std::fs::write(&path, manifest)?;
    let out = berth_tests::cli(addr, &["apply", "-f", &path.to_string_lossy()]).await?;
    anyhow::ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
