//! Data-driven tests of the leader's plans: a small cluster built with real commands, a plan
//! run on it, and the exact commands it proposes, one line each.

use std::collections::HashMap;

use berth_model::{
    Autoscaling, ContainerDefinition, Node, ScalingMetric, ServiceSpec, TargetTracking, Task,
    TaskDefinitionSpec, TaskMetrics, TaskStatus, TaskStatusUpdate,
};
use berth_state::{Command, CommandResult, Rejection, ServiceChange, State};

use crate::autoscaling::Samples;

const NOW: u64 = 1_000_000;

/// Nodes `n1..=nodes` offering 1024 CPU units and 1024 MiB each, and task definition `web:1`
/// (256 CPU units, 128 MiB, one container).
fn cluster(nodes: usize) -> State {
    let mut s = State::default();
    for i in 1..=nodes {
        let node = Node::new(format!("n{i}"), "127.0.0.1:1", 1024, 1024);
        s.apply(Command::RegisterNode { node, at: 1 });
    }
    s.apply(Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec: TaskDefinitionSpec::new(
            "web",
            256,
            128,
            vec![ContainerDefinition::new("app", "registry/web:1")],
        ),
        reuse_identical: false,
        at: 1,
    });
    s
}

/// Standalone tasks of `web:1`, PENDING.
fn run(s: &mut State, ids: &[&str]) {
    let def = s
        .task_definition("default", &"web:1".parse().expect("ref"))
        .expect("web:1")
        .clone();
    let tasks = ids
        .iter()
        .map(|id| Task::pending((*id).into(), "default", &def, 2))
        .collect();
    let (r, _) = s.apply(Command::CreateTasks {
        tasks,
        client_token: None,
        at: 2,
    });
    assert!(matches!(r, CommandResult::Tasks(_)), "{r:?}");
}

fn web_spec(desired: u32) -> ServiceSpec {
    ServiceSpec {
        ingress: Vec::new(),
        deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
        meta: Default::default(),
        name: "web".into(),
        task_definition: "web:1".parse().expect("ref"),
        desired_count: desired,
        deployment_configuration: Default::default(),
        placement: Default::default(),
        autoscaling: None,
    }
}

fn apply_service(s: &mut State, spec: ServiceSpec) {
    let (r, _) = s.apply(Command::ApplyService {
        namespace: "default".into(),
        spec: Box::new(spec),
        deployment_id: "d1".into(),
        at: 3,
    });
    assert!(matches!(r, CommandResult::Service { .. }), "{r:?}");
}

/// Applies every command of a plan.
fn apply_all(s: &mut State, commands: Vec<Command>) {
    for c in commands {
        s.apply(c);
    }
}

/// Runs a scheduling round and applies it.
fn schedule(s: &mut State) {
    let round = crate::scheduling::plan(s, NOW, &mut String::new());
    apply_all(s, round.into_iter().collect());
}

/// Runs a reconciler round and applies it.
fn reconcile(s: &mut State) {
    let commands = crate::services::plan(s, NOW, 0, &mut ids());
    apply_all(s, commands);
}

/// Reports `ids` RUNNING on `node`.
fn report_running(s: &mut State, node: &str, ids: &[&str]) {
    s.apply(Command::ReportTaskStatus {
        node: node.into(),
        updates: ids
            .iter()
            .map(|id| TaskStatusUpdate::status(*id, TaskStatus::Running))
            .collect(),
        at: 4,
    });
}

/// One line per command, as the expectations read.
fn show(commands: &[Command]) -> Vec<String> {
    let mut lines = Vec::new();
    for c in commands {
        match c {
            Command::PlaceTasks {
                placements,
                unplaced,
                ..
            } => {
                lines.extend(
                    placements
                        .iter()
                        .map(|p| format!("place {} on {}", p.task_id, p.node)),
                );
                lines.extend(
                    unplaced
                        .iter()
                        .map(|u| format!("unplaced {}: {}", u.task_id, u.reason)),
                );
            }
            Command::ReconcileService(r) => {
                let starts: Vec<&str> = r.start.iter().map(|t| t.task_id.as_str()).collect();
                let stops: Vec<&str> = r.stop.iter().map(|o| o.task_id.as_str()).collect();
                let d = r.service.deployments.first();
                lines.push(format!(
                    "reconcile {} v{}: start {starts:?} stop {stops:?} remove {} rollout {:?} desired {} pending {} running {}",
                    r.name,
                    r.version,
                    r.remove,
                    d.map(|d| d.rollout_state),
                    r.service.desired_count,
                    r.service.pending_count,
                    r.service.running_count,
                ));
            }
            Command::AutoScale(d) => lines.push(format!(
                "autoscale {} v{} to {} ({}): {}",
                d.name,
                d.version,
                d.desired_count,
                if d.scale_out { "out" } else { "in" },
                d.reason
            )),
            Command::MarkNodeDown { node, reason, .. } => {
                lines.push(format!("down {node}: {reason}"));
            }
            other => lines.push(format!("{other:?}")),
        }
    }
    lines
}

