//! Tests of retention (`Command::Retire`) and of the indexes that keep the controllers' work
//! to live tasks.

use berth_model::{ContainerDefinition, TaskDefinitionSpec, TaskStatus};

use super::*;
use crate::command::*;
use crate::tests::{register_web, register_web_in, round_trips};

fn state_with_tasks(ids: &[&str], group: Option<&str>) -> State {
    let mut s = State::default();
    let def = register_web(&mut s);
    s.apply(Command::RegisterNode {
        at: 1,
        node: Node::new("n1", "127.0.0.1:1", 4096, 4096),
    });
    let tasks = ids
        .iter()
        .map(|id| {
            let mut t = Task::pending((*id).into(), "default", &def, 2);
            t.group = group.map(str::to_owned);
            t
        })
        .collect();
    s.apply(Command::CreateTasks {
        tasks,
        client_token: None,
        at: 2,
    });
    s.apply(Command::PlaceTasks {
        placements: ids
            .iter()
            .map(|id| Placement {
                task_id: (*id).into(),
                node: "n1".into(),
            })
            .collect(),
        unplaced: vec![],
        at: 3,
    });
    s
}

fn stopped(s: &mut State, id: &str, at: u64) {
    s.apply(Command::ReportTaskStatus {
        node: "n1".into(),
        updates: vec![berth_model::TaskStatusUpdate {
            task_id: id.into(),
            last_status: TaskStatus::Stopped,
            containers: vec![],
            stop_code: Some(berth_model::StopCode::EssentialContainerExited),
            stopped_reason: Some("exited".into()),
            event: None,
            ip_address: None,
        }],
        at,
    });
}

fn retire(tasks: &[&str], forget: &[&str], at: u64) -> Command {
    Command::Retire(Retirement {
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
        forget: forget.iter().map(|t| (*t).to_owned()).collect(),
        revisions: vec![],
        nodes: vec![],
        at,
    })
}

fn ids<'a>(tasks: impl Iterator<Item = &'a Task>) -> Vec<&'a str> {
    tasks.map(|t| t.task_id.as_str()).collect()
}

#[test]
fn only_stopped_tasks_are_removed_and_each_is_remembered_until_forgotten() {
    let mut s = state_with_tasks(&["a", "b", "c"], Some("service:svc"));
    stopped(&mut s, "a", 10);
    stopped(&mut s, "b", 11);
    assert_eq!(ids(s.live_tasks()), ["c"]);
    assert_eq!(ids(s.live_tasks_of("default", "service:svc")), ["c"]);
    assert_eq!(s.stopped_count(), 2);
    assert_eq!(
        s.latest_stopped_of("default", "service:svc", 1)
            .collect::<Vec<_>>(),
        ["b"]
    );
    let (r, changed) = s.apply(retire(&["a", "c", "nope"], &[], 20));
    // c runs: it stays; an unknown ID is no error.
    assert_eq!(r, CommandResult::Count(1));
    assert_eq!(
        changed,
        [Key::Task("a".into()), Key::RemovedTask("a".into())]
    );
    assert!(s.task("default", "a").is_none());
    let gone = s.removed_task("default", "a").expect("remembered");
    assert_eq!((gone.stopped_at, gone.removed_at), (10, 20));
    assert!(s.removed_task("other", "a").is_none());
    // Its node's watchers are woken: the node is remembered.
    assert_eq!(s.node_of(&Key::Task("a".into())), Some(Some("n1")));
    assert_eq!(s.removed_from("n1").collect::<Vec<_>>(), ["a"]);
    assert_eq!(s.stopped_count(), 1);
    assert_eq!(ids(s.tasks_on("n1")), ["b", "c"]);
    assert_eq!(s.stopped_oldest_first().collect::<Vec<_>>(), [(11, "b")]);
    round_trips(&s);
    let (r, _) = s.apply(retire(&[], &["a"], 30));
    assert_eq!(r, CommandResult::Count(1));
    assert!(s.removed_task("default", "a").is_none());
    assert_eq!(s.removed_oldest_first().count(), 0);
    assert_eq!(s.removed_from("n1").count(), 0);
    round_trips(&s);
}

