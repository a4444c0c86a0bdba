//! Tests of `State::apply`, command by command.

use berth_model::{
    ContainerDefinition, ContainerState, EventLog, StopCode, TaskDefinitionSpec, TaskStatusUpdate,
};

use super::*;
use crate::command::*;
use berth_model::{DesiredStatus, ServiceStatus, TaskStatus};

/// The registration of the next revision of `default/web` (256 CPU units, 64 MiB, one busybox
/// container) at `at`.
fn register_web_at(at: u64) -> Command {
    register_web_in("default", at)
}

/// Registers the `web` family in `namespace` at time `at`.
pub(crate) fn register_web_in(namespace: &str, at: u64) -> Command {
    Command::RegisterTaskDefinition {
        namespace: namespace.into(),
        spec: TaskDefinitionSpec::new(
            "web",
            256,
            64,
            vec![ContainerDefinition::new("app", "busybox")],
        ),
        reuse_identical: false,
        at,
    }
}

/// Registers task definition `default/web:1` at time 1 and answers it.
pub(crate) fn register_web(s: &mut State) -> TaskDefinition {
    s.apply(register_web_at(1));
    s.task_definition("default", &"web:1".parse().expect("ref"))
        .expect("registered")
        .clone()
}

/// An object as the state stores it: its key, then its JSON.
pub(crate) fn stored(o: &Object) -> String {
    format!(
        "{} {}",
        o.key().encode(),
        serde_json::to_string(o).expect("encodes")
    )
}

fn state_with_task() -> State {
    let mut s = State::default();
    let def = register_web(&mut s);
    s.apply(Command::RegisterNode {
        at: 1,
        node: Node::new("n1", "127.0.0.1:1", 1024, 1024),
    });
    s.apply(Command::CreateTasks {
        tasks: vec![Task::pending("t1".into(), "default", &def, 2)],
        client_token: Some("tok-1".into()),
        at: 2,
    });
    s
}

fn report(status: TaskStatus, exit: Option<i32>, code: Option<StopCode>) -> Command {
    Command::ReportTaskStatus {
        node: "n1".into(),
        updates: vec![TaskStatusUpdate {
            task_id: "t1".into(),
            last_status: status,
            containers: vec![ContainerState {
                last_status: status,
                exit_code: exit,
                ..ContainerState::pending("app", "busybox")
            }],
            stop_code: code,
            stopped_reason: code.map(|_| "Essential container in task exited".into()),
            event: None,
            ip_address: None,
        }],
        at: 10,
    }
}

fn summary(s: &State) -> String {
    let t = s.task("default", "t1").expect("task exists");
    format!(
        "{} desired={} node={:?} code={:?} exit={:?} node_cpu={}",
        t.last_status,
        t.desired_status,
        t.node,
        t.stop_code,
        t.exit_code(),
        s.node("n1")
            .map_or(0, |n| s.node_with_allocation(n).cpu.allocated)
    )
}

#[test]
fn commands_that_change_nothing_leave_a_shared_task_uncopied() {
    let mut s = state_with_task();
    place(&mut s, &["t1"]);
    s.apply(report(TaskStatus::Running, None, None));
    // What a reader or the change feed holds.
    let held = s.shared_task("t1").expect("task");
    let same = |s: &State| Arc::ptr_eq(&held, &s.shared_task("t1").expect("task"));
    // A report from another node, and one behind what the task reached: stale.
    s.apply(Command::ReportTaskStatus {
        node: "n2".into(),
        updates: vec![TaskStatusUpdate::status("t1", TaskStatus::Stopped)],
        at: 11,
    });
    s.apply(report(TaskStatus::Pending, None, None));
    assert!(same(&s), "stale reports copied the task");
    // A stop is a change: the holder keeps the task as it was.
    let stop = Command::StopTask {
        namespace: "default".into(),
        task_id: "t1".into(),
        stop_code: StopCode::UserInitiated,
        reason: "test".into(),
        at: 12,
    };
    s.apply(stop.clone());
    assert!(!same(&s));
    assert_eq!(held.desired_status, DesiredStatus::Running);
    // A second stop of the same task changes nothing and copies nothing.
    let held = s.shared_task("t1").expect("task");
    let (result, changed) = s.apply(stop);
    assert!(changed.is_empty());
    assert!(matches!(result, CommandResult::Task(t) if t.desired_status == DesiredStatus::Stopped));
    assert!(Arc::ptr_eq(&held, &s.shared_task("t1").expect("task")));
}

