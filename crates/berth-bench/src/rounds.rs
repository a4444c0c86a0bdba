//! The leader's scheduling rounds on their own, in this process: what one round costs as the
//! cluster fills. A round is to cost what its tasks need, not what the cluster already runs
//! (issue #20, item 5), so the last rounds are to cost what the first did.

use std::time::Instant;

use berth_model::{ContainerDefinition, Node, Task, TaskDefinitionSpec};
use berth_state::{Command, CommandResult, State};

use crate::results::{record_percentiles, Results};

const NODES: usize = 10_000;
const TASKS: usize = 100_000;

/// 10,000 nodes and 100,000 pending tasks of one family (one placement group, the case where
/// a round that looked at every task of its group would cost the most), placed by
/// [`berth_control::scheduling::plan`] round after round, each round applied before the next.
/// Records the rounds' planning times (`rounds.p50_ms`, `rounds.p99_ms`), the first and the
/// last tenth's mean (`rounds.first_ms`, `rounds.last_ms`), and planned tasks a second.
pub(crate) fn rounds(results: &mut Results) -> anyhow::Result<()> {
    let mut state = State::default();
    for i in 0..NODES {
        let node = Node::new(format!("hollow-{i:05}"), "127.0.0.1:1", 100_000, 100_000);
        state.apply(Command::RegisterNode { node, at: 1 });
    }
    state.apply(Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec: TaskDefinitionSpec::new(
            "placed",
            64,
            64,
            vec![ContainerDefinition::new("app", "registry/placed:1")],
        ),
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
        state.apply(round);
    }
    anyhow::ensure!(placed == TASKS, "{placed} of {TASKS} tasks were placed");
    let tenth = (ms.len() / 10).max(1);
    let mean = |rounds: &[f64]| rounds.iter().sum::<f64>() / rounds.len() as f64;
    results.insert("rounds.first_ms".into(), mean(&ms[..tenth]));
    results.insert("rounds.last_ms".into(), mean(&ms[ms.len() - tenth..]));
    let total: f64 = ms.iter().sum();
    results.insert(
        "rounds.tasks_per_sec".into(),
        TASKS as f64 / (total / 1000.0).max(0.001),
    );
    results.insert("rounds.rounds".into(), ms.len() as f64);
    record_percentiles(results, "rounds.", &mut ms);
    Ok(())
}
