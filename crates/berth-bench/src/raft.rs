//! The consensus scenarios: committed writes per second, and leader failover.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_proto::v1 as pb;
use berth_tests::ServerProc;

use crate::api::spec;
use crate::cluster::Cluster;
use crate::results::{record_percentiles, Results};

/// The client counts of `raft` and its peer `etcd`, with their keys.
pub(crate) const CLIENTS: [(usize, &str); 2] = [(1, "c1"), (64, "c64")];

/// How long each client count writes.
const RUN_FOR: Duration = Duration::from_secs(5);

/// The write `raft` makes: a revision of the task definition family `family` (`etcd` puts the
/// same bytes).
pub(crate) fn write_request(family: &str) -> pb::RegisterTaskDefinitionRequest {
    pb::RegisterTaskDefinitionRequest {
        namespace: String::new(),
        spec: Some(spec(family, 128, 64)),
        reuse_identical: false,
    }
}

/// Committed writes per second with 1 and 64 concurrent clients (each write registers a task
/// definition revision: one Raft entry, fsynced on a quorum); the elections and the failed
/// writes meanwhile (the goal for both is none).
pub(crate) async fn raft(results: &mut Results) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.leader().await?;
    let watched = cluster.watch().await?;
    let mut failed = 0;
    for (clients, key) in CLIENTS {
        let client = client.clone();
        let load = write_load(clients, move |w| {
            let mut c = client.clone();
            async move {
                c.register_task_definition(write_request(&format!("raft-{w}")))
                    .await?;
                anyhow::Ok(())
            }
        })
        .await;
        failed += load.record(results, &format!("raft.{key}_"));
    }
    watched.record(results, "raft", failed).await
}

/// What `clients` concurrent writers did in [`RUN_FOR`].
pub(crate) struct Load {
    latencies_ms: Vec<f64>,
    failed: usize,
    first_error: Option<String>,
    secs: f64,
}

impl Load {
    /// Records `{prefix}ops_per_sec` and the percentiles of the acknowledged writes; returns
    /// how many failed (the first failure is printed).
    pub(crate) fn record(mut self, results: &mut Results, prefix: &str) -> usize {
        results.insert(
            format!("{prefix}ops_per_sec"),
            self.latencies_ms.len() as f64 / self.secs,
        );
        record_percentiles(results, prefix, &mut self.latencies_ms);
        if let Some(e) = &self.first_error {
            eprintln!("{prefix}: {} write(s) failed, the first: {e}", self.failed);
        }
        self.failed
    }
}

/// `clients` writers, each making the write `write(w)` (w: the writer's number) one after
/// another for [`RUN_FOR`]; a failed write (or one without an answer within 10 s) is counted,
/// and the writer waits 10 ms before its next.
pub(crate) async fn write_load<F, W>(clients: usize, write: F) -> Load
where
    F: Fn(usize) -> W + Clone + Send + 'static,
    W: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..clients {
        let write = write.clone();
        workers.spawn(async move {
            let (mut latencies, mut failed, mut first_error) = (Vec::new(), 0, None);
            while started.elapsed() < RUN_FOR {
                let t = Instant::now();
                let done = tokio::time::timeout(Duration::from_secs(10), write(w)).await;
                match done.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 10 s"))) {
                    Ok(()) => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies, failed, first_error)
        });
    }
    let mut load = Load {
        latencies_ms: Vec::new(),
        failed: 0,
        first_error: None,
        secs: 0.0,
    };
    while let Some(joined) = workers.join_next().await {
        let (latencies, failed, first_error) =
            joined.unwrap_or_else(|e| (Vec::new(), 1, Some(format!("a writer panicked: {e}"))));
        load.latencies_ms.extend(latencies);
        load.failed += failed;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.secs = started.elapsed().as_secs_f64();
    load
}

/// One write through whichever server answers (followers forward to the leader), trying each
/// in turn; the time it took.
async fn write_anywhere(addrs: &[String], n: u64) -> Option<Duration> {
    let t = Instant::now();
    for a in addrs {
        let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_millis(300), berth_tests::api(a)).await
        else {
            continue;
        };
        let req = write_request(&format!("failover-{}", n % 16));
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), c.register_task_definition(req)).await
        {
            return Some(t.elapsed());
        }
    }
    None
}

/// Leader failover: `trials` times, kill -9 the leader while a client writes; the time from the
/// kill to the next acknowledged write. The killed server restarts from its data between trials.
pub(crate) async fn failover(results: &mut Results, trials: usize) -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let (mut gaps, mut elections) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        let addrs: Vec<String> = cluster.servers.iter().map(|s| s.addr.to_string()).collect();
        // Warm: a write succeeds before the kill.
        anyhow::ensure!(
            write_anywhere(&addrs, 0).await.is_some(),
            "no write before trial {trial}"
        );
        let status = cluster.servers[0].status().await?;
        let leader = status["leader"].as_u64().context("no leader")?;
        let i = cluster
            .servers
            .iter()
            .position(|s| s.id == leader)
            .context("leader is ours")?;
        let victim = cluster.servers.remove(i);
        let (id, addr, dir) = (victim.id, victim.addr, victim.data_dir.clone());
        let others: Vec<String> = cluster.servers.iter().map(|s| s.addr.to_string()).collect();
        let mut watchers = Vec::new();
        for a in &others {
            watchers.push(berth_tests::api(a).await?);
        }
        let killed = Instant::now();
        victim.kill().await?;
        let elected = tokio::spawn(elected(watchers, leader, killed));
        let mut n = 1;
        loop {
            if write_anywhere(&others, n).await.is_some() {
                break;
            }
            n += 1;
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(30),
                "no write within 30 s of the kill"
            );
        }
        let gap = killed.elapsed().as_secs_f64() * 1000.0;
        let elected = elected.await?;
        println!(
            "failover: trial {trial}: a new leader seen at {} ms, a write acknowledged at {gap:.0} ms after {n} attempt(s)",
            elected.map_or("(not seen)".to_owned(), |e| format!("{e:.0}"))
        );
        gaps.push(gap);
        elections.extend(elected);
        // Back with its state, as a follower.
        let back = ServerProc::spawn(id, &dir, Some(addr), &[]).await?;
        back.wait_ready().await?;
        cluster.servers.push(back);
        cluster.servers.sort_by_key(|s| s.id);
        cluster.servers[0]
            .wait_voters(3, Duration::from_secs(60))
            .await?;
    }
    record_percentiles(results, "failover.", &mut gaps);
    record_percentiles(results, "failover.elected_", &mut elections);
    results.insert("failover.trials".into(), gaps.len() as f64);
    Ok(())
}

/// How long after `killed` one of the servers behind `apis` first names a leader other than
/// `old` (polled every 10 ms, for up to 10 s), in ms.
async fn elected(apis: Vec<berth_tests::Api>, old: u64, killed: Instant) -> Option<f64> {
    while killed.elapsed() < Duration::from_secs(10) {
        for api in &apis {
            let status = tokio::time::timeout(
                Duration::from_millis(200),
                api.clone()
                    .cluster_status(pb::ClusterStatusRequest::default()),
            )
            .await;
            if let Ok(Ok(s)) = status {
                if s.into_inner().leader.is_some_and(|l| l != old) {
                    return Some(killed.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
