//! The service reconciler's round: `berth_scheduler::service::reconcile` for every service,
//! and one `ReconcileService` command per service that needs one. The state machine refuses a
//! command when the service changed since it was read; the next round decides again.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{NodeStatus, PlacementSpec, Service, Task, TaskDefinitionRef};
use berth_scheduler::service::{reconcile, ServiceInput};
use berth_state::{Command, Reconciliation, State};

/// The service's placement on top of its task definition's: the service's strategies replace
/// the task definition's when given; constraints of both apply.
pub fn merged_placement(service: &PlacementSpec, def: &PlacementSpec) -> PlacementSpec {
    let mut constraints = def.constraints.clone();
    for c in &service.constraints {
        if !constraints.contains(c) {
            constraints.push(c.clone());
        }
    }
    PlacementSpec {
        strategy: if service.strategy.is_empty() {
            def.strategy.clone()
        } else {
            service.strategy.clone()
        },
        constraints,
    }
}

/// One round's decisions: a `ReconcileService` command for every service that needs one.
/// `ids` names new tasks and deployments (random UUIDs; seeded in the simulator);
/// `leading_since` is when this leader began to lead, by its clock: deployment deadlines that
/// began earlier count from then.
pub fn plan(
    state: &State,
    at: u64,
    leading_since: u64,
    ids: &mut dyn FnMut() -> String,
) -> Vec<Command> {
    let draining: BTreeSet<String> = state
        .nodes()
        .filter(|n| n.status == NodeStatus::Draining)
        .map(|n| n.name.clone())
        .collect();
    let mut commands = Vec::new();
    for svc in state.services() {
        let group = svc.group();
        let tasks: Vec<&Task> = state.live_tasks_of(&svc.namespace, &group).collect();
        let health_checked = health_checked(state, svc, &tasks);
        let plan = reconcile(&ServiceInput {
            service: svc,
            tasks,
            draining_nodes: &draining,
            health_checked: &health_checked,
            now: at,
            counting_from: leading_since,
            new_deployment_id: ids(),
        });
        if plan.is_noop(svc) {
            continue;
        }
        let start = plan
            .start
            .iter()
            .filter_map(|launch| {
                let def = state.task_definition(&svc.namespace, &launch.task_definition)?;
                let mut task = Task::pending(ids(), &svc.namespace, def, at);
                task.group = Some(group.clone());
                task.started_by = Some(launch.deployment_id.clone());
                task.placement = merged_placement(&svc.placement, &def.placement);
                task.labels.extend(svc.meta.labels.clone());
                Some(task)
            })
            .collect();
        commands.push(Command::ReconcileService(Reconciliation {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            version: svc.version,
            service: Box::new(plan.service),
            start,
            stop: plan.stop,
            remove: plan.remove,
            at,
        }));
    }
    commands
}

/// Containers with a health check, for every revision the service's deployments and tasks use.
fn health_checked(
    state: &State,
    svc: &Service,
    tasks: &[&Task],
) -> BTreeMap<TaskDefinitionRef, Vec<String>> {
    let refs: BTreeSet<&TaskDefinitionRef> = svc
        .deployments
        .iter()
        .map(|d| &d.task_definition)
        .chain(tasks.iter().map(|t| &t.task_definition))
        .collect();
    refs.into_iter()
        .filter_map(|r| {
            let def = state.task_definition(&svc.namespace, r)?;
            let names = def
                .containers
                .iter()
                .filter(|c| c.health_check.is_some())
                .map(|c| c.name.clone())
                .collect();
            Some((r.clone(), names))
        })
        .collect()
}
