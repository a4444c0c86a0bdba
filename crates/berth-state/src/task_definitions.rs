//! Task definitions: immutable revisions of a family.

use berth_model::{TaskDefinition, TaskDefinitionSpec, TaskDefinitionStatus, Timestamp};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

impl State {
    /// Marks `revision` of `family` (every revision when `None`) INACTIVE; revisions that are
    /// already are left as they are. Answers the revisions it changed.
    pub(crate) fn deregister_task_definition(
        &mut self,
        namespace: &str,
        family: &str,
        revision: Option<u32>,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let Some(revs) = self
            .task_definitions
            .get_mut(&(namespace.to_owned(), family.to_owned()))
        else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "task definition {family} not found in namespace {namespace}"
            )));
        };
        if let Some(rev) = revision {
            if usize::try_from(rev).map_or(true, |r| r == 0 || r > revs.len()) {
                return CommandResult::Rejected(Rejection::NotFound(format!(
                    "task definition {family}:{rev} not found in namespace {namespace} (it has revisions 1 to {})",
                    revs.len()
                )));
            }
        }
        let mut done = Vec::new();
        for d in revs
            .iter_mut()
            .filter(|d| revision.is_none_or(|r| r == d.revision))
            .filter(|d| d.status == TaskDefinitionStatus::Active)
        {
            d.status = TaskDefinitionStatus::Inactive;
            changed.push(Key::TaskDefinition {
                namespace: namespace.to_owned(),
                family: family.to_owned(),
                revision: d.revision,
            });
            done.push(d.clone());
        }
        CommandResult::TaskDefinitions(done)
    }

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
