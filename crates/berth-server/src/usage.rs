//! Resource usage agents report, kept in the leader's memory only (never in the Raft log): a
//! short history of samples per task, for `describe` and for the autoscaler's windows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_model::{Task, TaskMetrics};

/// Samples older than this (before a task's newest) are dropped; it covers the autoscaler's
/// window with room to spare.
const KEEP_MS: u64 = 60 * 1000;
/// Tasks not heard from for this long are forgotten.
const FORGET_MS: u64 = 10 * 60 * 1000;

/// Every this many samples, tasks that stopped reporting are swept out.
const SWEEP_EVERY: u64 = 1024;

#[derive(Clone, Default)]
pub struct Usage(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, VecDeque<TaskMetrics>>,
    recorded: u64,
}

impl Usage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, task_id: String, metrics: TaskMetrics) {
        let mut inner = self.lock();
        let at = metrics.sampled_at;
        inner.recorded += 1;
        if inner.recorded.is_multiple_of(SWEEP_EVERY) {
            inner
                .tasks
                .retain(|_, s| s.back().is_some_and(|m| m.sampled_at + FORGET_MS >= at));
        }
        let samples = inner.tasks.entry(task_id).or_default();
        samples.push_back(metrics);
        while samples.front().is_some_and(|m| m.sampled_at + KEEP_MS < at) {
            samples.pop_front();
        }
    }

    /// The task with its latest sample filled in.
    pub fn fill(&self, mut task: Task) -> Task {
        task.metrics = self
            .lock()
            .tasks
            .get(&task.task_id)
            .and_then(|s| s.back())
            .copied();
        task
    }

    /// Every sample kept for `task_id`, oldest first.
    pub fn samples(&self, task_id: &str) -> Vec<TaskMetrics> {
        self.lock()
            .tasks
            .get(task_id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}