#[test]
fn lifecycle_of_a_task_that_exits() {
    let mut s = state_with_task();
    place(&mut s, &["t1"]);
    assert_eq!(
        summary(&s),
        "PENDING desired=RUNNING node=Some(\"n1\") code=None exit=None node_cpu=256"
    );
    // The by-node index is derived state: rebuilt from objects it is the same.
    assert_eq!(s.tasks_on("n1").count(), 1);
    // A standalone task counts in its family's placement group, in its namespace alone.
    fn placed(s: &State) -> Vec<(&str, u64)> {
        s.placed_of("default", "family:web")
    }
    assert_eq!(placed(&s), [("n1", 1)]);
    assert_eq!(s.placed_on("default", "family:web", "n1"), 1);
    assert_eq!(s.placed_on("other", "family:web", "n1"), 0);
    round_trips(&s);
    // Live tasks are counted by status as they change (what `/metrics` shows).
    let counts = |s: &State| s.live_counts().collect::<Vec<_>>();
    assert_eq!(counts(&s), [(TaskStatus::Pending, 1)]);
    s.apply(report(TaskStatus::Running, None, None));
    assert_eq!(counts(&s), [(TaskStatus::Running, 1)]);
    round_trips(&s);
    // A report from another node is stale and ignored.
    let (_, changed) = s.apply(Command::ReportTaskStatus {
        node: "n2".into(),
        updates: vec![TaskStatusUpdate::status("t1", TaskStatus::Stopped)],
        at: 11,
    });
    assert!(changed.is_empty());
    s.apply(report(
        TaskStatus::Stopped,
        Some(3),
        Some(StopCode::EssentialContainerExited),
    ));
    assert_eq!(
        summary(&s),
        "STOPPED desired=STOPPED node=Some(\"n1\") code=Some(EssentialContainerExited) exit=Some(3) node_cpu=0"
    );
    assert_eq!(placed(&s), []);
    assert_eq!(counts(&s), []);
    round_trips(&s);
    // Never backwards.
    s.apply(report(TaskStatus::Running, None, None));
    assert!(s.task("default", "t1").is_some_and(Task::is_stopped));
}

#[test]
fn the_host_ports_of_a_nodes_live_tasks_are_counted_until_they_stop() {
    let mut s = State::default();
    s.apply(Command::RegisterNode {
        at: 1,
        node: Node::new("n1", "127.0.0.1:1", 1024, 1024),
    });
    let mut app = ContainerDefinition::new("app", "busybox");
    app.port_mappings = vec![
        berth_model::PortMapping {
            container_port: 80,
            host_port: 8080,
            protocol: berth_model::Protocol::Tcp,
        },
        // The node picks this one: not a fixed port.
        berth_model::PortMapping {
            container_port: 81,
            host_port: 0,
            protocol: berth_model::Protocol::Tcp,
        },
    ];
    s.apply(Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec: TaskDefinitionSpec::new("web", 64, 64, vec![app]),
        reuse_identical: false,
        at: 1,
    });
    let def = s
        .task_definition("default", &"web:1".parse().expect("ref"))
        .expect("registered")
        .clone();
    s.apply(Command::CreateTasks {
        tasks: vec![Task::pending("t1".into(), "default", &def, 2)],
        client_token: None,
        at: 2,
    });
    let ports = |s: &State| s.host_ports_on("n1").collect::<Vec<_>>();
    assert_eq!(ports(&s), [], "not placed yet");
    place(&mut s, &["t1"]);
    assert_eq!(ports(&s), [(8080, berth_model::Protocol::Tcp)]);
    round_trips(&s);
    s.apply(report(TaskStatus::Stopped, Some(0), None));
    assert_eq!(ports(&s), []);
    round_trips(&s);
}

#[test]
fn user_stop_keeps_its_stop_code() {
    let mut s = state_with_task();
    place(&mut s, &["t1"]);
    s.apply(stop_t1(4));
    s.apply(report(
        TaskStatus::Stopped,
        Some(137),
        Some(StopCode::EssentialContainerExited),
    ));
    assert_eq!(
        summary(&s),
        "STOPPED desired=STOPPED node=Some(\"n1\") code=Some(UserInitiated) exit=Some(137) node_cpu=0"
    );
}

