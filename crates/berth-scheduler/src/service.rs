//! The service reconciler as a pure function: a service, its tasks and the clock in; the tasks
//! to start and stop and the service's new deployment state out.
//!
//! The rules are ECS's: a deployment replaces tasks while at least `minimumHealthyPercent` of
//! desiredCount stay healthy (rounded up) and at most `maximumPercent` run (rounded down); a
//! task counts as healthy once RUNNING and, when its task definition has health checks, once
//! those report HEALTHY. Tasks on DRAINING nodes are replaced under the same limits.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{
    CircuitBreaker, Deployment, DeploymentConfiguration, DeploymentStatus, DeploymentStrategy,
    DesiredStatus, HealthStatus, RolloutState, Service, ServiceStatus, StopOrder, Task,
    TaskDefinitionRef, TaskStatus, Timestamp,
};

/// What the reconciler looks at for one service.
#[derive(Debug, Clone)]
pub struct ServiceInput<'a> {
    pub service: &'a Service,
    /// The service's tasks that have not stopped yet (others are ignored).
    pub tasks: Vec<&'a Task>,
    /// Names of DRAINING nodes: their tasks are replaced.
    pub draining_nodes: &'a BTreeSet<String>,
    /// Containers with a health check, per task definition revision.
    pub health_checked: &'a BTreeMap<TaskDefinitionRef, Vec<String>>,
    pub now: Timestamp,
    /// When the leader deciding began to lead, by its clock: a deadline that began earlier
    /// counts from then, as node TTLs do (another leader's clock may differ).
    pub counting_from: Timestamp,
    /// The ID a deployment created by a rollback gets.
    pub new_deployment_id: String,
}

/// One task to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub deployment_id: String,
    pub task_definition: TaskDefinitionRef,
}

/// The reconciler's decisions for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// The service with its deployments, counts, back-off and events brought up to date.
    pub service: Service,
    pub start: Vec<Launch>,
    pub stop: Vec<StopOrder>,
    /// The service was deleted and has no tasks left: remove it.
    pub remove: bool,
}

impl ServicePlan {
    /// Whether the plan changes nothing (so there is nothing to propose).
    pub fn is_noop(&self, current: &Service) -> bool {
        self.start.is_empty() && self.stop.is_empty() && !self.remove && self.service == *current
    }
}

/// Milliseconds from `ts` to `now` for a deadline decided by a leader that began to lead at
/// `counting_from`: a deadline that began before counts from then, and so does one stamped
/// ahead of `now` (by another leader's clock), which would otherwise never run.
pub fn elapsed(now: Timestamp, counting_from: Timestamp, ts: Timestamp) -> u64 {
    let from = if ts > now {
        counting_from
    } else {
        ts.max(counting_from)
    };
    now.saturating_sub(from)
}

/// Decides what one service needs now.
pub fn reconcile(input: &ServiceInput<'_>) -> ServicePlan {
    let svc = input.service.clone();
    let active: Vec<&Task> = input
        .tasks
        .iter()
        .copied()
        .filter(|t| !t.is_stopped() && t.desired_status == DesiredStatus::Running)
        .collect();
    if svc.status == ServiceStatus::Draining {
        return delete(svc, &active, input);
    }
    let Some(primary) = svc.deployments.first().cloned() else {
        return ServicePlan {
            service: svc,
            start: Vec::new(),
            stop: Vec::new(),
            remove: false,
        };
    };
    let mut round = Round::new(input, svc, primary);
    let (primary_tasks, old_tasks) = round.split(&active);
    let had_old = !old_tasks.is_empty();
    let primary_tasks = round.stop_late(primary_tasks);
    let primary_tasks = round.scale_in(primary_tasks);
    let old_tasks = round.replace_old(&primary_tasks, old_tasks);
    round.start_missing(primary_tasks.len(), old_tasks.len());
    round.promote_canary(&primary_tasks);
    round.settle_rollout(&primary_tasks, had_old);
    round.forget_drained_deployments(&primary_tasks, &old_tasks);
    round.end_backoff(&primary_tasks);
    round.finish(&active)
}

/// A deleted service: every task stops, and the service goes once none is left.
fn delete(mut svc: Service, active: &[&Task], input: &ServiceInput<'_>) -> ServicePlan {
    let now = input.now;
    let stop: Vec<StopOrder> = active
        .iter()
        .map(|t| StopOrder {
            task_id: t.task_id.clone(),
            reason: format!("service {} is being deleted", svc.name),
        })
        .collect();
    let remove = input.tasks.iter().all(|t| t.is_stopped());
    if !stop.is_empty() {
        svc.events.push(
            now,
            format!("stopping {} tasks: the service was deleted", stop.len()),
        );
    }
    count(
        &mut svc,
        active,
        &stop,
        &|t| is_healthy(t, input.health_checked),
        now,
    );
    ServicePlan {
        service: svc,
        start: Vec::new(),
        stop,
        remove,
    }
}

