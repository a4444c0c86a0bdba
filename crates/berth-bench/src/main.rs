//! `berth-bench`: berth's benchmarks against real `berth` processes (set `BERTH_BIN`; `make
//! bench` builds and runs a release build). Each scenario writes numbers under its own keys
//! into `bench/results/latest.json` (merged with earlier keys) and a table into
//! `bench/results/latest.md`.
//!
//!   berth-bench [SCENARIO...]      # raft, placement_1k, failover; all when none is given

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_proto::v1 as pb;
use berth_proto::v1::berth_client::BerthClient;
use berth_tests::{berth_bin, poll, ServerProc};
use tokio::process::Command;
use tonic::transport::Channel;

type Results = BTreeMap<String, f64>;

/// Goals from issue #9, shown beside the results: (key, goal, higher is better).
const GOALS: &[(&str, f64, bool)] = &[
    ("placement.tasks_per_sec", 10_000.0, true),
    ("placement_1k.tasks_per_sec", 10_000.0, true),
    ("raft.c64_ops_per_sec", 20_000.0, true),
    ("failover.p99_ms", 1_000.0, false),
];

/// Three real servers on loopback with durable logs: 1 bootstraps, 2 and 3 join.
struct Cluster {
    _dir: tempfile::TempDir,
    servers: Vec<ServerProc>,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-bench")
            .tempdir_in("/tmp")?;
        let extra = std::env::var("BERTH_BENCH_SERVER_ARGS").unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        let first = ServerProc::spawn(1, &dir.path().join("s1"), None, &extra).await?;
        first.wait_ready().await?;
        let join = first.addr.to_string();
        let mut servers = vec![first];
        for id in 2..=3 {
            let s = ServerProc::spawn(
                id,
                &dir.path().join(format!("s{id}")),
                None,
                &[&extra[..], &["--join", &join]].concat(),
            )
            .await?;
            servers.push(s);
        }
        for s in &servers {
            s.wait_ready().await?;
        }
        servers[0].wait_voters(3, Duration::from_secs(60)).await?;
        Ok(Self { _dir: dir, servers })
    }

    fn addresses(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client of the current leader.
    async fn leader(&self) -> anyhow::Result<BerthClient<Channel>> {
        let status = self.servers[0].status().await?;
        let id = status["leader"].as_u64().context("no leader")?;
        let addr = self
            .servers
            .iter()
            .find(|s| s.id == id)
            .context("leader is one of ours")?
            .addr;
        Ok(BerthClient::connect(format!("http://{addr}")).await?)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn spec(family: &str, cpu: u32, memory: u32) -> pb::TaskDefinitionSpec {
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

/// Committed writes per second with 1 and 64 concurrent clients (each write registers a task
/// definition revision: one Raft entry, fsynced on a quorum).
async fn raft(results: &mut Results) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.leader().await?;
    for (clients, key) in [(1usize, "c1"), (64, "c64")] {
        let run_for = Duration::from_secs(5);
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..clients {
            let mut c = client.clone();
            workers.spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < run_for {
                    let t = Instant::now();
                    c.register_task_definition(pb::RegisterTaskDefinitionRequest {
                        namespace: String::new(),
                        spec: Some(spec(&format!("raft-{w}"), 128, 64)),
                        reuse_identical: false,
                    })
                    .await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::Ok(latencies)
            });
        }
        let mut all = Vec::new();
        while let Some(r) = workers.join_next().await {
            all.extend(r??);
        }
        let secs = started.elapsed().as_secs_f64();
        all.sort_by(f64::total_cmp);
        results.insert(format!("raft.{key}_ops_per_sec"), all.len() as f64 / secs);
        results.insert(format!("raft.{key}_p50_ms"), percentile(&all, 50.0));
        results.insert(format!("raft.{key}_p99_ms"), percentile(&all, 99.0));
    }
    Ok(())
}

/// One write through whichever server answers (followers forward to the leader), trying each
/// in turn; the time it took.
async fn write_anywhere(addrs: &[String], n: u64) -> Option<Duration> {
    let t = Instant::now();
    for a in addrs {
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_millis(300),
            BerthClient::connect(format!("http://{a}")),
        )
        .await
        else {
            continue;
        };
        let req = pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(spec(&format!("failover-{}", n % 16), 128, 64)),
            reuse_identical: false,
        };
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
async fn failover(results: &mut Results, trials: usize) -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut gaps = Vec::new();
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
        let killed = Instant::now();
        victim.kill().await?;
        let others: Vec<String> = cluster.servers.iter().map(|s| s.addr.to_string()).collect();
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
        gaps.push(killed.elapsed().as_secs_f64() * 1000.0);
        // Back with its state, as a follower.
        let back = ServerProc::spawn(id, &dir, Some(addr), &[]).await?;
        back.wait_ready().await?;
        cluster.servers.push(back);
        cluster.servers.sort_by_key(|s| s.id);
        cluster.servers[0]
            .wait_voters(3, Duration::from_secs(60))
            .await?;
    }
    gaps.sort_by(f64::total_cmp);
    results.insert("failover.p50_ms".into(), percentile(&gaps, 50.0));
    results.insert("failover.p99_ms".into(), percentile(&gaps, 99.0));
    results.insert("failover.trials".into(), gaps.len() as f64);
    Ok(())
}

