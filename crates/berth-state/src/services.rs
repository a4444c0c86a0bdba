//! Services: users' specs and changes, the reconciler's and the autoscaler's decisions (each
//! refused when the service changed since it was decided), and failures of service tasks.

use std::collections::BTreeMap;

use berth_model::{
    Deployment, DeploymentStatus, DesiredStatus, RolloutState, Service, ServiceSpec, ServiceStatus,
    StopCode, Task, TaskDefinitionRef, TaskStatus, Timestamp,
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
        if spec.task_definition.revision.is_none()
            || self
                .task_definition(&namespace, &spec.task_definition)
                .is_none()
        {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "task definition {} not found in namespace {namespace}",
                spec.task_definition
            )));
        }
        let key = (namespace.clone(), spec.name.clone());
        let store_key = Key::Service {
            namespace: namespace.clone(),
            name: spec.name.clone(),
        };
        let Some(svc) = self.services.get_mut(&key) else {
            let desired_count = initial_desired_count(&spec);
            let mut svc = Service {
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
        let key = (namespace, name);
        for order in stop {
            let Some(task) = self.tasks.get_mut(&order.task_id) else {
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
        for mut task in start {
            if self.tasks.contains_key(&task.task_id) {
                continue;
            }
            task.created_at = at;
            task.events.push(at, "created by the service scheduler");
            changed.push(Key::Task(task.task_id.clone()));
            self.index(&task);
            self.tasks.insert(task.task_id.clone(), task);
        }
        if remove {
            self.services.remove(&key);
        } else {
            let mut service = *service;
            service.version = version;
            self.services.insert(key, service);
        }
        changed.push(store_key);
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
        match self.services.get_mut(&key) {
            None => CommandResult::Done,
            Some(svc) if svc.status != ServiceStatus::Active => CommandResult::Done,
            Some(svc) => {
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
