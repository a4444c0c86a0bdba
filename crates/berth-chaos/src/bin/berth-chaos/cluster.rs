//! The cluster under test: real `berth server` processes, each in a network namespace of its
//! own (so that iptables rules inside it cut chosen links), with libfaketime preloaded (so
//! that its wall clock alone can be moved), and hollow agents and one real agent (containerd
//! and runc, pulling busybox from the run's own registry) in one more namespace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use berth_tests::{berth_bin, poll, register_credentials, TestHosts};
use rand::rngs::StdRng;
use rand::Rng as _;
use serde_json::Value;
use tokio::process::{Child, Command};

pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How long libfaketime keeps a server's clock offset before it reads its file again: a clock
/// is back only this long after its file says so.
pub const FAKETIME_CACHE: Duration = Duration::from_secs(1);

/// The port every server listens on inside its own namespace.
const PORT: u16 = 7400;

/// Raft timing: berth's defaults, as an operator runs it.
const SERVER_FLAGS: &[&str] = &[
    "--write-timeout",
    "3s",
    "--node-ttl",
    "5s",
    "--task-retention",
    "24h",
];

pub struct Server {
    pub id: u64,
    /// Its network namespace.
    pub ns: String,
    pub ip: String,
    /// `IP:PORT`.
    pub addr: String,
    pub data_dir: PathBuf,
    /// libfaketime's offset for this server's wall clock (`+0`, `+3600`, `-600`).
    pub clock: PathBuf,
    /// Microseconds every fsync and fdatasync of this server waits first (the shim reads it).
    pub fsync_delay: PathBuf,
    /// Its own small filesystem (a tmpfs) under the data dir, which a fault can fill.
    pub small_disk: bool,
    /// Its log, outside the data dir (which a fault may wipe or unmount).
    pub log: PathBuf,
    child: Option<Child>,
}

/// The real agent: its containerd (and the busybox image the e2e tests use), the registry
/// the agents' namespace reaches, and the agent process.
struct RealAgent {
    agent: berth_tests::AgentProc,
    _registry: berth_tests::Registry,
    /// Last: its drop stops the containers the agent left and removes its networks.
    env: berth_tests::Env,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether its process has exited by itself (as it must on a fatal storage error).
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    pub fn log(&self) -> PathBuf {
        self.log.clone()
    }

    /// What the server logged from byte `from` of its log on.
    pub fn log_since(&self, from: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }
}

/// Size of the small filesystem of the server whose disk a fault fills (a fault fills it in
/// memory, a second's work). Room for hours of the workload: the database file grows by
/// doubling, and in the 2-hour run it reached 142 MiB after 45 minutes, so at 256 MiB its
/// next growth would have stopped the server for good.
const SMALL_DISK: &str = "size=2g";