/// Placement throughput: `tasks` tasks submitted in batches of 1,000 to a 3-server cluster with
/// `nodes` hollow agents; from the first submit to the last task RUNNING.
async fn placement(
    results: &mut Results,
    prefix: &str,
    nodes: u32,
    tasks: u32,
) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let dir = tempfile::Builder::new()
        .prefix("berth-hollow")
        .tempdir_in("/tmp")?;
    let log = std::fs::File::create(dir.path().join("agents.log"))?;
    let _agents = Command::new(berth_bin())
        .args([
            "agent",
            "--hollow",
            &nodes.to_string(),
            "--node-name",
            "hollow",
        ])
        .args([
            "--servers",
            &cluster.addresses(),
            "--metrics-interval",
            "60s",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawn hollow agents")?;
    let mut client = cluster.leader().await?;
    poll("hollow nodes to register", Duration::from_secs(300), || {
        let mut c = client.clone();
        async move {
            let n = c
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .ok()?
                .into_inner()
                .nodes
                .len();
            (n as u32 >= nodes).then_some(())
        }
    })
    .await?;
    client
        .register_task_definition(pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(spec("placed", 64, 64)),
            reuse_identical: true,
        })
        .await?;
    let started = Instant::now();
    let epoch_ms = |i: Instant| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as f64;
        now - i.elapsed().as_secs_f64() * 1000.0
    };
    let mut submitted: BTreeMap<String, f64> = BTreeMap::new();
    let mut left = tasks;
    while left > 0 {
        let count = left.min(1000);
        let at = Instant::now();
        let r = client
            .run_task(pb::RunTaskRequest {
                namespace: String::new(),
                task_definition: "placed".into(),
                count,
                client_token: String::new(),
            })
            .await?
            .into_inner();
        for t in r.tasks {
            submitted.insert(t.task_id, epoch_ms(at));
        }
        left -= count;
    }
    let running = poll("every task to run", Duration::from_secs(900), || {
        let mut c = client.clone();
        async move {
            let list = c
                .list_tasks(pb::ListTasksRequest {
                    stale: true,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .tasks;
            let done: Vec<(String, u64)> = list
                .into_iter()
                .filter(|t| t.last_status == pb::TaskStatus::Running as i32)
                .map(|t| (t.task_id, t.started_at))
                .collect();
            (done.len() as u32 >= tasks).then_some(done)
        }
    })
    .await?;
    let first = epoch_ms(started);
    let last = running.iter().map(|(_, s)| *s as f64).fold(first, f64::max);
    let mut latencies: Vec<f64> = running
        .iter()
        .filter_map(|(id, s)| Some(*s as f64 - submitted.get(id)?))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let secs = ((last - first) / 1000.0).max(0.001);
    results.insert(format!("{prefix}.tasks_per_sec"), f64::from(tasks) / secs);
    results.insert(format!("{prefix}.p50_ms"), percentile(&latencies, 50.0));
    results.insert(format!("{prefix}.p99_ms"), percentile(&latencies, 99.0));
    results.insert(format!("{prefix}.nodes"), f64::from(nodes));
    results.insert(format!("{prefix}.tasks"), f64::from(tasks));
    Ok(())
}

fn write(results: &Results, dir: &PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json_path = dir.join("latest.json");
    // Keep keys of scenarios not run this time.
    let mut all: Results = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    all.extend(results.iter().map(|(k, v)| (k.clone(), *v)));
    std::fs::write(&json_path, serde_json::to_string_pretty(&all)? + "\n")?;
    let mut md = String::from("| key | value | goal |\n|---|---:|---|\n");
    for (k, v) in &all {
        let goal =
            GOALS
                .iter()
                .find(|(g, _, _)| g == k)
                .map_or(String::new(), |(_, goal, higher)| {
                    let met = if *higher { v >= goal } else { v <= goal };
                    format!(
                        "{} {goal} ({})",
                        if *higher { "≥" } else { "≤" },
                        if met { "met" } else { "missed" }
                    )
                });
        md.push_str(&format!("| `{k}` | {v:.1} | {goal} |\n"));
    }
    std::fs::write(dir.join("latest.md"), md)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let all = ["raft", "placement_1k", "failover"];
    let run: Vec<&str> = if wanted.is_empty() {
        all.to_vec()
    } else {
        for w in &wanted {
            anyhow::ensure!(
                all.contains(&w.as_str()),
                "unknown scenario {w:?}; use one of {}",
                all.join(", ")
            );
        }
        wanted.iter().map(String::as_str).collect()
    };
    let out =
        PathBuf::from(std::env::var("BERTH_BENCH_OUT").unwrap_or_else(|_| "bench/results".into()));
    for scenario in run {
        eprintln!("== {scenario}");
        let mut results = Results::new();
        match scenario {
            "raft" => raft(&mut results).await?,
            "placement_1k" => placement(&mut results, "placement_1k", 1_000, 10_000).await?,
            "failover" => failover(&mut results, 20).await?,
            _ => unreachable!(),
        }
        for (k, v) in &results {
            eprintln!("{k} = {v:.1}");
        }
        write(&results, &out)?;
    }
    Ok(())
}
