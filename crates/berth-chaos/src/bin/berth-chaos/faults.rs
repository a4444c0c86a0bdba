//! Faults injected from outside the processes, and their healing.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use serde::Serialize;

use crate::cluster::{Cluster, FAKETIME_CACHE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// One server, or the leader, cut off from the other servers.
    Partition,
    /// The agents cut off from some or all servers.
    AgentPartition,
    /// SIGSTOP of a server (or the leader) for longer than an election timeout and the node
    /// TTL, then SIGCONT.
    Pause,
    /// kill -9 of one server, then a restart.
    Kill,
    /// kill -9 of the leader, then a restart.
    KillLeader,
    /// kill -9 of a majority of servers, then restarts.
    KillMajority,
    /// kill -9 of every server, then restarts.
    KillAll,
    /// One server's wall clock (only that process's, through libfaketime) jumps by up to an
    /// hour, forward or back, then returns.
    Clock,
    /// The small filesystem under one server's data dir fills up: the server must stop
    /// serving and exit; it restarts once space is freed.
    DiskFull,
    /// Every fsync and fdatasync of one server waits 20–500 ms first.
    SlowDisk,
    /// kill -9 of one server, its database file damaged (random bytes over a stretch of it,
    /// or cut short), then a restart. The server must refuse to start, naming the file, or run
    /// on (the damage hit no page in use); one that refused is removed from the cluster, its
    /// data dir emptied, and joins again with a new token, taking a fresh copy from the others.
    Corrupt,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Partition,
        Kind::AgentPartition,
        Kind::Pause,
        Kind::Kill,
        Kind::KillLeader,
        Kind::KillMajority,
        Kind::KillAll,
        Kind::Clock,
        Kind::DiskFull,
        Kind::SlowDisk,
        Kind::Corrupt,
    ];
}

/// A fault as injected, for the schedule and the report.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub kind: Kind,
    /// Seconds since the run started.
    pub at: f64,
    pub what: String,
}

/// What healing must undo.
enum Undo {
    Network,
    Resume(usize),
    Restart(Vec<usize>),
    Clock(usize),
    /// Remove the filler, then start the server again if it stopped.
    FreeDisk(usize, std::path::PathBuf),
    FastDisk(usize),
    /// Nothing left to undo.
    Nothing,
}

/// A fault injected, held and healed.
pub struct Done {
    pub what: String,
    /// What the cluster did wrong while the fault held.
    pub violations: Vec<String>,
}

/// How long a server may go on running on a full disk while writes reach it.
const FULL_DISK_EXIT: Duration = Duration::from_secs(20);

/// How long a server started on a damaged file may take to refuse it (the check on open reads
/// the whole file).
const CORRUPT_REFUSAL: Duration = Duration::from_secs(20);

