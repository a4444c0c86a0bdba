//! `berth-chaos`: real berth servers and agents under injected faults, with clients recording
//! what they saw, checked for linearizability and for invariants of the final state.
//!
//! `berth-chaos run --duration 120s [--seed N]` starts a cluster (each server in a network
//! namespace of its own), runs the workload, injects a random schedule of faults one after
//! the other (each held a few seconds, then healed), then heals everything, lets the cluster
//! converge, and checks. Everything (history, schedule, every process's log) stays in the run's
//! directory; `berth-chaos check DIR` checks a saved history again.

mod cluster;
mod faults;
mod invariants;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_chaos::history::{History, BUDGET};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::faults::Kind;

#[derive(Parser)]
#[command(
    name = "berth-chaos",
    about = "berth under faults: a Jepsen-style suite"
)]
enum Cli {
    /// Run the workload under a random schedule of faults and check what clients saw.
    Run(RunArgs),
    /// Check a saved history again (DIR/history.json).
    Check {
        dir: PathBuf,
        /// Search steps each key may take before it is undecided.
        #[arg(long, default_value_t = BUDGET)]
        budget: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// How long to inject faults (the set-up and the final checks come on top).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    duration: Duration,
    /// The schedule's seed (random when not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Servers (3 or 5).
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// Hollow agents.
    #[arg(long, default_value_t = 4)]
    nodes: u32,
    /// Only these fault kinds (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Kind>,
    /// Inject every kind once, in order, before the random schedule.
    #[arg(long)]
    every_kind_first: bool,
    /// Clients read stale (from the answering server's own state, as `--stale` does): a check
    /// of the checker, which must then find violations under partitions and pauses.
    #[arg(long)]
    stale_reads: bool,
    /// Where the run's directory goes.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
}

/// The run's summary, saved beside its history.
#[derive(Serialize)]
struct Summary {
    seed: u64,
    duration_s: f64,
    runs: usize,
    faults: Vec<faults::Injected>,
    operations: usize,
    indeterminate: usize,
    violations: Vec<String>,
    replay: String,
}

fn main() -> anyhow::Result<()> {
    // The servers, agents and CLI run are the `berth` beside this binary unless BERTH_BIN
    // names one (set before any thread starts).
    if std::env::var_os("BERTH_BIN").is_none() {
        let beside = std::env::current_exe()?.with_file_name("berth");
        anyhow::ensure!(
            beside.is_file(),
            "{} is missing: build it (cargo build -p berth) or set BERTH_BIN",
            beside.display()
        );
        std::env::set_var("BERTH_BIN", beside);
    }
    tokio::runtime::Runtime::new()?.block_on(chaos())
}

async fn chaos() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Run(args) => {
            let violations = run(args).await?;
            if violations > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cli::Check { dir, budget } => {
            let path = dir.join("history.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            let history: History =
                serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
            let reports = history.check(budget);
            for r in &reports {
                println!("{}", history.explain(r));
            }
            println!("{} operations, {} violations", history.len(), reports.len());
            if !reports.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<usize> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let kinds: Vec<Kind> = if args.faults.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.faults.clone()
    };
    let dir = args.out.join(format!(
        "{}-seed-{seed}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let replay = format!(
        "berth-chaos run --seed {seed} --duration {} --servers {} --clients {} --nodes {}{}{}",
        humantime::format_duration(args.duration),
        args.servers,
        args.clients,
        args.nodes,
        if args.faults.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = args
                .faults
                .iter()
                .map(|k| {
                    serde_json::to_value(k)
                        .map_or(String::new(), |v| v.as_str().unwrap_or_default().to_owned())
                })
                .collect();
            format!(" --faults {}", names.join(","))
        },
        if args.every_kind_first {
            " --every-kind-first"
        } else {
            ""
        },
    ) + if args.stale_reads {
        " --stale-reads"
    } else {
        ""
    };
    println!("chaos: seed {seed}, directory {}", dir.display());
    println!("chaos: replay with: {replay}");

    let mut cluster = cluster::Cluster::start(&dir, args.servers, args.nodes).await?;
    workload::prepare(&cluster.addresses, &cluster.image).await?;
    let recorder = workload::Recorder::new(&cluster.image);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let mut client = workload::Client::new(c, &cluster.addresses, seed, recorder.clone());
        client.stale = args.stale_reads;
        let stop = stop.clone();
        clients.spawn(async move {
            client.run(stop).await;
        });
    }
    // One more client, which creates and deletes the services of each epoch.
    let rotator = workload::Client::new(args.clients, &cluster.addresses, seed, recorder.clone());
    clients.spawn(workload::rotate_services(rotator, stop.clone()));

    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut injected = Vec::new();
    let mut schedule: Vec<Kind> = if args.every_kind_first {
        kinds.clone()
    } else {
        Vec::new()
    };
    schedule.reverse();
    let mut violations = Vec::new();
    while started.elapsed() < args.duration || !schedule.is_empty() {
        let kind = schedule
            .pop()
            .unwrap_or_else(|| kinds[rng.gen_range(0..kinds.len())]);
        let at = started.elapsed().as_secs_f64();
        let what = match faults::inject(&mut cluster, kind, &mut rng).await {
            Ok(done) => {
                violations.extend(done.violations);
                done.what
            }
            Err(e) => {
                faults::heal_all(&mut cluster)?;
                anyhow::bail!("inject {kind:?}: {e:#}");
            }
        };
        println!(
            "chaos: {at:>7.1}s {:<15} {what}",
            serde_json::to_value(kind)?.as_str().unwrap_or_default()
        );
        injected.push(faults::Injected { kind, at, what });
        // Healed: the cluster must have a leader and every voter again before the next.
        if let Err(e) = cluster.wait_voters(Duration::from_secs(60)).await {
            violations.push(format!(
                "the cluster did not recover within 60 s of healing {kind:?}: {e:#}"
            ));
            break;
        }
        // A moment of calm between faults, for the workload to make progress.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2_000))).await;
    }
    println!("chaos: healing everything, then the final reads and checks");
    faults::heal_all(&mut cluster)?;
    if let Err(e) = cluster.wait_voters(Duration::from_secs(120)).await {
        violations.push(format!(
            "the cluster did not recover within 120 s of the last fault: {e:#}"
        ));
    }
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let elapsed = started.elapsed();

    // Final reads, from fresh clients, after everything healed: acknowledged writes must be
    // there.
    let so_far = recorder.history();
    let families = workload::families_of(&so_far);
    for c in 0..args.clients {
        let mut client =
            workload::Client::new(c, &cluster.addresses, seed ^ 0xf1, recorder.clone());
        // One client reads the services and the families; each lists its own groups of tasks.
        let mine = if c == 0 { &families[..] } else { &[] };
        client
            .final_reads(c == 0, mine, workload::groups_of(&so_far, c))
            .await;
    }
    violations.extend(invariants::check(&cluster).await);
    let history = recorder.history();
    std::fs::write(
        dir.join("history.json"),
        serde_json::to_vec(&history).context("encode the history")?,
    )?;
    let reports = history.check(BUDGET);
    for r in &reports {
        violations.push(history.explain(r));
    }
    cluster.stop().await;

    let summary = Summary {
        seed,
        duration_s: elapsed.as_secs_f64(),
        runs: injected.len(),
        faults: injected,
        operations: history.len(),
        indeterminate: history.indeterminate(),
        violations: violations.clone(),
        replay: replay.clone(),
    };
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    for v in &violations {
        println!("chaos: VIOLATION {v}");
    }
    let mut by_kind: Vec<String> = Vec::new();
    for kind in Kind::ALL {
        let n = summary.faults.iter().filter(|f| f.kind == *kind).count();
        if n > 0 {
            by_kind.push(format!(
                "{} {n}",
                serde_json::to_value(kind)?.as_str().unwrap_or_default()
            ));
        }
    }
    println!(
        "chaos: {} fault runs in {:.0} s ({}), {} operations ({} without an answer)",
        summary.runs,
        summary.duration_s,
        by_kind.join(", "),
        summary.operations,
        summary.indeterminate
    );
    println!("{} violations", violations.len());
    if violations.is_empty() {
        // Nothing to look into: keep the summary, history and logs, not the data.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "agents" || (name.starts_with('s') && entry.path().is_dir()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    } else {
        println!(
            "chaos: seed {seed}; history, schedule and logs in {}; replay with: {replay}",
            dir.display()
        );
    }
    Ok(violations.len())
}
