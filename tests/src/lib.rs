//! Harness for berth's end-to-end tests: real containerd, a real registry, real `berth server`
//! and `berth agent` processes on loopback ports. Every process dies with its handle; nothing
//! sleeps a fixed time to wait for a state — [`poll`] waits on a condition with a deadline.
//!
//! Everything speaks mutual TLS with tokens, as in production: a bootstrapping server writes
//! its cluster's admin credentials (`DATA_DIR/admin.toml`); the harness remembers them for
//! every address of that cluster, and [`cli`] passes them (`--credentials`). Joining servers and
//! agents get a join token from [`join_token`].

pub mod sim;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
pub use berth_dev::Registry;
use berth_dev::{free_port, Containerd};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The `berth` binary under test: `$BERTH_BIN`, or `berth` next to the test executable's
/// `deps/` directory (what `cargo build` produced).
pub fn berth_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = dir.join("berth");
    assert!(
        bin.is_file(),
        "{} is missing; run `cargo build -p berth` first (make test does)",
        bin.display()
    );
    bin
}

/// Waits until `check` returns `Some`, polling every 50 ms, failing after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// containerd, a registry holding `demo:latest` (busybox), and a scratch directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub containerd: Containerd,
    pub registry: Registry,
    /// `127.0.0.1:PORT/demo:latest`.
    pub image: String,
    /// The task network of each agent by name: its bridge and subnet.
    networks: Mutex<HashMap<String, AgentNetwork>>,
}

/// The task network of one test agent: a bridge and a /24 of its own, so that agents of
/// concurrent tests never share addresses.
#[derive(Debug, Clone)]
pub struct AgentNetwork {
    pub bridge: String,
    /// `10.221.N.0/24`.
    pub subnet: String,
}

/// `10.221.N` of `10.221.N.0/24`.
fn subnet_prefix(subnet: &str) -> &str {
    subnet.trim_end_matches(".0/24")
}

/// Removes the iptables rules (nat and filter) of a test's tasks: the lines containing one of
/// `keys`, the chains they jump to, and the jumps to those chains. A test that ends with tasks
/// running kills them without the CNI DEL their agent would run.
fn purge_iptables(keys: &[String]) {
    let run = |args: &[&str]| std::process::Command::new("iptables").args(args).output();
    for table in ["nat", "filter"] {
        let Ok(out) = std::process::Command::new("iptables-save")
            .args(["-t", table])
            .output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ")).collect();
        let target = |line: &str| {
            line.split(" -j ")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .map(str::to_owned)
        };
        // Per-task chains only: the plugins' shared chains stay.
        let chains: HashSet<String> = rules
            .iter()
            .filter(|l| keys.iter().any(|k| l.contains(k.as_str())))
            .filter_map(|l| target(l))
            .filter(|c| {
                c.starts_with("CNI-")
                    && !matches!(c.as_str(), "CNI-FORWARD" | "CNI-ADMIN")
                    && !c.starts_with("CNI-HOSTPORT-")
            })
            .collect();
        for line in rules {
            let matched = keys.iter().any(|k| line.contains(k.as_str()))
                || target(line).is_some_and(|t| chains.contains(&t));
            if matched {
                // iptables-save quotes as the shell does.
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("iptables -t {table} -D {}", &line[3..]))
                    .output();
            }
        }
        for chain in &chains {
            let _ = run(&["-t", table, "-F", chain]);
            let _ = run(&["-t", table, "-X", chain]);
        }
    }
}

