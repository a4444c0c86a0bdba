//! Runs one task on this node from start to finish: pull, start every container, watch for
//! exits and stop requests, stop (SIGTERM, stopTimeout, SIGKILL), clean up, and report each
//! state change to the server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_model::{
    Assignment, ContainerDefinition, ContainerState, DependencyCondition, HealthCheck,
    HealthStatus, NetworkBinding, PortMapping, StopCode, TaskStatus, TaskStatusUpdate,
};
use tokio::sync::{mpsc, watch};

use crate::ephemeral::{next_storage_check, storage_exceeded};
use crate::metrics::Metrics;

use crate::runtime::{
    ContainerSpec, Created, ExistingContainer, ExitFuture, ExitStatus, ImageInfo, Runtime,
    RuntimeError, SecretMount, TaskNetwork,
};
use crate::spec::{process_args, process_env, process_user};
use crate::user::{self, ResolvedUser};

const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// Why a task is asked to stop: the stop request carries it, and the task's stop code and
/// reason come from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopReason {
    /// The server wants the task stopped, or no longer on this node.
    Server,
    /// The agent lost contact with every server and stops its tasks before the servers place
    /// them elsewhere (self-fencing). Outranks [`StopReason::Server`]: a task asked to stop by
    /// the server and then fenced stops with the short grace of fencing.
    Fenced,
}

impl StopReason {
    fn outcome(self) -> (StopCode, &'static str) {
        match self {
            StopReason::Server => (StopCode::UserInitiated, "Task stopped"),
            StopReason::Fenced => (
                StopCode::NodeLost,
                "the node lost contact with every server, so its agent stopped the task (self-fencing)",
            ),
        }
    }
}

/// Asks the task behind `stop` to stop for `why`, unless it was already asked for a reason
/// that outranks `why`. Returns whether the request changed.
pub fn request_stop(stop: &watch::Sender<Option<StopReason>>, why: StopReason) -> bool {
    stop.send_if_modified(|current| {
        if *current >= Some(why) {
            return false;
        }
        *current = Some(why);
        true
    })
}

/// One task's run on this node.
pub struct TaskRun {
    pub assignment: Assignment,
    pub runtime: Arc<dyn Runtime>,
    /// `<log root>/<task id>`; each container writes `<name>.log` there.
    pub log_dir: PathBuf,
    pub updates: mpsc::UnboundedSender<TaskStatusUpdate>,
    /// Becomes `Some(why)` when the task should stop (see [`request_stop`]).
    pub stop: watch::Receiver<Option<StopReason>>,
    /// Set once the task has stopped and everything is cleaned up.
    pub done: Arc<AtomicBool>,
    /// Containers of this task that a previous agent process started; empty for a new task.
    pub adopt: Vec<ExistingContainer>,
    pub metrics: Metrics,
    /// The node's advertised address: where its published ports are reached.
    pub bind_ip: String,
    /// The task's address on the node's task network, once attached.
    pub ip_address: Option<std::net::Ipv4Addr>,
    /// The resolv.conf its containers get (the node's service discovery), if any.
    pub resolv_conf: Option<PathBuf>,
    /// Seconds out of routing before SIGTERM on a requested stop: the assignment's, updated
    /// by later desired sets.
    pub deregistration_delay: Arc<std::sync::atomic::AtomicU32>,
    /// Where secret files are written (`DATA_DIR/secrets`, see [`crate::secret_files`]).
    pub secrets_dir: PathBuf,
}

/// What starting a task's containers in dependency order needs.
struct Starter {
    /// Containers not started yet, by index.
    pending: Vec<usize>,
    images: Vec<ImageInfo>,
    /// Who each container runs as.
    users: Vec<ResolvedUser>,
    /// Each container's secret directories.
    secret_mounts: Vec<Vec<SecretMount>>,
    /// The network namespace the containers share.
    netns: Option<String>,
    /// Containers created while the network was attached, not started yet, by index.
    created: std::collections::HashMap<usize, Result<Created, RuntimeError>>,
    exit_tx: mpsc::UnboundedSender<Exit>,
    health_tx: mpsc::UnboundedSender<HealthEvent>,
}