/// One reconciliation of a live service: the limits it keeps and the decisions made so far.
/// Its phases run in order, each handing the tasks still in play to the next.
struct Round<'a> {
    input: &'a ServiceInput<'a>,
    /// The service as the plan will leave it.
    svc: Service,
    /// The primary deployment as the round found it.
    primary: Deployment,
    config: DeploymentConfiguration,
    /// desiredCount.
    desired: u32,
    /// How many tasks the primary deployment should run (fewer while a canary bakes).
    target: u32,
    /// minimumHealthyPercent of desiredCount, rounded up.
    min_healthy: u64,
    /// maximumPercent of desiredCount, rounded down but leaving room for one replacement.
    max_total: u64,
    in_progress: bool,
    canary_phase: bool,
    start: Vec<Launch>,
    stop: Vec<StopOrder>,
}

impl<'a> Round<'a> {
    fn new(input: &'a ServiceInput<'a>, svc: Service, primary: Deployment) -> Self {
        let config = svc.deployment_configuration.clone();
        let desired = svc.desired_count;
        let in_progress = primary.rollout_state == RolloutState::InProgress;
        let canary_phase = config.strategy == DeploymentStrategy::Canary
            && in_progress
            && !primary.promoted
            && svc.deployments.len() > 1;
        let target = if canary_phase {
            config.canary_count.min(desired)
        } else {
            desired
        };
        let min_healthy =
            (u64::from(desired) * u64::from(config.minimum_healthy_percent)).div_ceil(100);
        let mut max_total = u64::from(desired) * u64::from(config.maximum_percent) / 100;
        if desired > 0 {
            // Rounding must leave room for one replacement, or a deployment could never progress.
            max_total = max_total.max(min_healthy + 1);
        }
        Self {
            input,
            svc,
            primary,
            config,
            desired,
            target,
            min_healthy,
            max_total,
            in_progress,
            canary_phase,
            start: Vec::new(),
            stop: Vec::new(),
        }
    }

    fn healthy(&self, t: &Task) -> bool {
        is_healthy(t, self.input.health_checked)
    }

    fn healthy_count(&self, tasks: &[&Task]) -> usize {
        tasks.iter().filter(|t| self.healthy(t)).count()
    }

    /// Whether the task's node is draining.
    fn leaving(&self, t: &Task) -> bool {
        t.node
            .as_ref()
            .is_some_and(|n| self.input.draining_nodes.contains(n))
    }