#[test]
fn the_indexes_kept_as_commands_apply_equal_rebuilt_ones() {
    let mut s = state_with_tasks(&["a", "b", "c", "d"], Some("service:svc"));
    stopped(&mut s, "b", 10);
    s.apply(Command::StopTask {
        namespace: "default".into(),
        task_id: "c".into(),
        stop_code: berth_model::StopCode::UserInitiated,
        reason: "bye".into(),
        at: 11,
    });
    stopped(&mut s, "c", 12);
    s.apply(retire(&["b"], &[], 13));
    s.apply(Command::MarkNodeDown {
        node: "n1".into(),
        reason: "silent".into(),
        at: 14,
    });
    assert_eq!(s.live_tasks().count(), 0);
    // `from_objects` rebuilds every index; the state compares them all.
    round_trips(&s);
}

#[test]
fn a_task_id_removed_twice_leaves_one_tombstone_in_the_indexes() {
    // Found by the property test below: t1 runs on n1, stops and is removed; a task of the
    // same ID is created again, stopped before placement and removed again.
    let mut s = state_with_tasks(&["t1"], None);
    stopped(&mut s, "t1", 10);
    s.apply(retire(&["t1"], &[], 11));
    let def = s
        .task_definition("default", &"web:1".parse().expect("ref"))
        .expect("web:1")
        .clone();
    s.apply(Command::CreateTasks {
        tasks: vec![Task::pending("t1".into(), "default", &def, 12)],
        client_token: None,
        at: 12,
    });
    s.apply(Command::StopTask {
        namespace: "default".into(),
        task_id: "t1".into(),
        stop_code: berth_model::StopCode::UserInitiated,
        reason: "bye".into(),
        at: 13,
    });
    s.apply(retire(&["t1"], &[], 14));
    assert_eq!(s.removed_oldest_first().count(), 1);
    assert_eq!(
        s.removed_from("n1").count(),
        0,
        "the older tombstone's node"
    );
    round_trips(&s);
}

fn register(s: &mut State, memory: u32, at: u64) {
    s.apply(registration(memory, at));
}

/// Registers a revision of web.
fn registration(memory: u32, at: u64) -> Command {
    Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec: TaskDefinitionSpec::new(
            "web",
            256,
            memory,
            vec![ContainerDefinition::new("app", "busybox")],
        ),
        reuse_identical: false,
        at,
    }
}

fn rev(revision: u32) -> RevisionKey {
    RevisionKey {
        namespace: "default".into(),
        family: "web".into(),
        revision,
    }
}

#[test]
fn inactive_revisions_go_only_when_nothing_uses_them_and_numbers_are_never_reused() {
    // web:1 is used by task a.
    let mut s = state_with_tasks(&["a"], None);
    register(&mut s, 65, 4);
    register(&mut s, 66, 5);
    register(&mut s, 67, 6);
    // web:2 is used by a service.
    let mut spec = berth_model::ServiceSpec {
        ingress: Vec::new(),
        deregistration_delay: 0,
        meta: Default::default(),
        name: "svc".into(),
        task_definition: "web:2".parse().expect("ref"),
        desired_count: 0,
        deployment_configuration: Default::default(),
        placement: Default::default(),
        autoscaling: None,
    };
    let (r, _) = s.apply(Command::ApplyService {
        namespace: "default".into(),
        spec: Box::new(spec.clone()),
        deployment_id: "d1".into(),
        at: 7,
    });
    assert!(matches!(r, CommandResult::Service { .. }), "{r:?}");
    s.apply(Command::DeregisterTaskDefinition {
        namespace: "default".into(),
        family: "web".into(),
        revision: None,
        at: 8,
    });
    assert_eq!(
        s.inactive_revisions().collect::<Vec<_>>(),
        [(8, rev(1)), (8, rev(2)), (8, rev(3)), (8, rev(4))]
    );
    // A service moves to no INACTIVE revision, but keeps the one it has.
    spec.task_definition = "web:3".parse().expect("ref");
    let (r, _) = s.apply(Command::ApplyService {
        namespace: "default".into(),
        spec: Box::new(spec.clone()),
        deployment_id: "d2".into(),
        at: 9,
    });
    assert!(
        matches!(&r, CommandResult::Rejected(Rejection::Invalid(m)) if m.contains("web:3 is INACTIVE") && m.contains("no ACTIVE revision left")),
        "{r:?}"
    );
    spec.task_definition = "web:2".parse().expect("ref");
    spec.desired_count = 1;
    let (r, _) = s.apply(Command::ApplyService {
        namespace: "default".into(),
        spec: Box::new(spec),
        deployment_id: "d3".into(),
        at: 9,
    });
    assert!(matches!(r, CommandResult::Service { .. }), "{r:?}");
    let (r, changed) = s.apply(Command::Retire(Retirement {
        tasks: vec![],
        forget: vec![],
        revisions: (1..=4).map(rev).collect(),
        nodes: vec![],
        at: 20,
    }));
    // 1 (a task), 2 (a service) and 4 (the family's latest) stay.
    assert_eq!(r, CommandResult::Count(1));
    assert_eq!(
        changed,
        [Key::TaskDefinition {
            namespace: "default".into(),
            family: "web".into(),
            revision: 3
        }]
    );
    assert!(s
        .task_definition("default", &"web:3".parse().expect("ref"))
        .is_none());
    let (r, _) = s.apply(Command::DeregisterTaskDefinition {
        namespace: "default".into(),
        family: "web".into(),
        revision: Some(3),
        at: 21,
    });
    assert!(
        matches!(&r, CommandResult::Rejected(Rejection::NotFound(m)) if m.contains("revisions 1, 2 and 4")),
        "{r:?}"
    );
    register(&mut s, 68, 22);
    assert!(s
        .task_definition("default", &"web:5".parse().expect("ref"))
        .is_some());
    round_trips(&s);
}

