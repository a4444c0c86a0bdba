//! The autoscaler's round: for every service with an autoscaling policy, its RUNNING tasks'
//! samples and the ingresses' request reports (kept in the leader's memory, behind
//! [`Samples`]) go to `berth_scheduler::autoscale::decide`; each decision is one `AutoScale`
//! command (the new desired count and an event quoting the metric values and the rule).
//! Samples never enter the log; a new leader starts with empty windows and keeps the
//! replicated cooldown times (and counts a service's idle time from its own start).

use berth_model::{MetricValue, NodeStatus, Service, Task, TaskMetrics, TaskStatus, Timestamp};
use berth_scheduler::autoscale::{decide, metric_values, Direction, Sample, ScalingInput};
use berth_state::{Command, ScalingDecision, State};

pub use berth_scheduler::autoscale::{RequestSample, WINDOW_MS};

/// Where the recent resource samples of tasks are (the leader's memory).
pub trait Samples {
    /// Every sample kept for `task_id`, oldest first.
    fn samples(&self, task_id: &str) -> Vec<TaskMetrics>;

    /// The ingresses' reports kept about service `name` of `namespace`, and when one last saw
    /// a request for it (0: none seen).
    fn requests(&self, _namespace: &str, _name: &str) -> (Vec<RequestSample>, Timestamp) {
        (Vec::new(), 0)
    }
}

/// The service's last sign of use: a request, a scale-out, a deployment or its creation.
fn last_activity(svc: &Service, last_request_at: Timestamp) -> Timestamp {
    svc.deployments
        .iter()
        .map(|d| d.created_at)
        .chain([last_request_at, svc.last_scale_out_at, svc.created_at])
        .max()
        .unwrap_or(0)
}

/// The service's RUNNING tasks.
fn running<'a>(state: &'a State, svc: &'a Service) -> impl Iterator<Item = &'a Task> + 'a {
    state
        .live_tasks_of(&svc.namespace, &svc.group())
        .filter(|t| t.last_status == TaskStatus::Running)
}

/// The samples of `tasks`, in percent of their reservations.
fn samples<'a>(tasks: impl IntoIterator<Item = &'a Task>, usage: &dyn Samples) -> Vec<Sample> {
    tasks
        .into_iter()
        .flat_map(|t| {
            usage.samples(&t.task_id).into_iter().map(|m| Sample {
                at: m.sampled_at,
                cpu_percent: m.cpu_percent(t.cpu),
                memory_percent: m.memory_percent(t.memory),
            })
        })
        .collect()
}

/// The service's metrics now, for reads.
pub fn current_metrics(
    state: &State,
    svc: &Service,
    usage: &dyn Samples,
    now: u64,
) -> Vec<MetricValue> {
    match &svc.autoscaling {
        Some(policy) => {
            let tasks: Vec<&Task> = running(state, svc).collect();
            let (requests, _) = usage.requests(&svc.namespace, &svc.name);
            metric_values(
                policy,
                &samples(tasks.iter().copied(), usage),
                &requests,
                u32::try_from(tasks.len()).unwrap_or(u32::MAX),
                now.saturating_sub(WINDOW_MS),
                now,
            )
        }
        None => Vec::new(),
    }
}

/// How many more tasks like the service's primary revision the ACTIVE nodes can take.
fn room(state: &State, svc: &Service) -> u32 {
    let Some(def) = state.task_definition(&svc.namespace, &svc.task_definition) else {
        return 0;
    };
    let (cpu, memory) = (u64::from(def.cpu.max(1)), u64::from(def.memory.max(1)));
    let total: u64 = state
        .nodes_with_allocation()
        .iter()
        .filter(|n| n.status == NodeStatus::Active)
        .map(|n| (n.cpu.free() / cpu).min(n.memory.free() / memory))
        .sum();
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// One round's decisions.
/// `leading_since`: when this leader began to lead; cooldowns that began earlier count from
/// then.
pub fn plan(state: &State, usage: &dyn Samples, now: u64, leading_since: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    for svc in state.services() {
        let Some(policy) = &svc.autoscaling else {
            continue;
        };
        if svc.status != berth_model::ServiceStatus::Active {
            continue;
        }
        let tasks: Vec<&Task> = running(state, svc).collect();
        let samples = samples(tasks.iter().copied(), usage);
        let (requests, last_request_at) = usage.requests(&svc.namespace, &svc.name);
        let input = ScalingInput {
            policy,
            samples: &samples,
            requests: &requests,
            last_activity_at: last_activity(svc, last_request_at),
            desired: svc.desired_count,
            running: u32::try_from(tasks.len()).unwrap_or(u32::MAX),
            last_scale_out_at: svc.last_scale_out_at,
            last_scale_in_at: svc.last_scale_in_at,
            room: room(state, svc),
            now,
            counting_from: leading_since,
        };
        if let Some(s) = decide(&input) {
            let failed = svc
                .deployments
                .first()
                .is_some_and(|d| d.rollout_state == berth_model::RolloutState::Failed);
            if s.desired == 0 && failed {
                // A failed deployment starts no task: woken, it would hold requests for
                // nothing. It stays up until a new deployment.
                continue;
            }
            let repeat = s.desired == svc.desired_count
                && svc
                    .events
                    .last()
                    .is_some_and(|e| e.message.starts_with("cannot scale out"));
            if repeat {
                // Capacity is still short: said once is enough.
                continue;
            }
            commands.push(Command::AutoScale(ScalingDecision {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                version: svc.version,
                desired_count: s.desired,
                scale_out: s.direction == Direction::Out,
                reason: s.reason,
                at: now,
            }));
        }
    }
    commands
}