impl Starter {
    /// Watches the running container `i` (containerd ID `id`): forwards its exit and, when it
    /// has a health check, runs the check and forwards each change of its health.
    fn watch(
        &self,
        runtime: &Arc<dyn Runtime>,
        i: usize,
        id: &str,
        exit: ExitFuture,
        check: Option<&HealthCheck>,
    ) {
        watch_exit(i, exit, &self.exit_tx);
        if let Some(check) = check {
            let health = health_loop(
                runtime.clone(),
                id.to_owned(),
                check.clone(),
                i,
                self.health_tx.clone(),
            );
            tokio::spawn(health);
        }
    }
}

/// The order to stop containers in: dependents before what they depend on (the reverse of a
/// start order that honours `dependsOn`; definition order among independent containers).
fn stop_order(defs: &[ContainerDefinition]) -> Vec<usize> {
    let mut started: Vec<usize> = Vec::with_capacity(defs.len());
    while started.len() < defs.len() {
        let next = (0..defs.len()).find(|i| {
            !started.contains(i)
                && defs[*i].depends_on.iter().all(|d| {
                    defs.iter()
                        .position(|c| c.name == d.container_name)
                        .is_none_or(|j| started.contains(&j))
                })
        });
        // Validated definitions have no cycles; stop whatever is left in order otherwise.
        match next {
            Some(i) => started.push(i),
            None => started.extend(
                (0..defs.len())
                    .filter(|i| !started.contains(i))
                    .collect::<Vec<_>>(),
            ),
        }
    }
    started.reverse();
    started
}

