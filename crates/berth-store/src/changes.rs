//! A bounded, in-memory feed of the objects each applied batch changed, for `Watch`. Each
//! member keeps its own; a revision is the Raft log index of the batch that made the change.

use std::collections::VecDeque;
use std::sync::Arc;

use berth_model::Task;

use berth_state::{Key, Object, State};

/// How many changes are kept; a watcher further behind lists everything again.
pub const KEEP: usize = 8192;

/// One change: the object as it is after `revision`, or the key of an object deleted then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub change: ObjectChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectChange {
    Put(Box<Object>),
    /// A task as it is after the change, shared with the state (which copies a task before it
    /// changes it again): recording one costs a reference, not a copy of the task.
    PutTask(Arc<Task>),
    /// The object went; `namespace` is its namespace when the key does not say (a task the
    /// retention removed), so namespaced watchers see only their own deletions.
    Deleted {
        key: Key,
        namespace: Option<String>,
    },
}

#[derive(Debug)]
pub struct ChangeLog {
    changes: VecDeque<Change>,
    /// Changes after this revision are all kept.
    complete_after: u64,
}

impl ChangeLog {
    pub fn new(revision: u64) -> Self {
        Self {
            changes: VecDeque::new(),
            complete_after: revision,
        }
    }

    /// Records the objects under `keys` as `state` holds them after `revision`.
    pub fn record(&mut self, revision: u64, state: &State, keys: &[Key]) {
        for key in keys {
            // Tokens (their hashes included) never reach watchers; nor does the metering
            // ledger (a bucket's close touches every task that ran in it, and would push the
            // changes watchers need out of the window), nor do the answers kept for retries.
            if matches!(
                key,
                Key::ClientToken(_)
                    | Key::ApiToken(_)
                    | Key::JoinToken(_)
                    | Key::Ledger
                    | Key::LedgerBucket(_)
                    | Key::TaskUsage(_)
                    | Key::Request(_)
            ) {
                continue;
            }
            let now = match key {
                Key::Task(id) => state.shared_task(id).map(ObjectChange::PutTask),
                _ => state.object(key).map(|o| ObjectChange::Put(Box::new(o))),
            };
            let change = match now {
                Some(put) => put,
                None => ObjectChange::Deleted {
                    key: key.clone(),
                    namespace: match key {
                        Key::Task(id) => state.removed_task_by_id(id).map(|r| r.namespace.clone()),
                        _ => None,
                    },
                },
            };
            self.changes.push_back(Change { revision, change });
        }
        while self.changes.len() > KEEP {
            if let Some(dropped) = self.changes.pop_front() {
                self.complete_after = self.complete_after.max(dropped.revision);
            }
        }
    }

    /// Forgets everything: the state was replaced at `revision`.
    pub fn reset(&mut self, revision: u64) {
        self.changes.clear();
        self.complete_after = revision;
    }

    /// Whether every change after `revision` is kept.
    pub fn covers(&self, revision: u64) -> bool {
        revision >= self.complete_after
    }

    /// The changes after `revision`, or `None` when some of them are no longer kept (the
    /// watcher must list the current state instead).
    pub fn since(&self, revision: u64) -> Option<Vec<Change>> {
        if revision < self.complete_after {
            return None;
        }
        Some(
            self.changes
                .iter()
                .filter(|c| c.revision > revision)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use berth_state::Command;

    use super::*;

    #[test]
    fn a_task_change_is_the_task_as_it_was_then_shared_with_the_state() {
        let mut state = State::default();
        let spec = berth_model::TaskDefinitionSpec::new(
            "web",
            256,
            64,
            vec![berth_model::ContainerDefinition::new("app", "busybox")],
        );
        state.apply(Command::RegisterTaskDefinition {
            namespace: "default".into(),
            spec,
            reuse_identical: false,
            at: 1,
        });
        let def = state
            .task_definition("default", &"web:1".parse().expect("ref"))
            .cloned()
            .expect("registered");
        let (_, keys) = state.apply(Command::CreateTasks {
            tasks: vec![berth_model::Task::pending("t1".into(), "default", &def, 2)],
            client_token: None,
            at: 2,
        });
        let mut log = ChangeLog::new(1);
        log.record(2, &state, &keys);
        let put = |log: &ChangeLog| {
            log.since(1)
                .expect("kept")
                .into_iter()
                .find_map(|c| match c.change {
                    ObjectChange::PutTask(t) => Some(t),
                    _ => None,
                })
                .expect("the task's change")
        };
        let recorded = put(&log);
        assert!(
            Arc::ptr_eq(&recorded, &state.shared_task("t1").expect("task")),
            "recorded without a copy"
        );
        // A later change to the task leaves the recorded one as it was.
        state.apply(Command::StopTask {
            namespace: "default".into(),
            task_id: "t1".into(),
            stop_code: berth_model::StopCode::UserInitiated,
            reason: "test".into(),
            at: 3,
        });
        let now = state.shared_task("t1").expect("task");
        assert_eq!(now.desired_status, berth_model::DesiredStatus::Stopped);
        assert_eq!(
            put(&log).desired_status,
            berth_model::DesiredStatus::Running
        );
    }

    #[test]
    fn watchers_resume_or_are_told_to_list_again() {
        let state = State::default();
        let mut log = ChangeLog::new(10);
        log.record(
            11,
            &state,
            &[Key::Task("a".into()), Key::ClientToken("t".into())],
        );
        log.record(12, &state, &[Key::Task("b".into())]);
        let after_11 = log.since(11).expect("kept");
        assert_eq!(after_11.len(), 1);
        assert_eq!(
            after_11[0].change,
            ObjectChange::Deleted {
                key: Key::Task("b".into()),
                namespace: None
            }
        );
        assert_eq!(log.since(10).map(|c| c.len()), Some(2));
        assert!(log.since(9).is_none(), "from before the log started");
        for i in 0..KEEP as u64 {
            log.record(13 + i, &state, &[Key::Task("c".into())]);
        }
        assert!(log.since(11).is_none(), "dropped");
        assert!(log.since(13).is_some());
        log.reset(50_000);
        assert!(log.since(13).is_none());
    }
}
