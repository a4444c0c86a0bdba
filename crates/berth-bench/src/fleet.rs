//! The scenarios on fleets of hollow agents: placement throughput, node loss, and the
//! footprint of a server holding a large cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_proto::v1 as pb;
use berth_tests::{poll, ServerProc};

use crate::api::{
    big_client, epoch_ms, spec, submit, wait_metric, wait_nodes, wait_running, RUNNING,
};
use crate::cluster::{rss_mib, scratch_dir, Cluster, Hollow, Watched};
use crate::results::{record_percentiles, Results};

/// The node TTL the node-loss scenario runs its servers with (the default is 10 s).
const NODE_LOSS_TTL: &str = "3s";

/// Placement throughput: `tasks` tasks submitted in batches of 1,000 to a 3-server cluster with
/// `nodes` hollow agents; from the first submit to the last task RUNNING.
pub(crate) async fn placement(
    results: &mut Results,
    prefix: &str,
    nodes: u32,
    tasks: u32,
) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let watched = cluster.watch().await?;
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
    if std::env::var_os("BERTH_BENCH_TIMELINE").is_some() {
        timeline(&list, first);
    }
    let running: Vec<(String, u64)> = list
        .into_iter()
        .filter(|t| t.last_status == pb::TaskStatus::Running as i32)
        .map(|t| (t.task_id, t.started_at))
        .collect();
    let last = running.iter().map(|(_, s)| *s as f64).fold(first, f64::max);
    let mut latencies: Vec<f64> = running
        .iter()
        .filter_map(|(id, s)| Some(*s as f64 - submitted.at.get(id)?))
        .collect();
    let secs = ((last - first) / 1000.0).max(0.001);
    results.insert(format!("{prefix}.tasks_per_sec"), f64::from(tasks) / secs);
    record_percentiles(results, &format!("{prefix}."), &mut latencies);
    results.insert(format!("{prefix}.nodes"), f64::from(nodes));
    results.insert(format!("{prefix}.tasks"), f64::from(tasks));
    watched.record(results, prefix, submitted.failed).await
}

/// Prints (stderr) how many of `tasks` were created, placed and seen running in each 100 ms
/// after `first` (ms since the epoch), from their own timestamps and events: where a burst's
/// time goes, stage by stage. With `BERTH_BENCH_TIMELINE` set.
fn timeline(tasks: &[pb::Task], first: f64) {
    let mut buckets: std::collections::BTreeMap<i64, [u32; 3]> = Default::default();
    let tenth = |at: u64| (at as f64 - first).div_euclid(100.0) as i64;
    for t in tasks {
        buckets.entry(tenth(t.created_at)).or_default()[0] += 1;
        if let Some(e) = t.events.iter().find(|e| e.message.starts_with("placed on")) {
            buckets.entry(tenth(e.at)).or_default()[1] += 1;
        }
        if t.started_at > 0 {
            buckets.entry(tenth(t.started_at)).or_default()[2] += 1;
        }
    }
    for (b, [created, placed, running]) in buckets {
        eprintln!(
            "t={:>5} ms  created {created:>5}  placed {placed:>5}  running {running:>5}",
            b * 100
        );
    }
}

