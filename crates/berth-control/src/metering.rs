//! The meter's round: closing the metering ledger's buckets once they are over. The leader
//! closes each bucket a short grace after its end (reports stamped before the end have reached
//! the log by then), with what each task used according to the samples in its memory; the
//! state machine works out what they requested and refuses a bucket closed already.

use std::collections::HashMap;

use berth_model::{TaskMetrics, Timestamp};
use berth_state::{Command, State, TaskUsed, UsageClose};

use crate::autoscaling::Samples;

/// How long after a bucket's end the leader closes it.
pub const GRACE_MS: u64 = 2000;
/// The most buckets one round closes (a leader catching up after a long outage closes the
/// rest in the next rounds).
pub const MAX_CLOSES: usize = 60;
/// A sample more than this after the one before it covers no time: the task was not sampled
/// in between (its node was away, or the leader changed), and what it used then is unknown.
pub const MAX_SAMPLE_GAP_MS: u64 = 30 * 1000;

/// How the ledger is kept, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The length of a bucket (`--usage-bucket`, a minute).
    pub bucket_ms: u64,
    /// How long closed buckets are kept (`--usage-retention`).
    pub keep_ms: u64,
}

/// The end of the bucket that starts at `start`: the next multiple of the bucket length, so
/// buckets line up with the clock (a bucket after a change of length may be shorter).
fn bucket_end(start: Timestamp, bucket_ms: u64) -> Timestamp {
    let bucket_ms = bucket_ms.max(1);
    (start / bucket_ms + 1) * bucket_ms
}

/// The round's `CloseUsage` commands, oldest bucket first.
pub fn plan(state: &State, samples: &dyn Samples, at: Timestamp, policy: &Policy) -> Vec<Command> {
    let bucket = policy.bucket_ms.max(1);
    let mut start = match state.ledger() {
        Some(ledger) => ledger.accounted_to,
        // The first bucket: the last one over by now.
        None => (at.saturating_sub(GRACE_MS) / bucket).saturating_sub(1) * bucket,
    };
    let mut commands = Vec::new();
    while commands.len() < MAX_CLOSES {
        let end = bucket_end(start, bucket);
        if end.saturating_add(GRACE_MS) > at {
            break;
        }
        let tasks = state.accrual(start, end, &HashMap::new()).tasks;
        let used = tasks
            .keys()
            .filter_map(|id| used_in(id, &samples.samples(id), start, end))
            .collect();
        commands.push(Command::CloseUsage(UsageClose {
            start,
            end,
            used,
            forget_before: end.saturating_sub(policy.keep_ms),
            at,
        }));
        start = end;
    }
    commands
}

/// What a task used in `[start, end)` by its samples (oldest first): each sample taken in the
/// span stands for the time since the sample before it (CPU is an average over that time).
pub fn used_in(
    task_id: &str,
    samples: &[TaskMetrics],
    start: Timestamp,
    end: Timestamp,
) -> Option<TaskUsed> {
    let mut used = TaskUsed {
        task_id: task_id.to_owned(),
        used_cpu_unit_ms: 0,
        used_memory_mib_ms: 0,
        sampled_ms: 0,
        memory_peak_bytes: 0,
    };
    let (mut cpu, mut memory) = (0.0f64, 0.0f64);
    for pair in samples.windows(2) {
        let (before, sample) = (&pair[0], &pair[1]);
        if !(start..end).contains(&sample.sampled_at) {
            continue;
        }
        let ms = sample.sampled_at.saturating_sub(before.sampled_at);
        if ms == 0 || ms > MAX_SAMPLE_GAP_MS {
            continue;
        }
        cpu += sample.cpu_units.max(0.0) * ms as f64;
        memory += sample.memory_bytes as f64 / (1024.0 * 1024.0) * ms as f64;
        used.sampled_ms += ms;
        used.memory_peak_bytes = used.memory_peak_bytes.max(sample.memory_bytes);
    }
    if used.sampled_ms == 0 {
        return None;
    }
    used.used_cpu_unit_ms = cpu.round() as u64;
    used.used_memory_mib_ms = memory.round() as u64;
    Some(used)
}

/// How `berth usage` groups what tasks accrued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Service,
    Namespace,
    TaskDefinition,
    /// Each task still kept, over its whole life.
    Task,
}

impl std::str::FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "service" => Ok(By::Service),
            "namespace" => Ok(By::Namespace),
            "taskdef" => Ok(By::TaskDefinition),
            "task" => Ok(By::Task),
            other => Err(format!(
                "cannot group usage by {other:?}; use service, namespace, taskdef or task"
            )),
        }
    }
}

/// What a usage report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// One namespace, or every one.
    pub namespace: Option<String>,
    /// One service's tasks only.
    pub service: Option<String>,
    /// From the start of the bucket this falls in.
    pub since: Timestamp,
    pub by: By,
}

/// One line of a usage report; the fields the grouping does not use are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportRow {
    pub namespace: String,
    pub service: Option<String>,
    pub task_definition: Option<String>,
    pub task_id: Option<String>,
    /// Tasks counted (of each bucket, summed: a task that ran in three buckets counts three
    /// times; by task, one).
    pub tasks: u64,
    pub accrued: berth_model::Accrued,
}

/// A usage report: rows sorted by their names, over `[from, to)`, of which everything before
/// `accounted_to` comes from the ledger's closed buckets and the rest from the tasks as they
/// are now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub rows: Vec<ReportRow>,
    pub from: Timestamp,
    pub to: Timestamp,
    pub accounted_to: Timestamp,
}

