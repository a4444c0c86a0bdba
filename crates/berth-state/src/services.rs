//! Services: users' specs and changes, the reconciler's and the autoscaler's decisions (each
//! refused when the service changed since it was decided), and failures of service tasks.

use std::collections::BTreeMap;

use berth_model::{
    Deployment, DeploymentStatus, DesiredStatus, EventLog, QuotaExceeded, RolloutState, Service,
    ServiceSpec, ServiceStatus, StopCode, Task, TaskDefinitionRef, TaskStatus, Timestamp, Usage,
};

use crate::command::{CommandResult, Reconciliation, Rejection, ScalingDecision, ServiceChange};
use crate::{Key, State};

/// What applying a spec to an existing service changes. Both `ApplyService` and dry runs
/// (berth-control's preview) use it, so they cannot disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// The desired count after the update: with autoscaling the autoscaler owns the count, so
    /// a manifest's desiredCount only matters when it creates the service.
    pub desired_count: u32,
    /// The spec names another revision than the primary deployment's: a deployment starts.
    pub new_revision: bool,
    /// One phrase per changed field other than the revision, for the service's event.
    pub messages: Vec<String>,
}

impl ServiceUpdate {
    /// Whether anything changes at all.
    pub fn changes(&self) -> bool {
        self.new_revision || !self.messages.is_empty()
    }
}

/// What applying `spec` to `svc` would change; a service being deleted refuses specs.
pub fn service_update(svc: &Service, spec: &ServiceSpec) -> Result<ServiceUpdate, Rejection> {
    if svc.status == ServiceStatus::Draining {
        return Err(Rejection::Invalid(format!(
            "service {} is being deleted; apply it again once `berth get services` no longer lists it",
            svc.name
        )));
    }
    let new_revision =
        svc.deployments.first().map(|d| &d.task_definition) != Some(&spec.task_definition);
    let mut messages = Vec::new();
    if svc.autoscaling != spec.autoscaling {
        messages.push(if spec.autoscaling.is_some() {
            "autoscaling policy set".to_owned()
        } else {
            "autoscaling removed".to_owned()
        });
    }
    let desired_count = match &spec.autoscaling {
        Some(a) => a.clamp(svc.desired_count),
        None => spec.desired_count,
    };
    if svc.desired_count != desired_count {
        messages.push(format!(
            "desired count {} -> {desired_count}",
            svc.desired_count
        ));
    }
    if svc.deployment_configuration != spec.deployment_configuration {
        messages.push("deployment configuration changed".to_owned());
    }
    if svc.placement != spec.placement {
        messages.push("placement changed".to_owned());
    }
    if svc.meta != spec.meta {
        messages.push("labels or annotations changed".to_owned());
    }
    if svc.ingress != spec.ingress {
        messages.push("ingress rules changed".to_owned());
    }
    if svc.deregistration_delay != spec.deregistration_delay {
        messages.push(format!(
            "deregistration delay {}s -> {}s",
            svc.deregistration_delay, spec.deregistration_delay
        ));
    }
    Ok(ServiceUpdate {
        desired_count,
        new_revision,
        messages,
    })
}

/// The desired count of a service created from `spec`.
pub fn initial_desired_count(spec: &ServiceSpec) -> u32 {
    spec.autoscaling
        .as_ref()
        .map_or(spec.desired_count, |a| a.clamp(spec.desired_count))
}

