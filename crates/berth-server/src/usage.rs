//! Resource usage agents report and the requests ingresses report, kept in the leader's
//! memory only (never in the Raft log): a short history of samples per task and of reports
//! per service, for `describe` and for the autoscaler's windows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_control::autoscaling::RequestSample;
use berth_model::{Task, TaskMetrics, Timestamp};

/// Samples older than this (before a task's newest) are dropped; it covers the autoscaler's
/// window and a bucket of the metering ledger (closed a little after its end) with room to
/// spare.
const KEEP_MS: u64 = 3 * 60 * 1000;
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
    /// Ingress reports by `(namespace, service)`, oldest first.
    requests: HashMap<(String, String), Traffic>,
}

#[derive(Default)]
struct Traffic {
    reports: VecDeque<RequestSample>,
    /// When an ingress last reported a request for the service (arrived or in flight).
    last_request_at: Timestamp,
}

/// What one ingress reported about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTraffic {
    pub namespace: String,
    pub name: String,
    /// Requests that arrived since the ingress's previous report.
    pub requests: u64,
    /// Requests in flight at the ingress now.
    pub in_flight: u64,
    /// Milliseconds since the ingress's previous report.
    pub interval_ms: u64,
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

    /// Records an ingress's report (`ingress`: a number naming the ingress) received at `at`.
    pub fn record_traffic(&self, ingress: u64, services: Vec<ServiceTraffic>, at: Timestamp) {
        let mut inner = self.lock();
        // Services no ingress has mentioned for a while (deleted, no longer routed) go.
        inner
            .requests
            .retain(|_, t| t.reports.back().is_some_and(|r| r.at + FORGET_MS >= at));
        for s in services {
            let traffic = inner.requests.entry((s.namespace, s.name)).or_default();
            // A rate needs a span: at least 100 ms (ingresses report every second).
            let seconds = (s.interval_ms as f64 / 1000.0).clamp(0.1, 60.0);
            traffic.reports.push_back(RequestSample {
                at,
                source: ingress,
                rate: s.requests as f64 / seconds,
                in_flight: s.in_flight as f64,
            });
            if s.requests > 0 || s.in_flight > 0 {
                traffic.last_request_at = traffic.last_request_at.max(at);
            }
            while traffic.reports.front().is_some_and(|r| r.at + KEEP_MS < at) {
                traffic.reports.pop_front();
            }
        }
    }

    /// The ingresses' reports kept about a service, oldest first, and when one last saw a
    /// request for it (0: none since this server started keeping them).
    pub fn requests(&self, namespace: &str, name: &str) -> (Vec<RequestSample>, Timestamp) {
        self.lock()
            .requests
            .get(&(namespace.to_owned(), name.to_owned()))
            .map_or((Vec::new(), 0), |t| {
                (t.reports.iter().copied().collect(), t.last_request_at)
            })
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