    /// The primary deployment's tasks, and the old ones (older deployments, draining nodes).
    fn split<'t>(&self, active: &[&'t Task]) -> (Vec<&'t Task>, Vec<&'t Task>) {
        active.iter().copied().partition(|t| {
            t.started_by.as_deref() == Some(self.primary.id.as_str()) && !self.leaving(t)
        })
    }

    /// Milliseconds since `ts` for a deadline ([`elapsed`]).
    fn elapsed(&self, ts: Timestamp) -> u64 {
        elapsed(self.input.now, self.input.counting_from, ts)
    }

    /// New tasks that missed the healthy deadline count as failed and are replaced.
    /// Returns the primary tasks that remain.
    fn stop_late<'t>(&mut self, primary_tasks: Vec<&'t Task>) -> Vec<&'t Task> {
        if !self.in_progress {
            return primary_tasks;
        }
        let now = self.input.now;
        let deadline = self.config.healthy_deadline;
        let deadline_ms = u64::from(deadline) * 1000;
        let (late, ok): (Vec<&Task>, Vec<&Task>) = primary_tasks.into_iter().partition(|t| {
            // A task still waiting for capacity has not failed.
            t.node.is_some() && !self.healthy(t) && self.elapsed(t.created_at) >= deadline_ms
        });
        for t in &late {
            self.stop.push(StopOrder {
                task_id: t.task_id.clone(),
                reason: format!("task did not become healthy within {deadline}s (healthyDeadline)"),
            });
            if let Some(p) = self.svc.deployments.first_mut() {
                p.failed_tasks += 1;
            }
            self.svc.backoff.record_failure(now);
        }
        if !late.is_empty() {
            self.svc.events.push(
                now,
                format!(
                    "stopped {} tasks of {} that did not become healthy within {deadline}s",
                    late.len(),
                    self.primary.task_definition,
                ),
            );
        }
        ok
    }

    /// Surplus tasks of the primary deployment (scale-in): not healthy first, newest first.
    /// Returns the primary tasks that remain.
    fn scale_in<'t>(&mut self, mut primary_tasks: Vec<&'t Task>) -> Vec<&'t Task> {
        let target = self.target as usize;
        if primary_tasks.len() <= target {
            return primary_tasks;
        }
        primary_tasks.sort_by_key(|t| {
            (
                self.healthy(t),
                t.last_status == TaskStatus::Running,
                std::cmp::Reverse(t.created_at),
            )
        });
        let surplus = primary_tasks.len() - target;
        let d = self.desired;
        for t in primary_tasks.drain(..surplus) {
            self.stop.push(StopOrder {
                task_id: t.task_id.clone(),
                reason: format!("service {} scaled in to {d}", self.svc.name),
            });
        }
        self.svc.events.push(
            self.input.now,
            format!("stopped {surplus} tasks: desired count is {d}"),
        );
        primary_tasks
    }

    /// Old tasks (older deployments, draining nodes) go while enough stay healthy; a baking
    /// canary keeps as many as fit beside it. Returns the old tasks kept.
    fn replace_old<'t>(
        &mut self,
        primary_tasks: &[&Task],
        mut old_tasks: Vec<&'t Task>,
    ) -> Vec<&'t Task> {
        let min_healthy = self.min_healthy;
        let old_keep = if self.canary_phase {
            (self.desired as usize).min(
                usize::try_from(self.max_total)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(self.target as usize),
            )
        } else {
            0
        };
        let mut healthy_now =
            self.healthy_count(primary_tasks) as u64 + self.healthy_count(&old_tasks) as u64;
        old_tasks.sort_by_key(|t| (self.healthy(t), !self.leaving(t), t.created_at));
        let stoppable = old_tasks.len().saturating_sub(old_keep);
        let mut stopped_old = 0;
        let mut kept_old = Vec::new();
        for (i, t) in old_tasks.into_iter().enumerate() {
            let is_h = self.healthy(t);
            if i < stoppable && (!is_h || healthy_now > min_healthy) {
                if is_h {
                    healthy_now -= 1;
                }
                let reason = if self.leaving(t) {
                    "its node is draining".to_owned()
                } else {
                    format!("replaced by {}", self.primary.task_definition)
                };
                self.stop.push(StopOrder {
                    task_id: t.task_id.clone(),
                    reason,
                });
                stopped_old += 1;
            } else {
                kept_old.push(t);
            }
        }
        if stopped_old > 0 {
            self.svc.events.push(
                self.input.now,
                format!("stopped {stopped_old} old tasks ({healthy_now} healthy tasks remain, at least {min_healthy} required)"),
            );
        }
        kept_old
    }

    /// Start what the primary deployment lacks, within maximumPercent and the back-off.
    fn start_missing(&mut self, primary_left: usize, old_left: usize) {
        let now = self.input.now;
        let need = (self.target as usize).saturating_sub(primary_left);
        let total = (primary_left + old_left) as u64;
        let room = usize::try_from(self.max_total.saturating_sub(total)).unwrap_or(usize::MAX);
        if need == 0 || self.primary.rollout_state == RolloutState::Failed {
            return;
        }
        if now < self.svc.backoff.not_before {
            self.note_backoff();
            return;
        }
        let n = need.min(room);
        for _ in 0..n {
            self.start.push(Launch {
                deployment_id: self.primary.id.clone(),
                task_definition: self.primary.task_definition.clone(),
            });
        }
        if n > 0 {
            self.svc.events.push(
                now,
                format!(
                    "started {n} tasks of {} (deployment {})",
                    self.primary.task_definition, self.primary.id
                ),
            );
        }
    }

    /// Says that launches wait for the back-off, once per count of failures in a row.
    fn note_backoff(&mut self) {
        let now = self.input.now;
        let backoff = &self.svc.backoff;
        let message = format!(
            "waiting {}s before starting tasks: {} tasks failed in a row",
            (backoff.not_before - now).div_ceil(1000),
            backoff.failures
        );
        let same = self.svc.events.last().is_some_and(|e| {
            e.message.starts_with("waiting ")
                && e.message
                    .ends_with(&format!("{} tasks failed in a row", backoff.failures))
        });
        if !same {
            self.svc.events.push(now, message);
        }
    }

    /// A canary healthy for its bake time is promoted, so the other tasks follow.
    fn promote_canary(&mut self, primary_tasks: &[&Task]) {
        if !self.canary_phase {
            return;
        }
        let now = self.input.now;
        let target = self.target as usize;
        let ready = primary_tasks.len() == target && self.healthy_count(primary_tasks) == target;
        let bake_time = self.config.canary_bake_time;
        let Some(p) = self.svc.deployments.first_mut() else {
            return;
        };
        if !ready {
            p.canary_healthy_since = None;
            return;
        }
        let since = *p.canary_healthy_since.get_or_insert(now);
        if elapsed(now, self.input.counting_from, since) >= u64::from(bake_time) * 1000 {
            p.promoted = true;
            let message = format!(
                "canary of {} healthy for {bake_time}s: promoting",
                p.task_definition
            );
            self.svc.events.push(now, message);
        }
    }

    /// The rollout fails (circuit breaker, progress deadline), possibly rolling back, or
    /// completes once every desired task of the primary deployment is healthy.
    fn settle_rollout(&mut self, primary_tasks: &[&Task], had_old: bool) {
        if !self.in_progress {
            return;
        }
        let d = self.desired;
        let scales_to_zero = self
            .svc
            .autoscaling
            .as_ref()
            .is_some_and(|a| a.scale_to_zero.is_some());
        if scales_to_zero && d == 0 {
            // Nothing runs to prove the revision: it is verified when the service wakes
            // (until then it neither completes nor runs out of time).
            return;
        }
        let failed = self.svc.deployments.first().map_or(0, |p| p.failed_tasks);
        let threshold = CircuitBreaker::threshold(d);
        let progress_deadline = self.config.progress_deadline;
        // A service that scales to zero makes progress from its latest wake (or scale-out).
        let progressing_since = if scales_to_zero {
            self.primary.created_at.max(self.svc.last_scale_out_at)
        } else {
            self.primary.created_at
        };
        let late = self.elapsed(progressing_since) >= u64::from(progress_deadline) * 1000;
        if self.config.circuit_breaker.enable && failed >= threshold {
            let reason = format!("circuit breaker: {failed} tasks failed (threshold {threshold})");
            fail(&mut self.svc, reason, self.input);
        } else if late {
            let reason = format!(
                "the deployment did not complete within {progress_deadline}s (progressDeadline)"
            );
            fail(&mut self.svc, reason, self.input);
        } else if !self.canary_phase
            && !had_old
            && primary_tasks.len() == d as usize
            && self.healthy_count(primary_tasks) == d as usize
        {
            self.complete();
        }
    }

    /// Marks the primary deployment COMPLETED.
    fn complete(&mut self) {
        let now = self.input.now;
        let d = self.desired;
        let p = &mut self.svc.deployments[0];
        p.rollout_state = RolloutState::Completed;
        p.rollout_state_reason = format!("{d} tasks of {} are healthy", p.task_definition);
        p.updated_at = now;
        self.svc.last_completed = Some(p.task_definition.clone());
        let message = format!("deployment {} completed: {}", p.id, p.rollout_state_reason);
        self.svc.events.push(now, message);
    }

    /// Old deployments without tasks disappear.
    fn forget_drained_deployments(&mut self, primary_tasks: &[&Task], old_tasks: &[&Task]) {
        let remaining: BTreeSet<&str> = old_tasks
            .iter()
            .chain(primary_tasks.iter())
            .filter_map(|t| t.started_by.as_deref())
            .collect();
        let primary_id = self.svc.deployments.first().map(|p| p.id.clone());
        self.svc.deployments.retain(|dep| {
            Some(&dep.id) == primary_id.as_ref() || remaining.contains(dep.id.as_str())
        });
    }

    /// Back-off ends once a new task is healthy after the last failure.
    fn end_backoff(&mut self, primary_tasks: &[&Task]) {
        let backoff = &self.svc.backoff;
        let recovered = backoff.failures > 0
            && primary_tasks.iter().any(|t| {
                self.healthy(t) && t.started_at.is_some_and(|s| s > backoff.last_failure_at)
            });
        if recovered {
            self.svc.backoff = Default::default();
        }
    }

    /// The primary deployment's desired count and every running/pending count brought up to
    /// date: the plan.
    fn finish(mut self, active: &[&Task]) -> ServicePlan {
        let now = self.input.now;
        if let Some(p) = self.svc.deployments.first_mut() {
            if p.id == self.primary.id && p.desired_count != self.target {
                p.desired_count = self.target;
                p.updated_at = now;
            }
        }
        let input = self.input;
        count(
            &mut self.svc,
            active,
            &self.stop,
            &|t| is_healthy(t, input.health_checked),
            now,
        );
        ServicePlan {
            service: self.svc,
            start: self.start,
            stop: self.stop,
            remove: false,
        }
    }
}