impl State {
    pub(crate) fn apply_service(
        &mut self,
        namespace: String,
        spec: ServiceSpec,
        deployment_id: String,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if let Err(e) = spec.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        let Some(def) = self
            .task_definition(&namespace, &spec.task_definition)
            .filter(|_| spec.task_definition.revision.is_some())
        else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "task definition {} not found in namespace {namespace}",
                spec.task_definition
            )));
        };
        let key = (namespace.clone(), spec.name.clone());
        // ECS's rule: a service that uses a deregistered revision keeps it, but none moves
        // to one.
        if def.status == berth_model::TaskDefinitionStatus::Inactive
            && self
                .services
                .get(&key)
                .is_none_or(|s| s.task_definition != spec.task_definition)
        {
            return CommandResult::Rejected(Rejection::Invalid(self.inactive_revision(def)));
        }
        let (cpu, memory) = (def.cpu, def.memory);
        // Quota: a new service, a higher count or a new revision (its tasks' size may change)
        // must fit beside the namespace's other tasks at the desired count. A re-apply that
        // asks for no more is admitted even when the namespace is over a shrunk quota.
        let (desired, grows) = match self.services.get(&key) {
            None => (initial_desired_count(&spec), true),
            Some(svc) => match service_update(svc, &spec) {
                Ok(u) => (
                    u.desired_count,
                    u.desired_count > svc.desired_count || u.new_revision,
                ),
                Err(r) => return CommandResult::Rejected(r),
            },
        };
        if grows {
            if let Err(e) = self.admit_service(&namespace, &spec.name, desired, cpu, memory) {
                return CommandResult::Rejected(Rejection::QuotaExceeded(format!(
                    "service {} at desired count {desired} does not fit: {e}",
                    spec.name
                )));
            }
        }
        let store_key = Key::Service {
            namespace: namespace.clone(),
            name: spec.name.clone(),
        };
        let Some(svc) = self.services.get_mut(&key) else {
            let desired_count = initial_desired_count(&spec);
            let mut svc = Service {
                ingress: spec.ingress,
                deregistration_delay: spec.deregistration_delay,
                namespace,
                name: spec.name,
                task_definition: spec.task_definition.clone(),
                desired_count,
                deployment_configuration: spec.deployment_configuration,
                placement: spec.placement,
                meta: spec.meta,
                status: ServiceStatus::Active,
                running_count: 0,
                pending_count: 0,
                deployments: vec![Deployment::new(deployment_id, spec.task_definition, at)],
                version: 1,
                created_at: at,
                last_completed: None,
                backoff: Default::default(),
                autoscaling: spec.autoscaling,
                last_scale_out_at: 0,
                last_scale_in_at: 0,
                metrics: Vec::new(),
                events: Default::default(),
            };
            svc.events.push(
                at,
                format!(
                    "created with {} and desired count {}",
                    svc.task_definition, svc.desired_count
                ),
            );
            changed.push(store_key);
            self.services.insert(key, svc.clone());
            return CommandResult::Service {
                service: Box::new(svc),
                created: true,
                changed: true,
                deployment_started: true,
            };
        };
        let ServiceUpdate {
            desired_count,
            new_revision,
            mut messages,
        } = match service_update(svc, &spec) {
            Ok(update) => update,
            Err(r) => return CommandResult::Rejected(r),
        };
        svc.desired_count = desired_count;
        svc.autoscaling = spec.autoscaling;
        svc.deployment_configuration = spec.deployment_configuration;
        svc.placement = spec.placement;
        svc.meta = spec.meta;
        svc.ingress = spec.ingress;
        svc.deregistration_delay = spec.deregistration_delay;
        if new_revision {
            for d in &mut svc.deployments {
                d.status = DeploymentStatus::Active;
            }
            messages.push(format!(
                "deployment {deployment_id} started: {} -> {}",
                svc.task_definition, spec.task_definition
            ));
            let mut next = Deployment::new(deployment_id, spec.task_definition.clone(), at);
            next.rollback_to = rollback_target(svc, &spec.task_definition);
            svc.deployments.insert(0, next);
            svc.task_definition = spec.task_definition;
            // A new revision starts without the old one's launch back-off.
            svc.backoff = Default::default();
        }
        let was_changed = !messages.is_empty();
        if was_changed {
            svc.version += 1;
            svc.events.push(at, messages.join("; "));
            changed.push(store_key);
        }
        CommandResult::Service {
            service: Box::new(svc.clone()),
            created: false,
            changed: was_changed,
            deployment_started: new_revision,
        }
    }

    pub(crate) fn update_service(
        &mut self,
        namespace: &str,
        name: &str,
        change: ServiceChange,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if let (ServiceChange::Scale(n), Some(svc)) = (&change, self.service(namespace, name)) {
            let grows = *n > svc.desired_count && *n <= berth_model::MAX_DESIRED_COUNT;
            if grows && svc.status == ServiceStatus::Active {
                if let Err(e) = self.admit_service_count(svc, *n) {
                    return CommandResult::Rejected(Rejection::QuotaExceeded(format!(
                        "scaling service {name} to {n} does not fit: {e}"
                    )));
                }
            }
        }
        let Some(svc) = self
            .services
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "service {name} not found in namespace {namespace}; `berth get services` lists them"
            )));
        };
        if svc.status == ServiceStatus::Draining {
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "service {name} is being deleted"
            )));
        }
        match change {
            ServiceChange::Scale(n) => {
                if n > berth_model::MAX_DESIRED_COUNT {
                    return CommandResult::Rejected(Rejection::Invalid(format!(
                        "desired count {n} is too many; use at most {}",
                        berth_model::MAX_DESIRED_COUNT
                    )));
                }
                if svc.desired_count == n {
                    return CommandResult::Service {
                        service: Box::new(svc.clone()),
                        created: false,
                        changed: false,
                        deployment_started: false,
                    };
                }
                svc.events.push(
                    at,
                    format!("scaled: desired count {} -> {n}", svc.desired_count),
                );
                if n > svc.desired_count {
                    // A scale-up by hand counts as a scale-out: the autoscaler's cooldown and
                    // scale-to-zero's idle time start again from it.
                    svc.last_scale_out_at = at;
                } else {
                    // A scale-down by hand counts as a scale-in: the autoscaler's window starts
                    // after it (requests from before do not wake a service scaled to zero).
                    svc.last_scale_in_at = at;
                }
                svc.desired_count = n;
            }
            ServiceChange::Delete => {
                svc.status = ServiceStatus::Draining;
                svc.desired_count = 0;
                svc.events
                    .push(at, "deleted: stopping its tasks, then removing it");
            }
            ServiceChange::Promote => {
                let canary = svc.deployment_configuration.strategy
                    == berth_model::DeploymentStrategy::Canary;
                match svc.deployments.first_mut() {
                    Some(d)
                        if canary && d.rollout_state == RolloutState::InProgress && !d.promoted =>
                    {
                        d.promoted = true;
                        d.updated_at = at;
                        let message = format!("deployment {} promoted by an operator", d.id);
                        svc.events.push(at, message);
                    }
                    _ => {
                        return CommandResult::Rejected(Rejection::Invalid(format!(
                            "service {name} has no canary deployment waiting to be promoted"
                        )))
                    }
                }
            }
            ServiceChange::Redeploy { deployment_id } => {
                for d in &mut svc.deployments {
                    d.status = DeploymentStatus::Active;
                }
                svc.events.push(
                    at,
                    format!(
                        "deployment {deployment_id} started: {} again, every task replaced (redeploy)",
                        svc.task_definition
                    ),
                );
                let mut next = Deployment::new(deployment_id, svc.task_definition.clone(), at);
                next.rollback_to = svc.deployments.first().and_then(|d| d.rollback_to.clone());
                svc.deployments.insert(0, next);
                svc.backoff = Default::default();
            }
        }
        svc.version += 1;
        changed.push(Key::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        CommandResult::Service {
            service: Box::new(svc.clone()),
            created: false,
            changed: true,
            deployment_started: false,
        }
    }

    /// Whether `svc` at `desired_count` tasks of its current revision fits its namespace's
    /// quota (see [`State::admit_service`]).
    fn admit_service_count(&self, svc: &Service, desired_count: u32) -> Result<(), QuotaExceeded> {
        let Some(def) = self.task_definition(&svc.namespace, &svc.task_definition) else {
            return Ok(());
        };
        self.admit_service(
            &svc.namespace,
            &svc.name,
            desired_count,
            def.cpu,
            def.memory,
        )
    }

    /// How many of `start`, in order, fit the namespace's quota, and what the others would
    /// have exceeded.
    fn admissible(&self, namespace: &str, start: &[Task]) -> (usize, Option<QuotaExceeded>) {
        let Some(quota) = self.limiting_quota(namespace) else {
            return (start.len(), None);
        };
        let mut used = self.namespace_usage(namespace);
        for (i, task) in start.iter().enumerate() {
            let asked = Usage::of_task(task);
            if let Err(first) = quota.admit(namespace, used, asked) {
                let rest: Usage = start[i..].iter().map(Usage::of_task).sum();
                // The rest asks at least as much as its first task, so it cannot fit either.
                return (
                    i,
                    Some(quota.admit(namespace, used, rest).err().unwrap_or(first)),
                );
            }
            used += asked;
        }
        (start.len(), None)
    }

    /// Refuses a controller's decision made for another `version` of the service (or for one
    /// that is gone): the controller decides again from the new state.
    fn check_version(&self, namespace: &str, name: &str, version: u64) -> Result<(), Rejection> {
        match self.service(namespace, name) {
            None => Err(Rejection::NotFound(format!("service {name} not found"))),
            Some(s) if s.version != version => Err(Rejection::Conflict(format!(
                "service {name} changed (version {version} -> {})",
                s.version
            ))),
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn reconcile_service(
        &mut self,
        decision: Reconciliation,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let Reconciliation {
            namespace,
            name,
            version,
            service,
            start,
            stop,
            remove,
            at,
        } = decision;
        if let Err(r) = self.check_version(&namespace, &name, version) {
            return CommandResult::Rejected(r);
        }
        let store_key = Key::Service {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        for order in stop {
            let Some(task) = self
                .tasks
                .get_mut(order.task_id.as_str())
                .map(std::sync::Arc::make_mut)
            else {
                continue;
            };
            if task.desired_status != DesiredStatus::Running || task.is_stopped() {
                continue;
            }
            task.desired_status = DesiredStatus::Stopped;
            task.stop_code = Some(StopCode::ServiceSchedulerInitiated);
            task.stopped_reason = Some(order.reason.clone());
            task.events.push(
                at,
                format!("stopped by the service scheduler: {}", order.reason),
            );
            if task.node.is_none() {
                task.last_status = TaskStatus::Stopped;
                task.stopped_at = Some(at);
            }
            changed.push(Key::Task(order.task_id));
        }
        // Admission comes after the stops: an unplaced task stopped above frees its share.
        let mut service = *service;
        let mut start: Vec<Task> = start
            .into_iter()
            .filter(|t| !self.tasks.contains_key(t.task_id.as_str()))
            .collect();
        let (admitted, held_back) = self.admissible(&namespace, &start);
        note_quota(
            &mut service.events,
            &namespace,
            &start,
            admitted,
            held_back,
            at,
        );
        start.truncate(admitted);
        for mut task in start {
            task.created_at = at;
            task.events.push(at, "created by the service scheduler");
            changed.push(Key::Task(task.task_id.clone()));
            self.insert_task(task);
        }
        let key = (namespace, name);
        if remove {
            self.services.remove(&key);
            changed.push(store_key);
        } else {
            service.version = version;
            // A service held back by its quota asks again every round: when nothing changes,
            // nothing is written.
            if self.services.get(&key) != Some(&service) {
                self.services.insert(key, service);
                changed.push(store_key);
            }
        }
        CommandResult::Done
    }

    pub(crate) fn autoscale(
        &mut self,
        decision: ScalingDecision,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let ScalingDecision {
            namespace,
            name,
            version,
            desired_count,
            scale_out,
            reason,
            at,
        } = decision;
        if let Err(r) = self.check_version(&namespace, &name, version) {
            return CommandResult::Rejected(r);
        }
        let key = (namespace.clone(), name.clone());
        let refused = match self.services.get(&key) {
            Some(svc) if scale_out && desired_count > svc.desired_count => self
                .admit_service_count(svc, desired_count)
                .err()
                .map(|e| format!("scale-out of service {name} to {desired_count} refused: {e}")),
            _ => None,
        };
        match (self.services.get_mut(&key), refused) {
            (None, _) => CommandResult::Done,
            (Some(svc), _) if svc.status != ServiceStatus::Active => CommandResult::Done,
            (Some(svc), Some(message)) => {
                // Said once while the autoscaler keeps asking: a refusal replaces the one just
                // before it. The version stays: the reconciler's decisions remain valid.
                let last = svc.events.last().map(|e| e.message.clone());
                if last.as_deref() != Some(message.as_str()) {
                    if let Some(previous) = last.filter(|m| is_scale_out_refusal(m)) {
                        svc.events.rewrite_latest(&previous, None);
                    }
                    svc.events.push(at, message.clone());
                    changed.push(Key::Service { namespace, name });
                }
                CommandResult::Rejected(Rejection::QuotaExceeded(message))
            }
            (Some(svc), None) => {
                svc.desired_count = desired_count;
                if scale_out {
                    svc.last_scale_out_at = at;
                } else {
                    svc.last_scale_in_at = at;
                }
                svc.events.push(at, reason);
                svc.version += 1;
                changed.push(Key::Service { namespace, name });
                CommandResult::Done
            }
        }
    }
}

const HELD_BACK: &str = "new tasks held back: namespace ";
const NO_LONGER_HELD_BACK: &str = "no longer held back by namespace ";

fn is_scale_out_refusal(message: &str) -> bool {
    message.starts_with("scale-out of service ") && message.contains(" refused: ")
}

/// Records on a service what its namespace's quota did to a reconciliation that asked to start
/// `asked` (the tasks not already created), of which the first `started` were admitted: the
/// reconciler's "started N tasks" event counts only those (and goes when none started), a
/// hold-back is said once for as long as it stays the same (the reconciler asks again every
/// round), and its end is said too.
fn note_quota(
    events: &mut EventLog,
    namespace: &str,
    asked: &[Task],
    started: usize,
    held_back: Option<QuotaExceeded>,
    at: Timestamp,
) {
    let last_note = events
        .iter()
        .rev()
        .find(|e| e.message.starts_with(HELD_BACK) || e.message.starts_with(NO_LONGER_HELD_BACK))
        .map(|e| e.message.clone());
    let n = asked.len();
    let Some(exceeded) = held_back else {
        if n > 0 && last_note.is_some_and(|m| m.starts_with(HELD_BACK)) {
            let tasks = if n == 1 { "task" } else { "tasks" };
            events.push(
                at,
                format!("{NO_LONGER_HELD_BACK}{namespace}'s quota: {n} new {tasks} started"),
            );
        }
        return;
    };
    // The reconciler says "started N tasks of FAMILY:REV (deployment ID)" as it asks for them
    // (one deployment's tasks per round): say how many did start.
    if let Some(Task {
        task_definition,
        started_by: Some(deployment),
        ..
    }) = asked.first()
    {
        let said = |count| Service::started_tasks_message(count, task_definition, deployment);
        events.rewrite_latest(&said(n), (started > 0).then(|| said(started)));
    }
    // What is asked next round is what was held back this one, so while nothing else
    // changes the sentence stays the same and is said once.
    let message = format!("new tasks held back: {exceeded}");
    if last_note.as_deref() != Some(message.as_str()) {
        events.push(at, message);
    }
}

/// What a new deployment of `next` rolls back to: the last revision that completed; else the
/// current primary's when some of its tasks are healthy; else what the current primary would
/// have rolled back to; else the current primary's (the revision the user had asked for
/// before). So a bad deploy on top of an unfinished one still has somewhere to go back to.
fn rollback_target(svc: &Service, next: &TaskDefinitionRef) -> Option<TaskDefinitionRef> {
    let primary = svc
        .deployments
        .first()
        .filter(|d| d.rollout_state != RolloutState::Failed);
    svc.last_completed
        .clone()
        .or_else(|| {
            primary
                .filter(|d| d.healthy_count > 0)
                .map(|d| d.task_definition.clone())
        })
        .or_else(|| svc.deployments.first().and_then(|d| d.rollback_to.clone()))
        .or_else(|| primary.map(|d| d.task_definition.clone()))
        .filter(|td| td != next)
}

/// When a stopped service task failed on its own (not stopped by a user, the scheduler or a
/// lost node), records it on its service. Returns the service's key when it changed.
pub(crate) fn record_service_failure(
    services: &mut BTreeMap<(String, String), Service>,
    task: &Task,
    at: Timestamp,
) -> Option<Key> {
    let name = task.group.as_deref()?.strip_prefix("service:")?;
    let deployment = task.started_by.as_deref()?;
    if matches!(
        task.stop_code,
        Some(StopCode::UserInitiated | StopCode::ServiceSchedulerInitiated | StopCode::NodeLost)
    ) {
        return None;
    }
    let svc = services.get_mut(&(task.namespace.clone(), name.to_owned()))?;
    let reason = task
        .stopped_reason
        .as_deref()
        .or_else(|| task.containers.iter().find_map(|c| c.reason.as_deref()))
        .unwrap_or("it stopped");
    svc.record_failed_task(deployment, &task.task_id, reason, at);
    Some(Key::Service {
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
    })
}