#[test]
fn stopping_an_unplaced_task_stops_it_at_once_and_unknown_ids_are_not_found() {
    let mut s = state_with_task();
    s.apply(stop_t1(4));
    assert_eq!(
        summary(&s),
        "STOPPED desired=STOPPED node=None code=Some(UserInitiated) exit=None node_cpu=0"
    );
    let (result, _) = s.apply(Command::StopTask {
        namespace: "other".into(),
        task_id: "t1".into(),
        stop_code: StopCode::UserInitiated,
        reason: String::new(),
        at: 5,
    });
    assert_eq!(
        result,
        CommandResult::Rejected(Rejection::NotFound(
            "task t1 not found in namespace other".into()
        ))
    );
}

#[test]
fn pending_tasks_after_a_cursor_wrap_around_and_leave_once_placed() {
    let mut s = state_with_task();
    let t1 = s.task("default", "t1").cloned().expect("t1");
    let more = ["t0", "t2"]
        .map(|id| Task {
            task_id: id.into(),
            ..t1.clone()
        })
        .to_vec();
    s.apply(Command::CreateTasks {
        tasks: more,
        client_token: None,
        at: 3,
    });
    let ids = |s: &State, after: &str| {
        s.pending_after(after)
            .map(|t| t.task_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&s, ""), ["t0", "t1", "t2"]);
    assert_eq!(ids(&s, "t1"), ["t2", "t0", "t1"]);
    assert_eq!(ids(&s, "t2"), ["t0", "t1", "t2"]);
    s.apply(Command::RegisterNode {
        node: berth_model::Node::new("n1", "127.0.0.1:1", 4096, 4096),
        at: 4,
    });
    s.apply(Command::PlaceTasks {
        placements: vec![Placement {
            task_id: "t1".into(),
            node: "n1".into(),
        }],
        unplaced: vec![],
        at: 5,
    });
    assert_eq!(ids(&s, ""), ["t0", "t2"]);
    assert_ne!(s.allocated_on("n1"), (0, 0));
    // The indexes are derived: a state rebuilt from its objects has the same.
    round_trips(&s);
}