fn check(commands: &[Command], expected: &[&str]) {
    let got = show(commands);
    assert_eq!(got, expected, "got:\n{}", got.join("\n"));
}

/// IDs `gen-1`, `gen-2`, … for new tasks and deployments.
fn ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("gen-{n}")
    }
}

#[test]
fn a_scheduling_round_places_what_fits_and_says_why_the_rest_does_not() {
    let mut s = cluster(2);
    run(
        &mut s,
        &["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"],
    );
    let round = crate::scheduling::plan(&s, NOW, &mut String::new());
    check(
        round.as_slice(),
        &[
            "place t1 on n1",
            "place t2 on n1",
            "place t3 on n1",
            "place t4 on n1",
            "place t5 on n2",
            "place t6 on n2",
            "place t7 on n2",
            "place t8 on n2",
            "unplaced t9: 0 of 2 nodes can run it: 2 lacked 256 CPU units",
        ],
    );
    apply_all(&mut s, round.into_iter().collect());
    // Nothing new to say: the reason is already the task's last event.
    assert_eq!(crate::scheduling::plan(&s, NOW, &mut String::new()), None);
}

#[test]
fn a_fixed_host_port_keeps_tasks_apart_across_rounds() {
    let mut s = cluster(2);
    let mut app = ContainerDefinition::new("app", "registry/web:1");
    app.port_mappings = vec![berth_model::PortMapping {
        container_port: 80,
        host_port: 8080,
        protocol: berth_model::Protocol::Tcp,
    }];
    s.apply(Command::RegisterTaskDefinition {
        namespace: "default".into(),
        spec: TaskDefinitionSpec::new("fixed", 64, 64, vec![app]),
        reuse_identical: false,
        at: 1,
    });
    let def = s
        .task_definition("default", &"fixed:1".parse().expect("ref"))
        .expect("fixed:1")
        .clone();
    let create = |ids: &[&str]| Command::CreateTasks {
        tasks: ids
            .iter()
            .map(|id| Task::pending((*id).into(), "default", &def, 2))
            .collect(),
        client_token: None,
        at: 2,
    };
    s.apply(create(&["p1"]));
    schedule(&mut s);
    // The next round learns of p1's port from the state, not from its own placements.
    s.apply(create(&["p2", "p3"]));
    let round = crate::scheduling::plan(&s, NOW, &mut String::new());
    check(
        round.as_slice(),
        &[
            "place p2 on n2",
            "unplaced p3: 0 of 2 nodes can run it: 2 already had host port 8080/tcp taken",
        ],
    );
}

#[test]
fn the_reconciler_starts_missing_tasks_once_and_counts_what_runs() {
    let mut s = cluster(2);
    apply_service(&mut s, web_spec(2));
    let round = crate::services::plan(&s, NOW, 0, &mut ids());
    check(
        &round,
        &["reconcile web v1: start [\"gen-2\", \"gen-3\"] stop [] remove false rollout Some(InProgress) desired 2 pending 0 running 0"],
    );
    apply_all(&mut s, round);
    // The next round counts the started tasks (PENDING); then there is nothing more to do.
    let round = crate::services::plan(&s, NOW, 0, &mut ids());
    check(
        &round,
        &["reconcile web v1: start [] stop [] remove false rollout Some(InProgress) desired 2 pending 2 running 0"],
    );
    apply_all(&mut s, round);
    check(&crate::services::plan(&s, NOW, 0, &mut ids()), &[]);
    schedule(&mut s);
    report_running(&mut s, "n1", &["gen-2", "gen-3"]);
    check(
        &crate::services::plan(&s, NOW, 0, &mut ids()),
        &["reconcile web v1: start [] stop [] remove false rollout Some(Completed) desired 2 pending 0 running 2"],
    );
}

#[test]
fn the_reconciler_scales_in_and_removes_a_deleted_service() {
    let mut s = cluster(1);
    apply_service(&mut s, web_spec(2));
    reconcile(&mut s);
    schedule(&mut s);
    report_running(&mut s, "n1", &["gen-2", "gen-3"]);
    reconcile(&mut s);
    s.apply(Command::UpdateService {
        namespace: "default".into(),
        name: "web".into(),
        change: ServiceChange::Delete,
        at: 5,
    });
    check(
        &crate::services::plan(&s, NOW, 0, &mut ids()),
        &["reconcile web v2: start [] stop [\"gen-2\", \"gen-3\"] remove false rollout Some(Completed) desired 0 pending 0 running 0"],
    );
}

