//! Resource usage agents report, kept in the leader's memory only (never in the Raft log):
//! the latest sample of every task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_model::{Task, TaskMetrics};

/// Samples older than this are dropped.
const KEEP_MS: u64 = 10 * 60 * 1000;

#[derive(Clone, Default)]
pub struct Usage(Arc<Mutex<HashMap<String, TaskMetrics>>>);

impl Usage {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskMetrics>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, task_id: String, metrics: TaskMetrics) {
        let mut map = self.lock();
        let cutoff = metrics.sampled_at.saturating_sub(KEEP_MS);
        map.retain(|_, m| m.sampled_at >= cutoff);
        map.insert(task_id, metrics);
    }

    /// The task with its latest sample filled in.
    pub fn fill(&self, mut task: Task) -> Task {
        task.metrics = self.lock().get(&task.task_id).copied();
        task
    }
}
