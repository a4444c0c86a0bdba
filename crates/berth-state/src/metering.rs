//! The metering ledger: closing a bucket, and what tasks accrued in a span.
//!
//! Requested figures are worked out here, from the tasks' own timestamps (the start of the
//! image pull and the stop, both stamped by the leader), so every member computes the same
//! bucket; used figures come from the leader's samples, carried in the command. A bucket is
//! closed once: [`Command::CloseUsage`](crate::Command::CloseUsage) must start where the ledger
//! stands, so a second leader closing the same bucket is refused. Tasks stopped in an open
//! bucket are kept by the retention until it closes, and a stop or pull stamped before the
//! ledger's end (a new leader's clock behind the old one's) counts from the ledger's end, so a
//! closed bucket never changes.

use std::collections::{BTreeMap, HashMap};

use berth_model::{
    Accrued, Ledger, LedgerBucket, LedgerRow, LedgerTotal, Task, TaskUsage, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State, TaskId};

/// The leader's closing of one bucket of the ledger, `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageClose {
    pub start: Timestamp,
    pub end: Timestamp,
    /// What tasks used in the bucket, from the samples in the leader's memory (requested
    /// figures are the state machine's to work out).
    pub used: Vec<TaskUsed>,
    /// Buckets that ended before this are forgotten (the ledger's retention).
    pub forget_before: Timestamp,
    pub at: Timestamp,
}

/// What one task used in a bucket, by its samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsed {
    pub task_id: String,
    pub used_cpu_unit_ms: u64,
    pub used_memory_mib_ms: u64,
    pub sampled_ms: u64,
    pub memory_peak_bytes: u64,
}

impl TaskUsed {
    fn accrued(&self) -> Accrued {
        Accrued {
            used_cpu_unit_ms: self.used_cpu_unit_ms,
            used_memory_mib_ms: self.used_memory_mib_ms,
            sampled_ms: self.sampled_ms,
            memory_peak_bytes: self.memory_peak_bytes,
            ..Accrued::default()
        }
    }
}

/// What tasks accrued in a span: rows per namespace, service and task definition (sorted), and
/// each task's own figures (by task ID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accrual {
    pub rows: Vec<LedgerRow>,
    pub tasks: BTreeMap<String, Accrued>,
}

/// The billable milliseconds of `task` within `[start, end)`: from the start of its pull to its
/// stop (or `end` while it has not stopped).
pub fn billable_ms(task: &Task, start: Timestamp, end: Timestamp) -> u64 {
    let Some(pulled) = task.pull_started_at else {
        return 0;
    };
    let from = pulled.max(start);
    let to = task.stopped_at.unwrap_or(end).min(end);
    to.saturating_sub(from)
}

/// The service a task belongs to, from its group (`service:NAME`).
pub fn service_of(task: &Task) -> Option<String> {
    task.group
        .as_deref()
        .and_then(|g| g.strip_prefix("service:"))
        .map(str::to_owned)
}

impl State {
    /// Where the ledger stands; none before its first bucket closed.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// The closed buckets that end after `from`, oldest first.
    pub fn ledger_buckets(&self, from: Timestamp) -> impl Iterator<Item = &LedgerBucket> {
        self.buckets.values().filter(move |b| b.end > from)
    }

    /// What every kept task accrued in the closed buckets, by task ID.
    pub fn task_usages(&self) -> impl Iterator<Item = &TaskUsage> {
        self.task_usage.values()
    }

    /// What a task accrued in the closed buckets, while it is kept.
    pub fn task_usage(&self, task_id: &str) -> Option<&TaskUsage> {
        self.task_usage.get(task_id)
    }

    /// `at`, or the end of the ledger's closed buckets if later: what a task's pull start or
    /// stop is stamped with, so that a closed bucket never changes.
    pub(crate) fn metered_time(&self, at: Timestamp) -> Timestamp {
        self.ledger.as_ref().map_or(at, |l| at.max(l.accounted_to))
    }

    /// Whether the retention may remove stopped `task`: not while a bucket that counts it is
    /// open.
    pub fn accounted(&self, task: &Task) -> bool {
        match (&self.ledger, task.pull_started_at) {
            (Some(ledger), Some(_)) => task.stopped_at.is_some_and(|s| s <= ledger.accounted_to),
            _ => true,
        }
    }