/// Marks the primary deployment FAILED and, when the circuit breaker allows it and an earlier
/// deployment completed, rolls back to it with a new primary deployment.
fn fail(svc: &mut Service, reason: String, input: &ServiceInput<'_>) {
    let now = input.now;
    let rollback_to = svc
        .deployments
        .first()
        .and_then(|p| p.rollback_to.clone())
        .filter(|_| svc.deployment_configuration.circuit_breaker.rollback)
        .filter(|td| Some(td) != svc.deployments.first().map(|p| &p.task_definition));
    let Some(p) = svc.deployments.first_mut() else {
        return;
    };
    p.rollout_state = RolloutState::Failed;
    p.rollout_state_reason = reason.clone();
    p.updated_at = now;
    let failed_id = p.id.clone();
    match rollback_to {
        Some(td) => {
            p.status = DeploymentStatus::Active;
            // An older deployment of that revision that still has tasks becomes primary again
            // (its tasks keep serving); otherwise a new deployment starts.
            let next = match svc
                .deployments
                .iter()
                .skip(1)
                .position(|d| d.task_definition == td)
            {
                Some(i) => {
                    let mut d = svc.deployments.remove(i + 1);
                    d.status = DeploymentStatus::Primary;
                    d.rollout_state = RolloutState::InProgress;
                    d.failed_tasks = 0;
                    d.rollback_to = None;
                    d.created_at = now;
                    d.updated_at = now;
                    d
                }
                None => Deployment::new(input.new_deployment_id.clone(), td.clone(), now),
            };
            let mut next = next;
            next.rollout_state_reason = format!("rollback from failed deployment {failed_id}");
            svc.deployments.insert(0, next);
            svc.task_definition = td.clone();
            // The failed revision's back-off must not delay the way back.
            svc.backoff = Default::default();
            svc.events.push(
                now,
                format!("deployment {failed_id} failed: {reason}; rolling back to {td}"),
            );
        }
        None => svc
            .events
            .push(now, format!("deployment {failed_id} failed: {reason}")),
    }
}

