//! Placement decisions as pure functions: a cluster snapshot and the tasks to place in, a list
//! of decisions out. No IO, no clock, no async (a `#[test]` below keeps it that way).

pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use berth_model::{
    BinpackField, Expression, NodeStatus, PlacementConstraint, PlacementSpec, PlacementStrategy,
};

/// What placement needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    pub name: String,
    pub status: NodeStatus,
    /// Free CPU units.
    pub cpu_free: u64,
    /// Free memory in MiB.
    pub memory_free: u64,
    pub attributes: BTreeMap<String, String>,
}

/// A task waiting for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    pub task_id: String,
    pub cpu: u64,
    pub memory: u64,
    /// Tasks of one group are spread or kept apart (`service:NAME`, `family:NAME`).
    pub group: String,
    pub placement: PlacementSpec,
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

/// Why a node cannot take a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Filtered {
    // Declaration order is the order reasons are listed in.
    Cpu,
    Memory,
    MemberOf(String),
    DistinctInstance,
    NotActive,
}

const DEFAULT_STRATEGY: [PlacementStrategy; 2] = [
    PlacementStrategy::Binpack {
        field: BinpackField::Cpu,
    },
    PlacementStrategy::Binpack {
        field: BinpackField::Memory,
    },
];

/// Places `tasks` in order. A node is feasible when it is ACTIVE, has the CPU and memory
/// free, and meets the task's constraints (`memberOf` expressions over its attributes;
/// `distinctInstance`: no task of the same group on it, counting `existing` placements
/// `(node, group)` and this round's). Feasible nodes are ranked by the task's strategies in
/// order (binpack on cpu or memory: least left after placing; spread on `node` or
/// `attribute:NAME`: fewest tasks of the group; random: a hash of task and node), then by name.
/// Without strategies: binpack on CPU, then memory.
pub fn place(
    nodes: &[NodeCapacity],
    existing: &[(String, String)],
    tasks: &[TaskRequest],
) -> Vec<Decision> {
    let mut nodes = nodes.to_vec();
    let mut counts: HashMap<(String, String), u64> = HashMap::new();
    for (node, group) in existing {
        *counts.entry((node.clone(), group.clone())).or_default() += 1;
    }
    tasks
        .iter()
        .map(|task| {
            let expressions: Vec<Expression> = task
                .placement
                .constraints
                .iter()
                .filter_map(|c| match c {
                    PlacementConstraint::MemberOf { expression } => expression.parse().ok(),
                    PlacementConstraint::DistinctInstance => None,
                })
                .collect();
            let distinct = task
                .placement
                .constraints
                .contains(&PlacementConstraint::DistinctInstance);
            let mut filtered: BTreeMap<Filtered, usize> = BTreeMap::new();
            let mut best: Option<(Vec<u64>, usize)> = None;
            for (i, n) in nodes.iter().enumerate() {
                let why = if n.status != NodeStatus::Active {
                    Some(Filtered::NotActive)
                } else if let Some(e) = expressions.iter().find(|e| !e.matches(&n.attributes)) {
                    Some(Filtered::MemberOf(e.to_string()))
                } else if distinct
                    && counts
                        .get(&(n.name.clone(), task.group.clone()))
                        .is_some_and(|c| *c > 0)
                {
                    Some(Filtered::DistinctInstance)
                } else if n.cpu_free < task.cpu {
                    Some(Filtered::Cpu)
                } else if n.memory_free < task.memory {
                    Some(Filtered::Memory)
                } else {
                    None
                };
                if let Some(why) = why {
                    *filtered.entry(why).or_default() += 1;
                    continue;
                }
                let key = rank(task, n, &nodes, &counts);
                if best
                    .as_ref()
                    .is_none_or(|(k, j)| (&key, &n.name) < (k, &nodes[*j].name))
                {
                    best = Some((key, i));
                }
            }
            match best {
                Some((_, i)) => {
                    let node = &mut nodes[i];
                    node.cpu_free -= task.cpu;
                    node.memory_free -= task.memory;
                    *counts
                        .entry((node.name.clone(), task.group.clone()))
                        .or_default() += 1;
                    Decision::Place {
                        task_id: task.task_id.clone(),
                        node: node.name.clone(),
                    }
                }
                None => Decision::Unplaceable {
                    task_id: task.task_id.clone(),
                    reason: explain(nodes.len(), task, &filtered),
                },
            }
        })
        .collect()
}

/// The ranking key of node `n` for `task` (smaller is better), one entry per strategy.
fn rank(
    task: &TaskRequest,
    n: &NodeCapacity,
    nodes: &[NodeCapacity],
    counts: &HashMap<(String, String), u64>,
) -> Vec<u64> {
    let strategies: &[PlacementStrategy] = if task.placement.strategy.is_empty() {
        &DEFAULT_STRATEGY
    } else {
        &task.placement.strategy
    };
    let in_group = |node: &str| {
        counts
            .get(&(node.to_owned(), task.group.clone()))
            .copied()
            .unwrap_or(0)
    };
    strategies
        .iter()
        .map(|s| match s {
            PlacementStrategy::Binpack {
                field: BinpackField::Cpu,
            } => n.cpu_free - task.cpu,
            PlacementStrategy::Binpack {
                field: BinpackField::Memory,
            } => n.memory_free - task.memory,
            PlacementStrategy::Spread { field } if field == "node" => in_group(&n.name),
            PlacementStrategy::Spread { field } => {
                let attr = field.strip_prefix("attribute:").unwrap_or(field);
                let value = n.attributes.get(attr);
                nodes
                    .iter()
                    .filter(|m| m.attributes.get(attr) == value)
                    .map(|m| in_group(&m.name))
                    .sum()
            }
            PlacementStrategy::Random => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (&task.task_id, &n.name).hash(&mut h);
                h.finish()
            }
        })
        .collect()
}