/// Samples from a map: task ID to its samples.
struct Fixed(HashMap<String, Vec<TaskMetrics>>);

impl Samples for Fixed {
    fn samples(&self, task_id: &str) -> Vec<TaskMetrics> {
        self.0.get(task_id).cloned().unwrap_or_default()
    }
}

#[test]
fn the_autoscaler_scales_out_on_busy_tasks_and_says_why() {
    let mut s = cluster(2);
    let mut spec = web_spec(1);
    let cpu = TargetTracking {
        metric: ScalingMetric::CpuUtilization,
        target: 50.0,
    };
    spec.autoscaling = Some(Autoscaling::with_defaults(1, 4, vec![cpu]));
    apply_service(&mut s, spec);
    reconcile(&mut s);
    schedule(&mut s);
    report_running(&mut s, "n1", &["gen-2"]);
    // No samples yet: no decision.
    check(
        &crate::autoscaling::plan(&s, &Fixed(HashMap::new()), NOW, 0),
        &[],
    );
    // The one task uses all of its 256 units for the last 20 s: twice the target.
    let busy = (0..5)
        .map(|i| TaskMetrics {
            cpu_units: 256.0,
            memory_bytes: 64 << 20,
            sampled_at: NOW - 20_000 + i * 5_000,
        })
        .collect();
    let samples = Fixed(HashMap::from([("gen-2".to_owned(), busy)]));
    check(
        &crate::autoscaling::plan(&s, &samples, NOW, 0),
        &["autoscale web v1 to 2 (out): scaled out 1 -> 2: CPUUtilization 100.0% (target 50%) over 1 tasks in 20s, rule CPUUtilization target 50%"],
    );
}

#[test]
fn the_node_monitor_declares_silent_nodes_down_with_how_long() {
    let s = cluster(2);
    let t0 = std::time::Instant::now();
    let ttl = std::time::Duration::from_secs(10);
    let seen = |n: &str| (n == "n1").then_some(t0 + std::time::Duration::from_secs(9));
    check(
        &crate::nodes::plan(
            &s,
            seen,
            t0,
            t0 + std::time::Duration::from_secs(12),
            ttl,
            NOW,
        ),
        &["down n2: its agent has not been heard from for 12.0s (node TTL 10s)"],
    );
}

#[test]
fn a_desired_set_holds_the_nodes_tasks_that_have_not_stopped() {
    let mut s = cluster(1);
    run(&mut s, &["t1", "t2"]);
    schedule(&mut s);
    s.apply(Command::ReportTaskStatus {
        node: "n1".into(),
        updates: vec![TaskStatusUpdate::status("t2", TaskStatus::Stopped)],
        at: 5,
    });
    let desired = crate::desired_tasks(&s, "n1");
    let got: Vec<(&str, &str, usize)> = desired
        .iter()
        .map(|a| {
            (
                a.task_id.as_str(),
                a.containers[0].image.as_str(),
                a.containers.len(),
            )
        })
        .collect();
    assert_eq!(got, [("t1", "registry/web:1", 1)]);
    assert!(crate::desired_tasks(&s, "n2").is_empty());
    // One task at a time, the same.
    assert_eq!(
        crate::desired_task(&s, "n1", "t1").as_ref(),
        desired.first()
    );
    assert_eq!(crate::desired_task(&s, "n1", "t2"), None, "stopped");
    assert_eq!(crate::desired_task(&s, "n2", "t1"), None, "on another node");
    assert_eq!(crate::desired_task(&s, "n1", "t9"), None, "no such task");
}

#[test]
fn a_dry_run_answers_what_the_apply_would() {
    let mut s = cluster(1);
    let preview = |s: &State, spec| crate::preview::apply_service(s, "default", spec, None);
    let new = preview(&s, web_spec(5)).expect("preview");
    assert!(new.existing.is_none() && new.changed && new.deployment_started);
    let plan: Vec<String> = new.plan.iter().map(|p| format!("{p:?}")).collect();
    assert_eq!(
        plan,
        [
            "Node(\"n1\")",
            "Node(\"n1\")",
            "Node(\"n1\")",
            "Node(\"n1\")",
            "Unplaceable { reason: \"0 of 1 node can run it: 1 lacked 256 CPU units\" }",
        ]
    );
    apply_service(&mut s, web_spec(2));
    // The same spec changes nothing; a label does (as the apply says), and starts nothing.
    let same = preview(&s, web_spec(2)).expect("preview");
    assert!(!same.changed && same.plan.is_empty());
    let mut labelled = web_spec(2);
    labelled.meta.labels.insert("team".into(), "a".into());
    let labelled = preview(&s, labelled).expect("preview");
    assert!(labelled.changed && !labelled.deployment_started && labelled.plan.is_empty());
    // A scale-out previews only the new tasks.
    assert_eq!(preview(&s, web_spec(3)).expect("preview").plan.len(), 1);
    // A service being deleted refuses a new spec, as the apply does.
    s.apply(Command::UpdateService {
        namespace: "default".into(),
        name: "web".into(),
        change: ServiceChange::Delete,
        at: 5,
    });
    let refused = preview(&s, web_spec(2)).expect_err("refused");
    assert!(matches!(refused, Rejection::Invalid(ref m) if m.contains("being deleted")));
    let (applied, _) = s.apply(Command::ApplyService {
        namespace: "default".into(),
        spec: Box::new(web_spec(2)),
        deployment_id: "d2".into(),
        at: 6,
    });
    assert_eq!(applied, CommandResult::Rejected(refused));
}

