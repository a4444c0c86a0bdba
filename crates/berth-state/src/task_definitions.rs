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
        at: Timestamp,
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
            if !revs.contains_key(&rev) {
                return CommandResult::Rejected(Rejection::NotFound(format!(
                    "task definition {family}:{rev} not found in namespace {namespace} (it has {})",
                    revision_list(revs.keys().copied())
                )));
            }
        }
        let mut done = Vec::new();
        let deregistered: Vec<u32> = revs
            .values()
            .filter(|d| revision.is_none_or(|r| r == d.revision))
            .filter(|d| d.status == TaskDefinitionStatus::Active)
            .map(|d| d.revision)
            .collect();
        for r in deregistered {
            let Some(d) = revs.get_mut(&r) else {
                continue;
            };
            d.status = TaskDefinitionStatus::Inactive;
            d.deregistered_at = Some(at);
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
                .values()
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
        let revision = revs
            .keys()
            .next_back()
            .map_or(1, |last| last.saturating_add(1));
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
            deregistered_at: None,
        };
        revs.insert(revision, def.clone());
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

impl State {
    /// Why `def`, an INACTIVE revision, starts nothing new, and what to use instead.
    pub fn inactive_revision(&self, def: &TaskDefinition) -> String {
        let family = berth_model::TaskDefinitionRef {
            family: def.family.clone(),
            revision: None,
        };
        let hint = match self.task_definition(&def.namespace, &family) {
            Some(active) => format!(
                "use {}:{}, its latest ACTIVE revision",
                def.family, active.revision
            ),
            None => format!(
                "family {} has no ACTIVE revision left: register it again with `berth apply -f`",
                def.family
            ),
        };
        format!(
            "task definition {}:{} is INACTIVE (deregistered); {hint}",
            def.family, def.revision
        )
    }
}

/// Revision numbers as a short phrase: `revisions 1 to 4`, or the numbers left when some
/// were deleted (`revisions 2, 5 and 6`).
fn revision_list(revisions: impl Iterator<Item = u32>) -> String {
    let all: Vec<u32> = revisions.collect();
    match all.as_slice() {
        [] => "no revisions".to_owned(),
        [one] => format!("revision {one} only"),
        [first, .., last] if usize::try_from(last - first).ok() == Some(all.len() - 1) => {
            format!("revisions {first} to {last}")
        }
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(u32::to_string).collect();
            format!("revisions {} and {last}", init.join(", "))
        }
    }
}
