//! Resource usage agents report and the requests ingresses report, kept in the leader's
//! memory only (never in the Raft log): a short history of samples per task and of reports
//! per service, for `describe` and for the autoscaler's windows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_control::autoscaling::{RequestSample, WINDOW_MS};
use berth_model::{Task, TaskMetrics, Timestamp};

/// Samples older than this (before a task's newest) are dropped whatever else needs them: it
/// covers the autoscaler's window and a bucket of the metering ledger (a minute at most,
/// closed a little after its end) with room for a meter that runs late.
const KEEP_MS: u64 = 3 * 60 * 1000;
/// Tasks not heard from for this long are forgotten.
const FORGET_MS: u64 = 10 * 60 * 1000;

/// Tasks are swept (the silent forgotten, the others cut to what is still needed) once per
/// this many samples, or per as many samples as there are tasks when there are more.
const SWEEP_EVERY: u64 = 1024;

#[derive(Clone, Default)]
pub struct Usage(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, VecDeque<TaskMetrics>>,
    /// Samples recorded since the last sweep.
    unswept: u64,
    /// Where the oldest bucket of the ledger that is still open starts, as the meter last
    /// saw it ([`Usage::metered_to`]): no bucket needs a sample from before it but the last
    /// one (it bounds the time the first sample after it stands for).
    open_from: Option<Timestamp>,
    /// Ingress reports by `(namespace, service)`, oldest first.
    requests: HashMap<(String, String), Traffic>,
}

impl Inner {
    /// From when a task's samples are still needed, at `at`: by the ledger's open bucket
    /// and the autoscaler's window, and never from longer ago than [`KEEP_MS`].
    fn needed_from(&self, at: Timestamp) -> Timestamp {
        let kept = at.saturating_sub(KEEP_MS);
        let window = at.saturating_sub(WINDOW_MS);
        self.open_from
            .map_or(kept, |open| open.min(window))
            .max(kept)
    }
}

/// Drops the samples from before `from` but the newest of them.
fn cut(samples: &mut VecDeque<TaskMetrics>, from: Timestamp) {
    while samples.get(1).is_some_and(|m| m.sampled_at < from) {
        samples.pop_front();
    }
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
        let from = inner.needed_from(at);
        inner.unswept += 1;
        if inner.unswept >= SWEEP_EVERY.max(inner.tasks.len() as u64) {
            inner.unswept = 0;
            inner.tasks.retain(|_, s| {
                let heard = s.back().is_some_and(|m| m.sampled_at + FORGET_MS >= at);
                if heard {
                    // A task that stopped reporting keeps its last sample (for `describe`),
                    // not the room of the samples it had.
                    cut(s, from);
                    if s.capacity() > 2 * s.len().max(4) {
                        s.shrink_to_fit();
                    }
                }
                heard
            });
        }
        let samples = inner.tasks.entry(task_id).or_default();
        samples.push_back(metrics);
        cut(samples, from);
    }

    /// The meter's round saw the ledger accounted up to `to` (the start of its oldest open
    /// bucket): the samples from before it are needed no more but for the autoscaler's window.
    pub fn metered_to(&self, to: Option<Timestamp>) {
        self.lock().open_from = to;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Timestamp) -> TaskMetrics {
        TaskMetrics {
            cpu_units: 100.0,
            memory_bytes: 1 << 20,
            sampled_at: at,
        }
    }

    fn times(usage: &Usage, task: &str) -> Vec<Timestamp> {
        usage.samples(task).iter().map(|m| m.sampled_at).collect()
    }

    #[test]
    fn without_a_ledger_samples_are_kept_for_the_longest_span() {
        let usage = Usage::default();
        for s in 0..=40 {
            usage.record("t".into(), sample(s * 5_000));
        }
        // 200 s in: the newest sample from more than three minutes before, and all after it.
        let kept = times(&usage, "t");
        assert_eq!(kept.first(), Some(&15_000));
        assert_eq!(kept.last(), Some(&200_000));
        assert_eq!(kept.len(), 38);
    }

    #[test]
    fn an_open_bucket_keeps_its_samples_and_the_one_before() {
        let usage = Usage::default();
        usage.metered_to(Some(60_000));
        for s in 0..=20 {
            usage.record("t".into(), sample(s * 5_000));
        }
        // 100 s in, the bucket from 60 s open: the window (from 80 s) needs less.
        assert_eq!(
            times(&usage, "t"),
            (11..=20).map(|s| s * 5_000).collect::<Vec<_>>()
        );
        // Once it is closed, the window alone: the last sample before 85 s and what follows.
        usage.metered_to(Some(120_000));
        usage.record("t".into(), sample(105_000));
        assert_eq!(
            times(&usage, "t"),
            [80_000, 85_000, 90_000, 95_000, 100_000, 105_000]
        );
    }

    #[test]
    fn a_sweep_cuts_silent_tasks_to_their_last_sample_then_forgets_them() {
        let usage = Usage::default();
        for s in 0..30 {
            usage.record("quiet".into(), sample(s * 1_000));
        }
        assert_eq!(times(&usage, "quiet").len(), 30);
        // The bucket from 50 s open; others report until a sweep runs: the quiet task, heard
        // from last at 29 s, keeps its newest sample only.
        usage.metered_to(Some(50_000));
        for n in 0..SWEEP_EVERY {
            usage.record(format!("busy-{}", n % 4), sample(60_000 + n));
        }
        assert_eq!(times(&usage, "quiet"), [29_000]);
        // Ten minutes after it was last heard from, it is gone.
        for n in 0..SWEEP_EVERY {
            usage.record(
                format!("busy-{}", n % 4),
                sample(29_000 + FORGET_MS + 1 + n),
            );
        }
        assert!(usage.samples("quiet").is_empty());
        assert!(!usage.samples("busy-0").is_empty());
    }
}
