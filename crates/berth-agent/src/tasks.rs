//! The tasks this agent knows: each one's stop request, whether it finished, and its
//! containers. Shared by the executor (which adds and forgets tasks), self-fencing (which stops
//! them all) and the agent API (which finds their containers). Only short critical sections:
//! the lock is never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::engine::{Local, LocalView};
use crate::supervisor::{self, request_stop, StopReason};

/// A question about a task the table cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("task {task_id} is not running on this node")]
    NotRunning { task_id: String },
    #[error("task {task_id} has no container {container:?}; it has {}", have.join(", "))]
    NoContainer {
        task_id: String,
        container: String,
        have: Vec<String>,
    },
}

pub(crate) struct LocalTask {
    pub(crate) stop: watch::Sender<Option<StopReason>>,
    pub(crate) done: Arc<AtomicBool>,
    /// Its containers' names, in definition order.
    pub(crate) containers: Vec<String>,
    /// Seconds out of routing before SIGTERM, as the servers want it now (their latest
    /// desired set may change it after the task started).
    pub(crate) deregistration_delay: Arc<std::sync::atomic::AtomicU32>,
}

impl LocalTask {
    /// A task that has finished without running here.
    pub(crate) fn finished() -> Self {
        Self {
            stop: watch::Sender::new(None),
            done: Arc::new(AtomicBool::new(true)),
            containers: vec![],
            deregistration_delay: Arc::default(),
        }
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

/// The tasks this agent knows, shared with its API.
#[derive(Clone, Default)]
pub struct TaskTable(Arc<Mutex<HashMap<String, LocalTask>>>);

impl TaskTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, LocalTask>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Running tasks and their containers' names.
    pub(crate) fn running(&self) -> Vec<(String, Vec<String>)> {
        self.lock()
            .iter()
            .filter(|(_, t)| !t.is_done())
            .map(|(id, t)| (id.clone(), t.containers.clone()))
            .collect()
    }

    /// Every known task and whether it finished, for the engine.
    pub(crate) fn view(&self) -> LocalView {
        let tasks = self
            .lock()
            .iter()
            .map(|(id, t)| {
                let state = if t.is_done() {
                    Local::Finished
                } else {
                    Local::Active
                };
                (id.clone(), state)
            })
            .collect();
        LocalView {
            tasks,
            found: Default::default(),
        }
    }

    pub(crate) fn insert(&self, task_id: String, task: LocalTask) {
        self.lock().insert(task_id, task);
    }

    pub(crate) fn remove(&self, task_id: &str) {
        self.lock().remove(task_id);
    }

    /// Asks `task_id` to stop as the servers want it, with the deregistration delay they
    /// name (`None`: the one it has).
    pub(crate) fn stop_after(&self, task_id: &str, deregistration_delay: Option<u32>) {
        if let Some(t) = self.lock().get(task_id) {
            if let Some(secs) = deregistration_delay {
                t.deregistration_delay
                    .store(secs, std::sync::atomic::Ordering::SeqCst);
            }
            request_stop(&t.stop, StopReason::Server);
        }
    }

    /// Asks every known task to stop for `why`.
    pub(crate) fn stop_all(&self, why: StopReason) {
        for task in self.lock().values() {
            request_stop(&task.stop, why);
        }
    }

    /// The runtime ID of a running task's container (`container` empty: its first one).
    pub fn container_id(&self, task_id: &str, container: &str) -> Result<String, TaskError> {
        let tasks = self.lock();
        let task =
            tasks
                .get(task_id)
                .filter(|t| !t.is_done())
                .ok_or_else(|| TaskError::NotRunning {
                    task_id: task_id.to_owned(),
                })?;
        let name = if container.is_empty() {
            task.containers.first().cloned().unwrap_or_default()
        } else {
            container.to_owned()
        };
        if !task.containers.contains(&name) {
            return Err(TaskError::NoContainer {
                task_id: task_id.to_owned(),
                container: name,
                have: task.containers.clone(),
            });
        }
        Ok(supervisor::container_id(task_id, &name))
    }

    /// Whether the task is known here and has not finished.
    pub fn is_running(&self, task_id: &str) -> bool {
        self.lock().get(task_id).is_some_and(|t| !t.is_done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TaskTable {
        let table = TaskTable::default();
        let (stop, _) = watch::channel(None);
        table.insert(
            "t1".into(),
            LocalTask {
                stop,
                done: Arc::new(AtomicBool::new(false)),
                containers: vec!["app".into(), "sidecar".into()],
                deregistration_delay: Default::default(),
            },
        );
        table.insert("t2".into(), LocalTask::finished());
        table
    }

    #[test]
    fn container_ids_of_running_tasks_only() {
        let table = table();
        assert_eq!(table.container_id("t1", ""), Ok("t1-app".into()));
        assert_eq!(table.container_id("t1", "sidecar"), Ok("t1-sidecar".into()));
        assert_eq!(
            table.container_id("t1", "db").map_err(|e| e.to_string()),
            Err("task t1 has no container \"db\"; it has app, sidecar".into())
        );
        assert_eq!(
            table.container_id("t2", "").map_err(|e| e.to_string()),
            Err("task t2 is not running on this node".into())
        );
        assert!(table.is_running("t1") && !table.is_running("t2") && !table.is_running("t3"));
    }

    #[test]
    fn the_view_tells_active_from_finished() {
        let view = table().view();
        assert_eq!(
            view.tasks.into_iter().collect::<Vec<_>>(),
            [
                ("t1".to_owned(), Local::Active),
                ("t2".to_owned(), Local::Finished)
            ]
        );
    }

    #[test]
    fn fencing_outranks_a_server_stop_but_not_the_reverse() {
        let (stop, rx) = watch::channel(None);
        assert!(request_stop(&stop, StopReason::Server));
        assert!(request_stop(&stop, StopReason::Fenced));
        assert!(!request_stop(&stop, StopReason::Server));
        assert_eq!(*rx.borrow(), Some(StopReason::Fenced));
    }

    #[test]
    fn a_stop_takes_the_deregistration_delay_the_servers_name_now() {
        let table = table();
        let delay = table
            .lock()
            .get("t1")
            .map(|t| t.deregistration_delay.clone());
        let delay = delay.expect("t1");
        table.stop_after("t1", Some(7));
        assert_eq!(delay.load(std::sync::atomic::Ordering::SeqCst), 7);
        table.stop_after("t1", None);
        assert_eq!(delay.load(std::sync::atomic::Ordering::SeqCst), 7, "kept");
        table.stop_after("unknown", Some(1));
    }
}
