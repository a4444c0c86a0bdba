//! Placement decisions as pure functions: a cluster snapshot and the tasks to place in, a list
//! of decisions out. No IO, no clock, no async (a `#[test]` below keeps it that way).

pub mod autoscale;
pub mod service;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use berth_model::{
    BinpackField, Expression, NodeStatus, PlacementConstraint, PlacementSpec, PlacementStrategy,
    Protocol,
};

/// What placement needs to know about one node. The name and attributes are borrowed when
/// the caller holds them (a round over 10,000 nodes copies no string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity<'a> {
    pub name: Cow<'a, str>,
    pub status: NodeStatus,
    /// Free CPU units.
    pub cpu_free: u64,
    /// Free memory in MiB.
    pub memory_free: u64,
    pub attributes: Cow<'a, BTreeMap<String, String>>,
    /// Fixed host ports taken on it, known before the round (the rest come from
    /// [`Running::host_ports`]).
    pub host_ports: BTreeSet<(u16, Protocol)>,
}

/// A task waiting for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    pub task_id: String,
    pub cpu: u64,
    pub memory: u64,
    pub namespace: String,
    /// Tasks of one group (in one namespace) are spread or kept apart (`service:NAME`,
    /// `family:NAME`).
    pub group: String,
    pub placement: PlacementSpec,
    /// Fixed host ports it publishes: no other task may have them on its node.
    pub host_ports: Vec<(u16, Protocol)>,
}

/// Where the tasks of each group already run, as the caller keeps count (what
/// `distinctInstance` and spread look at). Asked only about the groups being placed, so a
/// round costs what its tasks need, not what the cluster holds.
pub trait Running {
    /// How many tasks of `group` in `namespace` run on `node`.
    fn on_node(&self, namespace: &str, group: &str, node: &str) -> u64;
    /// Every node that runs tasks of the group, with how many, in name order (another order
    /// is counted right too, but slower).
    fn nodes_of(&self, namespace: &str, group: &str) -> Vec<(&str, u64)>;
    /// The fixed host ports the tasks on `node` publish (beside its `host_ports`): asked
    /// only for nodes that passed a task's other checks but CPU and memory, for a task that
    /// publishes one.
    fn host_ports(&self, node: &str) -> Vec<(u16, Protocol)> {
        let _ = node;
        Vec::new()
    }
}

/// Nothing runs yet (a dry run on an empty cluster, tests).
impl Running for () {
    fn on_node(&self, _: &str, _: &str, _: &str) -> u64 {
        0
    }

    fn nodes_of(&self, _: &str, _: &str) -> Vec<(&str, u64)> {
        Vec::new()
    }
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
    HostPort(u16, Protocol),
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

/// Up to this many nodes, every node is examined for every task (exact, as the tests expect).
pub const FULL_SCAN_NODES: usize = 256;

/// Feasible candidates examined per task on larger fleets: at least this many, or twice
/// log2 of the fleet (as Nomad samples, so placement stays fast at 10,000 nodes).
const MIN_CANDIDATES: usize = 32;

fn candidate_limit(nodes: usize) -> usize {
    if nodes <= FULL_SCAN_NODES {
        return nodes;
    }
    let log2 = usize::try_from(usize::BITS - nodes.leading_zeros()).unwrap_or(64);
    MIN_CANDIDATES.max(2 * log2)
}

/// A group: its namespace and name.
type GroupKey = (String, String);

/// Tasks of a group by the value of one attribute of their nodes.
#[derive(Default)]
struct Tally {
    values: HashMap<String, u64>,
    /// On nodes without the attribute.
    unset: u64,
}

impl Tally {
    fn add(&mut self, value: Option<&String>, n: u64) {
        match value {
            None => self.unset += n,
            Some(v) => match self.values.get_mut(v.as_str()) {
                Some(count) => *count += n,
                None => {
                    self.values.insert(v.clone(), n);
                }
            },
        }
    }

    fn get(&self, value: Option<&String>) -> u64 {
        match value {
            None => self.unset,
            Some(v) => self.values.get(v.as_str()).copied().unwrap_or(0),
        }
    }
}

/// How many tasks of each group run on each node, and per attribute value for spread: what
/// `running` says, plus this round's placements. Groups are numbered as the round meets them,
/// so what is asked per candidate node is looked up by number, not by name.
struct Counts<'r> {
    running: &'r dyn Running,
    /// Group numbers by group.
    ids: HashMap<GroupKey, usize>,
    /// Groups by number.
    groups: Vec<GroupKey>,
    /// By group number: node index -> tasks placed this round.
    added: Vec<HashMap<usize, u64>>,
    /// By group number: attribute -> tasks by value; filled on first use.
    by_attribute: Vec<HashMap<String, Tally>>,
}