/// Why `task` fits on none of the nodes, e.g. "0 of 3 nodes can run it: 1 lacked 512 MiB memory".
fn explain(total: usize, task: &TaskRequest, filtered: &BTreeMap<Filtered, usize>) -> String {
    if total == 0 {
        return "no nodes are registered; start `berth agent` on a host".to_owned();
    }
    let plural = if total == 1 { "node" } else { "nodes" };
    let mut reason = format!("0 of {total} {plural} can run it:");
    let parts: Vec<String> = filtered
        .iter()
        .map(|(why, n)| match why {
            Filtered::Cpu => format!("{n} lacked {} CPU units", task.cpu),
            Filtered::Memory => format!("{n} lacked {} MiB memory", task.memory),
            Filtered::NotActive => format!("{n} not ACTIVE"),
            Filtered::MemberOf(e) => format!("{n} filtered by memberOf({e})"),
            Filtered::DistinctInstance => {
                format!(
                    "{n} already run a task of {} (distinctInstance)",
                    task.group
                )
            }
        })
        .collect();
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
            attributes: BTreeMap::new(),
        }
    }

    fn zoned(name: &str, zone: &str) -> NodeCapacity {
        let mut n = node(name, 4096, 8192);
        n.attributes.insert("zone".into(), zone.into());
        n
    }

    fn task(id: &str, cpu: u64, memory: u64) -> TaskRequest {
        TaskRequest {
            task_id: id.into(),
            cpu,
            memory,
            group: "family:web".into(),
            placement: PlacementSpec::default(),
        }
    }

    fn with(
        mut t: TaskRequest,
        strategy: Vec<PlacementStrategy>,
        constraints: Vec<PlacementConstraint>,
    ) -> TaskRequest {
        t.placement = PlacementSpec {
            strategy,
            constraints,
        };
        t
    }

    fn check(nodes: &[NodeCapacity], tasks: &[TaskRequest], expected: &[&str]) {
        check_with(nodes, &[], tasks, expected);
    }

    fn check_with(
        nodes: &[NodeCapacity],
        existing: &[(&str, &str)],
        tasks: &[TaskRequest],
        expected: &[&str],
    ) {
        let existing: Vec<(String, String)> = existing
            .iter()
            .map(|(n, g)| ((*n).to_owned(), (*g).to_owned()))
            .collect();
        let got: Vec<String> = place(nodes, &existing, tasks)
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

    #[test]
    fn member_of_filters_nodes_by_attribute() {
        let only_b = |id| {
            with(
                task(id, 256, 512),
                vec![],
                vec![PlacementConstraint::MemberOf {
                    expression: "attribute:zone in [b]".into(),
                }],
            )
        };
        check(
            &[zoned("n1", "a"), zoned("n2", "b")],
            &[only_b("t1")],
            &["t1 -> n2"],
        );
        check(
            &[zoned("n1", "a")],
            &[only_b("t1")],
            &["t1 !! 0 of 1 node can run it: 1 filtered by memberOf(attribute:zone in [b])"],
        );
    }

    #[test]
    fn distinct_instance_keeps_a_group_apart() {
        let distinct = |id| {
            with(
                task(id, 256, 512),
                vec![],
                vec![PlacementConstraint::DistinctInstance],
            )
        };
        check_with(
            &[node("n1", 4096, 8192), node("n2", 4096, 8192)],
            &[("n1", "family:web")],
            &[distinct("t1"), distinct("t2")],
            &["t1 -> n2", "t2 !! 0 of 2 nodes can run it: 2 already run a task of family:web (distinctInstance)"],
        );
    }

    #[test]
    fn spread_over_an_attribute_then_binpack() {
        let spread = |id| {
            with(
                task(id, 256, 512),
                vec![
                    PlacementStrategy::Spread {
                        field: "attribute:zone".into(),
                    },
                    PlacementStrategy::Binpack {
                        field: BinpackField::Memory,
                    },
                ],
                vec![],
            )
        };
        let mut small = zoned("a2", "a");
        small.memory_free = 1024;
        check(
            &[zoned("a1", "a"), small, zoned("b1", "b")],
            &[spread("t1"), spread("t2"), spread("t3")],
            // t1: both zones empty, binpack picks the fuller a2; t2 goes to zone b; t3 back to a.
            &["t1 -> a2", "t2 -> b1", "t3 -> a2"],
        );
        let by_node = |id| {
            with(
                task(id, 256, 512),
                vec![PlacementStrategy::Spread {
                    field: "node".into(),
                }],
                vec![],
            )
        };
        check(
            &[node("n1", 4096, 8192), node("n2", 4096, 8192)],
            &[by_node("t1"), by_node("t2")],
            &["t1 -> n1", "t2 -> n2"],
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
