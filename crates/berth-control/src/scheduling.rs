//! Scheduling rounds: pending tasks are placed with `berth-scheduler`, and all decisions of a
//! round become one `PlaceTasks` command. Dry runs preview placements with the same code.

use std::borrow::Cow;
use std::collections::BTreeSet;

use berth_model::Protocol;

use berth_scheduler::{place, Decision, NodeCapacity, Running, TaskRequest};
use berth_state::{Command, Placement, State, Unplaced};

/// Tasks placed per round at most: a round runs under the state's read lock, which Raft's
/// apply waits for; more pending tasks than this take several rounds back to back. Each round
/// is one `PlaceTasks` entry. It was 500 while every read of the state waited for an entry's
/// apply; one-task reads and lists go to the published state now. Larger rounds place faster
/// and cost memory in a burst (what a round's changes wake on the agents' streams, kept by
/// the allocator): at 1,000 the 1,000-node placement ran at 9,400 tasks/s against 8,000-8,500
/// at 500 and the 150,000-task footprint held 672-678 MiB against 632-647; at 2,000, 8,900-9,900
/// tasks/s and 723-764 MiB (BENCHMARKS.md, round two, session 34).
pub const MAX_PER_ROUND: usize = 1_000;

/// Where each placement group runs, from the state's counts (no task is looked at).
struct Placed<'a>(&'a State);

impl Running for Placed<'_> {
    fn on_node(&self, namespace: &str, group: &str, node: &str) -> u64 {
        self.0.placed_on(namespace, group, node)
    }

    fn nodes_of(&self, namespace: &str, group: &str) -> Vec<(&str, u64)> {
        self.0.placed_of(namespace, group)
    }

    fn host_ports(&self, node: &str) -> Vec<(u16, Protocol)> {
        self.0.host_ports_on(node).collect()
    }
}

/// Where `count` new tasks like `template` would go now (or why they could not), for dry
/// runs. Nothing is written.
pub fn preview(state: &State, template: &TaskRequest, count: u32) -> Vec<Decision> {
    let requests: Vec<TaskRequest> = (0..count)
        .map(|i| TaskRequest {
            task_id: format!("dry-run-{i}"),
            ..template.clone()
        })
        .collect();
    place_now(state, &requests)
}

/// Places `requests` on the nodes as they are in `state`, given where each group already runs
/// (for distinctInstance and spread). Node names and attributes are borrowed, not copied.
fn place_now(state: &State, requests: &[TaskRequest]) -> Vec<Decision> {
    let nodes: Vec<NodeCapacity> = state
        .nodes()
        .map(|n| {
            let (cpu, memory) = state.allocated_on(&n.name);
            NodeCapacity {
                cpu_free: n.cpu.total.saturating_sub(cpu),
                memory_free: n.memory.total.saturating_sub(memory),
                name: Cow::Borrowed(&n.name),
                status: n.status,
                attributes: Cow::Borrowed(&n.attributes),
                host_ports: BTreeSet::new(),
            }
        })
        .collect();
    place(&nodes, &Placed(state), requests)
}

/// The fixed host ports a task of `t`'s definition publishes.
fn task_host_ports(state: &State, t: &berth_model::Task) -> Vec<(u16, Protocol)> {
    state
        .task_definition(&t.namespace, &t.task_definition)
        .map(|d| d.fixed_host_ports().collect())
        .unwrap_or_default()
}

/// One round's decisions, or `None` when there is nothing new to write.
///
/// A round looks at [`MAX_PER_ROUND`] pending tasks at most, the first ones after `cursor` (a
/// task ID, wrapping around), and moves `cursor` past them: tasks that fit nowhere cannot
/// starve those behind them.
pub fn plan(state: &State, at: u64, cursor: &mut String) -> Option<Command> {
    let pending: Vec<_> = state.pending_after(cursor).take(MAX_PER_ROUND).collect();
    let last = pending.last()?;
    if pending.len() == MAX_PER_ROUND {
        cursor.clone_from(&last.task_id);
    } else {
        cursor.clear();
    }
    let requests: Vec<TaskRequest> = pending
        .iter()
        .map(|t| TaskRequest {
            task_id: t.task_id.clone(),
            cpu: t.cpu.into(),
            memory: t.memory.into(),
            namespace: t.namespace.clone(),
            group: t.placement_group().into_owned(),
            placement: t.placement.clone(),
            host_ports: task_host_ports(state, t),
        })
        .collect();
    let mut placements = Vec::new();
    let mut unplaced = Vec::new();
    // Decisions come in the order of the requests.
    for (decision, task) in place_now(state, &requests).into_iter().zip(&pending) {
        match decision {
            Decision::Place { task_id, node } => placements.push(Placement { task_id, node }),
            Decision::Unplaceable { task_id, reason } => {
                let message = format!("unable to place: {reason}");
                let already = task.events.last().is_some_and(|e| e.message == message);
                if !already {
                    unplaced.push(Unplaced { task_id, reason });
                }
            }
        }
    }
    if placements.is_empty() && unplaced.is_empty() {
        return None;
    }
    Some(Command::PlaceTasks {
        placements,
        unplaced,
        at,
    })
}