/// Updates the running/pending counts of the service and its deployments after `stops`.
fn count(
    svc: &mut Service,
    active: &[&Task],
    stops: &[StopOrder],
    healthy: &dyn Fn(&Task) -> bool,
    now: Timestamp,
) {
    let stopping: BTreeSet<&str> = stops.iter().map(|s| s.task_id.as_str()).collect();
    let live: Vec<&&Task> = active
        .iter()
        .filter(|t| !stopping.contains(t.task_id.as_str()))
        .collect();
    let running = |t: &&&Task| t.last_status == TaskStatus::Running;
    svc.running_count = live.iter().filter(|t| running(t)).count() as u32;
    svc.pending_count = live.len() as u32 - svc.running_count;
    let primary_id = svc.deployments.first().map(|p| p.id.clone());
    for dep in &mut svc.deployments {
        let mine: Vec<&&&Task> = live
            .iter()
            .filter(|t| t.started_by.as_deref() == Some(dep.id.as_str()))
            .collect();
        let running_count = mine.iter().filter(|t| running(t)).count() as u32;
        let healthy_count = mine.iter().filter(|t| healthy(t)).count() as u32;
        let pending_count = mine.len() as u32 - running_count;
        let desired = if Some(&dep.id) == primary_id.as_ref() {
            dep.desired_count
        } else {
            mine.len() as u32
        };
        if (
            dep.running_count,
            dep.pending_count,
            dep.healthy_count,
            dep.desired_count,
        ) != (running_count, pending_count, healthy_count, desired)
        {
            dep.running_count = running_count;
            dep.healthy_count = healthy_count;
            dep.pending_count = pending_count;
            dep.desired_count = desired;
            dep.updated_at = now;
        }
    }
}

/// RUNNING and, for every container with a health check, HEALTHY.
pub fn is_healthy(t: &Task, health_checked: &BTreeMap<TaskDefinitionRef, Vec<String>>) -> bool {
    if t.last_status != TaskStatus::Running {
        return false;
    }
    let Some(checked) = health_checked.get(&t.task_definition) else {
        return true;
    };
    checked.iter().all(|name| {
        t.containers
            .iter()
            .any(|c| &c.name == name && c.health_status == HealthStatus::Healthy)
    })
}

#[cfg(test)]
mod tests {
    use berth_model::{
        ContainerState, DeploymentConfiguration, EventLog, LaunchBackoff, PlacementSpec, StopCode,
    };

    use super::*;