/// Test agents' subnets are 10.221.N.0/24, N counting up in this process.
static NEXT_SUBNET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl AgentNetwork {
    /// A subnet no live process uses. Bridges are named `bt<PID>n<N>`: those of processes
    /// that are gone (a test run that died) are removed with their rules first; the subnets
    /// of live ones (another test binary, a benchmark) are skipped.
    fn new() -> Self {
        static CLAIM: Mutex<()> = Mutex::new(());
        let _one_at_a_time = CLAIM.lock().unwrap_or_else(PoisonError::into_inner);
        let links = std::process::Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut taken = HashSet::new();
        for line in links.lines() {
            let mut words = line.split_whitespace();
            let (Some(dev), Some(address)) = (words.nth(1), words.nth(1)) else {
                continue;
            };
            let Some(n) = address
                .strip_prefix("10.221.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let owner = dev
                .strip_prefix("bt")
                .and_then(|rest| rest.split('n').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if alive {
                taken.insert(n);
            } else {
                let _ = std::process::Command::new("ip")
                    .args(["link", "delete", dev])
                    .output();
                purge_iptables(&[format!("10.221.{n}.")]);
            }
        }
        let start = NEXT_SUBNET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = (0..256)
            .map(|i| (start + i) % 256)
            .find(|n| !taken.contains(n))
            .unwrap_or(start % 256);
        let bridge = format!("bt{}n{n}", std::process::id());
        let subnet = format!("10.221.{n}.0/24");
        // The bridge is made by the agent's first task; claim the subnet now, so that
        // another process skips it.
        let _ = std::process::Command::new("ip")
            .args(["link", "add", "name", &bridge, "type", "bridge"])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["addr", "add", &format!("10.221.{n}.1/24"), "dev", &bridge])
            .output();
        Self { bridge, subnet }
    }

    /// What the rules about this network's tasks contain: its name or its subnet.
    fn rule_keys(&self) -> Vec<String> {
        vec![
            format!("berth-{}\\\"", self.bridge),
            format!("{}.", subnet_prefix(&self.subnet)),
        ]
    }

    /// The agent flags that select it. Tasks get no name server but the node's own: test
    /// traffic never leaves the machine.
    pub fn flags(&self) -> [&str; 5] {
        [
            "--bridge",
            &self.bridge,
            "--task-subnet",
            &self.subnet,
            "--no-host-nameservers",
        ]
    }
}

impl Drop for Env {
    /// Kills every container this test's containerd still runs: containers outlive the
    /// processes of a test (they belong to containerd's shims), and a test must not leave
    /// busy containers behind for the next one.
    fn drop(&mut self) {
        let ctr = |args: &[&str]| {
            std::process::Command::new("ctr")
                .arg("--address")
                .arg(&self.containerd.socket)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for ns in ctr(&["namespaces", "list", "--quiet"]).lines() {
            for task in ctr(&["--namespace", ns, "tasks", "list", "--quiet"]).lines() {
                // Kills the task if it runs, deletes it, and so ends its shim.
                ctr(&["--namespace", ns, "tasks", "delete", "--force", task]);
            }
        }
        // A task an agent killed a moment ago had asked for may still be created after the
        // sweep (containerd finishes a create whose caller went away): with containerd gone,
        // its shim and container would run on with nothing to end them.
        self.containerd.kill();
        kill_shims_of(&self.containerd.socket);
        // The bridges the CNI plugins made for this test's agents, and the network namespaces
        // of the tasks they still recorded (their tasks are gone).
        let networks = self.networks.lock().unwrap_or_else(PoisonError::into_inner);
        for name in networks.keys() {
            let results = self.path(&format!("agent-{name}")).join("cni/results");
            for entry in std::fs::read_dir(results).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(task) = file.strip_suffix(".json") else {
                    continue;
                };
                // The record names its namespace (a warm one keeps its own name); older
                // records do not, and theirs is named after the task.
                let recorded = std::fs::read(entry.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|r| {
                        let path = r["netns"].as_str()?;
                        Some(path.rsplit('/').next()?.to_owned())
                    })
                    .filter(|n| !n.is_empty());
                let name = recorded.unwrap_or_else(|| {
                    let id: String = task
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(24)
                        .collect();
                    format!("berth-{id}")
                });
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", &name])
                    .output();
            }
        }
        for n in networks.values() {
            purge_iptables(&n.rule_keys());
            let _ = std::process::Command::new("ip")
                .args(["link", "delete", &n.bridge])
                .output();
        }
        unmount_under(self.dir.path());
    }
}

/// Kills every containerd shim serving the containerd at `socket` with its direct children
/// (the containers' first processes: each container's other processes end with them, in its
/// own PID namespace), as `kill -9`.
fn kill_shims_of(socket: &Path) {
    let socket = socket.as_os_str().as_encoded_bytes();
    let procs: Vec<(u32, Vec<u8>)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            Some((pid, std::fs::read(e.path().join("cmdline")).ok()?))
        })
        .collect();
    let shims: Vec<u32> = procs
        .iter()
        .filter(|(_, cmdline)| {
            let mut args = cmdline.split(|b| *b == 0);
            args.next()
                .is_some_and(|p| p.ends_with(b"containerd-shim-runc-v2"))
                && args.any(|a| a == socket)
        })
        .map(|(pid, _)| *pid)
        .collect();
    if shims.is_empty() {
        return;
    }
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: the name may hold spaces and parentheses.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let mut doomed: Vec<String> = procs
        .iter()
        .filter(|(pid, _)| parent(*pid).is_some_and(|p| shims.contains(&p)))
        .map(|(pid, _)| pid.to_string())
        .collect();
    doomed.extend(shims.iter().map(u32::to_string));
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&doomed)
        .output();
}