impl Counts<'_> {
    /// The number of `task`'s group.
    fn group(&mut self, task: &TaskRequest) -> usize {
        let key = (task.namespace.clone(), task.group.clone());
        if let Some(g) = self.ids.get(&key) {
            return *g;
        }
        let g = self.groups.len();
        self.ids.insert(key.clone(), g);
        self.groups.push(key);
        self.added.push(HashMap::new());
        self.by_attribute.push(HashMap::new());
        g
    }

    fn on_node(&self, nodes: &[NodeCapacity], g: usize, node: usize) -> u64 {
        let added = self.added[g].get(&node).copied().unwrap_or(0);
        let (namespace, group) = &self.groups[g];
        added + self.running.on_node(namespace, group, &nodes[node].name)
    }

    fn on_attribute(
        &mut self,
        nodes: &[NodeCapacity],
        g: usize,
        attr: &str,
        value: Option<&String>,
    ) -> u64 {
        if !self.by_attribute[g].contains_key(attr) {
            let mut tally = Tally::default();
            let (namespace, group) = &self.groups[g];
            // Both in name order: each node is sought from the last one found (a search of
            // all nodes for each cost a cache miss a step on 10,000 nodes). A node no longer
            // registered counts for nothing.
            let mut j = 0;
            let mut last = "";
            for (name, c) in self.running.nodes_of(namespace, group) {
                j = seek(nodes, if name < last { 0 } else { j }, name);
                last = name;
                if let Some(n) = nodes.get(j).filter(|n| n.name == name) {
                    tally.add(n.attributes.get(attr), c);
                }
            }
            for (i, c) in &self.added[g] {
                tally.add(nodes[*i].attributes.get(attr), *c);
            }
            self.by_attribute[g].insert(attr.to_owned(), tally);
        }
        self.by_attribute[g]
            .get(attr)
            .map_or(0, |tally| tally.get(value))
    }

    fn add(&mut self, nodes: &[NodeCapacity], g: usize, node: usize) {
        for (attr, tally) in &mut self.by_attribute[g] {
            tally.add(nodes[node].attributes.get(attr), 1);
        }
        *self.added[g].entry(node).or_default() += 1;
    }
}

/// The index of the first node from `from` on whose name is not before `name` (`nodes` in name
/// order): steps of 1, 2, 4… from `from`, then a binary search in the last step, so a walk over
/// names in order costs little whether they are dense or sparse among the nodes.
fn seek(nodes: &[NodeCapacity], from: usize, name: &str) -> usize {
    let before = |i: usize| nodes[i].name.as_ref() < name;
    let (mut low, mut high, mut step) = (from, from, 1);
    while high < nodes.len() && before(high) {
        low = high + 1;
        high = from + step;
        step *= 2;
    }
    let high = high.min(nodes.len());
    low + nodes[low..high].partition_point(|n| n.name.as_ref() < name)
}