#[test]
fn a_node_is_retired_only_while_it_is_down() {
    let mut s = state_with_tasks(&["a"], None);
    s.apply(Command::RegisterNode {
        at: 1,
        node: Node::new("n2", "127.0.0.1:2", 1024, 1024),
    });
    s.apply(Command::MarkNodeDown {
        node: "n1".into(),
        reason: "silent".into(),
        at: 5,
    });
    assert_eq!(s.node("n1").and_then(|n| n.down_since), Some(5));
    let (r, _) = s.apply(Command::Retire(Retirement {
        tasks: vec![],
        forget: vec![],
        revisions: vec![],
        nodes: vec!["n1".into(), "n2".into()],
        at: 20,
    }));
    assert_eq!(r, CommandResult::Count(1));
    assert!(s.node("n1").is_none());
    assert!(s.node("n2").is_some());
    // Its stopped task stays, for the task retention to remove.
    assert_eq!(
        s.task("default", "a").map(|t| t.last_status),
        Some(TaskStatus::Stopped)
    );
    round_trips(&s);
}

/// One step of a random history, over small pools of task IDs, groups, namespaces and nodes so
/// that steps meet the same objects.
#[derive(Debug, Clone)]
enum Step {
    Create {
        id: u8,
        group: u8,
        namespace: u8,
    },
    Place {
        id: u8,
        node: u8,
    },
    /// From the node the task is on (or n0).
    Report {
        id: u8,
        stopped: bool,
    },
    Stop {
        id: u8,
    },
    NodeDown {
        node: u8,
    },
    RemoveNode {
        node: u8,
    },
    RegisterNode {
        node: u8,
    },
    Register {
        memory: u8,
    },
    Deregister {
        revision: Option<u8>,
    },
    Retire {
        tasks: Vec<u8>,
        forget: Vec<u8>,
        revisions: Vec<u8>,
        nodes: Vec<u8>,
    },
    Replace,
}

/// Task IDs `t0` to `t5`: few, so that the steps of a history keep meeting the same tasks.
const TASK_IDS: u8 = 6;

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let id = 0u8..TASK_IDS;
    let node = 0u8..3;
    let few = |max: u8| proptest::collection::vec(0..max, 0..4);
    prop_oneof![
        4 => (id.clone(), 0u8..3, 0u8..2).prop_map(|(id, group, namespace)| Step::Create { id, group, namespace }),
        3 => (id.clone(), node.clone()).prop_map(|(id, node)| Step::Place { id, node }),
        4 => (id.clone(), any::<bool>()).prop_map(|(id, stopped)| Step::Report { id, stopped }),
        1 => id.clone().prop_map(|id| Step::Stop { id }),
        1 => node.clone().prop_map(|node| Step::NodeDown { node }),
        1 => node.clone().prop_map(|node| Step::RemoveNode { node }),
        1 => node.prop_map(|node| Step::RegisterNode { node }),
        1 => (0u8..4).prop_map(|memory| Step::Register { memory }),
        1 => proptest::option::of(1u8..5).prop_map(|revision| Step::Deregister { revision }),
        2 => (few(TASK_IDS), few(TASK_IDS), few(5), few(3)).prop_map(|(tasks, forget, revisions, nodes)| Step::Retire { tasks, forget, revisions, nodes }),
        1 => Just(Step::Replace),
    ]
}

