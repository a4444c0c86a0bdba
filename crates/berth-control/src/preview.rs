//! Dry runs: what applying a service would change and where the tasks it would start would
//! go, computed with the same functions the state machine and the scheduler use, so a dry run
//! and the real apply cannot disagree. Nothing is written.

use berth_model::{PlannedTask, Service, ServiceSpec, TaskDefinitionSpec};
use berth_scheduler::{Decision, TaskRequest};
use berth_state::{initial_desired_count, service_update, Rejection, State};

use crate::scheduling;
use crate::services::merged_placement;

/// The answer of a dry run of `ApplyService`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePreview {
    /// The service as it is now, if it exists.
    pub existing: Option<Service>,
    pub changed: bool,
    pub deployment_started: bool,
    /// Where each task the apply would start would go now, or why it could not.
    pub plan: Vec<PlannedTask>,
}

/// What applying `spec` in `namespace` would do now. With an inline `template`, the revision is
/// the latest one when identical, else a new one; without, `spec.task_definition` must exist.
pub fn apply_service(
    state: &State,
    namespace: &str,
    mut spec: ServiceSpec,
    template: Option<&TaskDefinitionSpec>,
) -> Result<ServicePreview, Rejection> {
    let latest = state.task_definition(namespace, &spec.task_definition);
    // The revision the service would run (none yet: a new one) and the size of its tasks.
    let (revision, cpu, memory, placement, containers) = match (template, latest) {
        (Some(t), Some(d)) if d.matches(t) => (
            Some(d.reference()),
            d.cpu,
            d.memory,
            &d.placement,
            &d.containers,
        ),
        (Some(t), _) => (None, t.cpu, t.memory, &t.placement, &t.containers),
        (None, Some(d)) => (
            Some(d.reference()),
            d.cpu,
            d.memory,
            &d.placement,
            &d.containers,
        ),
        (None, None) => {
            return Err(Rejection::NotFound(format!(
                "task definition {} not found in namespace {namespace}; register it with `berth apply -f`",
                spec.task_definition
            )))
        }
    };
    if let Some(r) = revision {
        spec.task_definition = r;
    }
    let existing = state.service(namespace, &spec.name).cloned();
    let (changed, deployment_started, starts) = match &existing {
        None => (true, true, initial_desired_count(&spec)),
        Some(svc) => {
            let update = service_update(svc, &spec)?;
            // A new revision starts `desired` tasks; otherwise only a scale-out does.
            let starts = if update.new_revision {
                update.desired_count
            } else {
                update.desired_count.saturating_sub(svc.desired_count)
            };
            (update.changes(), update.new_revision, starts)
        }
    };
    let placement = merged_placement(&spec.placement, placement);
    let group = format!("service:{}", spec.name);
    for (i, rule) in spec.ingress.iter().enumerate() {
        rule.check_target(&format!("ingress[{i}]"), containers)
            .map_err(|e| Rejection::Invalid(e.to_string()))?;
    }
    let host_ports: Vec<_> = berth_model::fixed_host_ports(containers).collect();
    let template = TaskRequest {
        task_id: String::new(),
        cpu: cpu.into(),
        memory: memory.into(),
        namespace: namespace.to_owned(),
        group,
        placement,
        host_ports,
    };
    let plan = scheduling::preview(state, &template, starts)
        .into_iter()
        .map(|d| match d {
            Decision::Place { node, .. } => PlannedTask::Node(node),
            Decision::Unplaceable { reason, .. } => PlannedTask::Unplaceable { reason },
        })
        .collect();
    Ok(ServicePreview {
        existing,
        changed,
        deployment_started,
        plan,
    })
}
