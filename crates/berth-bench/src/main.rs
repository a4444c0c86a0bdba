//! `berth-bench`: berth's benchmarks against real `berth` processes (set `BERTH_BIN`; `make
//! bench` builds and runs a release build). Each scenario writes numbers under its own keys
//! into `bench/results/latest.json` (merged with earlier keys) and a table into
//! `bench/results/latest.md`.
//!
//!   berth-bench [SCENARIO...]      # see SCENARIOS; all when none is given; `soak` only
//!                                  # when named
//!
//! The scenarios live by group in `raft` (and its peer `etcd`), `start`, `ingress`, `cold_start`,
//! `rounds` (the scheduler alone, in process) and `fleet`; `cluster` (the servers
//! and hollow agents measured) and `api` (requests and `/metrics` waits) serve them all; `results` keeps
//! the numbers and renders them beside the goals.

use std::path::PathBuf;
use std::time::Instant;

mod api;
mod cluster;
mod cold_start;
mod etcd;
mod fleet;
mod ingress;
mod raft;
mod results;
mod rounds;
mod soak;
mod start;

use results::Results;

/// Every scenario, in the order `make bench` runs them.
const SCENARIOS: &[&str] = &[
    "raft",
    "etcd",
    "start",
    "ingress",
    "cold_start",
    "failover",
    "node_loss",
    "rounds",
    "placement_1k",
    "placement",
    "read",
    "console",
    "footprint",
];

/// Scenarios that run only when named (they take much longer).
const NAMED_ONLY: &[&str] = &["soak"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let run: Vec<&str> = if wanted.is_empty() {
        SCENARIOS.to_vec()
    } else {
        for w in &wanted {
            anyhow::ensure!(
                SCENARIOS.contains(&w.as_str()) || NAMED_ONLY.contains(&w.as_str()),
                "unknown scenario {w:?}; use one of {}, {}",
                SCENARIOS.join(", "),
                NAMED_ONLY.join(", ")
            );
        }
        wanted.iter().map(String::as_str).collect()
    };
    let out =
        PathBuf::from(std::env::var("BERTH_BENCH_OUT").unwrap_or_else(|_| "bench/results".into()));
    // A failing scenario is reported as failed (and recorded as `SCENARIO.failed = 1`); the
    // others still run, and the exit code says something failed.
    let mut failed = Vec::new();
    let mut measured = Results::new();
    for scenario in run {
        eprintln!("== {scenario}");
        let started = Instant::now();
        let mut results = Results::new();
        let outcome = match scenario {
            "raft" => raft::raft(&mut results).await,
            "etcd" => etcd::etcd(&mut results).await,
            "start" => start::start(&mut results).await,
            "ingress" => ingress::ingress(&mut results).await,
            "cold_start" => cold_start::cold_start(&mut results).await,
            "failover" => raft::failover(&mut results, 20).await,
            "node_loss" => fleet::node_loss(&mut results, 10).await,
            "rounds" => rounds::rounds(&mut results),
            "placement_1k" => fleet::placement(&mut results, "placement_1k", 1_000, 10_000).await,
            "placement" => fleet::placement(&mut results, "placement", 10_000, 100_000).await,
            "read" => fleet::read(&mut results).await,
            "console" => fleet::console(&mut results).await,
            "footprint" => fleet::footprint(&mut results).await,
            "soak" => soak::soak(&mut results).await,
            _ => unreachable!(),
        };
        let failed_logs = out.join("failed").join(scenario);
        let kept = cluster::end_scratch(outcome.is_err().then_some(failed_logs.as_path()));
        if let Err(e) = outcome {
            eprintln!("{scenario} FAILED: {e:#}");
            if let Some(logs) = kept {
                eprintln!("{scenario}: its logs are in {}", logs.display());
            }
            results.insert(format!("{scenario}.failed"), 1.0);
            failed.push(scenario);
        }
        for (k, v) in &results {
            eprintln!("{k} = {v:.1}");
        }
        eprintln!("({scenario} took {:.0} s)", started.elapsed().as_secs_f64());
        measured.extend(results.iter().map(|(k, v)| (k.clone(), *v)));
        results::write(&results, &measured, &out)?;
        settle().await;
    }
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// Waits (at most a minute) until no process of the scenario that ended still runs: its
/// processes were killed when it ended, but 10,000 hollow agents and their connections take
/// a while to go, and the next scenario's servers must not share the two cores with them
/// (a cluster started meanwhile could miss its first election's deadline).
async fn settle() {
    let bin = berth_tests::berth_bin();
    let ours = |pid: &std::ffi::OsStr| {
        std::fs::read_link(PathBuf::from("/proc").join(pid).join("exe")).is_ok_and(|exe| exe == bin)
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while Instant::now() < deadline {
        let running = std::fs::read_dir("/proc")
            .map(|dir| dir.flatten().any(|e| ours(&e.file_name())))
            .unwrap_or(false);
        if !running {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    eprintln!("(processes of the last scenario still run after a minute; going on)");
}
