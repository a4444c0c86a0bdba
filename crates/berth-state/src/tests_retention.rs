//! Tests of retention (`Command::Retire`) and of the indexes that keep the controllers' work
//! to live tasks.

use berth_model::{ContainerDefinition, TaskDefinitionSpec, TaskStatus};

use super::*;
use crate::command::*;
use crate::tests::{register_web, round_trips};

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

fn register(s: &mut State, memory: u32, at: u64) {
    s.apply(Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec: TaskDefinitionSpec::new(
            "web",
            256,
            memory,
            vec![ContainerDefinition::new("app", "busybox")],
        ),
        reuse_identical: false,
        at,
    });
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
