//! Runs one task on this node from start to finish: pull, start every container, watch for
//! exits and stop requests, stop (SIGTERM, stopTimeout, SIGKILL), clean up, and report each
//! state change to the server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_model::{
    ContainerDefinition, ContainerState, HealthCheck, HealthStatus, StopCode, TaskStatus,
    TaskStatusUpdate,
};
use tokio::sync::{mpsc, watch};

use crate::runtime::{
    ContainerSpec, ExistingContainer, ExitFuture, ExitStatus, ImageInfo, Runtime, RuntimeError,
};
use crate::spec::{process_args, process_env, process_user};

const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// What the server asked this node to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: String,
    pub cpu: u32,
    pub memory: u32,
    pub containers: Vec<ContainerDefinition>,
}

/// One task's run on this node.
pub struct TaskRun {
    pub assignment: Assignment,
    pub runtime: Arc<dyn Runtime>,
    /// `<log root>/<task id>`; each container writes `<name>.log` there.
    pub log_dir: PathBuf,
    pub updates: mpsc::UnboundedSender<TaskStatusUpdate>,
    /// Becomes true when the server wants the task stopped.
    pub stop: watch::Receiver<bool>,
    /// Set once the task has stopped and everything is cleaned up.
    pub done: Arc<AtomicBool>,
    /// Containers of this task that a previous agent process started; empty for a new task.
    pub adopt: Vec<ExistingContainer>,
}

/// A container's index in the task, its new health, and what the last check said.
type HealthEvent = (usize, HealthStatus, String);

/// Runs a container's health check every `interval` and reports each change of its health:
/// HEALTHY after a success; UNHEALTHY after `retries` consecutive failures (failures during
/// `startPeriod` do not count). Ends when the supervisor stops listening.
async fn health_loop(
    runtime: Arc<dyn Runtime>,
    id: String,
    check: HealthCheck,
    index: usize,
    tx: mpsc::UnboundedSender<HealthEvent>,
) {
    let started = tokio::time::Instant::now();
    let start_period = Duration::from_secs(u64::from(check.start_period));
    let argv = check.argv();
    let mut failures = 0;
    let mut status = HealthStatus::Unknown;
    loop {
        tokio::time::sleep(Duration::from_secs(u64::from(check.interval))).await;
        if tx.is_closed() {
            return;
        }
        let timeout = Duration::from_secs(u64::from(check.timeout));
        let (ok, detail) = match runtime.exec(&id, &argv, timeout).await {
            Ok(out) if out.exit_code == 0 => (true, "check passed".to_owned()),
            Ok(out) => {
                let output = String::from_utf8_lossy(if out.stderr.is_empty() {
                    &out.stdout
                } else {
                    &out.stderr
                });
                let output = output.trim();
                let output: String = output.chars().take(200).collect();
                (
                    false,
                    format!(
                        "check exited with {}{}",
                        out.exit_code,
                        if output.is_empty() {
                            String::new()
                        } else {
                            format!(": {output}")
                        }
                    ),
                )
            }
            Err(e) => (false, format!("check failed: {e}")),
        };
        let next = if ok {
            failures = 0;
            HealthStatus::Healthy
        } else if started.elapsed() < start_period {
            continue;
        } else {
            failures += 1;
            if failures >= check.retries {
                HealthStatus::Unhealthy
            } else {
                status
            }
        };
        if next != status {
            status = next;
            if tx.send((index, status, detail)).is_err() {
                return;
            }
        }
    }
}

/// A container's index in the task and how it ended.
type Exit = (usize, Result<ExitStatus, RuntimeError>);

/// Forwards a container's exit to the task's supervisor.
fn watch_exit(i: usize, exit: ExitFuture, tx: &mpsc::UnboundedSender<Exit>) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let _ = tx.send((i, exit.await));
    });
}

/// The containerd container ID of one container of a task.
pub fn container_id(task_id: &str, container: &str) -> String {
    format!("{task_id}-{container}")
}