/// Unmounts everything mounted under `dir` (an agent's tmpfs for secret files outlives the
/// agent, as it should on a node), deepest first, so the directory can be removed.
pub fn unmount_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = std::process::Command::new("umount")
            .args(["--lazy", p])
            .output();
    }
}

impl Env {
    pub async fn start() -> anyhow::Result<Self> {
        // Short paths: containerd's sockets must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e")
            .tempdir_in("/tmp")?;
        Self::start_in(dir).await
    }

    /// An environment in `dir` (a short path: containerd's sockets must fit in 108 bytes),
    /// whose handle decides what becomes of it afterwards (the benchmark keeps a failed
    /// scenario's logs).
    pub async fn start_in(dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let containerd = Containerd::start(&dir.path().join("ctd")).await?;
        let registry = Registry::start_on_free_port(&dir.path().join("registry")).await?;
        let busybox =
            berth_dev::find_program("busybox").context("busybox-static is not installed")?;
        let image = format!("{}/demo:latest", registry.addr);
        berth_dev::push_busybox_image(&busybox, &image).await?;
        Ok(Self {
            dir,
            containerd,
            registry,
            image,
            networks: Mutex::new(HashMap::new()),
        })
    }

    /// The task network of agent `name` (the same one each time it starts).
    pub fn network(&self, name: &str) -> AgentNetwork {
        self.networks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(AgentNetwork::new)
            .clone()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A `berth server` process.
pub struct ServerProc {
    pub id: u64,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Child,
}

/// The admin credentials of each server address's cluster.
static CREDENTIALS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Remembers that the cluster of `addr` is administered with the credentials file `path`.
pub fn register_credentials(addr: &str, path: &Path) {
    CREDENTIALS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(addr.to_owned(), path.to_owned());
}

/// Forgets the credentials of `addr`: a new cluster will be there.
fn forget_credentials(addr: &str) {
    if let Some(known) = CREDENTIALS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        known.remove(addr);
    }
}

/// The credentials file of the cluster of one of `servers` (comma separated).
pub fn credentials_for(servers: &str) -> Option<PathBuf> {
    let known = CREDENTIALS.lock().unwrap_or_else(PoisonError::into_inner);
    let known = known.as_ref()?;
    servers
        .split(',')
        .find_map(|s| known.get(s.trim()).cloned())
}

/// A new join token for `role` (`agent` or `server`) from the cluster of `server`.
pub async fn join_token(server: &str, role: &str) -> anyhow::Result<String> {
    let out = cli(server, &["cluster", "token", "create", "--role", role]).await?;
    if !out.status.success() {
        bail!(
            "berth cluster token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .context("no join token printed")
}

/// Raft timing for tests: quick elections, quick "no quorum" answers.
pub const FAST_RAFT: &[&str] = &[
    "--heartbeat-ms",
    "50",
    "--election-timeout-ms",
    "300",
    "--write-timeout",
    "3s",
];

impl ServerProc {
    /// Starts a one-member cluster on `addr` (a free port when `None`) and waits until it leads.
    pub async fn start(data_dir: &Path, addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        let server = Self::spawn(1, data_dir, addr, &[]).await?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Spawns `berth server --node-id ID` with `args` (e.g. `--join ADDR`); does not wait.
    pub async fn spawn(
        id: u64,
        data_dir: &Path,
        addr: Option<SocketAddr>,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_as(Some(id), data_dir, addr, args).await
    }

    /// Spawns `berth server --join JOIN --join-token TOKEN` with `args` and no `--node-id`, as a
    /// user would: the cluster gives it a free ID. Waits until it has one (it is written to
    /// `DATA_DIR/node-id` once the join succeeded), not until it is a member.
    pub async fn join(
        data_dir: &Path,
        join: &str,
        token: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut all = vec!["--join", join, "--join-token", token];
        all.extend(args);
        let mut server = Self::spawn_as(None, data_dir, None, &all).await?;
        let file = data_dir.join("node-id");
        server.id = poll(
            "the joining server's node ID",
            Duration::from_secs(30),
            || async { std::fs::read_to_string(&file).ok()?.trim().parse().ok() },
        )
        .await
        .with_context(|| format!("see {}", data_dir.join("server.log").display()))?;
        Ok(server)
    }

    /// Spawns `berth server --node-id ID` with `args` and environment variables `envs` (e.g.
    /// libfaketime's); does not wait.
    pub async fn spawn_with_env(
        id: u64,
        data_dir: &Path,
        addr: Option<SocketAddr>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn_env(Some(id), data_dir, addr, args, envs).await
    }

    /// Spawns `berth server` (with `--node-id` when `id` is given); does not wait.
    async fn spawn_as(
        id: Option<u64>,
        data_dir: &Path,
        addr: Option<SocketAddr>,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_env(id, data_dir, addr, args, &[]).await
    }

    async fn spawn_env(
        id: Option<u64>,
        data_dir: &Path,
        addr: Option<SocketAddr>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let addr = match addr {
            Some(a) => a,
            None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        std::fs::create_dir_all(data_dir)?;
        // A joining server administers with the credentials of the cluster it joins; a new
        // cluster's are written by its bootstrap server (see `wait_ready`). A new data dir on
        // an address used before (ports are reused) must not inherit that cluster's.
        if let Some(join) = args.windows(2).find(|w| w[0] == "--join").map(|w| w[1]) {
            if let Some(path) = credentials_for(join) {
                register_credentials(&addr.to_string(), &path);
            }
        } else if data_dir.join("admin.toml").exists() {
            register_credentials(&addr.to_string(), &data_dir.join("admin.toml"));
        } else if !data_dir.join("node-id").exists() {
            forget_credentials(&addr.to_string());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))?;
        let node_id = id.map(|id| id.to_string());
        let child = Command::new(berth_bin())
            .args(["server", "--listen", &addr.to_string()])
            .args(node_id.iter().flat_map(|id| ["--node-id", id.as_str()]))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn berth server")?;
        Ok(Self {
            id: id.unwrap_or(0),
            addr,
            data_dir: data_dir.to_owned(),
            child,
        })
    }

    /// Waits until this server is a member of a cluster that has a leader (for a bootstrap
    /// server: until it wrote its cluster's admin credentials).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let addr = self.addr.to_string();
        if credentials_for(&addr).is_none() {
            let path = self.data_dir.join("admin.toml");
            poll("admin credentials", Duration::from_secs(30), || async {
                path.exists().then_some(())
            })
            .await
            .with_context(|| format!("see {}", self.data_dir.join("server.log").display()))?;
            register_credentials(&addr, &path);
        }
        poll(
            "server to see a leader",
            Duration::from_secs(30),
            || async {
                let v = self.status().await.ok()?;
                let member = v["members"].as_array()?.iter().any(|m| m["id"] == self.id);
                (member && !v["leader"].is_null()).then_some(())
            },
        )
        .await
        .with_context(|| format!("see {}", self.data_dir.join("server.log").display()))
    }

    /// Waits until this server sees `n` members, every one a voter (a joining server is a
    /// learner until it has caught up), and a leader. Tests and benchmarks that kill a server
    /// need this first, or the survivors may lack a quorum.
    pub async fn wait_voters(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        poll("every server to become a voter", timeout, || async {
            let v = self.status().await.ok()?;
            let members = v["members"].as_array()?;
            (members.len() == n
                && members.iter().all(|m| m["role"] != "learner")
                && v["leader"].as_u64().is_some())
            .then_some(())
        })
        .await
    }

    /// `berth cluster status -o json` as this server sees it.
    pub async fn status(&self) -> anyhow::Result<Value> {
        cli_json(&self.addr.to_string(), &["cluster", "status"]).await
    }

    /// kill -9.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill server")
    }

    /// The process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Three servers joined with a server join token (the first bootstraps, the other two join
/// before anything else happens), each with `args`, once all three are voters.
pub async fn three_joined_servers(env: &Env, args: &[&str]) -> anyhow::Result<Vec<ServerProc>> {
    let first = ServerProc::spawn(1, &env.path("s1"), None, args).await?;
    first.wait_ready().await?;
    let bootstrap = first.addr.to_string();
    let token = join_token(&bootstrap, "server").await?;
    let mut servers = vec![first];
    for name in ["s2", "s3"] {
        servers.push(ServerProc::join(&env.path(name), &bootstrap, &token, args).await?);
    }
    for s in &servers {
        s.wait_ready().await?;
    }
    servers[0].wait_voters(3, Duration::from_secs(60)).await?;
    Ok(servers)
}

/// The servers' addresses, comma separated, as the CLI and agents take them.
pub fn addresses(servers: &[ServerProc]) -> String {
    servers
        .iter()
        .map(|s| s.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Kills the leader (kill -9) and takes it out of `servers`.
pub async fn kill_leader(servers: &mut Vec<ServerProc>) -> anyhow::Result<()> {
    let leader_id = servers[0].status().await?["leader"].as_u64().unwrap_or(0);
    let leader = servers
        .iter()
        .position(|s| s.id == leader_id)
        .context("no leader")?;
    servers.remove(leader).kill().await
}

/// A `berth agent` process.
pub struct AgentProc {
    pub name: String,
    pub namespace: String,
    child: Child,
}

impl AgentProc {
    /// Starts an agent and waits until the server lists its node.
    pub async fn start(env: &Env, server: &str, name: &str) -> anyhow::Result<Self> {
        Self::start_with(env, server, name, &[]).await
    }

    /// Starts an agent with extra flags and waits until the server lists its node.
    pub async fn start_with(
        env: &Env,
        server: &str,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_in(env, server, name, None, extra).await
    }

    /// Starts an agent inside the network namespace `netns` (a test host: see [`TestHosts`]),
    /// or on this host when `None`, and waits until the server lists its node.
    pub async fn start_in(
        env: &Env,
        server: &str,
        name: &str,
        netns: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let data_dir = env.path(&format!("agent-{name}"));
        std::fs::create_dir_all(&data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("agent.log"))?;
        let namespace = format!("berth-e2e-{name}");
        let token = if data_dir.join("tls").exists() {
            None
        } else {
            Some(join_token(server, "agent").await?)
        };
        let mut command = match netns {
            // Only the network namespace: `ip netns exec` would give the agent a mount
            // namespace of its own too, and the namespaces it makes for tasks would not be
            // seen by containerd.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(berth_bin());
                c
            }
            None => Command::new(berth_bin()),
        };
        let child = command
            .args([
                "agent",
                "--servers",
                server,
                "--node-name",
                name,
                "--cpu",
                "2048",
                "--memory",
                "2048",
            ])
            .args([
                "--containerd-namespace",
                &namespace,
                "--metrics-interval",
                "1s",
                "--data-dir",
            ])
            .arg(&data_dir)
            .arg("--containerd")
            .arg(&env.containerd.socket)
            .args(token.iter().flat_map(|t| ["--join-token", t.as_str()]))
            .args(env.network(name).flags())
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn berth agent")?;
        let agent = Self {
            name: name.to_owned(),
            namespace,
            child,
        };
        poll("agent to register", Duration::from_secs(20), || async {
            let out = cli(server, &["get", "nodes", "-o", "json"]).await.ok()?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            v.as_array()?
                .iter()
                .any(|n| n["name"] == name)
                .then_some(())
        })
        .await
        .with_context(|| format!("see {}", data_dir.join("agent.log").display()))?;
        Ok(agent)
    }
}

impl AgentProc {
    /// kill -9: its containers keep running, as after an agent crash.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill agent")
    }
}

/// Hosts for tests: network namespaces joined by a bridge on this host, each with an address
/// of `10.233.N.0/24` (this host is `.1`, the hosts `.2`, `.3`, …). Agents run inside them
/// ([`AgentProc::start_in`]), so each has its own interfaces, bridge and iptables, as on a
/// host of its own; test traffic stays inside them and this host's bridge. Removed on drop.
pub struct TestHosts {
    pub bridge: String,
    /// `10.233.N`.
    pub prefix: String,
    pub names: Vec<String>,
}

static NEXT_HOSTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl TestHosts {
    pub fn create(count: usize) -> anyhow::Result<Self> {
        // A prefix no interface of this host has yet (another process's hosts, or what a
        // killed one left behind, would take the traffic).
        let taken = std::process::Command::new("ip")
            .args(["-o", "-4", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let n = (0..256)
            .map(|_| NEXT_HOSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 256)
            .find(|n| !taken.contains(&format!(" 10.233.{n}.")))
            .context("every 10.233.N.0/24 is taken by an interface of this host")?;
        let tag = format!("{}x{n}", std::process::id() % 10_000);
        let prefix = format!("10.233.{n}");
        let hosts = Self {
            bridge: format!("bh{tag}"),
            prefix: prefix.clone(),
            names: (0..count).map(|i| format!("bh{tag}h{i}")).collect(),
        };
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = std::process::Command::new("ip").args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        run(&["link", "add", "name", &hosts.bridge, "type", "bridge"])?;
        run(&[
            "addr",
            "add",
            &format!("{prefix}.1/24"),
            "dev",
            &hosts.bridge,
        ])?;
        run(&["link", "set", &hosts.bridge, "up"])?;
        for (i, ns) in hosts.names.iter().enumerate() {
            let (outer, inner) = (format!("{ns}o"), format!("{ns}i"));
            run(&["netns", "add", ns])?;
            run(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            run(&["link", "set", &outer, "master", &hosts.bridge, "up"])?;
            run(&["link", "set", &inner, "netns", ns])?;
            let address = format!("{}/24", hosts.address(i));
            run(&["-n", ns, "addr", "add", &address, "dev", &inner])?;
            run(&["-n", ns, "link", "set", &inner, "up"])?;
            run(&["-n", ns, "link", "set", "lo", "up"])?;
            run(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{prefix}.1"),
            ])?;
        }
        Ok(hosts)
    }

    /// This host's address on the hosts' bridge.
    pub fn outside(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A registry on this host's address on the hosts' bridge (their loopback is their own)
    /// holding `demo:latest` (busybox), under `dir`; answers it and the image's reference.
    pub async fn registry(&self, dir: &Path) -> anyhow::Result<(Registry, String)> {
        let at: std::net::SocketAddr = format!("{}:{}", self.outside(), free_port()?).parse()?;
        let registry = Registry::start(dir, at).await?;
        let image = format!("{at}/demo:latest");
        let busybox =
            berth_dev::find_program("busybox").context("busybox-static is not installed")?;
        berth_dev::push_busybox_image(&busybox, &image).await?;
        Ok((registry, image))
    }

    /// Host `i`'s address.
    pub fn address(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 2)
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", ns])
                .output();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .output();
    }
}

/// A `berth ingress` process: plain HTTP on `addr`, Prometheus metrics on `metrics`.
pub struct IngressProc {
    pub name: String,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl IngressProc {
    /// Starts an ingress that joins `server`'s cluster with an ingress token and waits until
    /// its listener and metrics answer.
    pub async fn start(env: &Env, server: &str, name: &str) -> anyhow::Result<Self> {
        let data_dir = env.path(&format!("ingress-{name}"));
        std::fs::create_dir_all(&data_dir)?;
        let log = data_dir.join("ingress.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let token = join_token(server, "ingress").await?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(berth_bin())
            .args(["ingress", "--servers", server, "--name", name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", &addr.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--join-token", &token])
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("spawn berth ingress")?;
        let ingress = Self {
            name: name.to_owned(),
            addr,
            metrics,
            log,
            child,
        };
        poll("the ingress to listen", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(metrics).await.ok()
        })
        .await
        .with_context(|| format!("see {}", ingress.log.display()))?;
        Ok(ingress)
    }

    /// The ingress's Prometheus metrics.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        http_get(&self.metrics.to_string(), "metrics", "/metrics")
            .await
            .map(|(_, body)| body)
    }

    /// kill -9.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill ingress")
    }
}

/// `GET PATH` with `Host: HOST` at `addr` over plain HTTP/1.1 (one request per connection),
/// within 5 s: the status code and the body.
pub async fn http_get(addr: &str, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let (code, _, body) = http_exchange(addr, host, path, Duration::from_secs(5)).await?;
    Ok((code, body))
}

/// As [`http_get`] within `limit`: the status code, the head (status line and headers) and
/// the body.
pub async fn http_exchange(
    addr: &str,
    host: &str,
    path: &str,
    limit: Duration,
) -> anyhow::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await?;
        anyhow::Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    let reply = tokio::time::timeout(limit, exchange)
        .await
        .with_context(|| format!("no answer within {limit:?}"))??;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from {addr}: {reply:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        code,
        head.to_owned(),
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

/// The messages of an object's events (a task's or a service's, as `-o json` prints them).
pub fn events(object: &Value) -> Vec<String> {
    object["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// The payload of a chunked body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The CLI aimed at `server` with the admin credentials of its cluster, for commands to spawn.
pub fn cli_command(server: &str) -> Command {
    let mut command = Command::new(berth_bin());
    if let Some(path) = credentials_for(server) {
        command.arg("--credentials").arg(path);
    }
    command
        .env_remove("BERTH_CREDENTIALS")
        .env_remove("BERTH_TOKEN")
        .arg("--server")
        .arg(server);
    command
}

/// Runs the CLI against `server` with `args`, with the admin credentials of its cluster.
pub async fn cli(server: &str, args: &[&str]) -> anyhow::Result<Output> {
    cli_command(server)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("run berth CLI")
}

/// Runs the CLI and parses its stdout as JSON; fails with its stderr when it exits non-zero.
pub async fn cli_json(server: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cli(server, &all).await?;
    if !out.status.success() {
        bail!(
            "berth {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parse output of berth {}", args.join(" ")))
}

/// Runs `berth run ARGS`; returns the IDs of the tasks it created, in order.
pub async fn run_tasks(server: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let out = cli(server, args).await?;
    if !out.status.success() {
        bail!(
            "berth {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Runs `berth run ARGS` (one task) and waits until the task is RUNNING; returns its ID.
pub async fn run_until_running(server: &str, args: &[&str]) -> anyhow::Result<String> {
    let ids = run_tasks(server, args).await?;
    let [id] = &ids[..] else {
        bail!(
            "berth {} created {} tasks, expected one",
            args.join(" "),
            ids.len()
        );
    };
    let id = id.clone();
    poll(
        &format!("task {id} to run"),
        Duration::from_secs(60),
        || async {
            let t = cli_json(server, &["get", "task", &id]).await.ok()?;
            (t["lastStatus"] == "RUNNING").then_some(())
        },
    )
    .await?;
    Ok(id)
}

/// Runs `sh -c SCRIPT` in `image` (stop timeout 1 s) and waits until the task is RUNNING.
pub async fn run_script_until_running(
    server: &str,
    image: &str,
    script: &str,
) -> anyhow::Result<String> {
    run_until_running(
        server,
        &[
            "run",
            "--stop-timeout",
            "1s",
            image,
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .await
}

/// Waits until the task is STOPPED and returns it.
pub async fn wait_stopped(server: &str, task_id: &str, timeout: Duration) -> anyhow::Result<Value> {
    poll(&format!("task {task_id} to stop"), timeout, || async {
        let t = cli_json(server, &["get", "task", task_id]).await.ok()?;
        (t["lastStatus"] == "STOPPED").then_some(t)
    })
    .await
}

/// Runs `ctr` against the test's containerd.
pub async fn ctr(socket: &Path, namespace: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .await
        .context("run ctr")
}

/// Container IDs in a containerd namespace, read with `ctr`.
pub async fn containerd_containers(socket: &Path, namespace: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", namespace, "containers", "list", "--quiet"])
        .output()
        .await
        .context("run ctr")?;
    if !out.status.success() {
        bail!("ctr: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Adds the cluster's admin token to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A gRPC client of the public API, authenticated as the cluster's admin.
pub type Api = berth_proto::v1::berth_client::BerthClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A client of the server at `addr` over TLS with the admin credentials of its cluster.
pub async fn api(addr: &str) -> anyhow::Result<Api> {
    let path = credentials_for(addr).context("no credentials for that cluster")?;
    let (ca, token) = read_credentials(&path)?;
    let config = berth_tls::tls::client_config(&berth_tls::tls::Trust::Ca(ca), None)?;
    let channel = berth_tls::net::Dialer::new(config).connect(addr).await?;
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    Ok(berth_proto::v1::berth_client::BerthClient::with_interceptor(channel, bearer))
}

/// Whether the server at `addr` serves (the standard gRPC health check, which needs no
/// credentials, over TLS trusting `cluster`'s CA). A server waiting to be added to a cluster
/// knows no tokens yet, but it serves.
pub async fn serving(addr: &str, cluster: &str) -> bool {
    let check = async {
        let path = credentials_for(cluster).context("no credentials for that cluster")?;
        let (ca, _) = read_credentials(&path)?;
        let config = berth_tls::tls::client_config(&berth_tls::tls::Trust::Ca(ca), None)?;
        let channel = berth_tls::net::Dialer::new(config).connect(addr).await?;
        let reply = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        anyhow::Ok(
            reply.status() == tonic_health::pb::health_check_response::ServingStatus::Serving,
        )
    };
    check.await.unwrap_or(false)
}

/// What a credentials file holds: the CA to trust and the token to send.
pub fn read_credentials(path: &Path) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)?;
    let field = |k: &str| {
        table
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("{} has no {k}", path.display()))
    };
    Ok((field("ca")?, field("token")?))
}

/// How a scrape identifies itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scrape {
    Anonymous,
    /// The cluster's admin token.
    Token,
    /// An admin client certificate (issued by the harness from the bootstrap server's CA).
    Certificate,
}

/// An admin client certificate from the CA in the data dir next to `credentials`.
fn admin_certificate(credentials: &Path) -> anyhow::Result<berth_tls::tls::Credentials> {
    let dir = credentials.parent().context("credentials file's dir")?;
    let material = berth_tls::dir::TlsDir::new(dir)
        .load()?
        .context("no TLS material next to the credentials")?;
    let ca = berth_tls::ClusterCa::load(
        &material.ca_pem,
        material.ca_key_pem.as_deref().context("no CA key")?,
    )?;
    let identity = berth_tls::Identity::new(berth_tls::Role::Admin, "e2e");
    let (issued, key) = ca.issue_new(&identity, &[], berth_tls::DEFAULT_CERT_TTL)?;
    Ok(berth_tls::tls::Credentials::new(
        &issued.cert_pem,
        &key.pem(),
        ca.cert_pem(),
    )?)
}

/// `GET /metrics` over HTTPS (HTTP/1.1, as Prometheus scrapes) on a server's or agent's
/// address, trusting the CA of `cluster`'s credentials and identified as `with` says: the
/// whole response, headers included.
pub async fn scrape(addr: &str, cluster: &str, with: Scrape) -> anyhow::Result<String> {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = credentials_for(cluster).context("no credentials for that cluster")?;
    let (ca, secret) = read_credentials(&path)?;
    let certificate = match with {
        Scrape::Certificate => Some(Arc::new(admin_certificate(&path)?)),
        _ => None,
    };
    let mut config = berth_tls::tls::client_config(&berth_tls::tls::Trust::Ca(ca), certificate)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let mut conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let auth = if with == Scrape::Token {
        format!("Authorization: Bearer {secret}\r\n")
    } else {
        String::new()
    };
    conn.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: berth\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut body = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`: keep what came.
    let _ = conn.read_to_end(&mut body).await;
    Ok(String::from_utf8_lossy(&body).into_owned())
}