/// Whether container `i`'s `dependsOn` conditions hold now; an error when one never can.
fn dependencies_met(
    defs: &[ContainerDefinition],
    i: usize,
    states: &[ContainerState],
    pending: &[usize],
) -> Result<bool, String> {
    let name = &defs[i].name;
    for d in &defs[i].depends_on {
        let Some(j) = defs.iter().position(|c| c.name == d.container_name) else {
            return Err(format!(
                "container {name} depends on unknown container {}",
                d.container_name
            ));
        };
        let started = !pending.contains(&j);
        let exited = started && states[j].last_status == TaskStatus::Stopped;
        let met = match d.condition {
            DependencyCondition::Start => started,
            DependencyCondition::Complete => exited,
            DependencyCondition::Success => match (exited, states[j].exit_code) {
                (true, Some(0)) => true,
                (true, code) => {
                    return Err(format!(
                        "container {name} needs {} to succeed, but it exited with {}",
                        d.container_name,
                        code.map_or("no exit code".to_owned(), |c| c.to_string())
                    ))
                }
                (false, _) => false,
            },
            DependencyCondition::Healthy => match states[j].health_status {
                HealthStatus::Healthy => true,
                _ if exited || states[j].health_status == HealthStatus::Unhealthy => {
                    return Err(format!(
                        "container {name} needs {} to be HEALTHY, but it is {}",
                        d.container_name,
                        if exited {
                            "stopped".to_owned()
                        } else {
                            states[j].health_status.to_string()
                        }
                    ))
                }
                _ => false,
            },
        };
        if !met {
            return Ok(false);
        }
    }
    Ok(true)
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

/// How long a container may take to exit after SIGTERM when its agent fences itself.
pub const FENCED_STOP_GRACE: Duration = Duration::from_millis(500);

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
        let (health_tx, mut health) = mpsc::unbounded_channel::<HealthEvent>();
        let mut starter = Starter {
            pending: Vec::new(),
            images: Vec::new(),
            users: Vec::new(),
            secret_mounts: Vec::new(),
            netns: None,
            created: std::collections::HashMap::new(),
            exit_tx,
            health_tx,
        };

        if self.adopt.is_empty() {
            if !self.set_up(&mut starter, &mut states).await {
                return;
            }
            self.report(TaskStatus::Activating, &states, None);
        } else if !self.adopt(&mut states, &starter).await {
            self.end_unadopted(&mut states, &mut exits).await;
            return;
        }

        let mut running_reported = !self.adopt.is_empty();
        let storage_check = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(storage_check);
        let (code, reason) = loop {
            if !starter.pending.is_empty() {
                if let Err(reason) = self.start_ready(&mut starter, &mut states).await {
                    break (StopCode::TaskFailedToStart, reason);
                }
            }
            if starter.pending.is_empty() && !running_reported {
                self.report(TaskStatus::Running, &states, Some("started".into()));
                running_reported = true;
            }
            tokio::select! {
                Some((i, status, detail)) = health.recv() => {
                    states[i].health_status = status;
                    let name = &a.containers[i].name;
                    if status == HealthStatus::Unhealthy && a.containers[i].essential {
                        let reason = format!(
                            "Task failed container health checks: essential container {name} is UNHEALTHY ({detail})"
                        );
                        if running_reported {
                            // Reported first, so routing drops it before its SIGTERM.
                            self.report(TaskStatus::Running, &states, Some(format!("container {name} is UNHEALTHY ({detail})")));
                            self.deregister(&states).await;
                        }
                        break (StopCode::EssentialContainerExited, reason);
                    }
                    let status_now = if running_reported { TaskStatus::Running } else { TaskStatus::Activating };
                    self.report(status_now, &states, Some(format!("container {name} is {status} ({detail})")));
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
                    if starter.pending.is_empty() && states.iter().all(|s| s.last_status == TaskStatus::Stopped) {
                        break (StopCode::EssentialContainerExited, "every container exited".to_owned());
                    }
                    let status_now = if running_reported { TaskStatus::Running } else { TaskStatus::Activating };
                    self.report(status_now, &states, None);
                }
                () = &mut storage_check => {
                    let (used, exceeded) = self.storage_used(&states).await;
                    let next = next_storage_check(used, self.assignment.ephemeral_storage);
                    storage_check.as_mut().reset(tokio::time::Instant::now() + next);
                    if let Some(reason) = exceeded {
                        tracing::warn!("{reason}");
                        if running_reported {
                            self.report(TaskStatus::Running, &states, Some(reason.clone()));
                            self.deregister(&states).await;
                        }
                        break (StopCode::EssentialContainerExited, reason);
                    }
                }
                changed = self.stop.changed() => {
                    let why = *self.stop.borrow_and_update();
                    if changed.is_err() || why.is_some() {
                        if why == Some(StopReason::Server) && running_reported {
                            self.deregister(&states).await;
                        }
                        let why = (*self.stop.borrow()).or(why);
                        self.report(TaskStatus::Stopping, &states, Some("stopping".into()));
                        let (code, reason) = why.unwrap_or(StopReason::Server).outcome();
                        break (code, reason.to_owned());
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

    /// A new task's set-up before its first start: its secrets, images, users and secret
    /// files, its network, and its first containers created while the network is attached.
    /// `false` when the task ended here (reported).
    async fn set_up(&mut self, starter: &mut Starter, states: &mut [ContainerState]) -> bool {
        let a = self.assignment.clone();
        if let Some(error) = &a.secrets.error {
            // The task's secrets could not be opened: nothing is pulled or created.
            let reason = error.clone();
            self.finish(states, StopCode::TaskFailedToStart, reason, None);
            return false;
        }
        let Some(images) = self.pull(states).await else {
            return false;
        };
        if self.stop.borrow().is_some() {
            let reason = "stopped before it started".to_owned();
            self.finish(states, StopCode::UserInitiated, reason, None);
            return false;
        }
        match self.prepare(&images).await {
            Ok((users, mounts)) => {
                starter.users = users;
                starter.secret_mounts = mounts;
            }
            Err(reason) => {
                self.finish(states, StopCode::TaskFailedToStart, reason, None);
                return false;
            }
        }
        starter.images = images;
        starter.pending = (0..a.containers.len()).collect();
        // A task's containers share one network namespace, with its own address on the
        // node's task network (ECS awsvpc semantics).
        let mappings: Vec<PortMapping> = a
            .containers
            .iter()
            .flat_map(|c| c.port_mappings.iter().copied())
            .collect();
        let network = match self.runtime.create_network(&a.task_id, &mappings).await {
            Ok(network) => network,
            Err(e) => {
                tracing::warn!(
                    "create the task's network: {}",
                    berth_model::error_chain(&e)
                );
                let reason = format!("CannotCreateNetworkError: {e}");
                self.finish(states, StopCode::TaskFailedToStart, reason, None);
                return false;
            }
        };
        starter.netns = Some(network.netns.clone());
        // The namespace is attached to the node's network (the CNI plugins take tens of
        // milliseconds) while the containers that wait for no other are created in it;
        // none starts before it is attached.
        let first: Vec<usize> = (0..a.containers.len())
            .filter(|i| a.containers[*i].depends_on.is_empty())
            .collect();
        let specs: Vec<ContainerSpec> = first.iter().map(|i| self.spec_for(starter, *i)).collect();
        let creates = futures::future::join_all(specs.iter().map(|s| self.runtime.create(s)));
        let (attached, created) =
            tokio::join!(self.runtime.attach_network(&a.task_id, &network), creates);
        starter.created = first.into_iter().zip(created).collect();
        match attached {
            Ok(address) => self.attached(&TaskNetwork { address, ..network }, states),
            Err(e) => {
                tracing::warn!(
                    "attach the task's network: {}",
                    berth_model::error_chain(&e)
                );
                let reason = format!("CannotCreateNetworkError: {e}");
                // The containers created meanwhile go, and what is left of the network.
                self.cleanup(states).await;
                self.finish(states, StopCode::TaskFailedToStart, reason, None);
                return false;
            }
        }
        true
    }

    /// Before a requested stop of a task that publishes ports: the task is already out of
    /// routing (ingresses and endpoints follow its desired status), and keeps serving what is
    /// in flight for its deregistration delay before it gets SIGTERM. Self-fencing cuts it
    /// short.
    async fn deregister(&mut self, states: &[ContainerState]) {
        let secs = self.deregistration_delay.load(Ordering::SeqCst);
        if secs == 0 {
            return;
        }
        self.report(
            TaskStatus::Deactivating,
            states,
            Some(format!(
                "deregistered from routing; SIGTERM in {secs}s (deregistrationDelay)"
            )),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(secs));
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() == Some(StopReason::Fenced) {
                        return;
                    }
                }
            }
        }
    }

    /// Ends a task whose essential container exited or vanished while no agent watched it.
    async fn end_unadopted(
        &self,
        states: &mut [ContainerState],
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) {
        self.stop_containers(states, exits).await;
        self.cleanup(states).await;
        let reason = states
            .iter()
            .zip(&self.assignment.containers)
            .find(|(s, c)| c.essential && s.last_status == TaskStatus::Stopped)
            .map(|(s, c)| {
                format!(
                    "Essential container in task {} ({})",
                    s.reason.as_deref().unwrap_or("stopped"),
                    c.name
                )
            })
            .unwrap_or_else(|| "every container exited".into());
        self.finish(states, StopCode::EssentialContainerExited, reason, None);
    }

    /// Makes sure every container's image is present. `None` when the task ended here.
    async fn pull(&mut self, states: &mut [ContainerState]) -> Option<Vec<ImageInfo>> {
        let a = self.assignment.clone();
        let mut images = Vec::with_capacity(a.containers.len());
        for (i, c) in a.containers.iter().enumerate() {
            let event = format!("pulling image {}", c.image);
            self.report(TaskStatus::Pending, states, Some(event));
            let updates = self.updates.clone();
            let task_id = a.task_id.clone();
            let progress = move |event: String| {
                let _ = updates.send(TaskStatusUpdate {
                    task_id: task_id.clone(),
                    last_status: TaskStatus::Pending,
                    containers: vec![],
                    stop_code: None,
                    stopped_reason: None,
                    event: Some(event),
                    ip_address: None,
                });
            };
            let started = std::time::Instant::now();
            let credentials = a
                .secrets
                .containers
                .get(&c.name)
                .and_then(|s| s.registry.as_ref());
            let result = self
                .runtime
                .ensure_image(&c.image, credentials, &progress)
                .await;
            match &result {
                Ok(info) if info.pulled => {
                    self.metrics.image("pulled", Some(started.elapsed()));
                }
                Ok(_) => self.metrics.image("cached", None),
                Err(_) => self.metrics.image("failed", None),
            }
            match result {
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
                    tracing::warn!(image = %c.image, "pull image: {}", berth_model::error_chain(&e));
                    let reason = format!("CannotPullContainerError: {e}");
                    self.finish(states, StopCode::TaskFailedToStart, reason, None);
                    return None;
                }
            }
        }
        Some(images)
    }

    /// Starts every pending container whose dependencies are met, until none more can start.
    /// Fails with a reason when a dependency can no longer be met, or a start fails.
    async fn start_ready(
        &mut self,
        starter: &mut Starter,
        states: &mut [ContainerState],
    ) -> Result<(), String> {
        let a = self.assignment.clone();
        loop {
            let mut progressed = false;
            for i in starter.pending.clone() {
                if !dependencies_met(&a.containers, i, states, &starter.pending)? {
                    continue;
                }
                let c = &a.containers[i];
                let id = container_id(&a.task_id, &c.name);
                let started = match starter.created.remove(&i) {
                    Some(Ok(created)) => self.runtime.start_created(created).await,
                    Some(Err(e)) => Err(e),
                    None => self.runtime.start(&self.spec_for(starter, i)).await,
                };
                match started {
                    Ok(exit) => {
                        starter.watch(&self.runtime, i, &id, exit, c.health_check.as_ref());
                        states[i].last_status = TaskStatus::Running;
                    }
                    Err(e) => {
                        tracing::warn!(container = %c.name, "start container: {}", berth_model::error_chain(&e));
                        states[i].last_status = TaskStatus::Stopped;
                        states[i].reason = Some(e.to_string());
                        return Err(format!("CannotStartContainerError: {e}"));
                    }
                }
                starter.pending.retain(|p| *p != i);
                progressed = true;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Takes over the containers a previous agent process started (after an agent restart).
    /// Returns false when an essential container exited or vanished while no agent was
    /// watching (its state says how); the caller then ends the task.
    async fn adopt(&mut self, states: &mut [ContainerState], starter: &Starter) -> bool {
        let a = self.assignment.clone();
        if let Some(network) = self.runtime.task_network(&a.task_id).await {
            self.attached(&network, states);
        }
        let mut ok = true;
        for (i, c) in a.containers.iter().enumerate() {
            let existing = self
                .adopt
                .iter()
                .find(|e| e.container_name == c.name)
                .cloned();
            let outcome = match existing {
                Some(e) if e.running => match self.runtime.adopt(&e.id).await {
                    Ok(exit) => {
                        starter.watch(&self.runtime, i, &e.id, exit, c.health_check.as_ref());
                        states[i].last_status = TaskStatus::Running;
                        None
                    }
                    Err(err) => Some(format!("could not be watched again ({err})")),
                },
                Some(e) if e.exit_code.is_none() => {
                    Some("was never started: the agent stopped while starting the task".to_owned())
                }
                Some(e) => {
                    states[i].exit_code = e.exit_code;
                    Some("exited while the agent was down".to_owned())
                }
                None => Some("vanished while the agent was down".to_owned()),
            };
            if let Some(what) = outcome {
                states[i].last_status = TaskStatus::Stopped;
                states[i].reason = Some(what);
                if c.essential {
                    ok = false;
                }
            }
        }
        if ok {
            self.report(
                TaskStatus::Running,
                states,
                Some("re-adopted after an agent restart".into()),
            );
        }
        ok
    }

    /// What a new task needs between its pull and its containers: who each container runs as
    /// (its user resolved against the image's /etc/passwd and /etc/group), and its secret
    /// files written. Fails with the task's stop reason.
    async fn prepare(
        &self,
        images: &[ImageInfo],
    ) -> Result<(Vec<ResolvedUser>, Vec<Vec<SecretMount>>), String> {
        let a = &self.assignment;
        let mut users = Vec::with_capacity(images.len());
        for (c, image) in a.containers.iter().zip(images) {
            let wanted = process_user(image, c);
            let (passwd, group) = if user::needs_files(wanted) {
                let read = |path: &'static str| async move {
                    let bytes = self.runtime.read_image_file(image, path).await;
                    bytes.map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
                };
                let files = match (read("/etc/passwd").await, read("/etc/group").await) {
                    (Ok(p), Ok(g)) => (p, g),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(container = %c.name, "read the image's user files: {}", berth_model::error_chain(&e));
                        return Err(format!(
                            "CannotStartContainerError: container {}: read the image's user files: {e}",
                            c.name
                        ));
                    }
                };
                files
            } else {
                (None, None)
            };
            let resolved = user::resolve(wanted, passwd.as_deref(), group.as_deref())
                .map_err(|e| format!("CannotStartContainerError: container {}: {e}", c.name))?;
            users.push(resolved);
        }
        if a.secrets.containers.values().all(|s| s.files.is_empty()) {
            return Ok((users, Vec::new()));
        }
        let names: Vec<String> = a.containers.iter().map(|c| c.name.clone()).collect();
        let (root, task_id, secrets) = (
            self.secrets_dir.clone(),
            a.task_id.clone(),
            a.secrets.clone(),
        );
        let written = tokio::task::spawn_blocking(move || {
            crate::secret_files::write_task(&root, &task_id, &names, &secrets)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        match written {
            Ok(mounts) => Ok((users, mounts)),
            Err(e) => {
                tracing::warn!("write the task's secret files: {e}");
                Err(format!(
                    "CannotStartContainerError: write the task's secret files: {e}"
                ))
            }
        }
    }

    /// What the task's writable layers hold, and why it must stop for that (if it must).
    async fn storage_used(&self, states: &[ContainerState]) -> (u64, Option<String>) {
        let mut used = 0u64;
        for (c, state) in self.assignment.containers.iter().zip(states) {
            if state.last_status == TaskStatus::Pending {
                continue;
            }
            let id = container_id(&self.assignment.task_id, &c.name);
            match self.runtime.storage_usage(&id).await {
                Ok(bytes) => used = used.saturating_add(bytes),
                Err(e) => {
                    tracing::debug!(container = %id, "measure the writable layer: {}", berth_model::error_chain(&e));
                }
            }
        }
        (
            used,
            storage_exceeded(used, self.assignment.ephemeral_storage),
        )
    }

    /// Container `i`'s spec, with what the task's start prepared: its network namespace, who
    /// it runs as, its secret directories.
    fn spec_for(&self, starter: &Starter, i: usize) -> ContainerSpec {
        let mut spec = self.container_spec(&self.assignment.containers[i], &starter.images[i]);
        spec.netns = starter.netns.clone();
        if let Some(u) = starter.users.get(i) {
            spec.uid = u.uid;
            spec.gid = u.gid;
            spec.additional_gids = u.additional_gids.clone();
        }
        spec.secret_mounts = starter.secret_mounts.get(i).cloned().unwrap_or_default();
        spec
    }

    fn container_spec(&self, c: &ContainerDefinition, image: &ImageInfo) -> ContainerSpec {
        let secrets = self.assignment.secrets.containers.get(&c.name);
        ContainerSpec {
            id: container_id(&self.assignment.task_id, &c.name),
            task_id: self.assignment.task_id.clone(),
            container_name: c.name.clone(),
            image: image.clone(),
            args: process_args(image, c),
            env: process_env(image, c, secrets),
            cwd: c
                .working_directory
                .clone()
                .or_else(|| image.working_dir.clone())
                .unwrap_or_else(|| "/".into()),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            cpu_units: c.cpu.unwrap_or(self.assignment.cpu),
            memory_mib: c.memory.unwrap_or(self.assignment.memory),
            log_path: self.log_dir.join(format!("{}.log", c.name)),
            netns: None,
            init: c.init,
            resolv_conf: self.resolv_conf.clone(),
            readonly_root: c.readonly_root_filesystem,
            cap_add: c.linux_parameters.capabilities.add.clone(),
            cap_drop: c.linux_parameters.capabilities.drop.clone(),
            ulimits: c.ulimits.clone(),
            secret_mounts: Vec::new(),
        }
    }

    /// Stops the running containers in reverse dependency order (a container stops before
    /// the containers it depends on): SIGTERM, its stopTimeout, then SIGKILL.
    async fn stop_containers(
        &self,
        states: &mut [ContainerState],
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) {
        let defs = &self.assignment.containers;
        for i in stop_order(defs) {
            if states[i].last_status != TaskStatus::Running {
                continue;
            }
            let id = container_id(&self.assignment.task_id, &defs[i].name);
            if let Err(e) = self.runtime.kill(&id, SIGTERM, false).await {
                tracing::warn!(container = %id, "send SIGTERM: {}", berth_model::error_chain(&e));
            }
            let mut grace = Duration::from_secs(u64::from(defs[i].stop_timeout));
            if *self.stop.borrow() == Some(StopReason::Fenced) {
                // Self-fencing must finish before the servers may declare the node lost
                // (20% of the node TTL later): no long goodbyes.
                grace = grace.min(FENCED_STOP_GRACE);
            }
            let mut deadline = Some(tokio::time::Instant::now() + grace);
            while states[i].last_status == TaskStatus::Running {
                let next = match deadline {
                    Some(d) => tokio::time::timeout_at(d, exits.recv()).await,
                    None => Ok(exits.recv().await),
                };
                match next {
                    Ok(Some((j, result))) => record_exit(&mut states[j], result),
                    Ok(None) => break,
                    Err(_) => {
                        if let Err(e) = self.runtime.kill(&id, SIGKILL, true).await {
                            tracing::warn!(container = %id, "send SIGKILL: {}", berth_model::error_chain(&e));
                        }
                        deadline = None;
                    }
                }
            }
        }
    }

    async fn cleanup(&self, states: &mut [ContainerState]) {
        for c in &self.assignment.containers {
            let id = container_id(&self.assignment.task_id, &c.name);
            if let Err(e) = self.runtime.remove(&id).await {
                tracing::warn!(container = %id, "remove container: {}", berth_model::error_chain(&e));
            }
        }
        if let Err(e) = self.runtime.remove_network(&self.assignment.task_id).await {
            tracing::warn!(
                "remove the task's network: {}",
                berth_model::error_chain(&e)
            );
        }
        for s in states {
            s.last_status = TaskStatus::Stopped;
        }
    }

    /// Takes the task's address and where each container's ports were published.
    fn attached(&mut self, network: &TaskNetwork, states: &mut [ContainerState]) {
        self.ip_address = network.address;
        let mut published = network.ports.iter();
        for (c, state) in self.assignment.containers.iter().zip(states) {
            state.network_bindings = published
                .by_ref()
                .take(c.port_mappings.len())
                .map(|p| NetworkBinding {
                    bind_ip: self.bind_ip.clone(),
                    container_port: p.container_port,
                    host_port: p.host_port,
                    protocol: p.protocol,
                })
                .collect();
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
            // Its ports are released.
            s.network_bindings.clear();
        }
        if let Err(e) =
            crate::secret_files::remove_task(&self.secrets_dir, &self.assignment.task_id)
        {
            tracing::warn!("remove the task's secret files: {e}");
        }
        self.done.store(true, Ordering::SeqCst);
        let _ = self.updates.send(TaskStatusUpdate {
            task_id: self.assignment.task_id.clone(),
            last_status: TaskStatus::Stopped,
            containers: states.to_vec(),
            stop_code: Some(code),
            stopped_reason: Some(reason),
            event,
            ip_address: self.ip_address,
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
            ip_address: self.ip_address,
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
