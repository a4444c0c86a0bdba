//! The replicated control plane under faults: real `berth server` processes with durable logs,
//! kill -9, restarts, membership changes — and the CLI failing over between servers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_tests::{cli, cli_json, join_token, poll, serving, ServerProc, FAST_RAFT};
use serde_json::Value;
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(30);

const TASK_DEFINITION: &str = "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: web\nspec:\n  cpu: 256\n  memory: 64\n  containers:\n    - name: app\n      image: 127.0.0.1:1/none:latest\n";

/// Servers 1..=n: server 1 bootstraps, the others join it with a server join token.
struct Servers {
    dir: tempfile::TempDir,
    addrs: Vec<SocketAddr>,
    procs: Vec<Option<ServerProc>>,
    extra: Vec<String>,
    /// A server join token of the cluster, once server 1 runs.
    token: Option<String>,
}

impl Servers {
    async fn start(n: u64, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-cluster")
            .tempdir_in("/tmp")?;
        let mut s = Self {
            dir,
            addrs: Vec::new(),
            procs: Vec::new(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            token: None,
        };
        s.spawn(1, None).await?;
        s.proc(1).wait_ready().await?;
        s.token = Some(join_token(&s.addr(1), "server").await?);
        for id in 2..=n {
            let join = s.addrs[0].to_string();
            s.spawn(id, Some(&join)).await?;
        }
        for p in s.procs.iter().flatten() {
            p.wait_ready().await?;
        }
        // A joining server is a learner until it has caught up; tests that kill a server need
        // every one of them to vote, or the survivors may lack a quorum.
        s.proc(1).wait_voters(usize::try_from(n)?, TIMEOUT).await?;
        Ok(s)
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("s{id}"))
    }

    /// Spawns server `id` (new or restarted) with the common flags, joining `join` if given.
    async fn spawn(&mut self, id: u64, join: Option<&str>) -> anyhow::Result<()> {
        let mut args: Vec<&str> = FAST_RAFT.to_vec();
        args.extend(self.extra.iter().map(String::as_str));
        if let Some(j) = join {
            args.extend(["--join", j]);
            if let Some(token) = &self.token {
                args.extend(["--join-token", token]);
            }
        }
        let idx = usize::try_from(id - 1)?;
        let addr = self.addrs.get(idx).copied();
        let p = ServerProc::spawn(id, &self.data_dir(id), addr, &args).await?;
        if idx == self.addrs.len() {
            self.addrs.push(p.addr);
            self.procs.push(Some(p));
        } else {
            self.procs[idx] = Some(p);
        }
        Ok(())
    }

    /// Spawns server `id` with a certificate of the cluster, waiting to be added with `berth
    /// cluster add`.
    async fn spawn_unjoined(&mut self, id: u64) -> anyhow::Result<()> {
        self.extra.push("--no-bootstrap".into());
        let join = self.addr(1);
        let r = self.spawn(id, Some(&join)).await;
        self.extra.pop();
        r?;
        let addr = self.addr(id);
        poll("new server to serve", TIMEOUT, || async {
            serving(&addr, &join).await.then_some(())
        })
        .await?;
        Ok(())
    }

    fn proc(&self, id: u64) -> &ServerProc {
        self.procs[usize::try_from(id - 1).expect("id fits")]
            .as_ref()
            .expect("server is running")
    }

    fn addr(&self, id: u64) -> String {
        self.addrs[usize::try_from(id - 1).expect("id fits")].to_string()
    }

    /// Every server's address, running or not: the CLI must fail over by itself.
    fn all(&self) -> String {
        self.addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let p = self.procs[usize::try_from(id - 1)?]
            .take()
            .expect("server is running");
        p.kill().await
    }

    /// The leader as the running servers agree on it.
    async fn leader(&self) -> anyhow::Result<u64> {
        poll("a leader", TIMEOUT, || async {
            for p in self.procs.iter().flatten() {
                if let Ok(v) = p.status().await {
                    if let Some(l) = v["leader"].as_u64() {
                        if self.procs.iter().flatten().any(|p| p.id == l) {
                            return Some(l);
                        }
                    }
                }
            }
            None
        })
        .await
    }
}