/// An LD_PRELOAD library that makes fsync and fdatasync wait first, as long as the file that
/// `BERTH_CHAOS_FSYNC_DELAY` names says (in microseconds; none or 0: no wait). Built with the
/// system's C compiler when a run starts: the slow-disk fault without a device mapper.
const FSYNC_DELAY_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long delay_us(void) {
    const char *path = getenv("BERTH_CHAOS_FSYNC_DELAY");
    if (!path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long us = 0;
    if (fscanf(f, "%ld", &us) != 1) us = 0;
    fclose(f);
    return us;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    long us = delay_us();
    if (us > 0) usleep(us);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    long us = delay_us();
    if (us > 0) usleep(us);
    return real(fd);
}
"#;

/// Builds the fsync-delay library under `dir`; answers its path.
fn build_fsync_delay(dir: &Path) -> anyhow::Result<PathBuf> {
    let source = dir.join("fsync-delay.c");
    let library = dir.join("fsync-delay.so");
    std::fs::write(&source, FSYNC_DELAY_C)?;
    let out = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .context("run gcc (apt-get install gcc) to build the fsync-delay library")?;
    anyhow::ensure!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(library)
}

pub struct Cluster {
    pub dir: PathBuf,
    hosts: TestHosts,
    /// LD_PRELOAD for every server: libfaketime and the fsync-delay library.
    preload: String,
    pub servers: Vec<Server>,
    /// The hollow agents' namespace and address.
    pub agents_ns: String,
    pub agents_ip: String,
    agents: Option<Child>,
    /// The servers' addresses, comma separated, as clients take them.
    pub addresses: String,
    /// The image every task runs: busybox in the run's registry.
    pub image: String,
    real: Option<RealAgent>,
}

impl Cluster {
    /// `servers` servers (the first bootstraps, the others join), `nodes` hollow agents and
    /// one real agent, under `dir`.
    pub async fn start(dir: &Path, servers: usize, nodes: u32) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: apt-get install libfaketime"
        );
        let hosts = TestHosts::create(servers + 1)?;
        let fsync_delay = build_fsync_delay(dir)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut cluster = Self {
            dir: dir.to_owned(),
            preload: format!("{LIBFAKETIME}:{}", fsync_delay.display()),
            servers: Vec::new(),
            agents_ns: hosts.names[servers].clone(),
            agents_ip: hosts.address(servers),
            agents: None,
            addresses: (0..servers)
                .map(|i| format!("{}:{PORT}", hosts.address(i)))
                .collect::<Vec<_>>()
                .join(","),
            hosts,
            image: String::new(),
            real: None,
        };
        for i in 0..servers {
            let ip = cluster.hosts.address(i);
            let data_dir = dir.join(format!("s{}", i + 1));
            std::fs::create_dir_all(&data_dir)?;
            // The last server's data dir is a small filesystem of its own.
            let small_disk = i + 1 == servers;
            if small_disk {
                let out = std::process::Command::new("mount")
                    .args(["-t", "tmpfs", "-o", SMALL_DISK, "tmpfs"])
                    .arg(&data_dir)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "mount a tmpfs on {}: {}",
                    data_dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // Both outside the data dir, which a fault may fill.
            let clock = dir.join(format!("logs/s{}.faketime", i + 1));
            std::fs::write(&clock, "+0\n")?;
            let fsync_delay = dir.join(format!("logs/s{}.fsync-delay", i + 1));
            std::fs::write(&fsync_delay, "0\n")?;
            cluster.servers.push(Server {
                id: i as u64 + 1,
                ns: cluster.hosts.names[i].clone(),
                addr: format!("{ip}:{PORT}"),
                ip,
                data_dir,
                clock,
                fsync_delay,
                small_disk,
                log: dir.join(format!("logs/s{}.log", i + 1)),
                child: None,
            });
        }
        // The first bootstraps a cluster and writes its admin credentials, kept outside its
        // data dir (a fault may empty that).
        cluster.spawn(0, &[])?;
        let first = &cluster.servers[0];
        let written = first.data_dir.join("admin.toml");
        poll("admin credentials", Duration::from_secs(60), || async {
            written.exists().then_some(())
        })
        .await
        .with_context(|| format!("see {}", first.log().display()))?;
        let credentials = dir.join("admin.toml");
        std::fs::copy(&written, &credentials).context("keep the admin credentials")?;
        for s in &cluster.servers {
            register_credentials(&s.addr, &credentials);
        }
        let join = first.addr.clone();
        let token = berth_tests::join_token(&join, "server").await?;
        for i in 1..servers {
            cluster.spawn(i, &["--join", &join, "--join-token", &token])?;
        }
        cluster.wait_voters(Duration::from_secs(90)).await?;
        cluster.start_agents(nodes).await?;
        cluster.start_real_agent().await?;
        Ok(cluster)
    }

    /// Starts server `i` (again) from its data dir, with `extra` flags the first time.
    pub fn spawn(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let preload = self.preload.clone();
        let s = &mut self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.log())?;
        let clock = s.clock.display().to_string();
        let fsync_delay = s.fsync_delay.display().to_string();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", s.ns))
            .arg(berth_bin())
            .args([
                "server",
                "--listen",
                &s.addr,
                "--node-id",
                &s.id.to_string(),
            ])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(SERVER_FLAGS)
            .args(extra)
            .env("LD_PRELOAD", &preload)
            .env("BERTH_CHAOS_FSYNC_DELAY", &fsync_delay)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env(
                "FAKETIME_CACHE_DURATION",
                FAKETIME_CACHE.as_secs().to_string(),
            )
            // Only the wall clock moves: timers, leases and TTLs run on the monotonic one.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn berth server")?;
        s.child = Some(child);
        Ok(())
    }

    /// kill -9 of server `i`, waiting until it is gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Whether server `i` runs (it may be paused).
    pub fn running(&mut self, i: usize) -> bool {
        !self.servers[i].exited()
    }

    /// Sends `signal` (`STOP`, `CONT`) to server `i`.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        if let Some(pid) = self.servers[i].pid() {
            let out = std::process::Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "kill -{signal} {pid}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `berth cluster status -o json` as server `i` sees it.
    pub async fn status(&self, i: usize) -> anyhow::Result<Value> {
        berth_tests::cli_json(&self.servers[i].addr, &["cluster", "status"]).await
    }

    /// The leader's position in `servers`, as the first server that answers sees it.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.servers.len() {
            let Ok(status) = tokio::time::timeout(Duration::from_secs(3), self.status(i)).await
            else {
                continue;
            };
            if let Some(id) = status.ok().and_then(|v| v["leader"].as_u64()) {
                return self.servers.iter().position(|s| s.id == id);
            }
        }
        None
    }

    /// Waits until every server is a voter of one cluster with a leader.
    pub async fn wait_voters(&self, timeout: Duration) -> anyhow::Result<()> {
        let n = self.servers.len();
        poll("every server to be a voter", timeout, || async {
            for i in 0..n {
                let v = tokio::time::timeout(Duration::from_secs(3), self.status(i))
                    .await
                    .ok()?
                    .ok()?;
                let members = v["members"].as_array()?;
                let ok = members.len() == n
                    && members.iter().all(|m| m["role"] != "learner")
                    && v["leader"].as_u64().is_some();
                if !ok {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// The real agent's containerd socket, containerd namespace and node name.
    pub fn real_agent(&self) -> Option<(PathBuf, String, String)> {
        self.real.as_ref().map(|r| {
            (
                r.env.containerd.socket.clone(),
                r.agent.namespace.clone(),
                r.agent.name.clone(),
            )
        })
    }

    /// The real agent, in the hollow agents' namespace (their faults are its faults), with a
    /// containerd of its own and the run's registry on this host's bridge address.
    async fn start_real_agent(&mut self) -> anyhow::Result<()> {
        let env = berth_tests::Env::start().await?;
        let (registry, image) = self.hosts.registry(&env.path("hosts-registry")).await?;
        let insecure = image.split('/').next().unwrap_or_default().to_owned();
        let listen = format!("{}:0", self.agents_ip);
        let agent = berth_tests::AgentProc::start_in(
            &env,
            &self.addresses,
            "real",
            Some(&self.agents_ns),
            &["--listen", &listen, "--insecure-registry", &insecure],
        )
        .await
        .context("start the real agent")?;
        self.image = image;
        self.real = Some(RealAgent {
            agent,
            _registry: registry,
            env,
        });
        Ok(())
    }

    /// Hollow agents (the real agent code over an in-memory runtime) in their namespace.
    async fn start_agents(&mut self, nodes: u32) -> anyhow::Result<()> {
        let data = self.dir.join("agents");
        std::fs::create_dir_all(&data)?;
        let token_file = data.join("join-token");
        std::fs::write(
            &token_file,
            berth_tests::join_token(&self.addresses, "agent").await?,
        )?;
        let log = std::fs::File::create(data.join("agents.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.agents_ns))
            .arg(berth_bin())
            .args(["agent", "--hollow", &nodes.to_string()])
            .args(["--node-name", "hollow", "--servers", &self.addresses])
            .args(["--cpu", "65536", "--memory", "1048576"])
            .args(["--listen", &format!("{}:0", self.agents_ip)])
            .args(["--advertise", &self.agents_ip])
            .arg("--join-token-file")
            .arg(&token_file)
            .arg("--data-dir")
            .arg(&data)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn hollow agents")?;
        self.agents = Some(child);
        let addresses = self.addresses.clone();
        poll(
            "the hollow agents to register",
            Duration::from_secs(60),
            || {
                let addresses = addresses.clone();
                async move {
                    let nodes_seen = berth_tests::cli_json(&addresses, &["get", "nodes"])
                        .await
                        .ok()?;
                    let ready = nodes_seen
                        .as_array()?
                        .iter()
                        .filter(|n| n["status"] == "ACTIVE")
                        .count();
                    (ready as u32 == nodes).then_some(())
                }
            },
        )
        .await
        .with_context(|| format!("see {}", data.join("agents.log").display()))
    }

    /// Runs `iptables ARGS` inside namespace `ns`.
    pub fn iptables(ns: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-w"])
            .args(args)
            .output()
            .context("run iptables")?;
        anyhow::ensure!(
            out.status.success(),
            "iptables {} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Drops every packet between namespace `ns` and address `ip`, both ways.
    pub fn cut(ns: &str, ip: &str) -> anyhow::Result<()> {
        Self::iptables(ns, &["-A", "INPUT", "-s", ip, "-j", "DROP"])?;
        Self::iptables(ns, &["-A", "OUTPUT", "-d", ip, "-j", "DROP"])
    }

    /// Removes every rule [`Cluster::cut`] added, in every namespace.
    pub fn heal_network(&self) -> anyhow::Result<()> {
        for ns in self.hosts.names.iter() {
            Self::iptables(ns, &["-F", "INPUT"])?;
            Self::iptables(ns, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// Stops every process (kill -9), leaving the data dirs and logs.
    pub async fn stop(&mut self) {
        for i in 0..self.servers.len() {
            // A paused process dies of SIGKILL too.
            self.kill(i).await;
        }
        if let Some(mut agents) = self.agents.take() {
            let _ = agents.kill().await;
        }
        if let Some(real) = self.real.take() {
            // Its log lives in the containerd scratch directory, which goes with it.
            let log = real.env.path("agent-real").join("agent.log");
            let _ = std::fs::copy(log, self.dir.join("logs/real-agent.log"));
            let _ = real.agent.kill().await;
        }
        berth_tests::unmount_under(&self.dir);
    }

    /// Damages server `i`'s database file (the server is down): random bytes over 1–16
    /// pages somewhere past its header, or the file cut to a quarter to half of its length.
    /// (The header is spared: redb keeps two commit slots there and falls back to the older
    /// one when the newer is damaged, which a server cannot tell from a clean restart.)
    /// Answers what it did.
    pub fn damage_database(&self, i: usize, rng: &mut StdRng) -> anyhow::Result<String> {
        use std::io::{Seek as _, SeekFrom, Write as _};
        const PAGE: u64 = 4096;
        let path = self.servers[i].data_dir.join("raft/raft.redb");
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let len = file.metadata()?.len();
        anyhow::ensure!(len > 64 * PAGE, "{} is only {len} bytes", path.display());
        if rng.gen_bool(0.5) {
            let cut = rng.gen_range(len / 4..len / 2);
            file.set_len(cut)?;
            return Ok(format!("file cut from {len} to {cut} bytes"));
        }
        let pages = rng.gen_range(1..=16u64);
        let at = rng.gen_range(1..len / PAGE - pages) * PAGE;
        let mut noise = vec![0u8; usize::try_from(pages * PAGE)?];
        rng.fill(noise.as_mut_slice());
        let mut file = file;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&noise)?;
        file.sync_all()?;
        Ok(format!(
            "file overwritten with {pages} pages of noise at byte {at} of {len}"
        ))
    }

    /// Server `i`, which refused its data dir, leaves the cluster and joins it again with an
    /// empty data dir and a new token, under the same ID.
    pub async fn rejoin(&mut self, i: usize) -> anyhow::Result<()> {
        let via = (0..self.servers.len())
            .find(|&o| o != i && self.running(o))
            .context("no other server runs")?;
        let via_addr = self.servers[via].addr.clone();
        let id = self.servers[i].id.to_string();
        poll(
            "the damaged server's removal",
            Duration::from_secs(60),
            || async {
                let out = berth_tests::cli(&via_addr, &["cluster", "remove", &id])
                    .await
                    .ok()?;
                // A removal whose answer was lost is retried, and then finds it gone.
                let gone = String::from_utf8_lossy(&out.stderr).contains("is not a member");
                (out.status.success() || gone).then_some(())
            },
        )
        .await?;
        for entry in std::fs::read_dir(&self.servers[i].data_dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        let token = berth_tests::join_token(&via_addr, "server").await?;
        self.spawn(i, &["--join", &via_addr, "--join-token", &token])
    }

    /// Fills server `i`'s small filesystem; answers the filler's path.
    pub fn fill_disk(&self, i: usize) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        let filler = self.servers[i].data_dir.join("filler");
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        Ok(filler)
    }
}

impl Drop for Cluster {
    /// A run that ends early still leaves no mount behind (its processes die with their
    /// handles, its namespaces with `TestHosts`).
    fn drop(&mut self) {
        berth_tests::unmount_under(&self.dir);
    }
}
