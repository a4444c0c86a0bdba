//! The leader's scheduling rounds on their own, in this process: what one round costs as the
//! cluster fills. A round is to cost what its tasks need, not what the cluster already runs
//! (issue #20, item 5), so the last rounds are to cost what the first did.

use std::time::Instant;

use berth_model::{ContainerDefinition, Node, PlacementStrategy, Task, TaskDefinitionSpec};
use berth_state::{Command, CommandResult, State};

use crate::results::{record_percentiles, Results};

const NODES: usize = 10_000;
const TASKS: usize = 100_000;

/// 10,000 nodes in three zones and 100,000 pending tasks of one family (one placement group,
/// the case where a round that looked at every task of its group would cost the most),
/// placed by [`berth_control::scheduling::plan`] round after round, each round applied before
/// the next; once with the default strategy (binpack), once spread over the zones (which
/// counts the group's tasks by zone) and once spread over the nodes (which counts them on each
/// candidate node). Records each one's planning times (`rounds.p50_ms`,
/// `rounds.p99_ms`; `rounds.spread_p50_ms`, `rounds.spread_node_p50_ms`, …), the mean of the first and the last tenth of
/// the rounds (`rounds.first_ms`, `rounds.last_ms`, …), tasks planned a second, and what a
/// round's entry took to apply (`rounds.apply_p50_ms`, …: what readers wait behind).
pub(crate) fn rounds(results: &mut Results) -> anyhow::Result<()> {
    for (prefix, spread) in [
        ("rounds.", None),
        ("rounds.spread_", Some("attribute:zone")),
        ("rounds.spread_node_", Some("node")),
    ] {
        let (mut ms, mut applied) = fill(spread)?;
        record_percentiles(results, &format!("{prefix}apply_"), &mut applied);
        let tenth = (ms.len() / 10).max(1);
        let mean = |rounds: &[f64]| rounds.iter().sum::<f64>() / rounds.len() as f64;
        results.insert(format!("{prefix}first_ms"), mean(&ms[..tenth]));
        results.insert(format!("{prefix}last_ms"), mean(&ms[ms.len() - tenth..]));
        let total: f64 = ms.iter().sum();
        results.insert(
            format!("{prefix}tasks_per_sec"),
            TASKS as f64 / (total / 1000.0).max(0.001),
        );
        results.insert(format!("{prefix}rounds"), ms.len() as f64);
        record_percentiles(results, prefix, &mut ms);
    }
    Ok(())
}

/// Places every task, round after round; answers each round's planning time and the time its
/// `PlaceTasks` took to apply, in ms.
fn fill(spread: Option<&str>) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut state = State::default();
    for i in 0..NODES {
        let mut node = Node::new(format!("hollow-{i:05}"), "127.0.0.1:1", 100_000, 100_000);
        node.attributes
            .insert("zone".into(), ["a", "b", "c"][i % 3].into());
        state.apply(Command::RegisterNode { node, at: 1 });
    }
    let mut spec = TaskDefinitionSpec::new(
        "placed",
        64,
        64,
        vec![ContainerDefinition::new("app", "registry/placed:1")],
    );
    if let Some(field) = spread {
        spec.placement.strategy = vec![PlacementStrategy::Spread {
            field: field.into(),
        }];
    }
    state.apply(Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec,
        reuse_identical: false,
        at: 1,
    });
    let def = state
        .task_definition("default", &"placed".parse()?)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the task definition just registered is not found"))?;
    for batch in 0..TASKS / 1_000 {
        let tasks = (0..1_000)
            .map(|i| Task::pending(format!("t{batch:03}-{i:03}"), "default", &def, 2))
            .collect();
        let (answer, _) = state.apply(Command::CreateTasks {
            tasks,
            client_token: None,
            at: 2,
        });
        anyhow::ensure!(
            matches!(answer, CommandResult::Tasks(_)),
            "creating tasks: {answer:?}"
        );
    }
    let mut cursor = String::new();
    let mut ms = Vec::new();
    let mut applied = Vec::new();
    let mut placed = 0;
    loop {
        let started = Instant::now();
        let Some(round) = berth_control::scheduling::plan(&state, 3, &mut cursor) else {
            break;
        };
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(ms.len() <= TASKS, "the rounds never end");
        if let Command::PlaceTasks { placements, .. } = &round {
            placed += placements.len();
        }
        let started = Instant::now();
        state.apply(round);
        applied.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    anyhow::ensure!(placed == TASKS, "{placed} of {TASKS} tasks were placed");
    Ok((ms, applied))
}