/// Submits `count` tasks one after another through the CLI; sends each acknowledged task ID.
fn submit_loop(
    servers: String,
    count: usize,
) -> (
    mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<usize>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        let mut failures = 0;
        for _ in 0..count {
            match cli(&servers, &["run", "--task-definition", "web"]).await {
                Ok(out) if out.status.success() => {
                    let _ = tx.send(String::from_utf8_lossy(&out.stdout).trim().to_owned());
                }
                _ => failures += 1,
            }
        }
        failures
    });
    (rx, handle)
}

async fn apply_task_definition(s: &Servers) -> anyhow::Result<()> {
    let manifest = s.dir.path().join("web.yaml");
    std::fs::write(&manifest, TASK_DEFINITION)?;
    let out = cli(&s.all(), &["apply", "-f", &manifest.to_string_lossy()]).await?;
    anyhow::ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn task_ids(tasks: &Value) -> Vec<String> {
    tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["taskId"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts every acknowledged task exists exactly once and nothing was created twice.
fn check_acknowledged(tasks: &Value, acked: &[String], attempts: usize) {
    let ids = task_ids(tasks);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a task ID is listed twice");
    for id in acked {
        assert_eq!(
            ids.iter().filter(|i| *i == id).count(),
            1,
            "acknowledged task {id} missing"
        );
    }
    assert!(
        ids.len() <= attempts,
        "{} tasks from {attempts} submissions: a retry created tasks twice",
        ids.len()
    );
}

#[tokio::test]
async fn leader_kill_loses_no_acknowledged_task_and_servers_catch_up() -> anyhow::Result<()> {
    // Frequent snapshots and little kept log, so that a new member needs a snapshot.
    let mut s = Servers::start(3, &["--snapshot-every", "20", "--keep-logs", "5"]).await?;
    apply_task_definition(&s).await?;

    let attempts = 40;
    let (mut acks, submitter) = submit_loop(s.all(), attempts);
    let mut acked = Vec::new();
    while acked.len() < 10 {
        acked.push(acks.recv().await.expect("submissions before the kill"));
    }
    let old_leader = s.leader().await?;
    let killed_at = Instant::now();
    s.kill(old_leader).await?;
    let failures = submitter.await?;
    let before_kill = acked.len();
    while let Ok(id) = acks.try_recv() {
        acked.push(id);
    }
    assert!(
        acked.len() > before_kill,
        "no submission was acknowledged after the leader died"
    );
    assert!(
        failures <= 2,
        "{failures} submissions failed; the CLI should fail over"
    );
    let new_leader = s.leader().await?;
    assert_ne!(new_leader, old_leader);
    eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());

    let tasks = cli_json(&s.all(), &["get", "tasks"]).await?;
    check_acknowledged(&tasks, &acked, attempts);

    // The killed server restarts from its own log and catches up.
    s.spawn(old_leader, None).await?;
    s.proc(old_leader).wait_ready().await?;
    let expected = task_ids(&tasks);
    let restarted = s.addr(old_leader);
    poll("restarted server to catch up", TIMEOUT, || async {
        let t = cli_json(&restarted, &["get", "tasks", "--stale"])
            .await
            .ok()?;
        (task_ids(&t) == expected).then_some(())
    })
    .await?;

    // A fresh server is brought up by snapshot: the leader has compacted its log.
    let leader_status = s.proc(new_leader).status().await?;
    assert!(
        leader_status["purgedIndex"].as_u64().unwrap_or(0) > 0,
        "leader log not compacted: {leader_status}"
    );
    s.spawn_unjoined(4).await?;
    let out = cli(&s.all(), &["cluster", "add", "4", &s.addr(4)]).await?;
    assert!(
        out.status.success(),
        "cluster add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = s.addr(4);
    poll("new server to receive the state", TIMEOUT, || async {
        let t = cli_json(&fresh, &["get", "tasks", "--stale"]).await.ok()?;
        (task_ids(&t) == expected).then_some(())
    })
    .await?;
    let status = s.proc(4).status().await?;
    assert!(
        status["snapshotIndex"].as_u64().is_some(),
        "server 4 got no snapshot: {status}"
    );
    Ok(())
}

#[tokio::test]
async fn without_a_quorum_writes_fail_fast_and_recover_when_servers_return() -> anyhow::Result<()> {
    let mut s = Servers::start(3, &[]).await?;
    apply_task_definition(&s).await?;
    let leader = s.leader().await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    s.kill(leader).await?;
    s.kill(follower).await?;

    let asked = Instant::now();
    let out = cli(&s.all(), &["run", "--task-definition", "web"]).await?;
    let took = asked.elapsed();
    assert!(!out.status.success(), "a write without quorum succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no quorum"),
        "error does not say there is no quorum: {err}"
    );
    assert!(took < Duration::from_secs(15), "failing took {took:?}");

    s.spawn(leader, None).await?;
    s.spawn(follower, None).await?;
    let all = s.all();
    poll("cluster to serve writes again", TIMEOUT, || async {
        let out = cli(&all, &["run", "--task-definition", "web"]).await.ok()?;
        out.status.success().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn kill_9_of_every_server_keeps_the_state() -> anyhow::Result<()> {
    let mut s = Servers::start(3, &[]).await?;
    apply_task_definition(&s).await?;
    for _ in 0..5 {
        let out = cli(
            &s.all(),
            &["run", "--task-definition", "web", "--count", "2"],
        )
        .await?;
        assert!(
            out.status.success(),
            "run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Let the scheduler record why the tasks cannot be placed (no nodes) before comparing.
    let all = s.all();
    let tasks = poll("the scheduler to record its reasons", TIMEOUT, || async {
        let t = cli_json(&all, &["get", "tasks"]).await.ok()?;
        let settled = t.as_array()?.iter().all(|task| {
            task["events"].as_array().is_some_and(|e| {
                e.iter().any(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("unable to place"))
                })
            })
        });
        settled.then_some(t)
    })
    .await?;
    let defs = cli_json(&s.all(), &["get", "taskdefs"]).await?;
    assert_eq!(task_ids(&tasks).len(), 10);
    for id in 1..=3 {
        s.kill(id).await?;
    }
    for id in 1..=3 {
        s.spawn(id, None).await?;
    }
    for id in 1..=3 {
        s.proc(id).wait_ready().await?;
    }
    assert_eq!(cli_json(&s.all(), &["get", "tasks"]).await?, tasks);
    assert_eq!(cli_json(&s.all(), &["get", "taskdefs"]).await?, defs);
    for id in 1..=3 {
        let addr = s.addr(id);
        poll("every server to apply the whole log", TIMEOUT, || async {
            let t = cli_json(&addr, &["get", "tasks", "--stale"]).await.ok()?;
            (t == tasks).then_some(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn membership_grows_to_five_loses_its_leader_and_shrinks_to_three_under_writes(
) -> anyhow::Result<()> {
    let mut s = Servers::start(3, &[]).await?;
    apply_task_definition(&s).await?;
    s.spawn_unjoined(4).await?;
    s.spawn_unjoined(5).await?;

    let attempts = 40;
    let (mut acks, submitter) = submit_loop(s.all(), attempts);
    let mut acked = Vec::new();
    acked.push(acks.recv().await.expect("a first submission"));

    for id in [4, 5] {
        let out = cli(&s.all(), &["cluster", "add", &id.to_string(), &s.addr(id)]).await?;
        assert!(
            out.status.success(),
            "add {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = cli_json(&s.all(), &["cluster", "status"]).await?;
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(5),
        "{status}"
    );

    let leader = s.leader().await?;
    let out = cli(&s.all(), &["cluster", "remove", &leader.to_string()]).await?;
    assert!(
        out.status.success(),
        "remove leader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.kill(leader).await?;
    let other = (1..=5)
        .find(|id| *id != leader && *id != 5)
        .expect("another member");
    let out = cli(&s.all(), &["cluster", "remove", &other.to_string()]).await?;
    assert!(
        out.status.success(),
        "remove {other}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.kill(other).await?;

    let failures = submitter.await?;
    while let Ok(id) = acks.try_recv() {
        acked.push(id);
    }
    assert!(
        failures <= 2,
        "{failures} submissions failed during membership changes"
    );
    let new_leader = s.leader().await?;
    assert!(new_leader != leader && new_leader != other);
    let status = cli_json(&s.all(), &["cluster", "status"]).await?;
    let members: Vec<u64> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(members.len(), 3, "{status}");
    assert!(
        !members.contains(&leader) && !members.contains(&other),
        "{status}"
    );
    let tasks = cli_json(&s.all(), &["get", "tasks"]).await?;
    check_acknowledged(&tasks, &acked, attempts);
    Ok(())
}

#[tokio::test]
async fn an_agent_follows_the_leader_to_its_successor() -> anyhow::Result<()> {
    let env = berth_tests::Env::start().await?;
    let mut s = Servers::start(3, &[]).await?;
    let agent = berth_tests::AgentProc::start(&env, &s.all(), "node-1").await?;
    let leader = s.leader().await?;
    s.kill(leader).await?;
    // Elections on a loaded CI machine can outlast one write's timeout; this test is about the
    // agent, so it waits for the successor before submitting.
    let successor = s.leader().await?;
    assert_ne!(successor, leader);
    // The agent must find the new leader by itself, and the new leader must place the task on
    // it and see it finish.
    let out = cli(
        &s.all(),
        &["run", "--wait", &env.image, "--", "echo", "still-here"],
    )
    .await?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
    let nodes = cli_json(&s.all(), &["get", "nodes"]).await?;
    assert_eq!(nodes[0]["name"], agent.name.as_str());
    Ok(())
}

/// Unmounts what a test mounted under a directory, whatever way the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        berth_tests::unmount_under(&self.0);
    }
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            == Some("Z")
    })
}

#[tokio::test]
async fn a_server_whose_disk_fills_stops_serving_and_exits_and_catches_up_once_freed(
) -> anyhow::Result<()> {
    let mut s = Servers::start(1, &["--snapshot-every", "50"]).await?;
    // Server 2's data dir is a small filesystem of its own.
    let small = s.data_dir(2);
    std::fs::create_dir_all(&small)?;
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&small)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _unmount = Unmount(small.clone());
    let join = s.addr(1);
    s.spawn(2, Some(&join)).await?;
    s.spawn(3, Some(&join)).await?;
    s.proc(2).wait_ready().await?;
    s.proc(3).wait_ready().await?;
    s.proc(1).wait_voters(3, TIMEOUT).await?;
    apply_task_definition(&s).await?;

    // Fill it: a file takes every free byte.
    let filler = small.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
    }
    let pid = s.proc(2).pid().expect("server 2 runs");
    // Writes go on through the others; server 2 cannot append them and stops.
    let all = format!("{},{}", s.addr(1), s.addr(3));
    let mut acknowledged = 0;
    let started = Instant::now();
    while !exited(pid) && started.elapsed() < Duration::from_secs(90) {
        let out = cli(&all, &["run", "--task-definition", "web", "--count", "50"]).await?;
        anyhow::ensure!(
            out.status.success(),
            "a write failed while one server of three was down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        acknowledged += 50;
    }
    anyhow::ensure!(exited(pid), "server 2 still runs on a full disk");
    let log = std::fs::read_to_string(small.join("server.log")).unwrap_or_default();
    assert!(
        log.contains("NOT_SERVING") && log.contains(&small.join("raft").display().to_string()),
        "server 2's log does not say it stopped serving and name its disk:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        log.contains("No space left on device"),
        "server 2's log does not say why:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    // The cluster keeps its quorum without it.
    let out = cli(&all, &["run", "--task-definition", "web", "--count", "5"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    acknowledged += 5;

    // Space freed, it starts again from its own data dir and catches up, nothing lost.
    std::fs::remove_file(&filler)?;
    s.kill(2).await?;
    s.spawn(2, None).await?;
    s.proc(2).wait_ready().await?;
    let tasks = cli_json(&all, &["get", "tasks"]).await?;
    assert_eq!(
        task_ids(&tasks).len(),
        acknowledged,
        "acknowledged tasks lost"
    );
    let addr = s.addr(2);
    poll("server 2 to catch up", TIMEOUT, || async {
        let mine = cli_json(&addr, &["get", "tasks", "--stale"]).await.ok()?;
        (task_ids(&mine).len() == acknowledged).then_some(())
    })
    .await?;
    Ok(())
}

/// A member that joins a cluster whose log was compacted behind a large snapshot gets the
/// snapshot and catches up: the transfer's last request answers only once the whole state is
/// installed, which takes far longer than openraft's default snapshot timeout (200 ms, under
/// which such a member never caught up in the 2-hour chaos run).
#[tokio::test]
async fn a_member_joining_a_large_compacted_state_installs_it_and_catches_up() -> anyhow::Result<()>
{
    use berth_proto::v1 as pb;
    // A snapshot every 20 entries, nothing kept behind it: the new member needs the snapshot.
    let mut s = Servers::start(1, &["--snapshot-every", "20", "--keep-logs", "0"]).await?;
    let mut api = berth_tests::api(&s.addr(1)).await?;
    // About 12 MiB of state: 220 revisions with 56 KiB of variables each (a revision holds at
    // most 64 KiB), of xorshift digits (text that compresses as little as hex can).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let revisions = 220;
    for _ in 0..revisions {
        let environment = (0..7)
            .map(|v| {
                let value: String = (0..512)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("{x:016x}")
                    })
                    .collect();
                (format!("V{v}"), value)
            })
            .collect();
        api.register_task_definition(pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(pb::TaskDefinitionSpec {
                family: "large".into(),
                cpu: 16,
                memory: 16,
                containers: vec![pb::ContainerDefinition {
                    name: "app".into(),
                    image: "127.0.0.1:1/none:latest".into(),
                    environment,
                    essential: true,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            reuse_identical: false,
        })
        .await?;
    }

    s.spawn_unjoined(2).await?;
    let started = Instant::now();
    let out = cli(&s.addr(1), &["cluster", "add", "2", &s.addr(2)]).await?;
    eprintln!("cluster add took {:?}", started.elapsed());
    if !out.status.success() {
        let tail = |id| {
            let log =
                std::fs::read_to_string(s.data_dir(id).join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        anyhow::bail!(
            "add 2 after {:?}: {}\nserver 1's log ends:\n{}\nserver 2's log ends:\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr),
            tail(1),
            tail(2)
        );
    }
    s.proc(1).wait_voters(2, TIMEOUT).await?;
    // The first revision and the latest, read from server 2's own state, as the leader has
    // them (a listing of all would exceed the client's 4 MiB answer limit).
    let second = berth_tests::api(&s.addr(2)).await?;
    for name in ["large:1", "large"] {
        let describe = |mut api: berth_tests::Api, stale| async move {
            api.describe_task_definition(pb::DescribeTaskDefinitionRequest {
                namespace: String::new(),
                task_definition: name.into(),
                stale,
            })
            .await
            .ok()
            .map(tonic::Response::into_inner)
        };
        let leader = describe(api.clone(), false)
            .await
            .context("describe at the leader")?;
        if name == "large" {
            assert_eq!(leader.revision, revisions, "the latest revision");
        }
        poll("server 2 to hold what the leader holds", TIMEOUT, || {
            let (second, leader) = (second.clone(), &leader);
            async move { (describe(second, true).await.as_ref() == Some(leader)).then_some(()) }
        })
        .await
        .with_context(|| {
            let log = std::fs::read_to_string(s.data_dir(2).join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            format!("{name}: server 2's log ends: {}", tail.join("\n"))
        })?;
    }
    let log = std::fs::read_to_string(s.data_dir(2).join("server.log"))?;
    assert!(
        log.contains("installed a snapshot from the leader"),
        "server 2 caught up without a snapshot: {log}"
    );
    Ok(())
}
