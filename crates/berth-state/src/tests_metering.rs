//! Tests of the metering ledger (`Command::CloseUsage`): exact requested figures from the
//! tasks' timestamps, buckets closed once and in order, and the retention waiting for them.

use berth_model::{StopCode, TaskStatus, TaskStatusUpdate};

use super::*;
use crate::command::*;
use crate::tests::{register_web, round_trips};

/// Tasks of web:1 (256 CPU units, 64 MiB) placed on n1 at 3; `group` for each.
fn state_with(tasks: &[(&str, Option<&str>)]) -> State {
    let mut s = State::default();
    let def = register_web(&mut s);
    s.apply(Command::RegisterNode {
        at: 1,
        node: Node::new("n1", "127.0.0.1:1", 4096, 4096),
    });
    s.apply(Command::CreateTasks {
        tasks: tasks
            .iter()
            .map(|(id, group)| {
                let mut t = Task::pending((*id).into(), "default", &def, 2);
                t.group = group.map(str::to_owned);
                t
            })
            .collect(),
        client_token: None,
        at: 2,
    });
    s.apply(Command::PlaceTasks {
        placements: tasks
            .iter()
            .map(|(id, _)| Placement {
                task_id: (*id).into(),
                node: "n1".into(),
            })
            .collect(),
        unplaced: vec![],
        at: 3,
    });
    s
}

fn report(s: &mut State, id: &str, status: TaskStatus, at: u64) {
    s.apply(Command::ReportTaskStatus {
        node: "n1".into(),
        updates: vec![TaskStatusUpdate {
            task_id: id.into(),
            last_status: status,
            containers: vec![],
            stop_code: (status == TaskStatus::Stopped)
                .then_some(StopCode::EssentialContainerExited),
            stopped_reason: None,
            event: None,
            ip_address: None,
        }],
        at,
    });
}

fn close(start: u64, end: u64, used: Vec<TaskUsed>, at: u64) -> Command {
    Command::CloseUsage(UsageClose {
        start,
        end,
        used,
        forget_before: 0,
        at,
    })
}

fn used(id: &str, cpu: u64) -> TaskUsed {
    TaskUsed {
        task_id: id.into(),
        used_cpu_unit_ms: cpu,
        used_memory_mib_ms: 10 * 20_000,
        sampled_ms: 20_000,
        memory_peak_bytes: 12 << 20,
    }
}

#[test]
fn a_bucket_counts_each_task_from_its_pull_to_its_stop_to_the_millisecond() {
    let mut s = state_with(&[
        ("a", Some("service:svc")),
        ("b", Some("service:svc")),
        ("c", None),
    ]);
    // Placed, not yet heard from: nothing billable.
    assert_eq!(s.task("default", "a").unwrap().pull_started_at, None);
    report(&mut s, "a", TaskStatus::Pending, 1_000);
    report(&mut s, "b", TaskStatus::Pending, 1_500);
    report(&mut s, "a", TaskStatus::Running, 2_000);
    report(&mut s, "a", TaskStatus::Stopped, 30_000);
    report(&mut s, "c", TaskStatus::Pending, 59_999);
    let a = s.task("default", "a").unwrap();
    assert_eq!(
        (a.pull_started_at, a.started_at, a.stopped_at),
        (Some(1_000), Some(2_000), Some(30_000))
    );

    let (r, changed) = s.apply(close(
        0,
        60_000,
        vec![used("a", 5_000), used("zz", 1)],
        62_000,
    ));
    assert_eq!(r, CommandResult::Done);
    assert!(changed.contains(&Key::Ledger) && changed.contains(&Key::LedgerBucket(0)));
    let bucket = s.ledger_buckets(0).next().expect("a bucket");
    assert_eq!((bucket.start, bucket.end), (0, 60_000));
    // Sorted by namespace, service (none first), task definition.
    let [solo, svc] = &bucket.rows[..] else {
        panic!("{:?}", bucket.rows)
    };
    assert_eq!(
        (
            svc.service.as_deref(),
            svc.task_definition.as_str(),
            svc.tasks
        ),
        (Some("svc"), "web:1", 2)
    );
    assert_eq!(svc.accrued.task_ms, 29_000 + 58_500);
    assert_eq!(svc.accrued.cpu_unit_ms, 256 * (29_000 + 58_500));
    assert_eq!(svc.accrued.memory_mib_ms, 64 * (29_000 + 58_500));
    assert_eq!(svc.accrued.used_cpu_unit_ms, 5_000);
    assert_eq!((solo.service.as_deref(), solo.accrued.task_ms), (None, 1));
    let a_usage = s.task_usage("a").expect("a's usage");
    assert_eq!(
        (a_usage.accrued.task_ms, a_usage.accounted_to),
        (29_000, 60_000)
    );
    assert_eq!(a_usage.accrued.memory_peak_bytes, 12 << 20);
    assert_eq!(s.task_usage("b").unwrap().accrued.task_ms, 58_500);
    assert!(s.task_usage("zz").is_none());

    // The same bucket again (a second leader): refused, nothing counted twice.
    let before = s.clone();
    let (r, _) = s.apply(close(0, 60_000, vec![], 63_000));
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::Conflict(_))),
        "{r:?}"
    );
    assert_eq!(s, before);
    // A bucket that is not over is refused too.
    let (r, _) = s.apply(close(60_000, 120_000, vec![], 119_000));
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::Invalid(_))),
        "{r:?}"
    );

    s.apply(close(60_000, 120_000, vec![], 121_000));
    assert_eq!(s.task_usage("b").unwrap().accrued.task_ms, 58_500 + 60_000);
    assert_eq!(s.task_usage("a").unwrap().accounted_to, 60_000);
    let totals = &s.ledger().expect("ledger").totals;
    assert_eq!(totals.len(), 2);
    assert_eq!(totals[0].service, None);
    assert_eq!(totals[1].accrued.task_ms, 29_000 + 58_500 + 60_000);
    assert_eq!(s.ledger().unwrap().accounted_to, 120_000);
    round_trips(&s);
}

