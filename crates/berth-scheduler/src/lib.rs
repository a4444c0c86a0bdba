//! Placement decisions as pure functions: a cluster snapshot and the tasks to place in, a list
//! of decisions out. No IO, no clock, no async (a `#[test]` below keeps it that way).

use std::fmt::Write as _;

use berth_model::NodeStatus;

/// What placement needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    pub name: String,
    pub status: NodeStatus,
    /// Free CPU units.
    pub cpu_free: u64,
    /// Free memory in MiB.
    pub memory_free: u64,
}

/// A task waiting for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    pub task_id: String,
    pub cpu: u64,
    pub memory: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Place {
        task_id: String,
        node: String,
    },
    /// The task fits on no node; `reason` says why in numbers.
    Unplaceable {
        task_id: String,
        reason: String,
    },
}

/// Places `tasks` in order, binpacking on CPU then memory: each task goes to the feasible node
/// with the least CPU left after placing it (ties: least memory left, then name), so that
/// nodes fill up one by one and whole nodes stay free for large tasks.
pub fn place(nodes: &[NodeCapacity], tasks: &[TaskRequest]) -> Vec<Decision> {
    let mut nodes = nodes.to_vec();
    tasks
        .iter()
        .map(|task| {
            let best = nodes
                .iter_mut()
                .filter(|n| {
                    n.status == NodeStatus::Active
                        && n.cpu_free >= task.cpu
                        && n.memory_free >= task.memory
                })
                .min_by(|a, b| {
                    (a.cpu_free - task.cpu, a.memory_free - task.memory, &a.name).cmp(&(
                        b.cpu_free - task.cpu,
                        b.memory_free - task.memory,
                        &b.name,
                    ))
                });
            match best {
                Some(node) => {
                    node.cpu_free -= task.cpu;
                    node.memory_free -= task.memory;
                    Decision::Place {
                        task_id: task.task_id.clone(),
                        node: node.name.clone(),
                    }
                }
                None => Decision::Unplaceable {
                    task_id: task.task_id.clone(),
                    reason: explain(&nodes, task),
                },
            }
        })
        .collect()
}

/// Why `task` fits on none of `nodes`, e.g. "2 nodes: 1 lacked 512 MiB memory; 1 is DOWN".
fn explain(nodes: &[NodeCapacity], task: &TaskRequest) -> String {
    if nodes.is_empty() {
        return "no nodes are registered; start `berth agent` on a host".to_owned();
    }
    let (mut not_active, mut no_cpu, mut no_memory) = (0, 0, 0);
    for n in nodes {
        if n.status != NodeStatus::Active {
            not_active += 1;
        } else if n.cpu_free < task.cpu {
            no_cpu += 1;
        } else if n.memory_free < task.memory {
            no_memory += 1;
        }
    }
    let plural = |n: usize| if n == 1 { "node" } else { "nodes" };
    let mut reason = format!("0 of {} {} can run it:", nodes.len(), plural(nodes.len()));
    let mut parts = Vec::new();
    if no_cpu > 0 {
        parts.push(format!("{no_cpu} lacked {} CPU units", task.cpu));
    }
    if no_memory > 0 {
        parts.push(format!("{no_memory} lacked {} MiB memory", task.memory));
    }
    if not_active > 0 {
        parts.push(format!("{not_active} not ACTIVE"));
    }
    let _ = write!(reason, " {}", parts.join("; "));
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: u64, memory: u64) -> NodeCapacity {
        NodeCapacity {
            name: name.into(),
            status: NodeStatus::Active,
            cpu_free: cpu,
            memory_free: memory,
        }
    }

    fn task(id: &str, cpu: u64, memory: u64) -> TaskRequest {
        TaskRequest {
            task_id: id.into(),
            cpu,
            memory,
        }
    }

    fn check(nodes: &[NodeCapacity], tasks: &[TaskRequest], expected: &[&str]) {
        let got: Vec<String> = place(nodes, tasks)
            .into_iter()
            .map(|d| match d {
                Decision::Place { task_id, node } => format!("{task_id} -> {node}"),
                Decision::Unplaceable { task_id, reason } => format!("{task_id} !! {reason}"),
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn binpacks_onto_the_fullest_node_that_fits() {
        check(
            &[
                node("a", 2048, 4096),
                node("b", 512, 4096),
                node("c", 1024, 4096),
            ],
            &[
                task("t1", 256, 512),
                task("t2", 256, 512),
                task("t3", 256, 512),
            ],
            &["t1 -> b", "t2 -> b", "t3 -> c"],
        );
    }

    #[test]
    fn explains_what_is_short() {
        let mut down = node("d", 4096, 8192);
        down.status = NodeStatus::Down;
        check(
            &[node("a", 128, 4096), node("b", 2048, 256), down],
            &[task("t1", 256, 512)],
            &["t1 !! 0 of 3 nodes can run it: 1 lacked 256 CPU units; 1 lacked 512 MiB memory; 1 not ACTIVE"],
        );
        check(
            &[],
            &[task("t1", 256, 512)],
            &["t1 !! no nodes are registered; start `berth agent` on a host"],
        );
    }

    #[test]
    fn capacity_is_consumed_within_a_round() {
        check(
            &[node("a", 512, 1024)],
            &[task("t1", 512, 512), task("t2", 256, 256)],
            &[
                "t1 -> a",
                "t2 !! 0 of 1 node can run it: 1 lacked 256 CPU units",
            ],
        );
    }

    /// Architecture invariant: the scheduler does no IO and knows no runtime.
    #[test]
    fn depends_on_no_runtime_crates() {
        let manifest = include_str!("../Cargo.toml");
        for banned in [
            "tokio",
            "tonic",
            "openraft",
            "redb",
            "berth-store",
            "berth-proto",
        ] {
            assert!(
                !manifest.lines().any(|l| l.trim_start().starts_with(banned)),
                "berth-scheduler must not depend on {banned}"
            );
        }
    }
}
