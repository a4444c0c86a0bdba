//! An agent's desired set: everything its node should run or stop, with the container
//! definitions to do it. The server pushes it whenever it changes.

use berth_model::{Assignment, Task};
use berth_state::State;

/// The tasks placed on `node` that have not stopped, in task ID order.
pub fn desired_tasks(state: &State, node: &str) -> Vec<Assignment> {
    state
        .live_tasks_on(node)
        .filter_map(|t| assignment(state, t))
        .collect()
}

/// Task `task_id`'s assignment if it is one of `node`'s desired set ([`desired_tasks`], for
/// one task): after a change of that task only.
pub fn desired_task(state: &State, node: &str, task_id: &str) -> Option<Assignment> {
    assignment(state, state.live_task_on(node, task_id)?)
}

fn assignment(state: &State, t: &Task) -> Option<Assignment> {
    let def = state.task_definition(&t.namespace, &t.task_definition)?;
    let publishes = def.containers.iter().any(|c| !c.port_mappings.is_empty());
    let deregistration_delay = match t.group.as_deref().and_then(|g| g.strip_prefix("service:")) {
        Some(service) if publishes => state
            .service(&t.namespace, service)
            .map_or(0, |s| s.deregistration_delay),
        _ => 0,
    };
    Some(Assignment {
        task_id: t.task_id.clone(),
        namespace: t.namespace.clone(),
        task_definition: t.task_definition.clone(),
        desired_status: t.desired_status,
        cpu: t.cpu,
        memory: t.memory,
        containers: {
            let mut containers = def.containers.clone();
            berth_model::ContainerOverride::apply(&t.overrides, &mut containers);
            containers
        },
        last_status: t.last_status,
        deregistration_delay,
        ephemeral_storage: def.ephemeral_storage.unwrap_or_default(),
        // Opened by the server that pushes the set, which holds the keyring.
        secrets: berth_model::TaskSecrets::default(),
    })
}