    /// How a newly started task behaves in the little world below.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        /// RUNNING one round after it starts, HEALTHY the round after.
        Healthy,
        /// Stops one round after it starts (image pull failure, crash).
        Fails,
        /// RUNNING but never HEALTHY.
        NeverHealthy,
        /// Never placed (no capacity).
        Unplaced,
    }

    /// A service, its tasks and a clock: applies plans as the state machine would, and
    /// moves tasks along as agents would.
    struct World {
        svc: Service,
        tasks: Vec<(Task, Outcome)>,
        draining: BTreeSet<String>,
        checked: BTreeMap<TaskDefinitionRef, Vec<String>>,
        now: Timestamp,
        ids: u32,
        outcome: BTreeMap<String, Outcome>,
    }

    fn td(s: &str) -> TaskDefinitionRef {
        s.parse().expect("task definition ref")
    }

    impl World {
        fn new(desired: u32, config: DeploymentConfiguration) -> Self {
            let svc = Service {
                ingress: Vec::new(),
                deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
                meta: Default::default(),
                namespace: "default".into(),
                name: "web".into(),
                task_definition: td("web:1"),
                desired_count: desired,
                deployment_configuration: config,
                placement: PlacementSpec::default(),
                status: ServiceStatus::Active,
                running_count: 0,
                pending_count: 0,
                deployments: vec![Deployment::new("d1".into(), td("web:1"), 0)],
                version: 1,
                created_at: 0,
                last_completed: None,
                backoff: LaunchBackoff::default(),
                autoscaling: None,
                last_scale_out_at: 0,
                last_scale_in_at: 0,
                metrics: Vec::new(),
                events: EventLog::default(),
            };
            let checked = ["web:1", "web:2", "web:3"]
                .into_iter()
                .map(|r| (td(r), vec!["app".to_owned()]))
                .collect();
            Self {
                svc,
                tasks: Vec::new(),
                draining: BTreeSet::new(),
                checked,
                now: 0,
                ids: 0,
                outcome: [("web:1".to_owned(), Outcome::Healthy)].into(),
            }
        }

        /// A user changes the task definition (as `Command::ApplyService` does).
        fn deploy(&mut self, to: &str, outcome: Outcome) {
            self.ids += 1;
            let id = format!("d-{to}-{}", self.ids);
            let mut next = Deployment::new(id, td(to), self.now);
            next.rollback_to = self.svc.last_completed.clone().or_else(|| {
                self.svc
                    .deployments
                    .first()
                    .filter(|d| d.rollout_state != RolloutState::Failed)
                    .map(|d| d.task_definition.clone())
            });
            for d in &mut self.svc.deployments {
                d.status = DeploymentStatus::Active;
            }
            self.svc.deployments.insert(0, next);
            self.svc.task_definition = td(to);
            self.svc.version += 1;
            self.outcome.insert(to.to_owned(), outcome);
        }

        fn live(&self) -> Vec<&Task> {
            self.tasks
                .iter()
                .map(|(t, _)| t)
                .filter(|t| !t.is_stopped())
                .collect()
        }

        fn healthy(&self) -> usize {
            self.live()
                .iter()
                .filter(|t| is_healthy(t, &self.checked))
                .count()
        }

        fn on(&self, r: &str) -> usize {
            self.live()
                .iter()
                .filter(|t| t.task_definition == td(r))
                .count()
        }

        /// One reconciler round, then one second of agents' progress.
        fn round(&mut self) -> ServicePlan {
            self.ids += 1;
            let live: Vec<&Task> = self.live();
            let plan = reconcile(&ServiceInput {
                service: &self.svc,
                tasks: live,
                draining_nodes: &self.draining,
                health_checked: &self.checked,
                now: self.now,
                counting_from: 0,
                new_deployment_id: format!("d-rollback-{}", self.ids),
            });
            self.apply(&plan);
            self.now += 1000;
            self.progress();
            plan
        }

        fn apply(&mut self, plan: &ServicePlan) {
            self.svc = plan.service.clone();
            for stop in &plan.stop {
                for (t, _) in &mut self.tasks {
                    if t.task_id == stop.task_id {
                        t.desired_status = DesiredStatus::Stopped;
                        t.last_status = TaskStatus::Stopped;
                        t.stop_code = Some(StopCode::ServiceSchedulerInitiated);
                    }
                }
            }
            for launch in &plan.start {
                self.ids += 1;
                let outcome = self.outcome[&launch.task_definition.to_string()];
                let task = Task {
                    labels: Default::default(),
                    task_id: format!("t{}", self.ids),
                    namespace: "default".into(),
                    task_definition: launch.task_definition.clone(),
                    group: Some("service:web".into()),
                    started_by: Some(launch.deployment_id.clone()),
                    node: (outcome != Outcome::Unplaced).then(|| "n1".to_owned()),
                    desired_status: DesiredStatus::Running,
                    last_status: TaskStatus::Pending,
                    cpu: 256,
                    memory: 64,
                    created_at: self.now,
                    pull_started_at: None,
                    started_at: None,
                    stopped_at: None,
                    stop_code: None,
                    stopped_reason: None,
                    containers: vec![ContainerState::pending("app", "img")],
                    events: EventLog::default(),
                    placement: PlacementSpec::default(),
                    metrics: None,
                    overrides: Vec::new(),
                    ip_address: None,
                };
                self.tasks.push((task, outcome));
            }
        }

        fn progress(&mut self) {
            let now = self.now;
            let mut failed = Vec::new();
            for (t, outcome) in &mut self.tasks {
                if t.is_stopped() {
                    continue;
                }
                match (*outcome, t.last_status) {
                    (Outcome::Unplaced, _) => {}
                    (Outcome::Fails, _) => {
                        t.last_status = TaskStatus::Stopped;
                        t.stop_code = Some(StopCode::TaskFailedToStart);
                        failed.push((t.started_by.clone().unwrap_or_default(), t.task_id.clone()));
                    }
                    (_, TaskStatus::Pending) => {
                        t.last_status = TaskStatus::Running;
                        t.started_at = Some(now);
                    }
                    (Outcome::Healthy, TaskStatus::Running) => {
                        t.containers[0].health_status = HealthStatus::Healthy;
                    }
                    _ => {}
                }
            }
            for (deployment, task) in failed {
                self.svc
                    .record_failed_task(&deployment, &task, "image not found", now);
            }
        }

        fn primary(&self) -> &Deployment {
            &self.svc.deployments[0]
        }

        fn events(&self) -> Vec<String> {
            self.svc.events.iter().map(|e| e.message.clone()).collect()
        }
    }

    fn converge(w: &mut World) {
        for _ in 0..20 {
            w.round();
        }
    }

    #[test]
    fn a_new_service_starts_its_tasks_and_completes_once_they_are_healthy() {
        let mut w = World::new(3, DeploymentConfiguration::default());
        let plan = w.round();
        assert_eq!(plan.start.len(), 3);
        assert_eq!(w.primary().rollout_state, RolloutState::InProgress);
        converge(&mut w);
        assert_eq!(w.healthy(), 3);
        assert_eq!(w.primary().rollout_state, RolloutState::Completed);
        assert_eq!(w.svc.last_completed, Some(td("web:1")));
        assert_eq!((w.svc.running_count, w.svc.pending_count), (3, 0));
        // A converged service plans nothing.
        let live = w.live();
        let plan = reconcile(&ServiceInput {
            service: &w.svc,
            tasks: live,
            draining_nodes: &w.draining,
            health_checked: &w.checked,
            now: w.now,
            counting_from: 0,
            new_deployment_id: "x".into(),
        });
        assert!(plan.is_noop(&w.svc), "{plan:?}");
    }

    /// Rolling updates keep the healthy count at or above the minimum and the total at or
    /// below the maximum, for each configuration.
    #[test]
    fn rolling_updates_stay_within_minimum_healthy_and_maximum_percent() {
        for (desired, min, max) in [
            (3, 100, 200),
            (4, 50, 100),
            (5, 100, 150),
            (3, 0, 100),
            (1, 100, 200),
            (10, 90, 110),
        ] {
            let config = DeploymentConfiguration {
                minimum_healthy_percent: min,
                maximum_percent: max,
                ..DeploymentConfiguration::default()
            };
            let mut w = World::new(desired, config);
            converge(&mut w);
            w.deploy("web:2", Outcome::Healthy);
            let floor = (desired * min).div_ceil(100) as usize;
            let ceiling = ((desired * max / 100).max(floor as u32 + 1)) as usize;
            for round in 0..40 {
                w.round();
                let case = format!("desired {desired} min {min}% max {max}% round {round}");
                assert!(w.healthy() >= floor, "{case}: {} healthy", w.healthy());
                assert!(
                    w.live().len() <= ceiling,
                    "{case}: {} tasks",
                    w.live().len()
                );
            }
            assert_eq!(
                w.on("web:2"),
                desired as usize,
                "desired {desired} min {min} max {max}"
            );
            assert_eq!(w.on("web:1"), 0);
            assert_eq!(w.svc.deployments.len(), 1);
            assert_eq!(w.primary().rollout_state, RolloutState::Completed);
        }
    }

    #[test]
    fn the_circuit_breaker_trips_and_rolls_back_to_the_last_completed_deployment() {
        let mut w = World::new(3, DeploymentConfiguration::default());
        converge(&mut w);
        w.deploy("web:2", Outcome::Healthy);
        converge(&mut w);
        w.deploy("web:3", Outcome::Fails);
        for _ in 0..60 {
            w.round();
            assert!(w.healthy() >= 3, "healthy tasks must never drop below 3");
        }
        let failed = w
            .svc
            .deployments
            .iter()
            .find(|d| d.task_definition == td("web:3"));
        assert!(
            failed.is_none(),
            "the failed deployment is gone once drained"
        );
        assert_eq!(w.svc.task_definition, td("web:2"));
        assert_eq!(w.primary().task_definition, td("web:2"));
        assert_eq!(w.primary().rollout_state, RolloutState::Completed);
        assert_eq!(w.on("web:2"), 3);
        let events = w.events().join("\n");
        assert!(
            events.contains(
                "failed: circuit breaker: 3 tasks failed (threshold 3); rolling back to web:2"
            ),
            "{events}"
        );
    }

    /// A broken revision deployed while the service is at zero is not taken as done: it
    /// waits, past its progress deadline, for the service to wake, then trips the circuit
    /// breaker and rolls back to the revision that last worked.
    #[test]
    fn a_deployment_made_at_zero_is_verified_when_the_service_wakes() {
        let mut w = World::new(1, DeploymentConfiguration::default());
        w.svc.autoscaling = Some(berth_model::Autoscaling {
            min_count: 0,
            max_count: 3,
            target_tracking: Vec::new(),
            scale_out_cooldown: 0,
            scale_in_cooldown: 0,
            disable_scale_in: false,
            scale_to_zero: Some(berth_model::ScaleToZero::default()),
        });
        converge(&mut w);
        assert_eq!(w.svc.last_completed, Some(td("web:1")));
        // Idle: to zero; then a broken revision.
        w.svc.desired_count = 0;
        converge(&mut w);
        assert_eq!(w.live().len(), 0);
        w.deploy("web:2", Outcome::Fails);
        let deadline = u64::from(w.svc.deployment_configuration.progress_deadline);
        for _ in 0..deadline + 30 {
            let plan = w.round();
            assert!(plan.start.is_empty());
        }
        assert_eq!(w.primary().task_definition, td("web:2"));
        assert_eq!(w.primary().rollout_state, RolloutState::InProgress);
        // A request wakes it.
        w.svc.desired_count = 1;
        w.svc.last_scale_out_at = w.now;
        for _ in 0..60 {
            w.round();
        }
        let events = w.events().join("\n");
        assert!(
            events.contains("circuit breaker: 3 tasks failed (threshold 3); rolling back to web:1"),
            "{events}"
        );
        assert_eq!(w.primary().task_definition, td("web:1"));
        assert_eq!(w.primary().rollout_state, RolloutState::Completed);
        assert_eq!(w.on("web:1"), 1);
        assert_eq!(w.healthy(), 1);
    }

    #[test]
    fn without_rollback_a_tripped_deployment_stays_failed_and_launches_nothing() {
        let mut config = DeploymentConfiguration::default();
        config.circuit_breaker.rollback = false;
        let mut w = World::new(2, config);
        converge(&mut w);
        w.deploy("web:2", Outcome::Fails);
        converge(&mut w);
        converge(&mut w);
        assert_eq!(w.primary().rollout_state, RolloutState::Failed);
        assert_eq!(w.on("web:1"), 2, "the old tasks keep serving");
        let plan = w.round();
        assert!(plan.start.is_empty());
    }

    #[test]
    fn tasks_that_never_become_healthy_fail_the_deployment_by_deadline() {
        let config = DeploymentConfiguration {
            healthy_deadline: 5,
            ..DeploymentConfiguration::default()
        };
        let mut w = World::new(3, config);
        converge(&mut w);
        w.deploy("web:2", Outcome::NeverHealthy);
        for _ in 0..120 {
            w.round();
        }
        assert_eq!(w.svc.task_definition, td("web:1"), "rolled back");
        assert_eq!(w.on("web:1"), 3);
        assert!(w
            .events()
            .iter()
            .any(|e| e.contains("did not become healthy within 5s")));
    }

    #[test]
    fn a_deployment_that_cannot_progress_fails_at_its_deadline() {
        let mut config = DeploymentConfiguration {
            progress_deadline: 30,
            ..DeploymentConfiguration::default()
        };
        config.circuit_breaker.enable = false;
        let mut w = World::new(2, config);
        converge(&mut w);
        w.deploy("web:2", Outcome::Unplaced);
        for _ in 0..40 {
            w.round();
        }
        assert!(w
            .events()
            .iter()
            .any(|e| e.contains("did not complete within 30s")));
        assert_eq!(w.svc.task_definition, td("web:1"));
        assert_eq!(
            w.on("web:2"),
            0,
            "the unplaceable tasks were stopped by the rollback"
        );
    }

    #[test]
    fn failed_tasks_are_replaced_with_growing_pauses() {
        let mut config = DeploymentConfiguration::default();
        config.circuit_breaker.enable = false;
        let mut w = World::new(1, config);
        w.outcome.insert("web:1".into(), Outcome::Fails);
        let mut launches = Vec::new();
        for _ in 0..40 {
            let plan = w.round();
            if !plan.start.is_empty() {
                launches.push(w.now / 1000);
            }
        }
        let gaps: Vec<u64> = launches.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "gaps grow: {gaps:?}");
        assert!(gaps.last().copied().unwrap_or(0) >= 8, "{gaps:?}");
        assert!(w.events().iter().any(|e| e.starts_with("waiting ")));
    }

    #[test]
    fn scaling_in_stops_pending_tasks_before_healthy_ones() {
        let mut w = World::new(3, DeploymentConfiguration::default());
        converge(&mut w);
        w.svc.desired_count = 5;
        w.svc.version += 1;
        w.outcome.insert("web:1".into(), Outcome::Unplaced);
        w.round();
        assert_eq!(w.live().len(), 5);
        w.svc.desired_count = 3;
        let plan = w.round();
        assert_eq!(plan.stop.len(), 2);
        assert_eq!(w.healthy(), 3, "only the unplaced tasks were stopped");
    }

    #[test]
    fn tasks_on_a_draining_node_are_replaced_before_they_stop() {
        let mut w = World::new(2, DeploymentConfiguration::default());
        converge(&mut w);
        w.draining.insert("n1".into());
        // Replacements also land on "n1" in this world, so mark the old ones by ID instead.
        let old: Vec<String> = w.live().iter().map(|t| t.task_id.clone()).collect();
        for (t, _) in &mut w.tasks {
            if old.contains(&t.task_id) {
                t.node = Some("n1".into());
            }
        }
        w.outcome.insert("web:1".into(), Outcome::Healthy);
        let first = w.round();
        assert_eq!(first.start.len(), 2);
        assert!(
            first.stop.is_empty(),
            "nothing stops before its replacement is healthy"
        );
    }

    #[test]
    fn deleting_stops_every_task_then_removes_the_service() {
        let mut w = World::new(2, DeploymentConfiguration::default());
        converge(&mut w);
        w.svc.status = ServiceStatus::Draining;
        w.svc.desired_count = 0;
        let plan = w.round();
        assert_eq!(plan.stop.len(), 2);
        assert!(!plan.remove);
        let plan = w.round();
        assert!(plan.remove);
    }

    #[test]
    fn a_canary_runs_beside_the_old_tasks_then_the_rest_follows_after_the_bake_time() {
        let config = DeploymentConfiguration {
            strategy: DeploymentStrategy::Canary,
            canary_count: 1,
            canary_bake_time: 10,
            ..DeploymentConfiguration::default()
        };
        let mut w = World::new(3, config);
        converge(&mut w);
        w.deploy("web:2", Outcome::Healthy);
        for _ in 0..8 {
            w.round();
        }
        assert_eq!(
            (w.on("web:2"), w.on("web:1")),
            (1, 3),
            "one canary beside the old tasks"
        );
        assert!(!w.primary().promoted);
        converge(&mut w);
        assert!(w.primary().promoted);
        assert_eq!((w.on("web:2"), w.on("web:1")), (3, 0));
        assert_eq!(w.primary().rollout_state, RolloutState::Completed);
    }

    #[test]
    fn a_failing_canary_rolls_back_without_touching_the_old_tasks() {
        let config = DeploymentConfiguration {
            strategy: DeploymentStrategy::Canary,
            ..DeploymentConfiguration::default()
        };
        let mut w = World::new(3, config);
        converge(&mut w);
        w.deploy("web:2", Outcome::Fails);
        for _ in 0..60 {
            w.round();
            assert_eq!(w.on("web:1"), 3);
        }
        assert_eq!(w.svc.task_definition, td("web:1"));
        assert_eq!(w.primary().rollout_state, RolloutState::Completed);
    }

    #[test]
    fn deadlines_count_from_the_leaders_start_and_from_it_when_stamped_ahead() {
        // Began before this leader (at 10 s): counted from the leader's start (100 s).
        assert_eq!(super::elapsed(130_000, 100_000, 10_000), 30_000);
        // Began under this leader.
        assert_eq!(super::elapsed(130_000, 100_000, 120_000), 10_000);
        // Stamped an hour ahead by another leader's clock: counted from the leader's start.
        assert_eq!(super::elapsed(130_000, 100_000, 3_730_000), 30_000);
    }
}
