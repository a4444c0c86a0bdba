//! `berth-bench`: berth's benchmarks against real `berth` processes (set `BERTH_BIN`; `make
//! bench` builds and runs a release build). Each scenario writes numbers under its own keys
//! into `bench/results/latest.json` (merged with earlier keys) and a table into
//! `bench/results/latest.md`.
//!
//!   berth-bench [SCENARIO...]      # see SCENARIOS; all when none is given

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_proto::v1 as pb;
use berth_proto::v1::berth_client::BerthClient;
use berth_tests::{berth_bin, poll, scrape, AgentProc, Env, ServerProc};
use tokio::process::Command;
use tonic::transport::Channel;

type Results = BTreeMap<String, f64>;

/// Goals from issue #9, shown beside the results: (key, goal, higher is better).
const GOALS: &[(&str, f64, bool)] = &[
    ("placement.tasks_per_sec", 10_000.0, true),
    ("placement_1k.tasks_per_sec", 10_000.0, true),
    ("start.p50_ms", 150.0, false),
    ("start.ratio_p50", 1.5, false),
    ("failover.p99_ms", 1_000.0, false),
    ("node_loss.p99_ms", 5_000.0, false),
    ("raft.c64_ops_per_sec", 20_000.0, true),
    ("footprint.rss_mib", 1_024.0, false),
    ("footprint.restore_ms", 10_000.0, false),
];

/// Every scenario, in the order `make bench` runs them.
const SCENARIOS: &[&str] = &[
    "raft",
    "start",
    "failover",
    "node_loss",
    "placement_1k",
    "placement",
    "footprint",
];

/// The node TTL the node-loss scenario runs its servers with (the default is 10 s).
const NODE_LOSS_TTL: &str = "3s";

/// Hollow agents per process: each holds a listener and a connection, and a process may open
/// 20,000 files on this machine.
const HOLLOW_PER_PROCESS: u32 = 2_500;