/// Places `tasks` in order. A node is feasible when it is ACTIVE, has the CPU and memory
/// free, has none of the task's fixed host ports taken, and meets the task's constraints
/// (`memberOf` expressions over its attributes; `distinctInstance`: no task of the same group
/// on it, counting those `running` knows of and this round's). Feasible nodes are ranked by the task's strategies in
/// order (binpack on cpu or memory: least left after placing; spread on `node` or
/// `attribute:NAME`: fewest tasks of the group; random: a hash of task and node), then by name.
/// Without strategies: binpack on CPU, then memory.
///
/// Up to [`FULL_SCAN_NODES`] nodes every node is ranked. Beyond, nodes are visited from a
/// point chosen by the task's ID and the best of the first few dozen feasible ones wins;
/// a task that fits nowhere is still checked against every node, so its reason is complete.
pub fn place(
    nodes: &[NodeCapacity],
    running: &dyn Running,
    tasks: &[TaskRequest],
) -> Vec<Decision> {
    let mut nodes = nodes.to_vec();
    // Already sorted when they come from an ordered map: then this costs one pass.
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut counts = Counts {
        running,
        ids: HashMap::new(),
        groups: Vec::new(),
        added: Vec::new(),
        by_attribute: Vec::new(),
    };
    let limit = candidate_limit(nodes.len());
    let mut ports_read = vec![false; nodes.len()];
    tasks
        .iter()
        .map(|task| {
            let group = counts.group(task);
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
            let mut feasible = 0;
            let start = if nodes.len() > FULL_SCAN_NODES {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                task.task_id.hash(&mut h);
                usize::try_from(h.finish() % nodes.len() as u64).unwrap_or(0)
            } else {
                0
            };
            for k in 0..nodes.len() {
                if feasible == limit {
                    break;
                }
                let i = (start + k) % nodes.len();
                let n = &nodes[i];
                let mut why = if n.status != NodeStatus::Active {
                    Some(Filtered::NotActive)
                } else if let Some(e) = expressions.iter().find(|e| !e.matches(&n.attributes)) {
                    Some(Filtered::MemberOf(e.to_string()))
                } else if distinct && counts.on_node(&nodes, group, i) > 0 {
                    Some(Filtered::DistinctInstance)
                } else {
                    None
                };
                if why.is_none() && !task.host_ports.is_empty() {
                    if !ports_read[i] {
                        // Once per node and round, for nodes a task publishing one could
                        // take by everything else but its size.
                        let taken = running.host_ports(&nodes[i].name);
                        nodes[i].host_ports.extend(taken);
                        ports_read[i] = true;
                    }
                    let n = &nodes[i];
                    why = task
                        .host_ports
                        .iter()
                        .find(|p| n.host_ports.contains(p))
                        .map(|p| Filtered::HostPort(p.0, p.1));
                }
                let n = &nodes[i];
                if why.is_none() {
                    why = if n.cpu_free < task.cpu {
                        Some(Filtered::Cpu)
                    } else if n.memory_free < task.memory {
                        Some(Filtered::Memory)
                    } else {
                        None
                    };
                }
                if let Some(why) = why {
                    *filtered.entry(why).or_default() += 1;
                    continue;
                }
                feasible += 1;
                let key = rank(task, group, i, &nodes, &mut counts);
                // Ties go to the first node by name (nodes are sorted by name).
                if best.as_ref().is_none_or(|(k, j)| (&key, i) < (k, *j)) {
                    best = Some((key, i));
                }
            }
            match best {
                Some((_, i)) => {
                    let node = &mut nodes[i];
                    node.cpu_free -= task.cpu;
                    node.memory_free -= task.memory;
                    node.host_ports.extend(task.host_ports.iter().copied());
                    let name = node.name.to_string();
                    counts.add(&nodes, group, i);
                    Decision::Place {
                        task_id: task.task_id.clone(),
                        node: name,
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

/// The ranking key of node `i` for `task` (smaller is better), one entry per strategy.
fn rank(
    task: &TaskRequest,
    group: usize,
    i: usize,
    nodes: &[NodeCapacity],
    counts: &mut Counts,
) -> Vec<u64> {
    let n = &nodes[i];
    let strategies: &[PlacementStrategy] = if task.placement.strategy.is_empty() {
        &DEFAULT_STRATEGY
    } else {
        &task.placement.strategy
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
            PlacementStrategy::Spread { field } if field == "node" => {
                counts.on_node(nodes, group, i)
            }
            PlacementStrategy::Spread { field } => {
                let attr = field.strip_prefix("attribute:").unwrap_or(field);
                counts.on_attribute(nodes, group, attr, n.attributes.get(attr))
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
            Filtered::HostPort(port, protocol) => {
                format!("{n} already had host port {port}/{protocol} taken")
            }
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

    fn node(name: &str, cpu: u64, memory: u64) -> NodeCapacity<'static> {
        NodeCapacity {
            name: Cow::Owned(name.into()),
            status: NodeStatus::Active,
            cpu_free: cpu,
            memory_free: memory,
            attributes: Cow::Owned(BTreeMap::new()),
            host_ports: BTreeSet::new(),
        }
    }

    fn zoned(name: &str, zone: &str) -> NodeCapacity<'static> {
        let mut n = node(name, 4096, 8192);
        n.attributes.to_mut().insert("zone".into(), zone.into());
        n
    }

    fn task(id: &str, cpu: u64, memory: u64) -> TaskRequest {
        TaskRequest {
            task_id: id.into(),
            cpu,
            memory,
            namespace: "default".into(),
            group: "family:web".into(),
            placement: PlacementSpec::default(),
            host_ports: Vec::new(),
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

    /// A task of 256 CPU units and 512 MiB spread over `field` alone.
    fn spread_over(id: &str, field: &str) -> TaskRequest {
        with(
            task(id, 256, 512),
            vec![PlacementStrategy::Spread {
                field: field.into(),
            }],
            vec![],
        )
    }

    fn check(nodes: &[NodeCapacity], tasks: &[TaskRequest], expected: &[&str]) {
        check_with(nodes, &[], tasks, expected);
    }

    /// Tasks running before the round, one `(node, group)` each, all in namespace `default`.
    struct Existing<'a>(&'a [(&'a str, &'a str)]);

    impl Running for Existing<'_> {
        fn on_node(&self, namespace: &str, group: &str, node: &str) -> u64 {
            let n = self.0.iter().filter(|&&(n, g)| (n, g) == (node, group));
            if namespace == "default" {
                n.count() as u64
            } else {
                0
            }
        }

        fn nodes_of(&self, namespace: &str, group: &str) -> Vec<(&str, u64)> {
            let mut nodes: BTreeMap<&str, u64> = BTreeMap::new();
            for &(n, g) in self.0 {
                if namespace == "default" && g == group {
                    *nodes.entry(n).or_default() += 1;
                }
            }
            nodes.into_iter().collect()
        }
    }

    fn check_with(
        nodes: &[NodeCapacity],
        existing: &[(&str, &str)],
        tasks: &[TaskRequest],
        expected: &[&str],
    ) {
        check_running(nodes, &Existing(existing), tasks, expected);
    }

    fn check_running(
        nodes: &[NodeCapacity],
        running: &dyn Running,
        tasks: &[TaskRequest],
        expected: &[&str],
    ) {
        let got: Vec<String> = place(nodes, running, tasks)
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
    fn a_fixed_host_port_is_taken_once_per_node() {
        let port = |id| TaskRequest {
            host_ports: vec![(8080, Protocol::Tcp)],
            ..task(id, 256, 512)
        };
        let mut busy = node("n1", 4096, 8192);
        busy.host_ports.insert((8080, Protocol::Tcp));
        let mut udp = port("u1");
        udp.host_ports = vec![(8080, Protocol::Udp)];
        let expected = [
            "t1 -> n2",
            "t2 !! 0 of 2 nodes can run it: 2 already had host port 8080/tcp taken",
            // Another protocol's port of the same number is another port (n2, where t1
            // took 8080/tcp, is the fuller node).
            "u1 -> n2",
        ];
        let tasks = [port("t1"), port("t2"), udp];
        check(&[busy, node("n2", 4096, 8192)], &tasks, &expected);

        /// n1's task publishes 8080/tcp, as the caller counts it.
        struct Taken;
        impl Running for Taken {
            fn on_node(&self, _: &str, _: &str, _: &str) -> u64 {
                0
            }
            fn nodes_of(&self, _: &str, _: &str) -> Vec<(&str, u64)> {
                Vec::new()
            }
            fn host_ports(&self, node: &str) -> Vec<(u16, Protocol)> {
                match node {
                    "n1" => vec![(8080, Protocol::Tcp)],
                    _ => Vec::new(),
                }
            }
        }
        let nodes = [node("n1", 4096, 8192), node("n2", 4096, 8192)];
        check_running(&nodes, &Taken, &tasks, &expected);
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
        let by_node = |id| spread_over(id, "node");
        check(
            &[node("n1", 4096, 8192), node("n2", 4096, 8192)],
            &[by_node("t1"), by_node("t2")],
            &["t1 -> n1", "t2 -> n2"],
        );
    }

    #[test]
    fn what_already_runs_counts_per_group_in_its_namespace() {
        let distinct = |id, namespace: &str| TaskRequest {
            namespace: namespace.into(),
            ..with(
                task(id, 256, 512),
                vec![],
                vec![PlacementConstraint::DistinctInstance],
            )
        };
        // n1 runs a task of family:web in `default`: another namespace's web may go there.
        check_with(
            &[node("n1", 4096, 8192), node("n2", 4096, 8192)],
            &[("n1", "family:web")],
            &[distinct("t1", "other"), distinct("t2", "default")],
            &["t1 -> n1", "t2 -> n2"],
        );
        let spread = |id| spread_over(id, "attribute:zone");
        // Zone a runs two already (a node since removed counts for nothing): b catches up
        // first, then ties go to the first node by name.
        check_with(
            &[zoned("a1", "a"), zoned("b1", "b")],
            &[
                ("a1", "family:web"),
                ("a1", "family:web"),
                ("a1", "service:api"),
                ("gone", "family:web"),
            ],
            &[spread("t1"), spread("t2"), spread("t3")],
            &["t1 -> b1", "t2 -> b1", "t3 -> a1"],
        );
    }

    #[test]
    fn seeking_a_name_finds_where_it_is_or_would_be() {
        let nodes: Vec<NodeCapacity> = ["b", "d", "f", "h", "j", "l", "n"]
            .iter()
            .map(|n| node(n, 1, 1))
            .collect();
        for from in 0..nodes.len() {
            for (name, first) in [
                ("a", 0),
                ("b", 0),
                ("c", 1),
                ("h", 3),
                ("i", 4),
                ("n", 6),
                ("z", 7),
            ] {
                // From a node past it, the answer is where the search started.
                assert_eq!(
                    seek(&nodes, from, name),
                    first.max(from),
                    "{name} from {from}"
                );
            }
        }
    }

    #[test]
    fn tallies_by_attribute_count_nodes_given_in_any_order() {
        /// Where `family:web` runs, in the order given.
        struct Unordered(Vec<(&'static str, u64)>);
        impl Running for Unordered {
            fn on_node(&self, _: &str, _: &str, _: &str) -> u64 {
                0
            }
            fn nodes_of(&self, _: &str, _: &str) -> Vec<(&str, u64)> {
                self.0.clone()
            }
        }
        let spread = |id| spread_over(id, "attribute:zone");
        let nodes = [zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")];
        // Zone a runs 3 (one on a node no longer registered), zone b 1, in no order.
        let running = Unordered(vec![("b1", 1), ("gone", 5), ("a2", 2), ("a1", 1)]);
        // b catches up twice, then the zones tie and the first node by name wins.
        check_running(
            &nodes,
            &running,
            &[spread("t1"), spread("t2"), spread("t3")],
            &["t1 -> b1", "t2 -> b1", "t3 -> a1"],
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

    /// 10,000 nodes in three zones, named so that sorting by name does not group the zones.
    fn fleet(n: usize) -> Vec<NodeCapacity<'static>> {
        (0..n)
            .map(|i| zoned(&format!("node-{i:05}"), ["a", "b", "c"][i % 3]))
            .collect()
    }

    #[test]
    fn large_fleets_are_sampled_but_stay_within_capacity_and_constraints() {
        let mut nodes = fleet(10_000);
        // Only one node offers an SSD.
        nodes[7777]
            .attributes
            .to_mut()
            .insert("disk".into(), "ssd".into());
        let ssd = with(
            task("ssd", 256, 256),
            vec![],
            vec![PlacementConstraint::MemberOf {
                expression: "attribute:disk == ssd".into(),
            }],
        );
        let mut tasks: Vec<TaskRequest> = (0..3000)
            .map(|i| {
                with(
                    task(&format!("t{i}"), 1024, 1024),
                    vec![PlacementStrategy::Spread {
                        field: "attribute:zone".into(),
                    }],
                    vec![],
                )
            })
            .collect();
        tasks.push(ssd);
        tasks.push(task("huge", 8192, 256));
        let decisions = place(&nodes, &(), &tasks);
        let mut used: HashMap<String, u64> = HashMap::new();
        let mut zones: BTreeMap<String, usize> = BTreeMap::new();
        for d in &decisions {
            match d {
                Decision::Place { task_id, node } if task_id.starts_with('t') => {
                    *used.entry(node.clone()).or_default() += 1024;
                    let n = nodes
                        .iter()
                        .find(|n| n.name == node.as_str())
                        .expect("known node");
                    *zones.entry(n.attributes["zone"].clone()).or_default() += 1;
                }
                Decision::Place { task_id, node } => {
                    assert_eq!((task_id.as_str(), node.as_str()), ("ssd", "node-07777"));
                }
                Decision::Unplaceable { task_id, reason } => {
                    assert_eq!(task_id, "huge");
                    assert_eq!(
                        reason,
                        "0 of 10000 nodes can run it: 10000 lacked 8192 CPU units"
                    );
                }
            }
        }
        assert!(
            used.values().all(|cpu| *cpu <= 4096),
            "a node is over capacity"
        );
        assert_eq!(
            zones.values().copied().collect::<Vec<_>>(),
            vec![1000, 1000, 1000]
        );
    }
}
