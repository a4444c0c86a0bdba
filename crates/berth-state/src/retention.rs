//! Retention: removing finished work — stopped tasks, INACTIVE revisions nothing uses, nodes
//! DOWN for long — once it has been kept long enough. The leader decides what and when
//! (berth-control's `retention`); the state machine checks each removal again.

use berth_model::{NodeStatus, RemovedTask, TaskDefinitionStatus, Timestamp};

use crate::command::{CommandResult, Retirement, RevisionKey};
use crate::tasks::{remove_from, stopped_at};
use crate::{Key, State};

impl State {
    /// Forgets the tombstone of `id`, with its index entries; answers whether there was one.
    fn forget_removed(&mut self, id: &str) -> bool {
        let Some(gone) = self.removed.remove(id) else {
            return false;
        };
        self.removed_ages.remove(&(gone.removed_at, id.to_owned()));
        if let Some(node) = &gone.node {
            remove_from(&mut self.removed_by_node, node, id);
        }
        true
    }

    pub(crate) fn retire(&mut self, r: Retirement, changed: &mut Vec<Key>) -> CommandResult {
        let mut count = 0u32;
        for id in r.tasks {
            // Kept until the ledger's buckets that count it are closed.
            if !self
                .tasks
                .get(id.as_str())
                .is_some_and(|t| t.is_stopped() && self.accounted(t))
            {
                continue;
            }
            let Some(task) = self.unindex(&id) else {
                continue;
            };
            let removed = RemovedTask {
                stopped_at: stopped_at(&task),
                task_id: task.task_id,
                namespace: task.namespace,
                node: task.node,
                removed_at: r.at,
            };
            // An ID removed before (a task of that ID created again since) has its older
            // tombstone replaced: its index entries go first.
            self.forget_removed(&id);
            self.removed_ages.insert((r.at, id.clone()));
            if let Some(node) = &removed.node {
                self.removed_by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(id.clone());
            }
            self.removed.insert(id.clone(), removed);
            if self.task_usage.remove(&id).is_some() {
                changed.push(Key::TaskUsage(id.clone()));
            }
            changed.push(Key::Task(id.clone()));
            changed.push(Key::RemovedTask(id));
            count += 1;
        }
        for id in r.forget {
            if self.forget_removed(&id) {
                changed.push(Key::RemovedTask(id));
                count += 1;
            }
        }
        for key in r.revisions {
            if !self.revision_removable(&key) {
                continue;
            }
            let family = (key.namespace.clone(), key.family.clone());
            if let Some(revs) = self.task_definitions.get_mut(&family) {
                if revs.remove(&key.revision).is_some() {
                    changed.push(Key::TaskDefinition {
                        namespace: key.namespace,
                        family: key.family,
                        revision: key.revision,
                    });
                    count += 1;
                }
            }
        }
        for node in r.nodes {
            if self
                .node(&node)
                .is_some_and(|n| n.status == NodeStatus::Down)
            {
                self.remove_node(&node, r.at, changed);
                count += 1;
            }
        }
        CommandResult::Count(count)
    }

    /// Whether revision `key` may be deleted: INACTIVE, not its family's latest (so revision
    /// numbers are never reused), and used by no task the state holds and no service.
    pub fn revision_removable(&self, key: &RevisionKey) -> bool {
        let Some(revs) = self
            .task_definitions
            .get(&(key.namespace.clone(), key.family.clone()))
        else {
            return false;
        };
        let Some(def) = revs.get(&key.revision) else {
            return false;
        };
        if def.status != TaskDefinitionStatus::Inactive
            || revs.keys().next_back() == Some(&key.revision)
            || self.revision_users.contains_key(key)
        {
            return false;
        }
        let this = |r: &berth_model::TaskDefinitionRef| {
            r.family == key.family && r.revision == Some(key.revision)
        };
        !self
            .services
            .range((key.namespace.clone(), String::new())..)
            .take_while(|((ns, _), _)| *ns == key.namespace)
            .any(|(_, s)| {
                this(&s.task_definition)
                    || s.last_completed.as_ref().is_some_and(this)
                    || s.deployments.iter().any(|d| this(&d.task_definition))
            })
    }

    /// Stopped tasks, oldest stop first, with when they stopped.
    pub fn stopped_oldest_first(&self) -> impl Iterator<Item = (Timestamp, &str)> {
        self.stopped.iter().map(|(at, id)| (*at, &**id))
    }

    /// The IDs of the `n` stopped tasks of `group` in `namespace` that stopped last.
    pub fn latest_stopped_of<'a>(
        &'a self,
        namespace: &str,
        group: &str,
        n: usize,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.stopped_groups
            .get(&(namespace.to_owned(), group.to_owned()))
            .into_iter()
            .flat_map(|set| set.iter().rev())
            .take(n)
            .map(|(_, id)| &**id)
    }

    /// Removed tasks still remembered, oldest removal first, with when they were removed.
    pub fn removed_oldest_first(&self) -> impl Iterator<Item = (Timestamp, &str)> {
        self.removed_ages.iter().map(|(at, id)| (*at, id.as_str()))
    }

    /// INACTIVE revisions, with when they were deregistered (their registration when that
    /// was not recorded).
    pub fn inactive_revisions(&self) -> impl Iterator<Item = (Timestamp, RevisionKey)> + '_ {
        self.task_definitions
            .values()
            .flat_map(|revs| revs.values())
            .filter(|d| d.status == TaskDefinitionStatus::Inactive)
            .map(|d| {
                (
                    d.deregistered_at.unwrap_or(d.registered_at),
                    RevisionKey {
                        namespace: d.namespace.clone(),
                        family: d.family.clone(),
                        revision: d.revision,
                    },
                )
            })
    }
}