#[test]
fn unplaced_reason_is_recorded_once() {
    let mut s = state_with_task();
    for at in [3, 4] {
        s.apply(Command::PlaceTasks {
            placements: vec![],
            unplaced: vec![Unplaced {
                task_id: "t1".into(),
                reason: "no nodes".into(),
            }],
            at,
        });
    }
    let events: Vec<_> = s
        .task("default", "t1")
        .map(|t| t.events.iter().map(|e| e.message.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        events,
        vec!["created".to_owned(), "unable to place: no nodes".to_owned()]
    );
}

#[test]
fn a_retried_client_token_creates_nothing_new_until_it_expires() {
    let mut s = state_with_task();
    let retry = |id: &str, at| Command::CreateTasks {
        tasks: vec![Task {
            task_id: id.into(),
            ..s.task("default", "t1").cloned().expect("t1")
        }],
        client_token: Some("tok-1".into()),
        at,
    };
    let (result, changed) = s.clone().apply(retry("t2", 3));
    assert!(matches!(&result, CommandResult::Tasks(t) if t.len() == 1 && t[0].task_id == "t1"));
    assert!(changed.is_empty());
    // The same token from another namespace answers nothing of the first's tasks.
    let other = Command::CreateTasks {
        tasks: vec![Task {
            task_id: "t3".into(),
            namespace: "team-b".into(),
            ..s.task("default", "t1").cloned().expect("t1")
        }],
        client_token: Some("tok-1".into()),
        at: 3,
    };
    let (result, changed) = s.clone().apply(other);
    assert!(
        matches!(&result, CommandResult::Rejected(Rejection::Conflict(m)) if m.contains("another namespace")),
        "{result:?}"
    );
    assert!(changed.is_empty());
    let (result, _) = s.apply(retry("t2", 2 + CLIENT_TOKEN_TTL_MS + 1));
    assert!(matches!(&result, CommandResult::Tasks(t) if t[0].task_id == "t2"));
    assert_eq!(s.tasks().count(), 2);
}

/// `RunTasks` makes each task as `Task::pending` does, with what the request adds, and creates
/// them as `CreateTasks` does (its client token too); a revision gone by then is not found.
#[test]
fn run_tasks_creates_the_tasks_of_a_revision_from_their_ids() {
    let mut s = State::default();
    let def = register_web(&mut s);
    let run = |ids: &[&str], token: &str, namespace: &str, at| Command::RunTasks {
        namespace: namespace.into(),
        task_definition: def.reference(),
        task_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        overrides: vec![berth_model::ContainerOverride {
            name: "app".into(),
            command: Some(vec!["sleep".into(), "9".into()]),
            environment: [("MODE".to_owned(), "x".to_owned())].into(),
        }],
        started_by: Some("ci".into()),
        group: Some("batch".into()),
        labels: [("team".to_owned(), "a".to_owned())].into(),
        client_token: Some(token.into()),
        at,
    };
    let (result, changed) = s.apply(run(&["t1", "t2"], "tok", "default", 5));
    let CommandResult::Tasks(tasks) = result else {
        panic!("{result:?}");
    };
    let mut expected = Task::pending("t1".into(), "default", &def, 5);
    expected.overrides = vec![berth_model::ContainerOverride {
        name: "app".into(),
        command: Some(vec!["sleep".into(), "9".into()]),
        environment: [("MODE".to_owned(), "x".to_owned())].into(),
    }];
    expected.started_by = Some("ci".into());
    expected.group = Some("batch".into());
    expected.labels.insert("team".into(), "a".into());
    expected.events.push(5, "created");
    assert_eq!(tasks.first(), Some(&expected));
    assert_eq!(s.task("default", "t2").map(|t| t.created_at), Some(5));
    assert!(changed.contains(&Key::Task("t1".into())) && changed.contains(&Key::Task("t2".into())));
    // Retried: the same tasks, nothing new; from another namespace: refused.
    let (result, changed) = s.apply(run(&["t3"], "tok", "default", 6));
    assert!(matches!(&result, CommandResult::Tasks(t) if t.len() == 2 && t[0].task_id == "t1"));
    assert!(changed.is_empty());
    let (result, _) = s.apply(run(&["t3"], "tok", "team-b", 6));
    assert!(
        matches!(&result, CommandResult::Rejected(Rejection::Conflict(_))),
        "{result:?}"
    );
    // No such revision (in that namespace), or none named exactly.
    let (result, changed) = s.apply(run(&["t4"], "tok-2", "team-b", 7));
    assert!(
        matches!(&result, CommandResult::Rejected(Rejection::NotFound(m)) if m == "task definition web:1 not found in namespace team-b"),
        "{result:?}"
    );
    assert!(changed.iter().all(|k| !matches!(k, Key::Task(_))));
    let mut latest = run(&["t4"], "tok-3", "default", 7);
    if let Command::RunTasks {
        task_definition, ..
    } = &mut latest
    {
        *task_definition = "web".parse().expect("a family");
    }
    let (result, _) = s.apply(latest);
    assert!(
        matches!(&result, CommandResult::Rejected(Rejection::NotFound(_))),
        "{result:?}"
    );
    assert_eq!(s.tasks().count(), 2);
}

/// `RegisterTaskDefinition` of `web` as store request `id` at `at`.
fn register_request(id: &str, at: u64) -> Command {
    Command::Request {
        id: id.into(),
        at,
        command: Box::new(register_web_at(at)),
    }
}

#[test]
fn a_request_applied_twice_changes_the_state_once_and_answers_the_first_answer() {
    let mut s = State::default();
    let (first, changed) = s.apply(register_request("1-7-1", 10));
    assert!(
        matches!(&first, CommandResult::TaskDefinition { task_definition, created: true }
        if task_definition.revision == 1)
    );
    assert!(changed.contains(&Key::Request("1-7-1".into())));
    // The retry's copy, committed after the first (a later leader kept both).
    let (again, changed) = s.apply(register_request("1-7-1", 11));
    assert_eq!(again, first);
    assert!(changed.is_empty(), "the copy changed {changed:?}");
    assert_eq!(s.task_definitions("default").count(), 1);
    // Another request is another write.
    let (other, _) = s.apply(register_request("1-7-2", 12));
    assert!(
        matches!(&other, CommandResult::TaskDefinition { task_definition, .. }
        if task_definition.revision == 2)
    );
    // The answers are stored objects: a state rebuilt from them deduplicates as well.
    let mut rebuilt = State::from_objects(s.objects());
    assert_eq!(rebuilt, s);
    assert_eq!(rebuilt.apply(register_request("1-7-1", 13)).0, first);
}

#[test]
fn a_request_that_created_tasks_keeps_their_ids_and_answers_them_as_they_are() {
    let mut s = State::default();
    let def = register_web(&mut s);
    let run = |at| Command::Request {
        id: "2-7-1".into(),
        at,
        command: Box::new(Command::CreateTasks {
            tasks: vec![Task::pending("t1".into(), "default", &def, 2)],
            client_token: None,
            at,
        }),
    };
    s.apply(run(5));
    let kept = s.objects().find_map(|o| match o {
        Object::Request(r) => Some(r.answer),
        _ => None,
    });
    assert_eq!(kept, Some(Answer::Tasks(vec!["t1".into()])));
    s.apply(Command::StopTask {
        namespace: "default".into(),
        task_id: "t1".into(),
        stop_code: StopCode::UserInitiated,
        reason: "done".into(),
        at: 6,
    });
    let (again, changed) = s.apply(run(7));
    assert!(changed.is_empty(), "the copy changed {changed:?}");
    assert!(matches!(&again, CommandResult::Tasks(t)
        if t.len() == 1 && t[0].desired_status == berth_model::DesiredStatus::Stopped));
}

#[test]
fn request_answers_expire_by_age_beyond_the_latest_kept_whatever_the_clock() {
    let mut s = State::default();
    let kept = REQUESTS_KEPT as u64;
    for n in 0..=kept {
        s.apply(register_request(&format!("r-{n}"), 1_000 + n));
    }
    // Young: all kept, more than the floor.
    assert_eq!(
        s.objects()
            .filter(|o| matches!(o, Object::Request(_)))
            .count(),
        REQUESTS_KEPT + 1
    );
    // A clock far ahead: the latest REQUESTS_KEPT before it survive whatever the clock (the
    // oldest goes, the new one comes).
    let later = 1_000 + kept + REQUEST_TTL_MS * 100;
    let (_, changed) = s.apply(register_request("late", later));
    assert_eq!(
        changed
            .iter()
            .filter(|k| matches!(k, Key::Request(_)))
            .count(),
        2
    );
    let ids: Vec<String> = s
        .objects()
        .filter_map(|o| match o {
            Object::Request(r) => Some(r.id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), REQUESTS_KEPT + 1);
    assert!(!ids.contains(&"r-0".to_owned()));
    assert!(ids.contains(&"r-1".to_owned()) && ids.contains(&"late".to_owned()));
    // An expired ID is a new write again.
    let revisions = s.task_definitions("default").count();
    s.apply(register_request("r-0", later));
    assert_eq!(s.task_definitions("default").count(), revisions + 1);
}

#[test]
fn replace_state_touches_old_and_new_keys() {
    let mut s = state_with_task();
    let (_, changed) = s.apply(Command::ReplaceState {
        objects: vec![],
        at: 9,
    });
    assert_eq!(s, State::default());
    assert!(changed.contains(&Key::Task("t1".into())));
    assert!(changed.contains(&Key::ClientToken("tok-1".into())));
}

fn service_spec(desired: u32) -> berth_model::ServiceSpec {
    berth_model::ServiceSpec {
        ingress: Vec::new(),
        deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
        meta: Default::default(),
        name: "svc".into(),
        task_definition: "web:1".parse().expect("ref"),
        desired_count: desired,
        deployment_configuration: Default::default(),
        placement: Default::default(),
        autoscaling: None,
    }
}

fn service_task(id: &str, deployment: &str) -> Task {
    Task {
        task_id: id.into(),
        group: Some("service:svc".into()),
        started_by: Some(deployment.into()),
        ..state_with_task()
            .task("default", "t1")
            .cloned()
            .expect("t1")
    }
}

fn get_service(s: &State) -> Service {
    s.service("default", "svc")
        .cloned()
        .expect("service exists")
}

/// A user's stop of task t1.
fn stop_t1(at: u64) -> Command {
    Command::StopTask {
        namespace: "default".into(),
        task_id: "t1".into(),
        stop_code: StopCode::UserInitiated,
        reason: "Task stopped by user".into(),
        at,
    }
}

fn apply(spec: berth_model::ServiceSpec, id: &str, at: u64) -> Command {
    Command::ApplyService {
        namespace: "default".into(),
        spec: Box::new(spec),
        deployment_id: id.into(),
        at,
    }
}

#[test]
fn applying_a_service_starts_a_deployment_only_when_the_revision_changes() {
    let mut s = state_with_task();
    let (r, _) = s.apply(apply(service_spec(2), "d1", 5));
    assert!(matches!(r, CommandResult::Service { created: true, .. }));
    let (r, changed) = s.apply(apply(service_spec(2), "d2", 6));
    assert!(
        matches!(r, CommandResult::Service { changed: false, .. }),
        "{r:?}"
    );
    assert!(changed.is_empty());
    let (r, _) = s.apply(apply(service_spec(4), "d3", 7));
    assert!(matches!(
        r,
        CommandResult::Service {
            changed: true,
            deployment_started: false,
            ..
        }
    ));
    let svc = get_service(&s);
    assert_eq!(
        (svc.desired_count, svc.deployments.len(), svc.version),
        (4, 1, 2)
    );
    // An unknown revision is refused and changes nothing.
    let mut bad = service_spec(4);
    bad.task_definition = "web:9".parse().expect("ref");
    let (r, changed) = s.apply(apply(bad, "d4", 8));
    assert!(matches!(r, CommandResult::Rejected(Rejection::NotFound(_))));
    assert!(changed.is_empty());
}

#[test]
fn reconciler_decisions_for_an_older_version_are_refused() {
    let mut s = state_with_task();
    s.apply(apply(service_spec(1), "d1", 5));
    let seen = get_service(&s);
    s.apply(Command::UpdateService {
        namespace: "default".into(),
        name: "svc".into(),
        change: ServiceChange::Scale(3),
        at: 6,
    });
    let (r, changed) = s.apply(Command::ReconcileService(Reconciliation {
        namespace: "default".into(),
        name: "svc".into(),
        version: seen.version,
        service: Box::new(seen.clone()),
        start: vec![service_task("s1", "d1")],
        stop: vec![],
        remove: false,
        at: 7,
    }));
    assert!(matches!(r, CommandResult::Rejected(Rejection::Conflict(_))));
    assert!(changed.is_empty());
    assert!(s.task("default", "s1").is_none());
    assert_eq!(get_service(&s).desired_count, 3, "the user's change stands");
    // A scale-up by hand counts as a scale-out (cooldowns, scale-to-zero's idle time); a
    // scale-down does not.
    assert_eq!(get_service(&s).last_scale_out_at, 6);
    s.apply(Command::UpdateService {
        namespace: "default".into(),
        name: "svc".into(),
        change: ServiceChange::Scale(2),
        at: 8,
    });
    assert_eq!(get_service(&s).last_scale_out_at, 6);
}

#[test]
fn only_tasks_that_fail_on_their_own_count_against_the_deployment() {
    let mut s = state_with_task();
    s.apply(apply(service_spec(2), "d1", 5));
    let svc = get_service(&s);
    s.apply(Command::ReconcileService(Reconciliation {
        namespace: "default".into(),
        name: "svc".into(),
        version: svc.version,
        service: Box::new(svc),
        start: vec![service_task("s1", "d1"), service_task("s2", "d1")],
        stop: vec![],
        remove: false,
        at: 6,
    }));
    s.apply(Command::PlaceTasks {
        placements: ["s1", "s2"]
            .map(|id| Placement {
                task_id: id.into(),
                node: "n1".into(),
            })
            .to_vec(),
        unplaced: vec![],
        at: 7,
    });
    // s1 is stopped by a user: not a failure. s2 fails to start: a failure.
    s.apply(Command::StopTask {
        namespace: "default".into(),
        task_id: "s1".into(),
        stop_code: StopCode::UserInitiated,
        reason: "by hand".into(),
        at: 8,
    });
    let stopped = |id: &str, code| TaskStatusUpdate {
        task_id: id.into(),
        last_status: TaskStatus::Stopped,
        containers: vec![],
        stop_code: Some(code),
        stopped_reason: Some("image not found".into()),
        event: None,
        ip_address: None,
    };
    let (_, changed) = s.apply(Command::ReportTaskStatus {
        node: "n1".into(),
        updates: vec![
            stopped("s1", StopCode::EssentialContainerExited),
            stopped("s2", StopCode::TaskFailedToStart),
        ],
        at: 9,
    });
    assert!(changed.contains(&Key::Service {
        namespace: "default".into(),
        name: "svc".into()
    }));
    let svc = get_service(&s);
    assert_eq!(svc.deployments[0].failed_tasks, 1);
    assert_eq!(svc.backoff.failures, 1);
    assert_eq!(svc.backoff.not_before, 9 + 1000);
    assert!(svc
        .events
        .last()
        .is_some_and(|e| e.message == "task s2 failed: image not found"));
}

#[test]
fn a_deleted_service_refuses_changes_and_goes_once_reconciled_away() {
    let mut s = state_with_task();
    s.apply(apply(service_spec(2), "d1", 5));
    let update = |change| Command::UpdateService {
        namespace: "default".into(),
        name: "svc".into(),
        change,
        at: 6,
    };
    s.apply(update(ServiceChange::Delete));
    let svc = get_service(&s);
    assert_eq!(
        (svc.status, svc.desired_count),
        (ServiceStatus::Draining, 0)
    );
    let (r, _) = s.apply(update(ServiceChange::Scale(3)));
    assert!(matches!(r, CommandResult::Rejected(Rejection::Invalid(_))));
    let (r, _) = s.apply(Command::ApplyService {
        namespace: "default".into(),
        spec: Box::new(service_spec(2)),
        deployment_id: "d2".into(),
        at: 7,
    });
    assert!(matches!(r, CommandResult::Rejected(Rejection::Invalid(_))));
    s.apply(Command::ReconcileService(Reconciliation {
        namespace: "default".into(),
        name: "svc".into(),
        version: svc.version,
        service: Box::new(svc),
        start: vec![],
        stop: vec![],
        remove: true,
        at: 8,
    }));
    assert!(s.service("default", "svc").is_none());
    round_trips(&s);
}

#[test]
fn objects_round_trip() {
    let s = state_with_task();
    round_trips(&s);
}

/// A new task like `t1` of [`state_with_task`] (256 CPU units, 64 MiB), PENDING.
fn another_task(s: &mut State, id: &str) {
    let mut task = s.task("default", "t1").expect("t1").clone();
    task.task_id = id.into();
    task.node = None;
    task.last_status = TaskStatus::Pending;
    task.events = EventLog::default();
    s.apply(Command::CreateTasks {
        tasks: vec![task],
        client_token: None,
        at: 3,
    });
}

/// Places `ids` on n1; answers the result and how many tasks' events changed.
fn place(s: &mut State, ids: &[&str]) -> (CommandResult, usize) {
    let (result, changed) = s.apply(Command::PlaceTasks {
        placements: ids
            .iter()
            .map(|id| Placement {
                task_id: (*id).into(),
                node: "n1".into(),
            })
            .collect(),
        unplaced: vec![],
        at: 4,
    });
    (result, changed.len())
}

#[test]
fn a_placement_that_no_longer_fits_its_node_is_refused() {
    // n1 offers 1024 CPU units; each task wants 256. Two leaders each decided, from a state
    // where n1 was empty, to put tasks there: applied blindly, n1 would carry 6 × 256 = 1536.
    let mut s = state_with_task();
    for id in ["t2", "t3", "t4", "t5", "t6"] {
        another_task(&mut s, id);
    }
    assert_eq!(
        place(&mut s, &["t1", "t2", "t3"]),
        (CommandResult::Placed(3), 3)
    );
    assert_eq!(
        place(&mut s, &["t4", "t5", "t6"]),
        (CommandResult::Placed(1), 3)
    );
    // Proposed again, the refusal is not recorded twice.
    assert_eq!(place(&mut s, &["t5", "t6"]), (CommandResult::Placed(0), 0));
    let placed: Vec<&str> = s.tasks_on("n1").map(|t| t.task_id.as_str()).collect();
    assert_eq!(placed, ["t1", "t2", "t3", "t4"]);
    assert_eq!(s.allocated_on("n1"), (1024, 256));
    for id in ["t5", "t6"] {
        let t = s.task("default", id).expect("task");
        assert_eq!(
            (t.node.as_deref(), t.last_status),
            (None, TaskStatus::Pending)
        );
        assert_eq!(
            t.events.last().map(|e| e.message.as_str()),
            Some("placement on node n1 refused: it no longer fits (256 CPU units wanted, 0 free)")
        );
    }
    // Once a task stops, its room is free again.
    s.apply(stop_t1(5));
    s.apply(Command::ReportTaskStatus {
        node: "n1".into(),
        updates: vec![TaskStatusUpdate::status("t1", TaskStatus::Stopped)],
        at: 6,
    });
    place(&mut s, &["t5", "t6"]);
    let t5 = s.task("default", "t5").expect("task");
    assert_eq!(t5.node.as_deref(), Some("n1"));
    assert_eq!(s.task("default", "t6").expect("task").node, None);
}

#[test]
fn controller_decisions_keep_the_log_format_of_struct_variants() {
    // Entries written before the decisions became structs of their own must still decode.
    let command = Command::AutoScale(ScalingDecision {
        namespace: "default".into(),
        name: "web".into(),
        version: 3,
        desired_count: 2,
        scale_out: true,
        reason: "cpu".into(),
        at: 9,
    });
    let json = serde_json::to_string(&command).expect("encode");
    assert_eq!(
        json,
        r#"{"AutoScale":{"namespace":"default","name":"web","version":3,"desired_count":2,"scale_out":true,"reason":"cpu","at":9}}"#
    );
    assert_eq!(
        serde_json::from_str::<Command>(&json).expect("decode"),
        command
    );
}

#[test]
fn a_placement_on_a_node_that_is_not_active_is_refused_with_a_reason() {
    let mut s = state_with_task();
    s.apply(Command::SetNodeStatus {
        node: "n1".into(),
        status: berth_model::NodeStatus::Draining,
        at: 3,
    });
    assert_eq!(place(&mut s, &["t1"]), (CommandResult::Placed(0), 1));
    let t = s.task("default", "t1").expect("task");
    assert_eq!(t.node, None);
    assert_eq!(
        t.events.last().map(|e| e.message.as_str()),
        Some("placement on node n1 refused: it is DRAINING")
    );
}

/// The state's objects rebuild it, and each encodes borrowed ([`crate::ObjectRef`], as the
/// store writes them) exactly as it does owned (as snapshots and backups hold them).
pub(crate) fn round_trips(s: &State) {
    assert_eq!(&State::from_objects(s.objects()), s, "objects round trip");
    for object in s.objects() {
        let borrowed = s.object_ref(&object.key()).expect("stored");
        assert_eq!(
            serde_json::to_string(&borrowed).expect("encode"),
            serde_json::to_string(&object).expect("encode"),
        );
    }
}

#[test]
fn a_redeploy_starts_a_deployment_of_the_same_revision() {
    let mut s = state_with_task();
    s.apply(apply(service_spec(2), "d1", 5));
    let (r, changed) = s.apply(Command::UpdateService {
        namespace: "default".into(),
        name: "svc".into(),
        change: ServiceChange::Redeploy {
            deployment_id: "d2".into(),
        },
        at: 6,
    });
    assert!(
        matches!(r, CommandResult::Service { changed: true, .. }),
        "{r:?}"
    );
    assert!(!changed.is_empty());
    let svc = get_service(&s);
    let ids: Vec<&str> = svc.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d2", "d1"]);
    assert_eq!(
        svc.deployments[0].task_definition,
        svc.deployments[1].task_definition
    );
    assert_eq!(svc.version, 2);
    let last = svc.events.iter().last().map(|e| e.message.clone());
    assert_eq!(
        last.as_deref(),
        Some("deployment d2 started: web:1 again, every task replaced (redeploy)")
    );
    round_trips(&s);
}

#[test]
fn deregistering_marks_revisions_inactive_once_and_latest_resolves_to_an_active_one() {
    let mut s = State::default();
    register_web(&mut s);
    let mut spec = TaskDefinitionSpec::new(
        "web",
        256,
        128,
        vec![ContainerDefinition::new("app", "busybox")],
    );
    spec.meta = Default::default();
    s.apply(Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec,
        reuse_identical: false,
        at: 2,
    });
    let deregister = |revision| Command::DeregisterTaskDefinition {
        namespace: "default".into(),
        family: "web".into(),
        revision,
        at: 3,
    };
    let (r, changed) = s.apply(deregister(Some(2)));
    let CommandResult::TaskDefinitions(done) = r else {
        panic!("{r:?}");
    };
    assert_eq!(done.iter().map(|d| d.revision).collect::<Vec<_>>(), [2]);
    assert_eq!(changed.len(), 1);
    // `web` now means revision 1, the latest ACTIVE one.
    let latest = s.task_definition("default", &"web".parse().expect("ref"));
    assert_eq!(latest.map(|d| d.revision), Some(1));
    // Again: nothing changes.
    let (r, changed) = s.apply(deregister(Some(2)));
    assert_eq!(r, CommandResult::TaskDefinitions(Vec::new()));
    assert!(changed.is_empty());
    // A revision that does not exist.
    let (r, _) = s.apply(deregister(Some(7)));
    assert!(
        matches!(&r, CommandResult::Rejected(Rejection::NotFound(m)) if m.contains("revisions 1 to 2")),
        "{r:?}"
    );
    // The whole family.
    let (r, _) = s.apply(deregister(None));
    let CommandResult::TaskDefinitions(done) = r else {
        panic!("{r:?}");
    };
    assert_eq!(done.iter().map(|d| d.revision).collect::<Vec<_>>(), [1]);
    assert!(s
        .task_definition("default", &"web".parse().expect("ref"))
        .is_none());
    round_trips(&s);
}