/// The command of `step` against `s` (which it reads for the latest revision and, to replace
/// the state, the objects).
fn command_of(s: &State, step: &Step, at: u64) -> Command {
    let task = |id: &u8| format!("t{id}");
    let node = |n: &u8| format!("n{n}");
    match step {
        Step::Create {
            id,
            group,
            namespace,
        } => {
            let namespace = ["default", "other"][usize::from(*namespace)];
            let def = s
                .task_definitions
                .get(&(namespace.to_owned(), "web".to_owned()))
                .and_then(|revisions| revisions.values().next_back())
                .expect("web is registered")
                .clone();
            let mut t = Task::pending(task(id), namespace, &def, at);
            t.group = [None, Some("service:a"), Some("family:web")][usize::from(*group)]
                .map(str::to_owned);
            Command::CreateTasks {
                tasks: vec![t],
                client_token: None,
                at,
            }
        }
        Step::Place { id, node: n } => Command::PlaceTasks {
            placements: vec![Placement {
                task_id: task(id),
                node: node(n),
            }],
            unplaced: vec![],
            at,
        },
        Step::Report { id, stopped } => Command::ReportTaskStatus {
            node: s
                .task_by_id(&task(id))
                .and_then(|t| t.node.clone())
                .unwrap_or_else(|| node(&0)),
            updates: vec![berth_model::TaskStatusUpdate {
                task_id: task(id),
                last_status: if *stopped {
                    TaskStatus::Stopped
                } else {
                    TaskStatus::Running
                },
                containers: vec![],
                stop_code: stopped.then_some(berth_model::StopCode::EssentialContainerExited),
                stopped_reason: None,
                event: None,
                ip_address: None,
            }],
            at,
        },
        Step::Stop { id } => Command::StopTask {
            namespace: "default".into(),
            task_id: task(id),
            stop_code: berth_model::StopCode::UserInitiated,
            reason: "test".into(),
            at,
        },
        Step::NodeDown { node: n } => Command::MarkNodeDown {
            node: node(n),
            reason: "silent".into(),
            at,
        },
        Step::RemoveNode { node: n } => Command::RemoveNode { node: node(n), at },
        Step::RegisterNode { node: n } => Command::RegisterNode {
            node: Node::new(node(n), "127.0.0.1:1", 4096, 4096),
            at,
        },
        Step::Register { memory } => registration(64 + u32::from(*memory), at),
        Step::Deregister { revision } => Command::DeregisterTaskDefinition {
            namespace: "default".into(),
            family: "web".into(),
            revision: revision.map(u32::from),
            at,
        },
        Step::Retire {
            tasks,
            forget,
            revisions,
            nodes,
        } => Command::Retire(Retirement {
            tasks: tasks.iter().map(task).collect(),
            forget: forget.iter().map(task).collect(),
            revisions: revisions.iter().map(|r| rev(u32::from(*r))).collect(),
            nodes: nodes.iter().map(node).collect(),
            at,
        }),
        Step::Replace => Command::ReplaceState {
            objects: s.objects().collect(),
            at,
        },
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 200, ..Default::default() })]

    /// Whatever commands apply, in whatever order, alone or batched, the indexes kept as they
    /// apply equal the ones rebuilt from the objects; and a copy of the objects taken before
    /// each round still holds the state as it was then.
    #[test]
    fn incremental_indexes_equal_rebuilt_ones_after_any_history(
        history in proptest::collection::vec(
            (proptest::collection::vec(step(), 1..4), proptest::bool::ANY),
            1..30,
        ),
    ) {
        let mut s = State::default();
        register_web(&mut s);
        if let Command::RegisterTaskDefinition { spec, .. } = registration(64, 1) {
            s.apply(Command::RegisterTaskDefinition {
                namespace: "other".into(),
                spec,
                reuse_identical: false,
                at: 1,
            });
        }
        for n in 0..3 {
            s.apply(Command::RegisterNode {
                node: Node::new(format!("n{n}"), "127.0.0.1:1", 4096, 4096),
                at: 1,
            });
        }
        let mut at = 10;
        for (steps, batched) in &history {
            let (before, copy) = (s.clone(), s.objects_copy());
            if *batched {
                // Each command reads the state as it was before the batch.
                let commands = steps
                    .iter()
                    .map(|step| {
                        at += 1;
                        command_of(&s, step, at)
                    })
                    .collect();
                s.apply(Command::Batch(commands));
            } else {
                for step in steps {
                    at += 1;
                    let c = command_of(&s, step, at);
                    s.apply(c);
                }
            }
            let rebuilt = State::from_objects(s.objects());
            proptest::prop_assert!(rebuilt == s, "after {steps:?} (batched: {batched})");
            let copied = State::from_objects(copy.object_refs().map(ObjectRef::cloned));
            proptest::prop_assert!(copied == before, "copy before {steps:?}");
        }
    }
}

