//! What the state publishes for the reads that must never wait for the applier: a request's
//! authentication (every API call makes one), one task's read and a list of tasks. Each is a copy taken in
//! about no time: persistent maps, shared with the state until it changes them (each change
//! then copies only the path to what it changes, which is what a copy costs the applier).

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use berth_model::{ApiTokenRecord, RemovedTask, Task};

use crate::{State, TaskId};

/// The API tokens as the state holds them.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    api_tokens: OrdMap<String, ApiTokenRecord>,
}

impl Credentials {
    /// An API token by ID, expired or not ([`State::api_token`]).
    pub fn api_token(&self, id: &str) -> Option<&ApiTokenRecord> {
        self.api_tokens.get(id)
    }
}

/// The tasks, their index by namespace, and the tasks the retention removed as the state
/// holds them. A type of its own rather than a partial [`State`]: none of the state's other
/// indexes is in it to read wrongly.
#[derive(Debug, Clone, Default)]
pub struct TaskView {
    tasks: OrdMap<TaskId, Arc<Task>>,
    by_namespace: OrdMap<String, OrdSet<TaskId>>,
    removed: OrdMap<String, RemovedTask>,
}

impl TaskView {
    /// Task `task_id` in `namespace` ([`State::task`]).
    pub fn task(&self, namespace: &str, task_id: &str) -> Option<&Task> {
        self.tasks
            .get(task_id)
            .map(Arc::as_ref)
            .filter(|t| t.namespace == namespace)
    }

    /// The tasks in `namespace`, in task ID order ([`State::tasks_in`]), by the state's index
    /// of each namespace's tasks: a small namespace's list looks at its own tasks only.
    pub fn tasks_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id).map(Arc::as_ref))
    }

    /// What the retention left of task `task_id` in `namespace` ([`State::removed_task`]).
    pub fn removed_task(&self, namespace: &str, task_id: &str) -> Option<&RemovedTask> {
        self.removed
            .get(task_id)
            .filter(|r| r.namespace == namespace)
    }
}

impl State {
    /// The API tokens as they are now. A copy costs the applier nothing until a token
    /// changes.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            api_tokens: self.api_tokens.clone(),
        }
    }

    /// The tasks as they are now. While a copy lives, the applier's first change to each
    /// 64-task node of the map copies it (and the path to it): an entry that changes a
    /// thousand of 100,000 tasks pays about 2 ms for it.
    pub fn task_view(&self) -> TaskView {
        TaskView {
            tasks: self.tasks.clone(),
            by_namespace: self.tasks_by_namespace.clone(),
            removed: self.removed.clone(),
        }
    }
}