/// Reports `id`'s first word from `node` (its pull starting) at `at`, or its stop.
fn report_at(s: &mut State, node: &str, id: &str, status: TaskStatus, at: u64) {
    s.apply(Command::ReportTaskStatus {
        node: node.into(),
        updates: vec![TaskStatusUpdate::status(id, status)],
        at,
    });
}

#[test]
fn the_meter_closes_each_bucket_once_after_its_grace_and_reports_the_open_time() {
    use crate::metering::{plan, report, By, Policy, Query, GRACE_MS, MAX_CLOSES};
    let policy = Policy {
        bucket_ms: 60_000,
        keep_ms: 3_600_000,
    };
    let mut s = cluster(1);
    run(&mut s, &["a"]);
    schedule(&mut s);
    // With no ledger yet, the first bucket is the last one over (by the grace).
    let none = Fixed(HashMap::new());
    let start = 60_000_000;
    let first = plan(&s, &none, start + 60_000 + GRACE_MS - 1, &policy);
    let [Command::CloseUsage(c)] = &first[..] else {
        panic!("{first:?}")
    };
    assert_eq!((c.start, c.end), (start - 60_000, start));
    report_at(&mut s, "n1", "a", TaskStatus::Pending, start + 30_000);
    let samples = Fixed(HashMap::from([(
        "a".to_owned(),
        vec![
            TaskMetrics {
                cpu_units: 128.0,
                memory_bytes: 10 << 20,
                sampled_at: start + 40_000,
            },
            TaskMetrics {
                cpu_units: 512.0,
                memory_bytes: 20 << 20,
                sampled_at: start + 50_000,
            },
        ],
    )]));
    let at = start + 60_000 + GRACE_MS;
    let closes = plan(&s, &samples, at, &policy);
    let [Command::CloseUsage(close)] = &closes[..] else {
        panic!("{closes:?}")
    };
    assert_eq!((close.start, close.end), (start, start + 60_000));
    assert_eq!(close.used.len(), 1);
    assert_eq!(close.used[0].used_cpu_unit_ms, 512 * 10_000);
    apply_all(&mut s, closes);
    assert_eq!(s.ledger().expect("ledger").accounted_to, start + 60_000);
    // Nothing more until the next bucket is over; a long outage is caught up in rounds.
    assert!(plan(&s, &samples, at + 1_000, &policy).is_empty());
    let later = plan(&s, &none, at + 100 * 60_000, &policy);
    assert_eq!(later.len(), MAX_CLOSES);
    // The report: the closed bucket (30 s of a), then the open time from the timestamps.
    let now = start + 90_000;
    let query = Query {
        namespace: Some("default".into()),
        service: None,
        since: 0,
        by: By::Service,
    };
    let r = report(&s, &query, now, &none);
    assert_eq!((r.from, r.to, r.accounted_to), (start, now, start + 60_000));
    let [row] = &r.rows[..] else { panic!("{r:?}") };
    assert_eq!(
        (row.namespace.as_str(), row.service.as_deref()),
        ("default", None)
    );
    assert_eq!(row.accrued.task_ms, 30_000 + 30_000);
    assert_eq!(row.accrued.cpu_unit_ms, 256 * 60_000);
    assert_eq!(row.accrued.used_cpu_unit_ms, 512 * 10_000);
    let by_task = report(
        &s,
        &Query {
            by: By::Task,
            ..query.clone()
        },
        now,
        &none,
    );
    assert_eq!(by_task.rows[0].task_id.as_deref(), Some("a"));
    assert_eq!(by_task.rows[0].accrued.task_ms, 60_000);
    assert_eq!(by_task.rows[0].tasks, 1);
    let elsewhere = report(
        &s,
        &Query {
            namespace: Some("other".into()),
            ..query
        },
        now,
        &none,
    );
    assert!(elsewhere.rows.is_empty());
    assert!("hourly".parse::<By>().is_err());
}