/// Three real servers on loopback with durable logs: 1 bootstraps, 2 and 3 join.
struct Cluster {
    _dir: tempfile::TempDir,
    servers: Vec<ServerProc>,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Three servers started with `extra` flags.
    async fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = scratch().prefix("berth-bench").tempdir_in("/tmp")?;
        let first = ServerProc::spawn(1, &dir.path().join("s1"), None, extra).await?;
        first.wait_ready().await?;
        let join = first.addr.to_string();
        let mut servers = vec![first];
        for id in 2..=3 {
            let s = ServerProc::spawn(
                id,
                &dir.path().join(format!("s{id}")),
                None,
                &[extra, &["--join", &join]].concat(),
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
        let addr = self.leader_addr().await?;
        Ok(BerthClient::connect(format!("http://{addr}")).await?)
    }

    /// The current leader's address.
    async fn leader_addr(&self) -> anyhow::Result<String> {
        let status = self.servers[0].status().await?;
        let id = status["leader"].as_u64().context("no leader")?;
        Ok(self
            .servers
            .iter()
            .find(|s| s.id == id)
            .context("leader is one of ours")?
            .addr
            .to_string())
    }
}

/// A scratch directory under /tmp, kept afterwards (logs and data) when `BERTH_BENCH_KEEP` is
/// set.
fn scratch() -> tempfile::Builder<'static, 'static> {
    let mut b = tempfile::Builder::new();
    b.disable_cleanup(std::env::var_os("BERTH_BENCH_KEEP").is_some());
    b
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

/// Hollow agents (`berth agent --hollow`) in as many processes as their files need; every
/// process dies with the fleet.
struct Hollow {
    _dir: tempfile::TempDir,
    procs: Vec<tokio::process::Child>,
}

impl Hollow {
    /// `nodes` agents named `PREFIX-P-I` (process P, agent I) serving `servers`.
    async fn spawn(servers: &str, prefix: &str, nodes: u32) -> anyhow::Result<Self> {
        let dir = scratch().prefix("berth-hollow").tempdir_in("/tmp")?;
        let mut procs = Vec::new();
        let mut left = nodes;
        while left > 0 {
            let n = left.min(HOLLOW_PER_PROCESS);
            let p = procs.len();
            let data = dir.path().join(format!("p{p}"));
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(data.join("agents.log"))?;
            let child = Command::new(berth_bin())
                .args(["agent", "--hollow", &n.to_string()])
                .args(["--node-name", &format!("{prefix}-{p}")])
                .args(["--servers", servers, "--metrics-interval", "60s"])
                .arg("--data-dir")
                .arg(&data)
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("spawn hollow agents")?;
            procs.push(child);
            left -= n;
        }
        Ok(Self { _dir: dir, procs })
    }
}

/// Waits until the server at `addr` counts at least `nodes` ACTIVE nodes (asking once a
/// second: listing 10,000 nodes often would load the server being measured).
async fn wait_nodes(addr: &str, nodes: u64) -> anyhow::Result<()> {
    let series = "berth_nodes{state=\"ACTIVE\"}";
    let every = Duration::from_secs(1);
    wait_metric(addr, series, nodes, Duration::from_secs(300), every).await
}

/// Waits until `series` in the `/metrics` of the server at `addr` reaches `at_least`, asking
/// `every` so long.
async fn wait_metric(
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
async fn big_client(addr: &str) -> anyhow::Result<BerthClient<Channel>> {
    Ok(BerthClient::connect(format!("http://{addr}"))
        .await?
        .max_decoding_message_size(1 << 30))
}

/// A sample from the server's `/metrics` (cheap to ask often, unlike a list), e.g.
/// `berth_tasks{state="RUNNING"}`.
async fn metric(addr: &str, series: &str) -> Option<u64> {
    let body = scrape(addr).await.ok()?;
    let needle = format!("{series} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `tasks` tasks of `family` in batches of 1,000; when each batch was submitted (ms since
/// the epoch) by task ID.
async fn submit(
    client: &mut BerthClient<Channel>,
    family: &str,
    tasks: u32,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut submitted = BTreeMap::new();
    let mut left = tasks;
    while left > 0 {
        let count = left.min(1000);
        let at = epoch_ms();
        let r = client
            .run_task(pb::RunTaskRequest {
                namespace: String::new(),
                task_definition: family.into(),
                count,
                client_token: String::new(),
            })
            .await?
            .into_inner();
        for t in r.tasks {
            submitted.insert(t.task_id, at);
        }
        left -= count;
    }
    Ok(submitted)
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// The `/metrics` series of running tasks.
const RUNNING: &str = "berth_tasks{state=\"RUNNING\"}";

/// Waits until `tasks` tasks run, asking `/metrics` on `addr` four times a second (the
/// throughput comes from the tasks' own start times, not from when this notices).
async fn wait_running(addr: &str, tasks: u64, timeout: Duration) -> anyhow::Result<()> {
    wait_metric(addr, RUNNING, tasks, timeout, Duration::from_millis(250)).await
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
    let _agents = Hollow::spawn(&cluster.addresses(), "hollow", nodes).await?;
    let leader = cluster.leader_addr().await?;
    wait_nodes(&leader, u64::from(nodes)).await?;
    let mut client = cluster.leader().await?;
    client
        .register_task_definition(pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(spec("placed", 64, 64)),
            reuse_identical: true,
        })
        .await?;
    let first = epoch_ms();
    let submitted = submit(&mut client, "placed", tasks).await?;
    wait_running(&leader, u64::from(tasks), Duration::from_secs(900)).await?;
    let list = big_client(&leader)
        .await?
        .list_tasks(pb::ListTasksRequest {
            stale: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .tasks;
    let running: Vec<(String, u64)> = list
        .into_iter()
        .filter(|t| t.last_status == pb::TaskStatus::Running as i32)
        .map(|t| (t.task_id, t.started_at))
        .collect();
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

/// Start latency on real containerd: 100 tasks started one after another on one agent with the
/// image already pulled, submit to RUNNING as the API reports it; beside it the floor, the same
/// image started 100 times by `ctr run -d` against the same containerd.
async fn start(results: &mut Results) -> anyhow::Result<()> {
    const RUNS: usize = 100;
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let agent = AgentProc::start(&env, &addr, "start").await?;
    let mut client = BerthClient::connect(format!("http://{addr}")).await?;
    let mut sleeper = spec("sleeper", 16, 16);
    sleeper.containers[0].image = env.image.clone();
    sleeper.containers[0].command = vec!["sleep".into(), "3600".into()];
    client
        .register_task_definition(pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(sleeper),
            reuse_identical: false,
        })
        .await?;
    let run_one = || {
        let mut c = client.clone();
        async move {
            let t = Instant::now();
            let task = c
                .run_task(pb::RunTaskRequest {
                    namespace: String::new(),
                    task_definition: "sleeper".into(),
                    count: 1,
                    client_token: String::new(),
                })
                .await?
                .into_inner()
                .tasks
                .pop()
                .context("no task")?;
            loop {
                let now = c
                    .describe_task(pb::DescribeTaskRequest {
                        namespace: String::new(),
                        task_id: task.task_id.clone(),
                        stale: true,
                    })
                    .await?
                    .into_inner();
                if now.last_status == pb::TaskStatus::Running as i32 {
                    return anyhow::Ok(t.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::ensure!(
                    now.last_status != pb::TaskStatus::Stopped as i32,
                    "task {} stopped: {}",
                    task.task_id,
                    now.stopped_reason
                );
                anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "no start in 60 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    // The first task pulls the image; it is not counted.
    run_one().await?;
    let mut berth = Vec::new();
    for _ in 0..RUNS {
        berth.push(run_one().await?);
    }
    let mut floor = Vec::new();
    for i in 0..RUNS {
        let t = Instant::now();
        let out = berth_tests::ctr(
            &env.containerd.socket,
            &agent.namespace,
            &[
                "run",
                "-d",
                &env.image,
                &format!("floor-{i}"),
                "sleep",
                "3600",
            ],
        )
        .await?;
        anyhow::ensure!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    berth.sort_by(f64::total_cmp);
    floor.sort_by(f64::total_cmp);
    let p50 = percentile(&berth, 50.0);
    let floor_p50 = percentile(&floor, 50.0);
    results.insert("start.p50_ms".into(), p50);
    results.insert("start.p99_ms".into(), percentile(&berth, 99.0));
    results.insert("start.floor_p50_ms".into(), floor_p50);
    results.insert("start.floor_p99_ms".into(), percentile(&floor, 99.0));
    results.insert("start.ratio_p50".into(), p50 / floor_p50);
    drop(agent);
    Ok(())
}

/// Node loss: a service of 200 tasks spread over 100 hollow nodes; `trials` times, kill -9 the
/// process of one node's agent and time until the service runs 200 tasks again, none of them on
/// that node. The servers run with a node TTL of [`NODE_LOSS_TTL`].
async fn node_loss(results: &mut Results, trials: u32) -> anyhow::Result<()> {
    const NODES: u32 = 100;
    const TASKS: u32 = 200;
    let cluster = Cluster::start_with(&["--node-ttl", NODE_LOSS_TTL]).await?;
    let servers = cluster.addresses();
    // The nodes killed: one agent per process, each its own.
    let mut victims = Vec::new();
    for i in 0..trials {
        let fleet = Hollow::spawn(&servers, &format!("victim{i}"), 1).await?;
        victims.push((format!("victim{i}-0-0"), fleet));
    }
    let _rest = Hollow::spawn(&servers, "hollow", NODES - trials).await?;
    wait_nodes(&cluster.leader_addr().await?, u64::from(NODES)).await?;
    let mut client = cluster.leader().await?;
    let mut placed = spec("web", 64, 64);
    placed.placement = Some(pb::PlacementSpec {
        strategy: vec![pb::PlacementStrategy {
            r#type: "spread".into(),
            field: "node".into(),
        }],
        constraints: vec![],
    });
    client
        .apply_service(pb::ApplyServiceRequest {
            namespace: String::new(),
            spec: Some(pb::ServiceSpec {
                name: "web".into(),
                desired_count: TASKS,
                ..Default::default()
            }),
            template: Some(placed),
            ..Default::default()
        })
        .await?;
    // Running tasks by node.
    let running = |client: &BerthClient<Channel>| {
        let mut c = client.clone();
        async move {
            let tasks = c
                .list_tasks(pb::ListTasksRequest {
                    stale: true,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .tasks;
            Some(
                tasks
                    .into_iter()
                    .filter(|t| t.last_status == pb::TaskStatus::Running as i32)
                    .map(|t| t.node)
                    .collect::<Vec<_>>(),
            )
        }
    };
    poll("the service to run", Duration::from_secs(120), || async {
        (running(&client).await?.len() as u32 >= TASKS).then_some(())
    })
    .await?;
    let mut gaps = Vec::new();
    for (node, mut fleet) in victims {
        let on_victim = running(&client)
            .await
            .context("list tasks")?
            .iter()
            .filter(|n| **n == node)
            .count();
        anyhow::ensure!(on_victim > 0, "no task runs on {node}");
        let killed = Instant::now();
        fleet.procs[0].kill().await?;
        poll(
            "the lost tasks to run elsewhere",
            Duration::from_secs(60),
            || async {
                let nodes = running(&client).await?;
                (nodes.iter().filter(|n| **n != node).count() as u32 >= TASKS).then_some(())
            },
        )
        .await?;
        gaps.push(killed.elapsed().as_secs_f64() * 1000.0);
        client = cluster.leader().await?;
    }
    gaps.sort_by(f64::total_cmp);
    results.insert("node_loss.p50_ms".into(), percentile(&gaps, 50.0));
    results.insert("node_loss.p99_ms".into(), percentile(&gaps, 99.0));
    results.insert("node_loss.trials".into(), gaps.len() as f64);
    Ok(())
}

/// Footprint: one server holding 150,000 running tasks on 5,000 hollow nodes → its resident
/// memory, the size of a backup (the snapshot), how long a new server takes to restore that
/// backup and answer, and how long the server takes to start again from its own data dir
/// after kill -9.
async fn footprint(results: &mut Results) -> anyhow::Result<()> {
    const NODES: u32 = 5_000;
    const TASKS: u32 = 150_000;
    let dir = scratch().prefix("berth-footprint").tempdir_in("/tmp")?;
    let server = ServerProc::start(&dir.path().join("s1"), None).await?;
    let addr = server.addr.to_string();
    let agents = Hollow::spawn(&addr, "hollow", NODES).await?;
    wait_nodes(&addr, u64::from(NODES)).await?;
    let mut client = big_client(&addr).await?;
    client
        .register_task_definition(pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(spec("held", 64, 64)),
            reuse_identical: true,
        })
        .await?;
    submit(&mut client, "held", TASKS).await?;
    wait_running(&addr, u64::from(TASKS), Duration::from_secs(900)).await?;
    let pid = server.pid().context("server pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    results.insert("footprint.rss_mib".into(), rss_kib / 1024.0);

    let backup = dir.path().join("backup.json");
    let mut chunks = client
        .save_snapshot(pb::SaveSnapshotRequest {})
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    std::fs::write(&backup, &bytes)?;
    results.insert(
        "footprint.snapshot_mib".into(),
        bytes.len() as f64 / (1024.0 * 1024.0),
    );
    drop(agents);

    // A new server from the backup, until it answers with every task.
    let restore_dir = dir.path().join("restored");
    let t = Instant::now();
    let restored = ServerProc::spawn(
        1,
        &restore_dir,
        None,
        &["--restore", backup.to_str().context("path")?],
    )
    .await?;
    let restored_addr = restored.addr.to_string();
    wait_metric(
        &restored_addr,
        RUNNING,
        u64::from(TASKS),
        Duration::from_secs(120),
        Duration::from_millis(50),
    )
    .await?;
    results.insert(
        "footprint.restore_ms".into(),
        t.elapsed().as_secs_f64() * 1000.0,
    );
    drop(restored);

    // The server itself after kill -9, from its own data dir.
    let (data_dir, server_addr) = (server.data_dir.clone(), server.addr);
    server.kill().await?;
    let t = Instant::now();
    let again = ServerProc::spawn(1, &data_dir, Some(server_addr), &[]).await?;
    wait_metric(
        &addr,
        RUNNING,
        u64::from(TASKS),
        Duration::from_secs(120),
        Duration::from_millis(50),
    )
    .await?;
    results.insert(
        "footprint.restart_ms".into(),
        t.elapsed().as_secs_f64() * 1000.0,
    );
    drop(again);
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
    let run: Vec<&str> = if wanted.is_empty() {
        SCENARIOS.to_vec()
    } else {
        for w in &wanted {
            anyhow::ensure!(
                SCENARIOS.contains(&w.as_str()),
                "unknown scenario {w:?}; use one of {}",
                SCENARIOS.join(", ")
            );
        }
        wanted.iter().map(String::as_str).collect()
    };
    let out =
        PathBuf::from(std::env::var("BERTH_BENCH_OUT").unwrap_or_else(|_| "bench/results".into()));
    for scenario in run {
        eprintln!("== {scenario}");
        let started = Instant::now();
        let mut results = Results::new();
        match scenario {
            "raft" => raft(&mut results).await?,
            "start" => start(&mut results).await?,
            "failover" => failover(&mut results, 20).await?,
            "node_loss" => node_loss(&mut results, 10).await?,
            "placement_1k" => placement(&mut results, "placement_1k", 1_000, 10_000).await?,
            "placement" => placement(&mut results, "placement", 10_000, 100_000).await?,
            "footprint" => footprint(&mut results).await?,
            _ => unreachable!(),
        }
        for (k, v) in &results {
            eprintln!("{k} = {v:.1}");
        }
        eprintln!("({scenario} took {:.0} s)", started.elapsed().as_secs_f64());
        write(&results, &out)?;
    }
    Ok(())
}
