//! The numbers a scenario measures, and how they are kept and shown beside the goals.

use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) type Results = BTreeMap<String, f64>;

/// Goals from issues #9 and #20 (and the ingress's and cold starts' from their own issues),
/// shown beside the results: (key, goal, higher is better). Every `*.elections`,
/// `*.failed_writes` and `*.server_failed_writes` has the goal 0 too, and every [`PEER_RATIOS`] its factor.
const GOALS: &[(&str, f64, bool)] = &[
    ("placement.tasks_per_sec", 10_000.0, true),
    ("placement_1k.tasks_per_sec", 10_000.0, true),
    ("start.p50_ms", 150.0, false),
    ("start.ratio_p50", 1.0, false),
    ("failover.p99_ms", 1_000.0, false),
    ("node_loss.p99_ms", 5_000.0, false),
    ("raft.c64_ops_per_sec", 20_000.0, true),
    ("footprint.rss_mib", 512.0, false),
    ("read.burst_p99_ms", 20.0, false),
    // Issue #22: the console's page load with 10,000 tasks, under a second.
    ("console.load_max_ms", 1000.0, false),
    ("footprint.restore_ms", 10_000.0, false),
    ("ingress.berth_vs_nginx_rps", 1.0, true),
    ("ingress.berth_added_p99_ms", 1.0, false),
    ("cold_start.cold_p50_ms", 500.0, false),
    ("cold_start.cold_p99_ms", 1_000.0, false),
];

/// berth against a peer measured in the same run: (ratio key, berth's key, the peer's key,
/// goal for the ratio).
const PEER_RATIOS: &[(&str, &str, &str, f64)] = &[
    (
        "raft.c1_vs_etcd",
        "raft.c1_ops_per_sec",
        "etcd.c1_ops_per_sec",
        1.0,
    ),
    (
        "raft.c64_vs_etcd",
        "raft.c64_ops_per_sec",
        "etcd.c64_ops_per_sec",
        2.0,
    ),
];

/// The goal of `key`: the goal and whether higher is better.
fn goal(key: &str) -> Option<(f64, bool)> {
    if let Some((_, goal, higher)) = GOALS.iter().find(|(k, _, _)| *k == key) {
        return Some((*goal, *higher));
    }
    if let Some((_, _, _, goal)) = PEER_RATIOS.iter().find(|(k, _, _, _)| *k == key) {
        return Some((*goal, true));
    }
    // Elections and failed writes: none, except where the scenario makes them (failover).
    let counted = key.ends_with(".elections") || key.ends_with("failed_writes");
    (counted && !key.starts_with("failover.")).then_some((0.0, false))
}

/// Sorts `ms` and records its median and 99th percentile as `{prefix}p50_ms` and
/// `{prefix}p99_ms`; returns the median.
pub(crate) fn record_percentiles(results: &mut Results, prefix: &str, ms: &mut [f64]) -> f64 {
    ms.sort_by(f64::total_cmp);
    let p50 = percentile(ms, 50.0);
    results.insert(format!("{prefix}p50_ms"), p50);
    results.insert(format!("{prefix}p99_ms"), percentile(ms, 99.0));
    p50
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Merges `results` into `dir`'s `latest.json` and renders `latest.md`. `run` holds every
/// result of this run so far: the ratios to a peer come from it only, never from an earlier
/// run's figures.
pub(crate) fn write(results: &Results, run: &Results, dir: &PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json_path = dir.join("latest.json");
    // Keep keys of scenarios not run this time.
    let mut all: Results = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // A scenario run now replaces everything of its earlier run (a `.failed` mark included).
    let scenario = |k: &str| k.split('.').next().unwrap_or_default().to_owned();
    let ran: std::collections::BTreeSet<String> = results.keys().map(|k| scenario(k)).collect();
    all.retain(|k, _| !ran.contains(&scenario(k)));
    all.extend(results.iter().map(|(k, v)| (k.clone(), *v)));
    for (ratio, ours, peer, _) in PEER_RATIOS {
        match (run.get(*ours), run.get(*peer)) {
            (Some(a), Some(b)) => {
                all.insert((*ratio).to_owned(), a / b);
            }
            // Neither side ran now: the ratio stays, from the run that had both.
            _ if !ran.contains(&scenario(ours)) && !ran.contains(&scenario(peer)) => {}
            // One side ran without the other: the old ratio no longer matches its figures.
            _ => {
                all.remove(*ratio);
            }
        }
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&all)? + "\n")?;
    let mut md = String::from("| key | value | goal |\n|---|---:|---|\n");
    for (k, v) in &all {
        let goal = goal(k).map_or(String::new(), |(goal, higher)| {
            let met = if higher { *v >= goal } else { *v <= goal };
            format!(
                "{} {goal} ({})",
                if higher { "≥" } else { "≤" },
                if met { "met" } else { "missed" }
            )
        });
        md.push_str(&format!("| `{k}` | {v:.2} | {goal} |\n"));
    }
    std::fs::write(dir.join("latest.md"), md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(pairs: &[(&str, f64)]) -> Results {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn written(dir: &std::path::Path) -> Results {
        let text = std::fs::read_to_string(dir.join("latest.json")).expect("latest.json");
        serde_json::from_str(&text).expect("json")
    }

    #[test]
    fn a_peer_ratio_comes_from_one_run_and_stays_until_either_side_runs_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let both = results(&[
            ("raft.c1_ops_per_sec", 400.0),
            ("etcd.c1_ops_per_sec", 800.0),
        ]);
        write(&both, &both, &dir).expect("write");
        assert_eq!(written(&dir).get("raft.c1_vs_etcd"), Some(&0.5));
        // Another scenario alone: the ratio stays.
        let read = results(&[("read.burst_p99_ms", 30.0)]);
        write(&read, &read, &dir).expect("write");
        assert_eq!(written(&dir).get("raft.c1_vs_etcd"), Some(&0.5));
        // One side alone: its new figure and the old peer's are not one run's.
        let raft = results(&[("raft.c1_ops_per_sec", 500.0)]);
        write(&raft, &raft, &dir).expect("write");
        assert_eq!(written(&dir).get("raft.c1_vs_etcd"), None);
    }
}