#[test]
fn a_task_view_keeps_the_state_it_was_taken_from_and_the_next_sees_the_change() {
    let mut s = state_with_tasks(&["a", "b"], None);
    stopped(&mut s, "a", 10);
    let before = s.task_view();
    s.apply(retire(&["a"], &[], 20));
    let retired = s.task_view();
    s.apply(retire(&[], &["a"], 30));
    let forgotten = s.task_view();
    // Taken before the retention removed it: the stopped task, nothing removed.
    let a = before.task("default", "a").expect("still there");
    assert_eq!(a.last_status, TaskStatus::Stopped);
    assert!(before.removed_task("default", "a").is_none());
    // Then removed and remembered, then forgotten; in its namespace only.
    assert!(retired.task("default", "a").is_none());
    let gone = retired.removed_task("default", "a").expect("remembered");
    assert_eq!(gone.removed_at, 20);
    assert!(retired.removed_task("other", "a").is_none());
    assert!(forgotten.removed_task("default", "a").is_none());
    // A task the commands did not touch is in every view, in its namespace only.
    for view in [&before, &retired, &forgotten] {
        assert!(view.task("default", "b").is_some());
        assert!(view.task("other", "b").is_none());
    }
}

/// A view lists a namespace's tasks as the state does: the same tasks, in the same order, and
/// none of another namespace.
#[test]
fn a_task_view_lists_the_tasks_of_a_namespace_as_the_state_does() {
    let mut s = state_with_tasks(&["c", "a", "b"], None);
    s.apply(Command::CreateNamespace {
        name: "other".into(),
        quota: berth_model::Quota::default(),
        at: 4,
    });
    s.apply(register_web_in("other", 4));
    let def = s
        .task_definition("other", &"web:1".parse().expect("ref"))
        .cloned()
        .expect("registered");
    let (created, _) = s.apply(Command::CreateTasks {
        tasks: ["a2", "d"]
            .map(|id| Task::pending(id.into(), "other", &def, 5))
            .to_vec(),
        client_token: None,
        at: 5,
    });
    assert!(matches!(created, CommandResult::Tasks(_)), "{created:?}");
    let view = s.task_view();
    for namespace in ["default", "other", "none"] {
        let listed: Vec<&str> = view
            .tasks_in(namespace)
            .map(|t| t.task_id.as_str())
            .collect();
        let held: Vec<&str> = s.tasks_in(namespace).map(|t| t.task_id.as_str()).collect();
        assert_eq!(listed, held, "namespace {namespace}");
    }
    let default: Vec<&str> = view
        .tasks_in("default")
        .map(|t| t.task_id.as_str())
        .collect();
    assert_eq!(default, ["a", "b", "c"]);
    assert_eq!(view.tasks_in("other").count(), 2);

    // A task the retention removes leaves a later view's list, and one taken before keeps it;
    // a namespace whose last task is removed lists none.
    stopped(&mut s, "b", 10);
    s.apply(Command::PlaceTasks {
        placements: ["a2", "d"]
            .map(|id| Placement {
                task_id: id.into(),
                node: "n1".into(),
            })
            .to_vec(),
        unplaced: vec![],
        at: 6,
    });
    for id in ["a2", "d"] {
        stopped(&mut s, id, 10);
    }
    let (r, _) = s.apply(retire(&["b", "a2", "d"], &[], 20));
    assert_eq!(r, CommandResult::Count(3), "{r:?}");
    let after = s.task_view();
    assert_eq!(ids(after.tasks_in("default")), ["a", "c"]);
    assert_eq!(after.tasks_in("other").count(), 0);
    assert_eq!(ids(view.tasks_in("default")), ["a", "b", "c"]);
    assert_eq!(view.tasks_in("other").count(), 2);
}
