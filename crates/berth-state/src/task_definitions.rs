//! Task definitions: immutable revisions of a family.

use berth_model::{TaskDefinition, TaskDefinitionSpec, TaskDefinitionStatus, Timestamp};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

impl State {
    pub(crate) fn register_task_definition(
        &mut self,
        namespace: String,
        spec: TaskDefinitionSpec,
        reuse_identical: bool,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if let Err(e) = spec.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        let revs = self
            .task_definitions
            .entry((namespace.clone(), spec.family.clone()))
            .or_default();
        if reuse_identical {
            if let Some(latest) = revs
                .iter()
                .rev()
                .find(|d| d.status == TaskDefinitionStatus::Active)
            {
                if latest.matches(&spec) {
                    return CommandResult::TaskDefinition {
                        task_definition: latest.clone(),
                        created: false,
                    };
                }
            }
        }
        let revision = u32::try_from(revs.len() + 1).unwrap_or(u32::MAX);
        let def = TaskDefinition {
            namespace: namespace.clone(),
            family: spec.family.clone(),
            revision,
            status: TaskDefinitionStatus::Active,
            cpu: spec.cpu,
            memory: spec.memory,
            containers: spec.containers,
            placement: spec.placement,
            ephemeral_storage: spec.ephemeral_storage,
            meta: spec.meta,
            registered_at: at,
        };
        revs.push(def.clone());
        changed.push(Key::TaskDefinition {
            namespace,
            family: spec.family,
            revision,
        });
        CommandResult::TaskDefinition {
            task_definition: def,
            created: true,
        }
    }
}