/// The usage report for `query` at `now`: the ledger's closed buckets, and the time since the
/// last one from the tasks' timestamps (with what they used from `samples`, when this server
/// keeps them, that is when it leads).
pub fn report(state: &State, query: &Query, now: Timestamp, samples: &dyn Samples) -> Report {
    let wanted = |namespace: &str, service: Option<&str>| {
        query.namespace.as_deref().is_none_or(|n| n == namespace)
            && query.service.as_deref().is_none_or(|s| Some(s) == service)
    };
    let ledger = state.ledger();
    let accounted_to = ledger.map_or(0, |l| l.accounted_to);
    // By task, each task's whole life: its closed buckets and all the time since them.
    let open_from = if query.by == By::Task {
        accounted_to
    } else {
        accounted_to.max(query.since)
    };
    // By task, from the first pull start of the tasks shown.
    let mut from = if query.by == By::Task { now } else { open_from };
    // The time since the ledger's end, as the state machine will count it.
    let ids: Vec<String> = state
        .accrual(open_from, now, &HashMap::new())
        .tasks
        .into_keys()
        .collect();
    let used: Vec<TaskUsed> = ids
        .iter()
        .filter_map(|id| used_in(id, &samples.samples(id), open_from, now))
        .collect();
    let used_by_id: HashMap<&str, berth_model::Accrued> = used
        .iter()
        .map(|u| {
            let a = berth_model::Accrued {
                used_cpu_unit_ms: u.used_cpu_unit_ms,
                used_memory_mib_ms: u.used_memory_mib_ms,
                sampled_ms: u.sampled_ms,
                memory_peak_bytes: u.memory_peak_bytes,
                ..Default::default()
            };
            (u.task_id.as_str(), a)
        })
        .collect();
    let open = state.accrual(open_from, now, &used_by_id);
    let mut rows: std::collections::BTreeMap<ReportKey, ReportRow> = Default::default();
    let mut add = |row: ReportRow| {
        let key = (
            row.namespace.clone(),
            row.service.clone(),
            row.task_definition.clone(),
            row.task_id.clone(),
        );
        let entry = rows.entry(key).or_insert_with(|| ReportRow {
            accrued: berth_model::Accrued::default(),
            tasks: 0,
            ..row.clone()
        });
        entry.tasks += row.tasks;
        entry.accrued += row.accrued;
    };
    if query.by == By::Task {
        // Each task's closed buckets and the time since.
        let mut per_task = open.tasks;
        for usage in state.task_usages() {
            *per_task.entry(usage.task_id.clone()).or_default() += usage.accrued;
        }
        for (id, accrued) in per_task {
            let Some(task) = state.task_by_id(&id) else {
                continue;
            };
            let service = berth_state::service_of(task);
            if !wanted(&task.namespace, service.as_deref())
                || berth_state::billable_ms(task, query.since, now) == 0
            {
                continue;
            }
            from = from.min(task.pull_started_at.unwrap_or(from));
            add(task_row(task, service, accrued));
        }
    } else {
        let closed = state
            .ledger_buckets(query.since)
            .filter(|b| b.start < accounted_to)
            .inspect(|b| from = from.min(b.start))
            .flat_map(|b| b.rows.iter())
            .cloned();
        for row in closed.chain(open.rows) {
            if !wanted(&row.namespace, row.service.as_deref()) {
                continue;
            }
            add(ReportRow {
                service: matches!(query.by, By::Service | By::TaskDefinition)
                    .then_some(row.service)
                    .flatten(),
                task_definition: (query.by == By::TaskDefinition).then_some(row.task_definition),
                task_id: None,
                tasks: u64::from(row.tasks),
                accrued: row.accrued,
                namespace: row.namespace,
            });
        }
    }
    Report {
        rows: rows.into_values().collect(),
        from,
        to: now,
        accounted_to,
    }
}

type ReportKey = (String, Option<String>, Option<String>, Option<String>);

fn task_row(
    task: &berth_model::Task,
    service: Option<String>,
    accrued: berth_model::Accrued,
) -> ReportRow {
    ReportRow {
        namespace: task.namespace.clone(),
        service,
        task_definition: Some(task.task_definition.to_string()),
        task_id: Some(task.task_id.clone()),
        tasks: 1,
        accrued,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Timestamp, cpu_units: f64, mib: u64) -> TaskMetrics {
        TaskMetrics {
            cpu_units,
            memory_bytes: mib * 1024 * 1024,
            sampled_at: at,
        }
    }

    #[test]
    fn samples_count_for_the_time_since_the_one_before_within_the_span() {
        let samples = [
            sample(50_000, 999.0, 999), // before the span: only the start of the next interval
            sample(61_000, 512.0, 100), // 11 s at half a vCPU
            sample(66_000, 1024.0, 300), // 5 s at one vCPU
            sample(119_000, 1024.0, 900), // after a 53 s gap: unknown
            sample(125_000, 0.0, 200),  // the next span
        ];
        let used = used_in("t", &samples, 60_000, 120_000).expect("sampled");
        assert_eq!(used.sampled_ms, 16_000);
        assert_eq!(used.used_cpu_unit_ms, 512 * 11_000 + 1024 * 5_000);
        assert_eq!(used.used_memory_mib_ms, 100 * 11_000 + 300 * 5_000);
        assert_eq!(used.memory_peak_bytes, 300 * 1024 * 1024);
        assert!(used_in("t", &samples[..1], 0, 200_000).is_none());
        assert!(used_in("t", &samples, 200_000, 260_000).is_none());
    }

    #[test]
    fn buckets_line_up_with_the_clock() {
        assert_eq!(bucket_end(0, 60_000), 60_000);
        assert_eq!(bucket_end(59_999, 60_000), 60_000);
        assert_eq!(bucket_end(60_000, 60_000), 120_000);
        // After a change from a minute to 5 s, the next bucket ends at the next 5 s.
        assert_eq!(bucket_end(62_000, 5_000), 65_000);
    }
}
