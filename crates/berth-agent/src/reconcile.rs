//! The executor of the [`engine`](crate::engine)'s plan: reads the server's desired set off the
//! wire, asks the engine what to do, and does it — spawns a [`TaskRun`] per started task (in a
//! span carrying its task ID), sends reports, asks tasks to stop, removes orphaned containers.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use berth_model::{TaskStatus, TaskStatusUpdate};
use berth_proto::v1::{DesiredTasks, TaskAssignment};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::engine::{self, Action, DesiredEntry, Ended, Unreadable};
use crate::supervisor::TaskRun;
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
    /// Hands the endpoints the servers sent to the node's service discovery.
    pub(crate) fn endpoints(&self, endpoints: berth_proto::v1::Endpoints) {
        let Some(discovery) = &self.discovery else {
            return;
        };
        match endpoints
            .services
            .into_iter()
            .map(berth_model::ServiceEndpoints::try_from)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(services) => discovery.update(services),
            Err(e) => tracing::warn!("ignore endpoints the servers sent: {e}"),
        }
    }

    /// Makes the tasks on this node match the server's desired set. `latest` is the session's
    /// last report of each task; forgotten tasks leave it.
    pub(crate) fn reconcile(
        &self,
        desired: DesiredTasks,
        latest: &mut HashMap<String, TaskStatusUpdate>,
    ) {
        let held: std::collections::BTreeSet<String> = desired.held.into_iter().collect();
        let desired: Vec<DesiredEntry> = desired.tasks.into_iter().map(read).collect();
        let mut local = self.tasks.view();
        // The first desired set claims the containers found at start-up; the rest go.
        let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        local.found = found.take().unwrap_or_default();
        // Tasks the server holds back are left as they are: the plan does not see them, and
        // their found containers wait for the set that names them.
        if !held.is_empty() {
            local.tasks.retain(|id, _| !held.contains(id));
            let (kept, rest) = std::mem::take(&mut local.found)
                .into_iter()
                .partition(|(id, _)| held.contains(id));
            local.found = rest;
            if !kept.is_empty() {
                *found = Some(kept);
            }
        }
        drop(found);
        for action in engine::plan(&desired, &local) {
            self.execute(action, latest);
        }
    }

    fn execute(&self, action: Action, latest: &mut HashMap<String, TaskStatusUpdate>) {
        match action {
            Action::Start { assignment, adopt } => {
                let task_id = assignment.task_id.clone();
                let namespace = assignment.namespace.clone();
                let (stop, stop_rx) = watch::channel(None);
                let done = Arc::new(AtomicBool::new(false));
                let containers = assignment
                    .containers
                    .iter()
                    .map(|c| c.name.clone())
                    .collect();
                let span = tracing::info_span!("task", task_id = %task_id);
                let deregistration_delay = Arc::new(std::sync::atomic::AtomicU32::new(
                    assignment.deregistration_delay,
                ));
                let run = TaskRun {
                    deregistration_delay: deregistration_delay.clone(),
                    assignment,
                    runtime: self.runtime.clone(),
                    log_dir: self.log_root().join(&task_id),
                    updates: self.updates_tx.clone(),
                    stop: stop_rx,
                    done: done.clone(),
                    adopt,
                    metrics: self.config.metrics.clone(),
                    bind_ip: self.config.advertise.host(),
                    ip_address: None,
                    secrets_dir: self.secrets_dir(),
                    resolv_conf: self.discovery.as_ref().and_then(|d| {
                        d.resolv_conf(&namespace)
                            .inspect_err(|e| tracing::warn!("write the task's resolv.conf: {e}"))
                            .ok()
                    }),
                };
                // Known as running before it can write a log line: a log sweep never takes
                // the directory of a task starting.
                let local = LocalTask {
                    stop,
                    done,
                    containers,
                    deregistration_delay,
                };
                self.tasks.insert(task_id, local);
                span.in_scope(|| tracing::info!("start task"));
                tokio::spawn(run.run().instrument(span));
            }
            Action::Stop {
                task_id,
                deregistration_delay,
            } => {
                self.tasks.stop_after(&task_id, deregistration_delay);
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
                            tracing::warn!(container = %c.id, "remove orphaned container: {}", berth_model::error_chain(&e));
                        }
                    }
                    if let Err(e) = runtime.remove_network(&task_id).await {
                        tracing::warn!(%task_id, "remove an orphaned task's network: {}", berth_model::error_chain(&e));
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

    /// Removes, off the async workers, the logs of `tasks`, which the servers removed
    /// (retention), unless one still runs here.
    pub(crate) fn remove_logs_of(&self, tasks: Vec<String>) {
        let root = self.log_root();
        let local = self.tasks.clone();
        tokio::task::spawn_blocking(move || {
            let gone = tasks
                .iter()
                .map(String::as_str)
                .filter(|id| !local.is_running(id));
            log_sweep(&root, crate::logfile::remove_named_task_logs(&root, gone));
        });
    }

    /// Removes, off the async workers, the logs of every task that is neither in `kept` (the
    /// tasks of this node the servers hold) nor running here: tasks removed while this agent
    /// was away. Directories changed in the last [`SWEEP_SPARES`] stay: a server that has just
    /// become leader may answer from a state a few entries behind.
    pub(crate) fn keep_logs_of(&self, kept: std::collections::BTreeSet<String>) {
        let root = self.log_root();
        let local = self.tasks.clone();
        tokio::task::spawn_blocking(move || {
            let before = std::time::SystemTime::now() - SWEEP_SPARES;
            let removed = crate::logfile::remove_task_logs(&root, before, |id| {
                !kept.contains(id) && !local.is_running(id)
            });
            log_sweep(&root, removed);
        });
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
            ip_address: None,
        });
        self.tasks.insert(task_id, LocalTask::finished());
    }
}

