//! The retention's round: what finished work has been kept long enough to go. Stopped tasks
//! go after the task retention, except the latest few of each service; removed tasks are
//! remembered as removed for another task retention; INACTIVE revisions nothing uses go after
//! the task retention; nodes DOWN for the node retention go. Everything in `Retire` commands
//! of at most [`BATCH`] objects of each kind, so one round never makes a huge Raft entry.

use std::collections::{HashMap, HashSet};

use berth_model::NodeStatus;
use berth_state::{Command, Retirement, State};

/// The most objects of each kind one `Retire` command removes (or forgets): about 80 KB of
/// IDs each. A round's commands are proposed one after another, each waiting for its commit;
/// with 500 objects a command, and the tasks and the forgetting in commands of their own, a
/// loaded cluster's commits (100-300 ms each) retired fewer than 2,000 tasks a second, and the
/// soak's churn of 2,900 a second outgrew the retention.
pub const BATCH: usize = 2_000;
/// The most `Retire` commands one round proposes (30,000 stopped tasks a round, and as many
/// forgotten, a round at least every 5 s and at once after a round that took longer); the
/// rest waits for the next round.
pub const MAX_BATCHES: usize = 15;

/// How long finished work is kept, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a stopped task stays visible (`--task-retention`); also how long a removed
    /// task is remembered as removed, and how long an unused INACTIVE revision stays.
    pub tasks_ms: u64,
    /// How many of each service's latest stopped tasks stay past the task retention, for
    /// debugging (`--keep-stopped-per-service`): until newer ones replace them or the
    /// service goes.
    pub keep_per_service: usize,
    /// How long a DOWN node stays before it is removed (`--node-retention`).
    pub nodes_ms: u64,
}

/// The round's `Retire` commands, oldest work first.
pub fn plan(state: &State, at: u64, policy: &Policy) -> Vec<Command> {
    let due = |since: u64, keep: u64| since.saturating_add(keep) <= at;
    let most = BATCH * MAX_BATCHES;
    // Which stopped tasks of each service stay longer (worked out once per service).
    let mut kept: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut tasks = Vec::new();
    for (stopped_at, id) in state.stopped_oldest_first() {
        if !due(stopped_at, policy.tasks_ms) || tasks.len() == most {
            break;
        }
        let Some(task) = state.task_by_id(id) else {
            continue;
        };
        // The ledger's open bucket still counts it (and every task stopped after it).
        if !state.accounted(task) {
            break;
        }
        let service = task
            .group
            .as_deref()
            .and_then(|g| g.strip_prefix("service:"));
        if let Some(name) = service.filter(|n| state.service(&task.namespace, n).is_some()) {
            let group = task.group.clone().unwrap_or_default();
            let latest = kept
                .entry((task.namespace.clone(), name.to_owned()))
                .or_insert_with(|| {
                    state
                        .latest_stopped_of(&task.namespace, &group, policy.keep_per_service)
                        .map(str::to_owned)
                        .collect()
                });
            if latest.contains(id) {
                continue;
            }
        }
        tasks.push(id.to_owned());
    }
    let forget: Vec<String> = state
        .removed_oldest_first()
        .take_while(|(removed_at, _)| due(*removed_at, policy.tasks_ms))
        .take(most)
        .map(|(_, id)| id.to_owned())
        .collect();
    let revisions: Vec<_> = state
        .inactive_revisions()
        .filter(|(since, key)| due(*since, policy.tasks_ms) && state.revision_removable(key))
        .map(|(_, key)| key)
        .take(most)
        .collect();
    let nodes: Vec<String> = state
        .nodes()
        .filter(|n| n.status == NodeStatus::Down)
        .filter(|n| {
            // A node DOWN from before the time was recorded: its last event says when.
            let since = n
                .down_since
                .or_else(|| n.events.last().map(|e| e.at))
                .unwrap_or(n.registered_at);
            due(since, policy.nodes_ms)
        })
        .map(|n| n.name.clone())
        .collect();
    batches(tasks, forget, revisions, nodes, at)
}

/// Splits the round's removals into commands of at most [`BATCH`] objects of each kind, the
/// `i`-th command carrying each kind's `i`-th chunk: each kind has its own [`MAX_BATCHES`], so a
/// backlog of stopped tasks never starves the forgetting (or the other way round).
fn batches(
    tasks: Vec<String>,
    forget: Vec<String>,
    revisions: Vec<berth_state::RevisionKey>,
    nodes: Vec<String>,
    at: u64,
) -> Vec<Command> {
    let mut forget = forget.chunks(BATCH).take(MAX_BATCHES);
    let mut tasks = tasks.chunks(BATCH).take(MAX_BATCHES);
    let mut revisions = revisions.chunks(BATCH).take(MAX_BATCHES);
    let mut nodes = nodes.chunks(BATCH).take(MAX_BATCHES);
    let mut commands = Vec::new();
    loop {
        let r = Retirement {
            forget: forget.next().unwrap_or_default().to_vec(),
            tasks: tasks.next().unwrap_or_default().to_vec(),
            revisions: revisions.next().unwrap_or_default().to_vec(),
            nodes: nodes.next().unwrap_or_default().to_vec(),
            at,
        };
        if r.forget.is_empty() && r.tasks.is_empty() && r.revisions.is_empty() && r.nodes.is_empty()
        {
            break;
        }
        commands.push(r);
    }
    commands.into_iter().map(Command::Retire).collect()
}