impl TaskRun {
    pub async fn run(mut self) {
        let a = self.assignment.clone();
        let mut states: Vec<ContainerState> = a
            .containers
            .iter()
            .map(|c| ContainerState::pending(&c.name, &c.image))
            .collect();

        let (exit_tx, mut exits) = mpsc::unbounded_channel::<Exit>();
        let started = if self.adopt.is_empty() {
            self.start(&mut states, &exit_tx, &mut exits).await
        } else {
            self.adopt(&mut states, &exit_tx, &mut exits).await
        };
        if !started {
            return;
        }
        drop(exit_tx);
        let (health_tx, mut health) = mpsc::unbounded_channel::<HealthEvent>();
        for (i, c) in a.containers.iter().enumerate() {
            if let (Some(check), TaskStatus::Running) = (&c.health_check, states[i].last_status) {
                let id = container_id(&a.task_id, &c.name);
                tokio::spawn(health_loop(
                    self.runtime.clone(),
                    id,
                    check.clone(),
                    i,
                    health_tx.clone(),
                ));
            }
        }
        drop(health_tx);

        let (code, reason) = loop {
            tokio::select! {
                Some((i, status, detail)) = health.recv() => {
                    states[i].health_status = status;
                    let name = &a.containers[i].name;
                    if status == HealthStatus::Unhealthy && a.containers[i].essential {
                        let reason = format!(
                            "Task failed container health checks: essential container {name} is UNHEALTHY ({detail})"
                        );
                        break (StopCode::EssentialContainerExited, reason);
                    }
                    self.report(TaskStatus::Running, &states, Some(format!("container {name} is {status} ({detail})")));
                }
                exit = exits.recv() => {
                    let Some((i, result)) = exit else {
                        break (StopCode::EssentialContainerExited, "every container exited".to_owned());
                    };
                    record_exit(&mut states[i], result);
                    if a.containers[i].essential {
                        let name = &a.containers[i].name;
                        let reason = if states[i].reason.as_deref() == Some("OutOfMemory") {
                            format!("OutOfMemoryError: container {name} was killed for using more than its memory limit")
                        } else {
                            format!("Essential container in task exited ({name})")
                        };
                        break (StopCode::EssentialContainerExited, reason);
                    }
                    if states.iter().all(|s| s.last_status == TaskStatus::Stopped) {
                        break (StopCode::EssentialContainerExited, "every container exited".to_owned());
                    }
                    self.report(TaskStatus::Running, &states, None);
                }
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        self.report(TaskStatus::Stopping, &states, Some("stopping".into()));
                        break (StopCode::UserInitiated, "Task stopped".to_owned());
                    }
                }
            }
        };
        // Health loops end when they can no longer report.
        drop(health);
        self.stop_containers(&mut states, &mut exits).await;
        self.cleanup(&mut states).await;
        self.finish(&mut states, code, reason, Some("stopped".into()));
    }

    /// Pulls the images and starts every container. Returns false when the task ended here
    /// (and was reported STOPPED).
    async fn start(
        &mut self,
        states: &mut [ContainerState],
        exit_tx: &mpsc::UnboundedSender<Exit>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> bool {
        let a = self.assignment.clone();
        let mut images = Vec::with_capacity(a.containers.len());
        for (i, c) in a.containers.iter().enumerate() {
            self.report(
                TaskStatus::Pending,
                states,
                Some(format!("pulling image {}", c.image)),
            );
            match self.runtime.ensure_image(&c.image).await {
                Ok(info) => {
                    let event = if info.pulled {
                        format!("pulled image {} ({})", c.image, info.digest)
                    } else {
                        format!("image {} already present ({})", c.image, info.digest)
                    };
                    states[i].image_digest = Some(info.digest.clone());
                    self.report(TaskStatus::Pending, states, Some(event));
                    images.push(info);
                }
                Err(e) => {
                    tracing::warn!(task_id = %a.task_id, image = %c.image, "pull image: {e}");
                    let reason = format!("CannotPullContainerError: {e}");
                    self.finish(states, StopCode::TaskFailedToStart, reason, None);
                    return false;
                }
            }
        }
        if *self.stop.borrow() {
            self.finish(
                states,
                StopCode::UserInitiated,
                "stopped before it started".into(),
                None,
            );
            return false;
        }
        self.report(TaskStatus::Activating, states, None);
        for (i, (c, image)) in a.containers.iter().zip(&images).enumerate() {
            let spec = self.container_spec(c, image);
            match self.runtime.start(&spec).await {
                Ok(exit) => {
                    watch_exit(i, exit, exit_tx);
                    states[i].last_status = TaskStatus::Running;
                }
                Err(e) => {
                    tracing::warn!(task_id = %a.task_id, container = %c.name, "start container: {e}");
                    states[i].last_status = TaskStatus::Stopped;
                    states[i].reason = Some(e.to_string());
                    self.stop_containers(states, exits).await;
                    let reason = format!("CannotStartContainerError: {e}");
                    self.cleanup(states).await;
                    self.finish(states, StopCode::TaskFailedToStart, reason, None);
                    return false;
                }
            }
        }
        self.report(TaskStatus::Running, states, Some("started".into()));
        true
    }

    /// Takes over the containers a previous agent process started (after an agent restart).
    /// Returns false when the task ended here: an essential container exited or vanished while
    /// no agent was watching.
    async fn adopt(
        &mut self,
        states: &mut [ContainerState],
        exit_tx: &mpsc::UnboundedSender<Exit>,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) -> bool {
        let a = self.assignment.clone();
        let mut ended: Option<String> = None;
        for (i, c) in a.containers.iter().enumerate() {
            let existing = self
                .adopt
                .iter()
                .find(|e| e.container_name == c.name)
                .cloned();
            let outcome = match existing {
                Some(e) if e.running => match self.runtime.adopt(&e.id).await {
                    Ok(exit) => {
                        watch_exit(i, exit, exit_tx);
                        states[i].last_status = TaskStatus::Running;
                        None
                    }
                    Err(err) => Some(format!("could not be watched again ({err})")),
                },
                Some(e) => {
                    states[i].exit_code = e.exit_code;
                    Some("exited while the agent was down".to_owned())
                }
                None => Some("vanished while the agent was down".to_owned()),
            };
            if let Some(what) = outcome {
                states[i].last_status = TaskStatus::Stopped;
                states[i].reason = Some(what.clone());
                if c.essential && ended.is_none() {
                    ended = Some(format!("Essential container in task {what} ({})", c.name));
                }
            }
        }
        if let Some(reason) = ended {
            self.stop_containers(states, exits).await;
            self.cleanup(states).await;
            self.finish(states, StopCode::EssentialContainerExited, reason, None);
            return false;
        }
        self.report(
            TaskStatus::Running,
            states,
            Some("re-adopted after an agent restart".into()),
        );
        true
    }

    fn container_spec(&self, c: &ContainerDefinition, image: &ImageInfo) -> ContainerSpec {
        let (uid, gid) = process_user(image);
        ContainerSpec {
            id: container_id(&self.assignment.task_id, &c.name),
            task_id: self.assignment.task_id.clone(),
            container_name: c.name.clone(),
            image: image.clone(),
            args: process_args(image, c),
            env: process_env(image, c),
            cwd: c
                .working_directory
                .clone()
                .or_else(|| image.working_dir.clone())
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            cpu_units: c.cpu.unwrap_or(self.assignment.cpu),
            memory_mib: c.memory.unwrap_or(self.assignment.memory),
            log_path: self.log_dir.join(format!("{}.log", c.name)),
        }
    }

    /// SIGTERM every running container, SIGKILL what is left after the longest stopTimeout.
    async fn stop_containers(
        &self,
        states: &mut [ContainerState],
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) {
        let running = |states: &[ContainerState]| {
            states
                .iter()
                .filter(|s| s.last_status == TaskStatus::Running)
                .count()
        };
        if running(states) == 0 {
            return;
        }
        let mut grace = Duration::ZERO;
        for (i, c) in self.assignment.containers.iter().enumerate() {
            if states[i].last_status == TaskStatus::Running {
                grace = grace.max(Duration::from_secs(u64::from(c.stop_timeout)));
                let id = container_id(&self.assignment.task_id, &c.name);
                if let Err(e) = self.runtime.kill(&id, SIGTERM, false).await {
                    tracing::warn!(container = %id, "send SIGTERM: {e}");
                }
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while running(states) > 0 {
            match tokio::time::timeout_at(deadline, exits.recv()).await {
                Ok(Some((i, result))) => record_exit(&mut states[i], result),
                Ok(None) => break,
                Err(_) => {
                    for (i, c) in self.assignment.containers.iter().enumerate() {
                        if states[i].last_status == TaskStatus::Running {
                            let id = container_id(&self.assignment.task_id, &c.name);
                            if let Err(e) = self.runtime.kill(&id, SIGKILL, true).await {
                                tracing::warn!(container = %id, "send SIGKILL: {e}");
                            }
                        }
                    }
                    while running(states) > 0 {
                        match exits.recv().await {
                            Some((i, result)) => record_exit(&mut states[i], result),
                            None => break,
                        }
                    }
                }
            }
        }
    }

    async fn cleanup(&self, states: &mut [ContainerState]) {
        for c in &self.assignment.containers {
            let id = container_id(&self.assignment.task_id, &c.name);
            if let Err(e) = self.runtime.remove(&id).await {
                tracing::warn!(container = %id, "remove container: {e}");
            }
        }
        for s in states {
            s.last_status = TaskStatus::Stopped;
        }
    }

    fn finish(
        &self,
        states: &mut [ContainerState],
        code: StopCode,
        reason: String,
        event: Option<String>,
    ) {
        for s in states.iter_mut() {
            s.last_status = TaskStatus::Stopped;
        }
        self.done.store(true, Ordering::SeqCst);
        let _ = self.updates.send(TaskStatusUpdate {
            task_id: self.assignment.task_id.clone(),
            last_status: TaskStatus::Stopped,
            containers: states.to_vec(),
            stop_code: Some(code),
            stopped_reason: Some(reason),
            event,
        });
    }

    fn report(&self, status: TaskStatus, states: &[ContainerState], event: Option<String>) {
        let _ = self.updates.send(TaskStatusUpdate {
            task_id: self.assignment.task_id.clone(),
            last_status: status,
            containers: states.to_vec(),
            stop_code: None,
            stopped_reason: None,
            event,
        });
    }
}

fn record_exit(state: &mut ContainerState, result: Result<ExitStatus, RuntimeError>) {
    state.last_status = TaskStatus::Stopped;
    match result {
        Ok(status) => {
            state.exit_code = Some(status.code);
            if status.oom_killed {
                state.reason = Some("OutOfMemory".into());
            }
        }
        Err(e) => state.reason = Some(format!("lost track of the container: {e}")),
    }
}
