//! The clusters the scenarios measure: three real servers, and fleets of hollow agents.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use berth_tests::{berth_bin, ServerProc};
use tokio::process::Command;

/// Hollow agents per process: each holds a listener and a connection, and a process may open
/// 20,000 files on this machine.
const HOLLOW_PER_PROCESS: u32 = 2_500;

/// Three real servers on loopback with durable logs: 1 bootstraps, 2 and 3 join.
pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    pub(crate) servers: Vec<ServerProc>,
}

impl Cluster {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Three servers started with `extra` flags, and those in `BERTH_BENCH_SERVER_FLAGS`
    /// (space-separated: to compare a server setting, e.g. `--lease-reads`).
    pub(crate) async fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let flags = std::env::var("BERTH_BENCH_SERVER_FLAGS").unwrap_or_default();
        let extra = [extra, &flags.split_whitespace().collect::<Vec<_>>()].concat();
        let extra = extra.as_slice();
        let dir = scratch_dir("berth-bench")?;
        let first = ServerProc::spawn(1, &dir.path().join("s1"), None, extra).await?;
        first.wait_ready().await?;
        let join = first.addr.to_string();
        let token = berth_tests::join_token(&join, "server").await?;
        let mut servers = vec![first];
        for id in 2..=3 {
            let s = ServerProc::spawn(
                id,
                &dir.path().join(format!("s{id}")),
                None,
                &[extra, &["--join", &join, "--join-token", &token]].concat(),
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

    pub(crate) fn addresses(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client of the current leader.
    pub(crate) async fn leader(&self) -> anyhow::Result<berth_tests::Api> {
        let addr = self.leader_addr().await?;
        berth_tests::api(&addr).await
    }

    /// What to watch the servers for through a scenario.
    pub(crate) async fn watch(&self) -> anyhow::Result<Watched> {
        Watched::begin(&self.servers.iter().collect::<Vec<_>>()).await
    }

    /// The current leader's address.
    pub(crate) async fn leader_addr(&self) -> anyhow::Result<String> {
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

/// What a scenario's servers went through while it ran, beside what it measured: elections
/// (each takes a new Raft term) and writes that failed to commit, counted by the servers
/// (`berth_raft_failed_writes_total`: the agents' reports and the controllers' writes too,
/// not only the scenario's own requests). Neither is to happen outside the failover
/// scenario.
pub(crate) struct Watched {
    addrs: Vec<String>,
    term: u64,
    failed: u64,
}

const TERM: &str = "berth_raft_term";
const FAILED_WRITES: &str = "berth_raft_failed_writes_total";

impl Watched {
    /// From now on, on `servers`.
    pub(crate) async fn begin(servers: &[&ServerProc]) -> anyhow::Result<Self> {
        let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
        let (term, failed) = Self::now(&addrs).await?;
        Ok(Self {
            addrs,
            term,
            failed,
        })
    }

    /// The highest term any of `addrs` is in, and the failed writes they counted altogether.
    async fn now(addrs: &[String]) -> anyhow::Result<(u64, u64)> {
        let (mut term, mut failed) = (0, 0);
        for addr in addrs {
            let seen = crate::api::metrics(addr, &[TERM, FAILED_WRITES]).await;
            let (Some(t), Some(f)) = (seen[0], seen[1]) else {
                anyhow::bail!("the server at {addr} shows no {TERM} and {FAILED_WRITES}");
            };
            term = term.max(t);
            failed += f;
        }
        Ok((term, failed))
    }

    /// Records `{prefix}.elections`, `{prefix}.server_failed_writes` (what the servers counted
    /// since [`Watched::begin`]) and `{prefix}.failed_writes` (the scenario's own writes that
    /// failed, `client_failed`, as its clients saw them).
    pub(crate) async fn record(
        &self,
        results: &mut crate::results::Results,
        prefix: &str,
        client_failed: usize,
    ) -> anyhow::Result<()> {
        let (term, failed) = Self::now(&self.addrs).await?;
        results.insert(
            format!("{prefix}.elections"),
            term.saturating_sub(self.term) as f64,
        );
        results.insert(
            format!("{prefix}.server_failed_writes"),
            failed.saturating_sub(self.failed) as f64,
        );
        results.insert(format!("{prefix}.failed_writes"), client_failed as f64);
        Ok(())
    }
}

/// The scratch directories the running scenario made ([`scratch_dir`]).
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A scratch directory under /tmp named `prefix…`, for the running scenario: removed once the
/// scenario has ended ([`end_scratch`]), not when the handle is dropped, so that a failed
/// scenario's logs can be kept.
pub(crate) fn scratch_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(true)
        .tempdir_in("/tmp")?;
    SCRATCH
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(dir.path().to_owned());
    Ok(dir)
}

/// The most of each log file a failed scenario keeps: its end.
const KEPT_LOG_BYTES: u64 = 8 << 20;

/// Ends the scratch directories of a scenario that just ended (its processes are gone: they
/// die with their handles). A failed one's logs (every `*.log` file, its last 8 MiB) are
/// copied under `failed` first, by the path inside their directory: a failure that is seldom
/// reproduced (an agent fenced under load) leaves its evidence. The directories stay, data
/// and all, when `BERTH_BENCH_KEEP` is set; they are removed otherwise. Answers where the logs
/// went, if any were kept.
pub(crate) fn end_scratch(failed: Option<&Path>) -> Option<PathBuf> {
    let dirs = std::mem::take(&mut *SCRATCH.lock().unwrap_or_else(PoisonError::into_inner));
    let mut kept = None;
    if let Some(to) = failed {
        let _ = std::fs::remove_dir_all(to);
        for dir in &dirs {
            let name = dir.file_name().map(PathBuf::from).unwrap_or_default();
            if copy_logs(dir, &to.join(name)) > 0 {
                kept = Some(to.to_owned());
            }
        }
    }
    if std::env::var_os("BERTH_BENCH_KEEP").is_none() {
        for dir in &dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    kept
}

/// Copies the end of every `*.log` file under `from` to the same place under `to`; answers
/// how many.
fn copy_logs(from: &Path, to: &Path) -> usize {
    use std::io::{Read as _, Seek as _};
    let mut copied = 0;
    for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            copied += copy_logs(&path, &to.join(entry.file_name()));
            continue;
        }
        if !kind.is_file() || path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let tail = std::fs::File::open(&path).and_then(|mut f| {
            let len = f.metadata()?.len();
            f.seek(std::io::SeekFrom::Start(len.saturating_sub(KEPT_LOG_BYTES)))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        let written = tail.and_then(|bytes| {
            std::fs::create_dir_all(to)?;
            std::fs::write(to.join(entry.file_name()), bytes)
        });
        if written.is_ok() {
            copied += 1;
        }
    }
    copied
}

/// Hollow agents (`berth agent --hollow`) in as many processes as their files need; every
/// process dies with the fleet.
pub(crate) struct Hollow {
    _dir: tempfile::TempDir,
    pub(crate) procs: Vec<tokio::process::Child>,
}

impl Hollow {
    /// `nodes` agents named `PREFIX-P-I` (process P, agent I) serving `servers`.
    pub(crate) async fn spawn(servers: &str, prefix: &str, nodes: u32) -> anyhow::Result<Self> {
        let dir = scratch_dir("berth-hollow")?;
        // One agent join token for the whole fleet; each agent joins under its own name.
        let token_file = dir.path().join("join-token");
        std::fs::write(
            &token_file,
            berth_tests::join_token(servers, "agent").await?,
        )?;
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
                .arg("--join-token-file")
                .arg(&token_file)
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

    /// Kills every agent process and waits until each has exited.
    pub(crate) async fn stop(mut self) {
        for p in &mut self.procs {
            let _ = p.kill().await;
        }
    }
}

/// The resident memory of process `pid` (a server, or the bench itself), in MiB.
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// An agent on real containerd for `env`, with the flags in `BERTH_BENCH_AGENT_FLAGS`
/// (space-separated: to compare an agent setting, e.g. `--warm-networks 0`).
pub(crate) async fn agent(
    env: &berth_tests::Env,
    server: &str,
    name: &str,
) -> anyhow::Result<berth_tests::AgentProc> {
    let flags = std::env::var("BERTH_BENCH_AGENT_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    berth_tests::AgentProc::start_with(env, server, name, &flags).await
}