/// How recently changed a task's log directory may be and still be spared by a sweep of
/// tasks the servers no longer hold.
const SWEEP_SPARES: Duration = Duration::from_secs(600);

fn log_sweep(root: &std::path::Path, removed: std::io::Result<usize>) {
    match removed {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed the logs of tasks the servers removed"),
        Err(e) => tracing::warn!("remove logs under {}: {e}", root.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use berth_model::{Assignment, ContainerDefinition, DesiredStatus, StopCode};
    use tokio::sync::mpsc;

    use super::*;
    use crate::{fencing, AgentConfig, ExistingContainer, FakeRuntime, Metrics, TaskTable};

    fn agent(
        rt: &Arc<FakeRuntime>,
        found: Vec<ExistingContainer>,
    ) -> (Agent, mpsc::UnboundedReceiver<TaskStatusUpdate>) {
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let mut by_task: BTreeMap<String, Vec<ExistingContainer>> = BTreeMap::new();
        for c in found {
            by_task.entry(c.task_id.clone()).or_default().push(c);
        }
        let config = AgentConfig {
            node_name: "node-1".into(),
            data_dir: std::env::temp_dir(),
            servers: vec!["127.0.0.1:1".into()],
            listen: "127.0.0.1:0".parse().expect("an address"),
            advertise: crate::Advertise::new("127.0.0.1:0".parse().expect("an address"), None)
                .expect("an address to advertise"),
            join_token: None,
            join_timeout: Duration::from_secs(1),
            join_gate: None,
            metrics_public: false,
            cpu: 1024,
            memory: 1024,
            attributes: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(1),
            metrics_interval: Duration::from_secs(1),
            metrics: Metrics::new(),
            discovery: None,
        };
        let agent = Agent {
            config,
            runtime: rt.clone(),
            tasks: TaskTable::default(),
            updates_tx,
            found: Mutex::new(Some(by_task)),
            contact: fencing::Contact::new(),
            tls: crate::tls::NodeTls::for_tests("node-1"),
            discovery: None,
        };
        (agent, updates)
    }

    fn wire(task_id: &str, desired: DesiredStatus, last: TaskStatus) -> TaskAssignment {
        let mut app = ContainerDefinition::new("app", "sleeper");
        app.stop_timeout = 0;
        Assignment {
            task_id: task_id.into(),
            namespace: "default".into(),
            task_definition: "web:1".parse().expect("a valid reference"),
            desired_status: desired,
            cpu: 256,
            memory: 64,
            containers: vec![app],
            last_status: last,
            deregistration_delay: 0,
            ephemeral_storage: Default::default(),
            secrets: Default::default(),
        }
        .into()
    }

    fn desired(tasks: Vec<TaskAssignment>) -> DesiredTasks {
        DesiredTasks {
            tasks,
            held: Vec::new(),
        }
    }

    /// Waits for `task_id`'s report of `status`, recording every report in `latest`.
    async fn until(
        updates: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>,
        latest: &mut HashMap<String, TaskStatusUpdate>,
        task_id: &str,
        status: TaskStatus,
    ) -> TaskStatusUpdate {
        loop {
            let u = tokio::time::timeout(Duration::from_secs(10), updates.recv())
                .await
                .expect("a report within 10 s")
                .expect("the agent keeps its sender");
            latest.insert(u.task_id.clone(), u.clone());
            if u.task_id == task_id && u.last_status == status {
                return u;
            }
        }
    }

    #[tokio::test]
    async fn starts_stops_and_forgets_tasks_and_removes_orphans() {
        let rt = Arc::new(FakeRuntime::new());
        let orphan = ExistingContainer {
            id: "t9-app".into(),
            task_id: "t9".into(),
            container_name: "app".into(),
            running: true,
            exit_code: None,
        };
        let (agent, mut updates) = agent(&rt, vec![orphan]);
        let mut latest = HashMap::new();

        let set = desired(vec![
            wire("t1", DesiredStatus::Running, TaskStatus::Pending),
            wire("t2", DesiredStatus::Running, TaskStatus::Running),
        ]);
        agent.reconcile(set, &mut latest);
        let lost = until(&mut updates, &mut latest, "t2", TaskStatus::Stopped).await;
        assert_eq!(lost.stop_code, Some(StopCode::NodeLost));
        until(&mut updates, &mut latest, "t1", TaskStatus::Running).await;
        assert!(agent.tasks.is_running("t1"));

        // Neither is wanted any more: t1 is stopped, t2 (finished) forgotten.
        agent.reconcile(desired(vec![]), &mut latest);
        let stopped = until(&mut updates, &mut latest, "t1", TaskStatus::Stopped).await;
        assert_eq!(stopped.stop_code, Some(StopCode::UserInitiated));
        assert!(!latest.contains_key("t2"));
        while agent.tasks.is_running("t1") {
            tokio::task::yield_now().await;
        }
        agent.reconcile(desired(vec![]), &mut latest);
        assert!(latest.is_empty());
        assert!(agent.tasks.view().tasks.is_empty());

        let calls = rt.calls();
        for call in [
            "remove t9-app",
            "start t1-app",
            "kill t1-app 15",
            "remove t1-app",
        ] {
            assert!(calls.contains(&call.to_owned()), "no {call:?} in {calls:?}");
        }
        assert!(!calls.iter().any(|c| c.contains("t2")), "{calls:?}");
    }

    /// A task the server holds back (fetching a key of its secrets) while a set is sent whole
    /// is neither stopped nor stripped of the containers found at start-up.
    #[tokio::test]
    async fn a_held_task_is_left_as_it_is_until_a_set_names_it() {
        let rt = Arc::new(FakeRuntime::new());
        // t5's container exited while the agent was down: what adopting it finds.
        let found = ExistingContainer {
            id: "t5-app".into(),
            task_id: "t5".into(),
            container_name: "app".into(),
            running: false,
            exit_code: Some(3),
        };
        let (agent, mut updates) = agent(&rt, vec![found]);
        let mut latest = HashMap::new();
        let held = |tasks, held: &[&str]| DesiredTasks {
            tasks,
            held: held.iter().map(|id| (*id).to_owned()).collect(),
        };
        let t3 = || wire("t3", DesiredStatus::Running, TaskStatus::Pending);
        agent.reconcile(held(vec![t3()], &["t5"]), &mut latest);
        until(&mut updates, &mut latest, "t3", TaskStatus::Running).await;
        // A new stream's whole set holds both back.
        agent.reconcile(held(vec![], &["t3", "t5"]), &mut latest);
        assert!(agent.tasks.is_running("t3"), "a held task keeps running");
        let calls = rt.calls();
        for call in ["remove t5-app", "kill t3-app 15", "remove t3-app"] {
            assert!(!calls.contains(&call.to_owned()), "{call:?} in {calls:?}");
        }
        // Sent at last: t5 takes its found container back (not lost with none found).
        let t5 = wire("t5", DesiredStatus::Running, TaskStatus::Activating);
        agent.reconcile(desired(vec![t3(), t5]), &mut latest);
        let ended = until(&mut updates, &mut latest, "t5", TaskStatus::Stopped).await;
        assert_eq!(
            ended.containers[0].reason.as_deref(),
            Some("exited while the agent was down")
        );
        assert_eq!(ended.containers[0].exit_code, Some(3));
        assert!(agent.tasks.is_running("t3"));
    }

    #[tokio::test]
    async fn an_unreadable_assignment_is_reported_failed_to_start() {
        let rt = Arc::new(FakeRuntime::new());
        let (agent, mut updates) = agent(&rt, vec![]);
        let mut latest = HashMap::new();
        let mut bad = wire("t1", DesiredStatus::Running, TaskStatus::Pending);
        bad.containers[0]
            .depends_on
            .push(berth_proto::v1::ContainerDependency {
                container_name: "db".into(),
                condition: 42,
            });
        agent.reconcile(desired(vec![bad]), &mut latest);
        let ended = until(&mut updates, &mut latest, "t1", TaskStatus::Stopped).await;
        assert_eq!(ended.stop_code, Some(StopCode::TaskFailedToStart));
        let reason = ended.stopped_reason.unwrap_or_default();
        assert!(
            reason.starts_with("this node's agent cannot run the task's definition: "),
            "{reason}"
        );
        assert!(rt.calls().is_empty(), "{:?}", rt.calls());
    }
}