#[cfg(test)]
mod tests {
    use berth_model::{ContainerDefinition, Node, StopCode, Task, TaskDefinitionSpec, TaskStatus};

    use super::*;

    const POLICY: Policy = Policy {
        tasks_ms: 1000,
        keep_per_service: 1,
        nodes_ms: 5000,
    };

    /// Tasks `(id, group, stopped at)` on node n1, all stopped; service `svc` exists.
    fn state(tasks: &[(&str, Option<&str>, u64)]) -> State {
        let mut s = State::default();
        s.apply(Command::RegisterTaskDefinition {
            namespace: "default".into(),
            spec: TaskDefinitionSpec::new(
                "web",
                256,
                64,
                vec![ContainerDefinition::new("app", "busybox")],
            ),
            reuse_identical: false,
            at: 0,
        });
        let def = s
            .task_definition("default", &"web:1".parse().expect("ref"))
            .expect("registered")
            .clone();
        s.apply(Command::ApplyService {
            namespace: "default".into(),
            spec: Box::new(berth_model::ServiceSpec {
                ingress: Vec::new(),
                deregistration_delay: 0,
                meta: Default::default(),
                name: "svc".into(),
                task_definition: "web:1".parse().expect("ref"),
                desired_count: 0,
                deployment_configuration: Default::default(),
                placement: Default::default(),
                autoscaling: None,
            }),
            deployment_id: "d1".into(),
            at: 0,
        });
        s.apply(Command::RegisterNode {
            node: Node::new("n1", "127.0.0.1:1", 1 << 20, 1 << 20),
            at: 0,
        });
        for (id, group, at) in tasks {
            let mut t = Task::pending((*id).into(), "default", &def, 0);
            t.group = group.map(str::to_owned);
            s.apply(Command::CreateTasks {
                tasks: vec![t],
                client_token: None,
                at: 0,
            });
            s.apply(Command::StopTask {
                namespace: "default".into(),
                task_id: (*id).into(),
                stop_code: StopCode::UserInitiated,
                reason: "done".into(),
                at: *at,
            });
        }
        s
    }

    fn retirements(commands: &[Command]) -> Vec<&Retirement> {
        commands
            .iter()
            .map(|c| match c {
                Command::Retire(r) => r,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn stopped_tasks_go_after_the_retention_but_each_services_latest_stay() {
        let mut s = state(&[
            ("one-off-old", None, 100),
            ("svc-old", Some("service:svc"), 200),
            ("svc-latest", Some("service:svc"), 300),
            ("one-off-new", None, 900),
            // A service that is gone keeps nothing longer.
            ("gone-svc", Some("service:gone"), 400),
        ]);
        assert!(s
            .task_by_id("svc-old")
            .is_some_and(|t| t.last_status == TaskStatus::Stopped));
        let commands = plan(&s, 1500, &POLICY);
        let r = retirements(&commands);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].tasks, ["one-off-old", "svc-old", "gone-svc"]);
        assert!(r[0].forget.is_empty() && r[0].revisions.is_empty() && r[0].nodes.is_empty());
        for c in commands {
            s.apply(c);
        }
        // Remembered as removed for another retention, then forgotten.
        assert!(plan(&s, 1800, &POLICY).is_empty());
        let commands = plan(&s, 2500, &POLICY);
        let r = retirements(&commands);
        // Forgotten and removed in the same command.
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].forget.len(), 3);
        assert_eq!(r[0].tasks, ["one-off-new"]);
    }

    #[test]
    fn big_rounds_are_split_into_batches_and_capped() {
        let ids: Vec<String> = (0..4_500).map(|i| format!("t{i:05}")).collect();
        let tasks: Vec<(&str, Option<&str>, u64)> =
            ids.iter().map(|id| (id.as_str(), None, 1)).collect();
        let s = state(&tasks);
        let commands = plan(&s, 5000, &POLICY);
        let sizes: Vec<usize> = retirements(&commands)
            .iter()
            .map(|r| r.tasks.len())
            .collect();
        assert_eq!(sizes, [2_000, 2_000, 500]);
    }

    #[test]
    fn a_backlog_of_stopped_tasks_does_not_starve_forgetting() {
        let forget: Vec<String> = (0..40_000).map(|i| format!("f{i}")).collect();
        let tasks: Vec<String> = (0..40_000).map(|i| format!("t{i}")).collect();
        let commands = batches(tasks, forget, vec![], vec![], 1);
        let r = retirements(&commands);
        let forgotten: usize = r.iter().map(|r| r.forget.len()).sum();
        let removed: usize = r.iter().map(|r| r.tasks.len()).sum();
        assert_eq!(forgotten, BATCH * MAX_BATCHES);
        assert_eq!(removed, BATCH * MAX_BATCHES);
        // Each command carries a chunk of each.
        assert_eq!(r.len(), MAX_BATCHES);
        assert!(r
            .iter()
            .all(|r| r.forget.len() == BATCH && r.tasks.len() == BATCH));
    }

    #[test]
    fn down_nodes_go_after_the_node_retention() {
        let mut s = state(&[]);
        s.apply(Command::MarkNodeDown {
            node: "n1".into(),
            reason: "silent".into(),
            at: 1000,
        });
        assert!(plan(&s, 5999, &POLICY).is_empty());
        let commands = plan(&s, 6000, &POLICY);
        assert_eq!(retirements(&commands)[0].nodes, ["n1"]);
    }
}