/// Injects one fault of `kind`, holds it, and heals it. Answers what it did.
pub async fn inject(cluster: &mut Cluster, kind: Kind, rng: &mut StdRng) -> anyhow::Result<Done> {
    let mut violations = Vec::new();
    let n = cluster.servers.len();
    let random_or_leader = |rng: &mut StdRng, leader: Option<usize>| match leader {
        Some(l) if rng.gen_bool(0.5) => (l, "the leader"),
        _ => (rng.gen_range(0..n), "a follower or the leader"),
    };
    let (what, undo, hold) = match kind {
        Kind::Partition => {
            let (alone, who) = random_or_leader(rng, cluster.leader().await);
            for other in (0..n).filter(|&o| o != alone) {
                let (a, b) = (&cluster.servers[alone], &cluster.servers[other]);
                Cluster::cut(&a.ns, &b.ip)?;
                Cluster::cut(&b.ns, &a.ip)?;
            }
            (
                format!(
                    "server {} ({who}) cut off from the other servers",
                    alone + 1
                ),
                Undo::Network,
                rng.gen_range(2_000..8_000),
            )
        }
        Kind::AgentPartition => {
            let mut servers: Vec<usize> = (0..n).collect();
            servers.shuffle(rng);
            servers.truncate(rng.gen_range(1..=n));
            for &s in &servers {
                let ip = cluster.servers[s].ip.clone();
                Cluster::cut(&cluster.agents_ns, &ip)?;
            }
            let names: Vec<String> = servers.iter().map(|s| (s + 1).to_string()).collect();
            (
                format!("agents cut off from servers {}", names.join(", ")),
                Undo::Network,
                rng.gen_range(2_000..10_000),
            )
        }
        Kind::Pause => {
            let (server, who) = random_or_leader(rng, cluster.leader().await);
            cluster.signal(server, "STOP")?;
            (
                format!("server {} ({who}) paused", server + 1),
                Undo::Resume(server),
                // Longer than an election timeout (800 ms) and the node TTL (5 s).
                rng.gen_range(6_000..9_000),
            )
        }
        Kind::Kill => {
            let server = rng.gen_range(0..n);
            cluster.kill(server).await;
            (
                format!("server {} killed", server + 1),
                Undo::Restart(vec![server]),
                rng.gen_range(500..5_000),
            )
        }
        Kind::KillLeader => {
            let leader = cluster.leader().await.unwrap_or(0);
            cluster.kill(leader).await;
            (
                format!("server {} (the leader) killed", leader + 1),
                Undo::Restart(vec![leader]),
                rng.gen_range(500..5_000),
            )
        }
        Kind::KillMajority => {
            let mut servers: Vec<usize> = (0..n).collect();
            servers.shuffle(rng);
            servers.truncate(n / 2 + 1);
            for &s in &servers {
                cluster.kill(s).await;
            }
            let names: Vec<String> = servers.iter().map(|s| (s + 1).to_string()).collect();
            (
                format!("servers {} (a majority) killed", names.join(", ")),
                Undo::Restart(servers),
                rng.gen_range(500..5_000),
            )
        }
        Kind::KillAll => {
            for s in 0..n {
                cluster.kill(s).await;
            }
            (
                "every server killed".to_owned(),
                Undo::Restart((0..n).collect()),
                rng.gen_range(500..3_000),
            )
        }
        Kind::Clock => {
            let (server, who) = random_or_leader(rng, cluster.leader().await);
            let offset: i64 = *[-3600i64, -600, 600, 3600]
                .choose(rng)
                .expect("a list of offsets");
            std::fs::write(&cluster.servers[server].clock, format!("{offset:+}\n"))?;
            (
                format!(
                    "server {}'s ({who}) wall clock moved by {offset:+} s",
                    server + 1
                ),
                Undo::Clock(server),
                rng.gen_range(3_000..10_000),
            )
        }
        Kind::DiskFull => {
            let server = cluster
                .servers
                .iter()
                .position(|s| s.small_disk)
                .unwrap_or(n - 1);
            // Only once it serves and applies: one still starting after a kill (its open reads
            // and checks the whole file) would be judged before it could apply anything.
            let started = std::time::Instant::now();
            while !applies(cluster, server).await && started.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let filler = cluster.fill_disk(server)?;
            // Writes keep reaching it (the workload runs): its next append fails, and it
            // must stop serving and exit.
            let started = std::time::Instant::now();
            while cluster.running(server) && started.elapsed() < FULL_DISK_EXIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let exited = !cluster.running(server);
            // Still running is right only while no write failed: its database file is
            // allocated ahead (it grows in steps), so appends may still fit. Then it must
            // still be applying entries, not half alive.
            let outcome = if exited {
                format!("it exited after {} ms", started.elapsed().as_millis())
            } else if applies(cluster, server).await {
                "it still applies entries: its preallocated file had room".to_owned()
            } else if exits_within(cluster, server, Duration::from_secs(2)).await {
                // Its status could not be read because it was exiting: the failing write came
                // as its applied index was read (three reports of the 20-minute run).
                format!("it exited after {} ms", started.elapsed().as_millis())
            } else {
                violations.push(format!(
                    "server {} still runs {FULL_DISK_EXIT:?} after its disk filled up, but applies no entries",
                    server + 1
                ));
                "it did not exit, and applies nothing".to_owned()
            };
            (
                format!("server {}'s disk full ({outcome})", server + 1),
                Undo::FreeDisk(server, filler),
                rng.gen_range(500..3_000),
            )
        }
        Kind::SlowDisk => {
            let (server, who) = random_or_leader(rng, cluster.leader().await);
            let delay_ms: u64 = *[20u64, 100, 500].choose(rng).expect("a list of delays");
            std::fs::write(
                &cluster.servers[server].fsync_delay,
                format!("{}\n", delay_ms * 1000),
            )?;
            (
                format!(
                    "server {}'s ({who}) fsyncs slowed by {delay_ms} ms each",
                    server + 1
                ),
                Undo::FastDisk(server),
                rng.gen_range(3_000..10_000),
            )
        }
        Kind::Corrupt => {
            let server = rng.gen_range(0..n);
            cluster.kill(server).await;
            let damage = cluster.damage_database(server, rng)?;
            let log_from = std::fs::metadata(cluster.servers[server].log()).map_or(0, |m| m.len());
            cluster.spawn(server, &[])?;
            let started = std::time::Instant::now();
            while cluster.running(server) && started.elapsed() < CORRUPT_REFUSAL {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let outcome = if !cluster.running(server) {
                let said = cluster.servers[server].log_since(log_from);
                if !(said.contains("raft.redb") && said.contains("corrupted")) {
                    let last = said.lines().rev().find(|l| !l.trim().is_empty());
                    violations.push(format!(
                        "server {} exited on its damaged database without saying which file is corrupted: {}",
                        server + 1,
                        last.unwrap_or("(nothing)")
                    ));
                }
                cluster.rejoin(server).await?;
                format!(
                    "it refused to start after {} ms and joined again with an empty data dir",
                    started.elapsed().as_millis()
                )
            } else if applies(cluster, server).await {
                // The open verified every page of its newest commit (berth refuses the older
                // commit redb would fall back to).
                "it runs on: the damage hit no page of its newest commit".to_owned()
            } else {
                violations.push(format!(
                    "server {} neither refused its damaged database within {CORRUPT_REFUSAL:?} nor applies entries",
                    server + 1
                ));
                "it neither refused nor applies".to_owned()
            };
            (
                format!("server {}'s database {damage} ({outcome})", server + 1),
                Undo::Nothing,
                rng.gen_range(500..2_000),
            )
        }
    };
    tokio::time::sleep(Duration::from_millis(hold)).await;
    match undo {
        Undo::Network => cluster.heal_network()?,
        Undo::Resume(server) => cluster.signal(server, "CONT")?,
        Undo::Restart(servers) => {
            for s in servers {
                cluster.spawn(s, &[])?;
            }
        }
        Undo::Clock(server) => {
            std::fs::write(&cluster.servers[server].clock, "+0\n")?;
            // Until libfaketime reads the file again the server still runs on the moved
            // clock: a join right after (the corrupt fault's) got a certificate issued an
            // hour ahead, not yet valid for its peers.
            tokio::time::sleep(FAKETIME_CACHE + Duration::from_millis(500)).await;
        }
        Undo::FreeDisk(server, filler) => {
            std::fs::remove_file(&filler)?;
            // A write that failed just before the space came back still stops it, a moment
            // later (the 10-minute run on c03c5de: its file ran out 20 s into the fault, the
            // exit came as the filler went, after this check, and it stayed down).
            exits_within(cluster, server, Duration::from_secs(3)).await;
            if !cluster.running(server) {
                cluster.spawn(server, &[])?;
            }
        }
        Undo::FastDisk(server) => std::fs::write(&cluster.servers[server].fsync_delay, "0\n")?,
        Undo::Nothing => {}
    }
    Ok(Done {
        what: format!("{what} for {hold} ms"),
        violations,
    })
}

/// Whether server `i` is gone or goes within `within`.
async fn exits_within(cluster: &mut Cluster, i: usize, within: Duration) -> bool {
    let started = std::time::Instant::now();
    while cluster.running(i) && started.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !cluster.running(i)
}

/// Whether server `i` answers and its applied index moves within 3 s (the workload writes
/// all the time).
async fn applies(cluster: &Cluster, i: usize) -> bool {
    let applied = || async {
        let status = tokio::time::timeout(Duration::from_secs(5), cluster.status(i))
            .await
            .ok()?
            .ok()?;
        status["appliedIndex"].as_u64()
    };
    let Some(before) = applied().await else {
        return false;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    applied().await.is_some_and(|after| after > before)
}

/// Heals whatever a fault may have left: no rule in any namespace, every server running and
/// resumed, every clock true. Used before the final checks and after an error.
pub fn heal_all(cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.heal_network()?;
    for i in 0..cluster.servers.len() {
        cluster.signal(i, "CONT")?;
        std::fs::write(&cluster.servers[i].clock, "+0\n")?;
        std::fs::write(&cluster.servers[i].fsync_delay, "0\n")?;
        let filler = cluster.servers[i].data_dir.join("filler");
        if filler.exists() {
            std::fs::remove_file(&filler)?;
        }
        if !cluster.running(i) {
            cluster.spawn(i, &[])?;
        }
    }
    Ok(())
}