    /// What tasks accrued in `[start, end)`: requested figures from their timestamps, used
    /// figures from `used` (by task ID) for the tasks that accrued billable time.
    pub fn accrual(
        &self,
        start: Timestamp,
        end: Timestamp,
        used: &HashMap<&str, Accrued>,
    ) -> Accrual {
        // Tasks that may overlap: those not stopped, and those stopped since `start`.
        let stopped = self
            .stopped
            .range((start, TaskId::from(""))..)
            .map(|(_, id)| id);
        let mut rows: BTreeMap<(String, Option<String>, String), (u32, Accrued)> = BTreeMap::new();
        let mut tasks = BTreeMap::new();
        for id in self.live.keys().chain(stopped) {
            let Some(task) = self.tasks.get(id) else {
                continue;
            };
            let ms = billable_ms(task, start, end);
            if ms == 0 {
                continue;
            }
            let mut accrued = Accrued::requested(task.cpu, task.memory, ms);
            if let Some(u) = used.get(&**id) {
                accrued += *u;
            }
            let key = (
                task.namespace.clone(),
                service_of(task),
                task.task_definition.to_string(),
            );
            let row = rows.entry(key).or_default();
            row.0 += 1;
            row.1 += accrued;
            tasks.insert(id.to_string(), accrued);
        }
        let rows = rows
            .into_iter()
            .map(
                |((namespace, service, task_definition), (count, accrued))| LedgerRow {
                    namespace,
                    service,
                    task_definition,
                    tasks: count,
                    accrued,
                },
            )
            .collect();
        Accrual { rows, tasks }
    }

    pub(crate) fn close_usage(&mut self, c: UsageClose, changed: &mut Vec<Key>) -> CommandResult {
        if let Some(ledger) = &self.ledger {
            if c.start != ledger.accounted_to {
                return CommandResult::Rejected(Rejection::Conflict(format!(
                    "the ledger stands at {}, not at {}: that bucket is closed already",
                    ledger.accounted_to, c.start
                )));
            }
        }
        if c.end <= c.start || c.end > c.at {
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "bucket [{}, {}) cannot close at {}",
                c.start, c.end, c.at
            )));
        }
        let used: HashMap<&str, Accrued> = c
            .used
            .iter()
            .map(|u| (u.task_id.as_str(), u.accrued()))
            .collect();
        let accrual = self.accrual(c.start, c.end, &used);
        for (id, accrued) in accrual.tasks {
            let Some(task) = self.tasks.get(id.as_str()) else {
                continue;
            };
            let usage = self
                .task_usage
                .entry(id.clone())
                .or_insert_with(|| TaskUsage {
                    task_id: id.clone(),
                    namespace: task.namespace.clone(),
                    accounted_to: c.end,
                    accrued: Accrued::default(),
                });
            usage.accrued += accrued;
            usage.accounted_to = c.end;
            changed.push(Key::TaskUsage(id));
        }
        let mut ledger = self.ledger.take().unwrap_or(Ledger {
            since: c.start,
            accounted_to: c.start,
            totals: Vec::new(),
        });
        let mut totals: BTreeMap<(String, Option<String>), Accrued> = ledger
            .totals
            .drain(..)
            .map(|t| ((t.namespace, t.service), t.accrued))
            .collect();
        for row in &accrual.rows {
            *totals
                .entry((row.namespace.clone(), row.service.clone()))
                .or_default() += row.accrued;
        }
        ledger.totals = totals
            .into_iter()
            .map(|((namespace, service), accrued)| LedgerTotal {
                namespace,
                service,
                accrued,
            })
            .collect();
        ledger.accounted_to = c.end;
        self.ledger = Some(ledger);
        changed.push(Key::Ledger);
        if !accrual.rows.is_empty() {
            self.buckets.insert(
                c.start,
                LedgerBucket {
                    start: c.start,
                    end: c.end,
                    rows: accrual.rows,
                },
            );
            changed.push(Key::LedgerBucket(c.start));
        }
        let old: Vec<Timestamp> = self
            .buckets
            .values()
            .take_while(|b| b.end <= c.forget_before)
            .map(|b| b.start)
            .collect();
        for start in old {
            self.buckets.remove(&start);
            changed.push(Key::LedgerBucket(start));
        }
        CommandResult::Done
    }
}
