//! The executor of the [`engine`](crate::engine)'s plan: reads the server's desired set off the
//! wire, asks the engine what to do, and does it — spawns a [`TaskRun`] per started task (in a
//! span carrying its task ID), sends reports, asks tasks to stop, removes orphaned containers.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError};

use berth_model::{TaskStatus, TaskStatusUpdate};
use berth_proto::v1::{DesiredTasks, TaskAssignment};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::engine::{self, Action, DesiredEntry, Ended, Unreadable};
use crate::supervisor::{StopReason, TaskRun};
use crate::tasks::LocalTask;
use crate::Agent;

/// Reads one assignment off the wire; what cannot be read is kept for the engine to refuse.
fn read(wire: TaskAssignment) -> DesiredEntry {
    let task_id = wire.task_id.clone();
    let desired_status = berth_proto::desired_status("desiredStatus", wire.desired_status).ok();
    let last_status = berth_proto::task_status("lastStatus", wire.last_status).ok();
    berth_model::Assignment::try_from(wire).map_err(|e| Unreadable {
        task_id,
        desired_status,
        last_status,
        error: e.to_string(),
    })
}

impl Agent {
    /// Makes the tasks on this node match the server's desired set. `latest` is the session's
    /// last report of each task; forgotten tasks leave it.
    pub(crate) fn reconcile(
        &self,
        desired: DesiredTasks,
        latest: &mut HashMap<String, TaskStatusUpdate>,
    ) {
        let desired: Vec<DesiredEntry> = desired.tasks.into_iter().map(read).collect();
        let mut local = self.tasks.view();
        // The first desired set claims the containers found at start-up; the rest go.
        local.found = self
            .found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        for action in engine::plan(&desired, &local) {
            self.execute(action, latest);
        }
    }

    fn execute(&self, action: Action, latest: &mut HashMap<String, TaskStatusUpdate>) {
        match action {
            Action::Start { assignment, adopt } => {
                let task_id = assignment.task_id.clone();
                let (stop, stop_rx) = watch::channel(None);
                let done = Arc::new(AtomicBool::new(false));
                let containers = assignment
                    .containers
                    .iter()
                    .map(|c| c.name.clone())
                    .collect();
                let span = tracing::info_span!("task", task_id = %task_id);
                let run = TaskRun {
                    assignment,
                    runtime: self.runtime.clone(),
                    log_dir: self.log_root().join(&task_id),
                    updates: self.updates_tx.clone(),
                    stop: stop_rx,
                    done: done.clone(),
                    adopt,
                    metrics: self.config.metrics.clone(),
                };
                span.in_scope(|| tracing::info!("start task"));
                tokio::spawn(run.run().instrument(span));
                let local = LocalTask {
                    stop,
                    done,
                    containers,
                };
                self.tasks.insert(task_id, local);
            }
            Action::Stop { task_id } => {
                self.tasks.stop(&task_id, StopReason::Server);
            }
            Action::ReportEnded { task_id, ended } => self.ended_here(task_id, ended),
            Action::RemoveOrphans {
                task_id,
                containers,
            } => {
                let runtime = self.runtime.clone();
                tracing::warn!(%task_id, "removing containers of a task this node no longer runs");
                tokio::spawn(async move {
                    for c in containers {
                        if let Err(e) = runtime.remove(&c.id).await {
                            tracing::warn!(container = %c.id, "remove orphaned container: {e}");
                        }
                    }
                });
            }
            Action::Forget { task_id } => {
                latest.remove(&task_id);
                self.tasks.remove(&task_id);
            }
            Action::Ignore { task_id, error } => {
                tracing::warn!(%task_id, "ignore assignment: {error}");
            }
        }
    }

    /// Reports a task STOPPED without running anything for it, and remembers it as finished.
    fn ended_here(&self, task_id: String, ended: Ended) {
        if let Some(reason) = &ended.reason {
            tracing::warn!(%task_id, "task ended without running here: {reason}");
        }
        let _ = self.updates_tx.send(TaskStatusUpdate {
            task_id: task_id.clone(),
            last_status: TaskStatus::Stopped,
            containers: vec![],
            stop_code: ended.stop_code,
            stopped_reason: ended.reason,
            event: ended.event,
        });
        self.tasks.insert(task_id, LocalTask::finished());
    }
}
