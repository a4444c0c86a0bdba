//! The seed runner the deterministic simulations share (`berth-store/tests/sim.rs`,
//! `berth-control/tests/control_sim.rs`): `BERTH_SIM_SEED=S` replays one seed,
//! `BERTH_SIM_SEEDS=N` or `START..END` chooses which to run; seeds are spread over the cores.

/// The seeds to run: `BERTH_SIM_SEED`, else `BERTH_SIM_SEEDS`, else `0..default`.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("BERTH_SIM_SEED") {
        return vec![s.parse().expect("BERTH_SIM_SEED is a number")];
    }
    let spec = std::env::var("BERTH_SIM_SEEDS").unwrap_or_else(|_| default.to_string());
    let (start, end) = match spec.split_once("..") {
        Some((a, b)) => (
            a.parse().expect("seed range start"),
            b.parse().expect("seed range end"),
        ),
        None => (
            0,
            spec.parse()
                .expect("BERTH_SIM_SEEDS is a number or START..END"),
        ),
    };
    (start..end).collect()
}

/// Runs `run` for every seed of [`seeds`] on all cores; panics with the first failure of each
/// worker and the command (`replay`, with `{seed}` filled in) that replays it.
pub fn run_seeds(default: u64, replay: &str, run: impl Fn(u64) -> Result<(), String> + Sync) {
    let seeds = seeds(default);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = &run;
    let failures: Vec<(u64, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let seeds: Vec<u64> = seeds.iter().copied().skip(w).step_by(workers).collect();
                scope.spawn(move || {
                    seeds
                        .into_iter()
                        .find_map(|seed| run(seed).err().map(|e| (seed, e)))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    if let Some((seed, _)) = failures.first() {
        let lines: Vec<String> = failures
            .iter()
            .map(|(s, e)| format!("seed {s}: {e}"))
            .collect();
        panic!(
            "simulation {}\nreplay: {}",
            lines.join("\n"),
            replay.replace("{seed}", &seed.to_string())
        );
    }
}