#[test]
fn a_stop_stamped_inside_a_closed_bucket_counts_from_its_end_and_the_retention_waits() {
    let mut s = state_with(&[("a", None), ("b", None)]);
    report(&mut s, "a", TaskStatus::Pending, 1_000);
    report(&mut s, "b", TaskStatus::Pending, 1_000);
    s.apply(close(0, 60_000, vec![], 61_000));
    // A new leader whose clock is behind stamps b's stop at 50 s: the closed bucket counted b
    // to 60 s, and so does the task.
    report(&mut s, "b", TaskStatus::Stopped, 50_000);
    assert_eq!(s.task("default", "b").unwrap().stopped_at, Some(60_000));
    report(&mut s, "a", TaskStatus::Stopped, 65_000);
    assert_eq!(s.task_usage("b").unwrap().accrued.task_ms, 59_000);
    // b is accounted to its stop and may go; a waits for the bucket it stopped in.
    let retire = |at| {
        Command::Retire(Retirement {
            tasks: vec!["a".into(), "b".into()],
            forget: vec![],
            revisions: vec![],
            nodes: vec![],
            at,
        })
    };
    let (r, _) = s.apply(retire(70_000));
    assert_eq!(r, CommandResult::Count(1));
    assert!(s.task("default", "b").is_none() && s.task_usage("b").is_none());
    assert!(s.task("default", "a").is_some());
    s.apply(close(60_000, 120_000, vec![], 121_000));
    assert_eq!(s.task_usage("a").unwrap().accrued.task_ms, 64_000);
    let (r, changed) = s.apply(retire(122_000));
    assert_eq!(r, CommandResult::Count(1));
    assert!(changed.contains(&Key::TaskUsage("a".into())));
    assert!(s.task_usage("a").is_none());
    // The bucket keeps what they accrued.
    let total: u64 = s
        .ledger_buckets(0)
        .flat_map(|b| &b.rows)
        .map(|r| r.accrued.task_ms)
        .sum();
    assert_eq!(total, 59_000 + 59_000 + 5_000);
    round_trips(&s);
}

#[test]
fn old_buckets_are_forgotten_and_totals_stay() {
    let mut s = state_with(&[("a", Some("service:svc"))]);
    report(&mut s, "a", TaskStatus::Pending, 0);
    for i in 0..5u64 {
        let mut c = close(i * 1_000, (i + 1) * 1_000, vec![], (i + 1) * 1_000);
        if let Command::CloseUsage(c) = &mut c {
            c.forget_before = ((i + 1) * 1_000).saturating_sub(2_000);
        }
        s.apply(c);
    }
    let starts: Vec<u64> = s.ledger_buckets(0).map(|b| b.start).collect();
    assert_eq!(starts, [3_000, 4_000]);
    assert_eq!(s.ledger().unwrap().totals[0].accrued.task_ms, 5_000);
    assert_eq!(s.ledger().unwrap().since, 0);
    round_trips(&s);
}