/// Node loss: a service of 200 tasks spread over 100 hollow nodes; `trials` times, kill -9 the
/// process of one node's agent and time until the service runs 200 tasks again, none of them on
/// that node. The servers run with a node TTL of [`NODE_LOSS_TTL`].
pub(crate) async fn node_loss(results: &mut Results, trials: u32) -> anyhow::Result<()> {
    const NODES: u32 = 100;
    const TASKS: u32 = 200;
    let cluster = Cluster::start_with(&["--node-ttl", NODE_LOSS_TTL]).await?;
    let watched = cluster.watch().await?;
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
    let running = |client: &berth_tests::Api| {
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
    record_percentiles(results, "node_loss.", &mut gaps);
    results.insert("node_loss.trials".into(), gaps.len() as f64);
    // A failed RunTask ends the scenario: none failed when it gets here.
    watched.record(results, "node_loss", 0).await
}

/// Reads during a burst: one server with 100 hollow nodes; a single task read (`DescribeTask`,
/// linearizable) every 2 ms, first for 3 s on the settled cluster, then while 10,000 tasks are
/// submitted in batches of 1,000, placed and started, until every one runs.
pub(crate) async fn read(results: &mut Results) -> anyhow::Result<()> {
    const NODES: u32 = 100;
    const TASKS: u32 = 10_000;
    // 16 CPU units: a hollow node offers 1,024 per CPU of this machine (2,048), so 100 nodes
    // hold the 10,000 tasks.
    let (_dir, server, _agents, addr, mut client) =
        lone_server("berth-read", NODES, spec("read", 16, 64)).await?;
    let watched = Watched::begin(&[&server]).await?;
    let first = submit(&mut client, "read", 1).await?;
    let id = first
        .at
        .into_keys()
        .next()
        .context("RunTask answered no task")?;
    wait_running(&addr, 1, Duration::from_secs(60)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let settled = reads_apart(&addr, &id, &stop);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut settled = join_reads(settled).await?;
    stop.store(false, Ordering::Relaxed);
    let burst = reads_apart(&addr, &id, &stop);
    let submitted = submit(&mut client, "read", TASKS).await?;
    wait_running(&addr, u64::from(TASKS) + 1, Duration::from_secs(900)).await?;
    stop.store(true, Ordering::Relaxed);
    let mut burst = join_reads(burst).await?;
    record_percentiles(results, "read.settled_", &mut settled);
    record_percentiles(results, "read.burst_", &mut burst);
    results.insert("read.burst_reads".into(), burst.len() as f64);
    watched
        .record(results, "read", first.failed + submitted.failed)
        .await
}

/// The web console with 10,000 tasks in the cluster: one server, 100 hollow nodes; the time
/// from navigating to `/ui/` (signed in) until the page holds every task and has drawn the
/// Tasks view, in Debian's headless chromium driven by selenium (`BERTH_PYTHON`, which `make
/// bench` sets up); five loads.
pub(crate) async fn console(results: &mut Results) -> anyhow::Result<()> {
    const NODES: u32 = 100;
    const TASKS: u32 = 10_000;
    let python = std::env::var("BERTH_PYTHON")
        .context("BERTH_PYTHON is not set: `make bench` sets it (a Python with selenium)")?;
    let (dir, server, _agents, addr, mut client) =
        lone_server("berth-console", NODES, spec("console", 16, 64)).await?;
    let watched = Watched::begin(&[&server]).await?;
    let submitted = submit(&mut client, "console", TASKS).await?;
    wait_running(&addr, u64::from(TASKS), Duration::from_secs(900)).await?;
    let (ca, token) = berth_tests::read_credentials(&dir.path().join("s1/admin.toml"))?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/python/console_bench.py");
    let profile = dir.path().join("chromium-profile");
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&python)
            .arg(script)
            .arg(format!("https://{addr}/ui/"))
            .arg(&ca_file)
            .arg(TASKS.to_string())
            .env("BERTH_TOKEN", &token)
            .env("CHROME_PROFILE", &profile)
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let _ = std::process::Command::new("pkill")
        .arg("-f")
        .arg(format!("user-data-dir={}", profile.display()))
        .status();
    let out = out.context("the console's loads took over 10 minutes")??;
    anyhow::ensure!(
        out.status.success(),
        "console_bench.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut loads: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("load_ms ")?.trim().parse().ok())
        .collect();
    anyhow::ensure!(!loads.is_empty(), "console_bench.py measured no load");
    loads.sort_by(f64::total_cmp);
    results.insert("console.tasks".into(), f64::from(TASKS));
    results.insert("console.load_p50_ms".into(), loads[loads.len() / 2]);
    results.insert("console.load_max_ms".into(), loads[loads.len() - 1]);
    watched.record(results, "console", submitted.failed).await
}

/// [`reads`] on a thread and a runtime of their own, over a connection of their own: what a
/// read waits for is the server, not the benchmark's own work (its RunTask calls encode and
/// decode a thousand tasks each, its progress polls parse `/metrics`).
fn reads_apart(
    addr: &str,
    id: &str,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<f64>>> {
    let (addr, id, stop) = (addr.to_owned(), id.to_owned(), stop.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move { reads(big_client(&addr).await?, id, stop).await })
    })
}

/// The reads of [`reads_apart`], once its thread ends.
async fn join_reads(
    reads: std::thread::JoinHandle<anyhow::Result<Vec<f64>>>,
) -> anyhow::Result<Vec<f64>> {
    tokio::task::spawn_blocking(move || reads.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the reading thread panicked"))?
}

/// Reads task `id` every 2 ms until `stop` (at most 100,000 times); each read's ms.
async fn reads(
    mut client: berth_tests::Api,
    id: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::new();
    while !stop.load(Ordering::Relaxed) && ms.len() < 100_000 {
        let t = Instant::now();
        let read = client.describe_task(pb::DescribeTaskRequest {
            namespace: String::new(),
            task_id: id.clone(),
            stale: false,
        });
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .context("no answer to a task read within 10 s")?
            .context("read the task")?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(ms)
}

/// Footprint: one server holding 150,000 running tasks on 5,000 hollow nodes → its resident
/// memory, the size of a backup (the snapshot), how long a new server takes to restore that
/// backup and answer, and how long the server takes to start again from its own data dir
/// after kill -9.
pub(crate) async fn footprint(results: &mut Results) -> anyhow::Result<()> {
    const NODES: u32 = 5_000;
    const TASKS: u32 = 150_000;
    let (dir, server, agents, addr, mut client) =
        lone_server("berth-footprint", NODES, spec("held", 64, 64)).await?;
    let pid = server.pid().context("server pid")?;
    // Before any task: what the nodes and their agents' connections cost.
    results.insert("footprint.rss_nodes_only_mib".into(), rss_mib(pid)?);
    let watched = Watched::begin(&[&server]).await?;
    let submitted = submit(&mut client, "held", TASKS).await?;
    wait_running(&addr, u64::from(TASKS), Duration::from_secs(900)).await?;
    results.insert("footprint.rss_mib".into(), rss_mib(pid)?);
    // Until the server is killed below.
    watched
        .record(results, "footprint", submitted.failed)
        .await?;

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
    // The state alone, as a server holds it in memory: built here from the backup.
    let state = state_resident_mib(&bytes)?;
    results.insert("footprint.state_mib".into(), state);
    results.insert(
        "footprint.state_bytes_per_task".into(),
        state * 1024.0 * 1024.0 / f64::from(TASKS),
    );
    // The server is killed (kill -9) now, while its agents still run: it restarts below. The
    // restore is timed alone: not next to 5,000 agents' streams ending, nor while the kernel
    // still writes back what the first server wrote (about 1 GB).
    let (data_dir, server_addr) = (server.data_dir.clone(), server.addr);
    server.kill().await?;
    agents.stop().await;
    tokio::process::Command::new("sync").status().await?;

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
    // A new cluster: its own CA and admin credentials, written once it leads.
    berth_tests::register_credentials(&restored.addr.to_string(), &restore_dir.join("admin.toml"));
    let restore_ms = ms_until_running(&restored.addr.to_string(), TASKS, t).await?;
    results.insert("footprint.restore_ms".into(), restore_ms);
    // The same tasks loaded, with no agent connected and nothing applied since: what the
    // running path (agents' streams, the log's tail, the change feed) adds is the difference.
    let restored_pid = restored.pid().context("restored server pid")?;
    results.insert("footprint.rss_restored_mib".into(), rss_mib(restored_pid)?);
    drop(restored);

    // The server itself after kill -9, from its own data dir.
    let t = Instant::now();
    let again = ServerProc::spawn(1, &data_dir, Some(server_addr), &[]).await?;
    let restart_ms = ms_until_running(&addr, TASKS, t).await?;
    results.insert("footprint.restart_ms".into(), restart_ms);
    let again_pid = again.pid().context("restarted server pid")?;
    results.insert("footprint.rss_restarted_mib".into(), rss_mib(again_pid)?);
    drop(again);
    Ok(())
}

/// About the memory a `State` built from `backup` (what `Store::backup` writes) holds, in
/// MiB: how much this process's resident memory grows while it builds one (its allocator is
/// the system's; large buffers freed on the way, such as the parsed list's, go back at once).
fn state_resident_mib(backup: &[u8]) -> anyhow::Result<f64> {
    #[derive(serde::Deserialize)]
    struct Backup {
        objects: Vec<berth_state::Object>,
    }
    let me = std::process::id();
    let before = rss_mib(me)?;
    let parsed: Backup = serde_json::from_slice(backup).context("read the backup")?;
    let state = berth_state::State::from_objects(parsed.objects);
    let grown = rss_mib(me)? - before;
    drop(state);
    Ok(grown)
}

/// One server in a scratch dir named `prefix`, `nodes` hollow agents serving it (all active),
/// and a client of it with the task definition `family` registered: the scratch dir, the
/// server, the agents, the server's address and the client.
async fn lone_server(
    prefix: &str,
    nodes: u32,
    family: pb::TaskDefinitionSpec,
) -> anyhow::Result<(
    tempfile::TempDir,
    ServerProc,
    Hollow,
    String,
    berth_tests::Api,
)> {
    let dir = scratch_dir(prefix)?;
    let server = ServerProc::start(&dir.path().join("s1"), None).await?;
    let addr = server.addr.to_string();
    let agents = Hollow::spawn(&addr, "hollow", nodes).await?;
    wait_nodes(&addr, u64::from(nodes)).await?;
    let mut client = big_client(&addr).await?;
    client
        .register_task_definition(pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(family),
            reuse_identical: true,
        })
        .await?;
    Ok((dir, server, agents, addr, client))
}

/// Milliseconds from `since` until the server at `addr` (starting up) reports `tasks` tasks
/// running, watching closely.
async fn ms_until_running(addr: &str, tasks: u32, since: Instant) -> anyhow::Result<f64> {
    wait_metric(
        addr,
        RUNNING,
        u64::from(tasks),
        Duration::from_secs(120),
        Duration::from_millis(50),
    )
    .await?;
    Ok(since.elapsed().as_secs_f64() * 1000.0)
}
