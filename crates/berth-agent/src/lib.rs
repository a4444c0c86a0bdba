//! The node agent: registers its host with the servers, keeps one stream to the leader, and
//! runs the tasks the leader assigns through a [`Runtime`].
//!
//! The server pushes the node's full desired task set; [`Agent`] reconciles it idempotently:
//! unknown tasks that should run are started (one [`supervisor::TaskRun`] each), tasks that
//! should stop are stopped, tasks that are not in the set are stopped and forgotten. Every
//! state change goes back to the server as a status report; on each new stream the agent
//! resends the last state of every task it knows, so reports survive reconnects.

mod api;
pub mod containerd;
mod fake;
pub mod logfile;
pub mod metrics;
mod runtime;
pub mod spec;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use berth_model::{DesiredStatus, TaskStatus, TaskStatusUpdate};
use berth_proto::v1::agent_message::Msg as AgentMsg;
use berth_proto::v1::agent_service_client::AgentServiceClient;
use berth_proto::v1::server_message::Msg as ServerMsg;
use berth_proto::v1::{
    AgentMessage, DesiredTasks, Heartbeat, MetricsReport, Register, StatusReport, TaskSample,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

pub use api::AgentApiService;
pub use containerd::{ContainerdConfig, ContainerdRuntime};
pub use fake::FakeRuntime;
pub use runtime::{
    ContainerSpec, ContainerStats, ExecOutput, ExistingContainer, ExitFuture, ExitStatus,
    ImageInfo, Progress, Runtime, RuntimeError,
};
use supervisor::{Assignment, TaskRun};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// Server addresses, `host:port`; the agent fails over between them.
    pub servers: Vec<String>,
    /// Where the agent's API (logs) listens.
    pub listen: SocketAddr,
    /// CPU units offered to tasks.
    pub cpu: u64,
    /// MiB offered to tasks.
    pub memory: u64,
    pub attributes: BTreeMap<String, String>,
    /// Heartbeat interval until a server says which one it wants.
    pub heartbeat_interval: Duration,
    /// How often resource usage of running tasks is sampled and sent.
    pub metrics_interval: Duration,
}

struct LocalTask {
    stop: watch::Sender<bool>,
    done: Arc<AtomicBool>,
    /// Its containers' names, in definition order.
    containers: Vec<String>,
}

/// Why a task ended without the agent running it.
struct Ended {
    stop_code: Option<berth_model::StopCode>,
    reason: Option<String>,
    event: Option<String>,
}

/// The last CPU counter of each container and when it was read.
type CpuCounters = HashMap<String, (u64, tokio::time::Instant)>;

/// Metadata key with the leader's address on a follower's UNAVAILABLE answer.
const LEADER_HINT: &str = "berth-leader";

/// The tasks this agent knows, shared with its API.
#[derive(Clone, Default)]
pub struct TaskTable(Arc<Mutex<HashMap<String, LocalTask>>>);

impl TaskTable {
    /// Running tasks and their containers' names.
    fn running(&self) -> Vec<(String, Vec<String>)> {
        self.lock()
            .iter()
            .filter(|(_, t)| !t.done.load(Ordering::SeqCst))
            .map(|(id, t)| (id.clone(), t.containers.clone()))
            .collect()
    }

    /// The runtime ID of a running task's container (`container` empty: its first one).
    pub fn container_id(&self, task_id: &str, container: &str) -> Result<String, tonic::Status> {
        let tasks = self.lock();
        let task = tasks
            .get(task_id)
            .filter(|t| !t.done.load(Ordering::SeqCst))
            .ok_or_else(|| {
                tonic::Status::failed_precondition(format!(
                    "task {task_id} is not running on this node"
                ))
            })?;
        let name = if container.is_empty() {
            task.containers.first().cloned().unwrap_or_default()
        } else {
            container.to_owned()
        };
        if !task.containers.contains(&name) {
            return Err(tonic::Status::not_found(format!(
                "task {task_id} has no container {name:?}; it has {}",
                task.containers.join(", ")
            )));
        }
        Ok(supervisor::container_id(task_id, &name))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalTask>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the task is known here and has not finished.
    pub fn is_running(&self, task_id: &str) -> bool {
        self.lock()
            .get(task_id)
            .is_some_and(|t| !t.done.load(Ordering::SeqCst))
    }
}

pub struct Agent {
    config: AgentConfig,
    runtime: Arc<dyn Runtime>,
    tasks: TaskTable,
    updates_tx: mpsc::UnboundedSender<TaskStatusUpdate>,
    /// Containers found at start-up, by task ID, until the first desired set claims them.
    existing: Mutex<Option<HashMap<String, Vec<ExistingContainer>>>>,
    contact: Mutex<Contact>,
    /// Set while the agent has stopped its tasks for lack of contact with any server.
    fenced: Arc<AtomicBool>,
}

/// When a server was last heard from, and how long the agent may go without.
struct Contact {
    last: tokio::time::Instant,
    /// 80% of the servers' node TTL, once a server told it.
    fence_after: Option<Duration>,
}

impl Agent {
    fn contact(&self) -> std::sync::MutexGuard<'_, Contact> {
        self.contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Self-fencing: when no server has been heard from for longer than the lease, the
    /// servers will soon declare this node DOWN and run its tasks elsewhere, so the agent
    /// stops them first — a task never runs on two nodes at once.
    async fn fence(self: Arc<Self>) {
        loop {
            // Checked 8 times per lease: at most an eighth of it late, well inside the fifth of
            // the TTL between the lease and the servers declaring the node lost.
            let check = self
                .contact()
                .fence_after
                .map_or(Duration::from_secs(1), |l| {
                    (l / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
                });
            tokio::time::sleep(check).await;
            let (silent, lease) = {
                let c = self.contact();
                (c.last.elapsed(), c.fence_after)
            };
            let Some(lease) = lease else { continue };
            if silent <= lease || self.fenced.load(Ordering::SeqCst) {
                continue;
            }
            let running = self.tasks.running();
            if running.is_empty() {
                continue;
            }
            self.fenced.store(true, Ordering::SeqCst);
            tracing::warn!(
                tasks = running.len(),
                "no server answered for {:.1}s (lease {lease:?}): stopping this node's tasks",
                silent.as_secs_f64()
            );
            for local in self.tasks.lock().values() {
                local.stop.send_replace(true);
            }
        }
    }

    /// Serves the agent API and keeps a session with the servers until `shutdown` resolves.
    pub async fn run(
        config: AgentConfig,
        runtime: Arc<dyn Runtime>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            !config.servers.is_empty(),
            "no servers given; pass --servers ADDR[,ADDR]"
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind agent API on {}", config.listen))?;
        let address = listener.local_addr().context("agent API address")?;
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        // Containers a previous agent process left running are re-adopted, not duplicated.
        let found = runtime
            .list()
            .await
            .context("list containers left by a previous agent")?;
        if !found.is_empty() {
            tracing::info!(
                containers = found.len(),
                "found containers from a previous run"
            );
        }
        let mut existing: HashMap<String, Vec<ExistingContainer>> = HashMap::new();
        for c in found {
            existing.entry(c.task_id.clone()).or_default().push(c);
        }
        let agent = Arc::new(Agent {
            config,
            runtime,
            tasks: TaskTable::default(),
            updates_tx,
            existing: Mutex::new(Some(existing)),
            contact: Mutex::new(Contact {
                last: tokio::time::Instant::now(),
                fence_after: None,
            }),
            fenced: Arc::new(AtomicBool::new(false)),
        });
        let log_root = agent.log_root();
        tokio::fs::create_dir_all(&log_root)
            .await
            .with_context(|| format!("create {}", log_root.display()))?;
        let api = tonic::transport::Server::builder()
            // HTTP/1 for `/metrics`; the API stays gRPC over HTTP/2.
            .accept_http1(true)
            .add_routes(metrics::routes(agent.tasks.clone()))
            .add_service(AgentApiService::new(
                log_root,
                agent.tasks.clone(),
                agent.runtime.clone(),
            ))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)));
        tracing::info!(node = %agent.config.node_name, %address, "agent started");
        tokio::select! {
            r = api => r.context("agent API server")?,
            () = agent.clone().sessions(address.to_string(), updates_rx) => {}
            () = agent.clone().fence() => {}
            () = shutdown => {}
        }
        Ok(())
    }

    fn log_root(&self) -> PathBuf {
        self.config.data_dir.join("logs")
    }

    /// Connects to the servers in turn, forever, with a capped back-off between failures.
    async fn sessions(
        self: Arc<Self>,
        address: String,
        mut updates: mpsc::UnboundedReceiver<TaskStatusUpdate>,
    ) {
        let mut latest: HashMap<String, TaskStatusUpdate> = HashMap::new();
        let mut counters = CpuCounters::new();
        let mut backoff = Duration::from_millis(100);
        let servers = self.config.servers.clone();
        let mut next = 0;
        let mut redirect: Option<String> = None;
        loop {
            let server = redirect.take().unwrap_or_else(|| {
                next += 1;
                servers[(next - 1) % servers.len()].clone()
            });
            match self
                .session(&server, &address, &mut updates, &mut latest, &mut counters)
                .await
            {
                Ok(()) => {
                    tracing::info!(%server, "server closed the stream");
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    // A follower answers with the leader's address: go there at once.
                    let hint = e
                        .downcast_ref::<tonic::Status>()
                        .and_then(|s| s.metadata().get(LEADER_HINT))
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Some(leader) = hint.filter(|l| *l != server) {
                        tracing::info!(%server, %leader, "redirected to the leader");
                        redirect = Some(leader);
                        continue;
                    }
                    tracing::warn!(%server, "session with server: {e:#}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn session(
        &self,
        server: &str,
        address: &str,
        updates: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>,
        latest: &mut HashMap<String, TaskStatusUpdate>,
        counters: &mut CpuCounters,
    ) -> anyhow::Result<()> {
        let mut client = AgentServiceClient::connect(format!("http://{server}"))
            .await
            .with_context(|| format!("connect to {server}"))?;
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        let register = Register {
            node_name: self.config.node_name.clone(),
            address: address.to_owned(),
            cpu: self.config.cpu,
            memory: self.config.memory,
            attributes: self.config.attributes.clone(),
        };
        tx.send(AgentMessage {
            msg: Some(AgentMsg::Register(register)),
        })
        .await?;
        if !latest.is_empty() {
            let resend = latest
                .values()
                .cloned()
                .map(|mut u| {
                    u.event = None;
                    u.into()
                })
                .collect();
            tx.send(AgentMessage {
                msg: Some(AgentMsg::Status(StatusReport { updates: resend })),
            })
            .await?;
        }
        let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        let mut metrics = tokio::time::interval(self.config.metrics_interval);
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let msg = msg?;
                    if msg.is_some() {
                        self.contact().last = tokio::time::Instant::now();
                    }
                    match msg {
                        None => return Ok(()),
                        Some(m) => match m.msg {
                            Some(ServerMsg::Registered(r)) => {
                                tracing::info!(%server, "registered");
                                if r.node_ttl_ms > 0 {
                                    self.contact().fence_after = Some(Duration::from_millis(r.node_ttl_ms) * 4 / 5);
                                }
                                self.fenced.store(false, Ordering::SeqCst);
                                if r.heartbeat_interval_secs > 0 {
                                    heartbeat = tokio::time::interval(Duration::from_secs(u64::from(r.heartbeat_interval_secs)));
                                }
                            }
                            Some(ServerMsg::Desired(d)) => self.reconcile(d, latest),
                            Some(ServerMsg::Ack(_)) | None => {}
                        },
                    }
                }
                Some(update) = updates.recv() => {
                    let mut batch = vec![update];
                    while let Ok(more) = updates.try_recv() {
                        batch.push(more);
                    }
                    for u in &batch {
                        latest.insert(u.task_id.clone(), u.clone());
                    }
                    let report = StatusReport { updates: batch.into_iter().map(Into::into).collect() };
                    tx.send(AgentMessage { msg: Some(AgentMsg::Status(report)) }).await?;
                }
                _ = metrics.tick() => {
                    let samples = self.sample(counters).await;
                    if !samples.is_empty() {
                        let report = MetricsReport { samples };
                        tx.send(AgentMessage { msg: Some(AgentMsg::Metrics(report)) }).await?;
                    }
                }
                _ = heartbeat.tick() => {
                    tx.send(AgentMessage { msg: Some(AgentMsg::Heartbeat(Heartbeat {})) }).await?;
                }
            }
        }
    }

    /// Samples the resource usage of every running task. CPU is a rate, so a container's first
    /// sample only records its counter.
    async fn sample(&self, counters: &mut CpuCounters) -> Vec<TaskSample> {
        let now = tokio::time::Instant::now();
        let sampled_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut samples = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (task_id, containers) in self.tasks.running() {
            let (mut cpu_units, mut memory_bytes, mut rated) = (0.0, 0, false);
            for name in containers {
                let id = supervisor::container_id(&task_id, &name);
                let Ok(stats) = self.runtime.stats(&id).await else {
                    continue;
                };
                memory_bytes += stats.memory_bytes;
                if let Some((cpu_ns, at)) = counters.get(&id) {
                    let wall = now.duration_since(*at).as_nanos() as f64;
                    if wall > 0.0 {
                        let used = stats.cpu_ns.saturating_sub(*cpu_ns) as f64;
                        cpu_units += used / wall * f64::from(berth_model::CPU_UNITS_PER_VCPU);
                        rated = true;
                    }
                }
                counters.insert(id.clone(), (stats.cpu_ns, now));
                seen.insert(id);
            }
            if rated {
                samples.push(TaskSample {
                    task_id,
                    metrics: Some(berth_proto::v1::TaskMetrics {
                        cpu_units,
                        memory_bytes,
                        sampled_at,
                    }),
                });
            }
        }
        counters.retain(|id, _| seen.contains(id));
        samples
    }

    /// Reports a task STOPPED without running anything for it, and remembers it as finished.
    fn ended_here(&self, tasks: &mut HashMap<String, LocalTask>, task_id: String, ended: Ended) {
        let _ = self.updates_tx.send(TaskStatusUpdate {
            task_id: task_id.clone(),
            last_status: TaskStatus::Stopped,
            containers: vec![],
            stop_code: ended.stop_code,
            stopped_reason: ended.reason,
            event: ended.event,
        });
        let (stop, _) = watch::channel(true);
        let done = Arc::new(AtomicBool::new(true));
        tasks.insert(
            task_id,
            LocalTask {
                stop,
                done,
                containers: vec![],
            },
        );
    }

    /// Makes the tasks on this node match the server's desired set.
    fn reconcile(&self, desired: DesiredTasks, latest: &mut HashMap<String, TaskStatusUpdate>) {
        let mut existing = self
            .existing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        let mut tasks = self.tasks.lock();
        let mut wanted = std::collections::HashSet::new();
        for t in desired.tasks {
            wanted.insert(t.task_id.clone());
            let desired_status =
                match berth_proto::desired_status("desiredStatus", t.desired_status) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(task_id = %t.task_id, "ignore assignment: {e}");
                        continue;
                    }
                };
            match (tasks.get(&t.task_id), desired_status) {
                (None, DesiredStatus::Running) => {
                    let adopt = existing.remove(&t.task_id).unwrap_or_default();
                    let ran_before = berth_proto::task_status("lastStatus", t.last_status)
                        .is_ok_and(|s| s >= TaskStatus::Activating);
                    if adopt.is_empty() && ran_before {
                        // The servers saw it run here, but no container is left.
                        tracing::warn!(task_id = %t.task_id, "task vanished while the agent was down");
                        // The node lost it (a host reboot, a crash): not the task's fault,
                        // so it does not count against a service deployment.
                        let ended = Ended {
                            stop_code: Some(berth_model::StopCode::NodeLost),
                            reason: Some(
                                "the task's containers vanished while the agent was down".into(),
                            ),
                            event: Some("containers vanished while the agent was down".into()),
                        };
                        self.ended_here(&mut tasks, t.task_id, ended);
                        continue;
                    }
                    let defs: Result<Vec<berth_model::ContainerDefinition>, _> = t
                        .containers
                        .iter()
                        .cloned()
                        .map(TryInto::try_into)
                        .collect();
                    let defs = match defs {
                        Ok(defs) => defs,
                        Err(e) => {
                            // A server newer than this agent: refuse the task, say why.
                            tracing::warn!(task_id = %t.task_id, "cannot read assignment: {e}");
                            let ended = Ended {
                                stop_code: Some(berth_model::StopCode::TaskFailedToStart),
                                reason: Some(format!(
                                    "this node's agent cannot run the task's definition: {e}"
                                )),
                                event: None,
                            };
                            self.ended_here(&mut tasks, t.task_id, ended);
                            continue;
                        }
                    };
                    let (stop, stop_rx) = watch::channel(false);
                    let done = Arc::new(AtomicBool::new(false));
                    let containers = t.containers.iter().map(|c| c.name.clone()).collect();
                    let run = TaskRun {
                        assignment: Assignment {
                            task_id: t.task_id.clone(),
                            cpu: t.cpu,
                            memory: t.memory,
                            containers: defs,
                        },
                        runtime: self.runtime.clone(),
                        log_dir: self.log_root().join(&t.task_id),
                        updates: self.updates_tx.clone(),
                        stop: stop_rx,
                        done: done.clone(),
                        adopt,
                        fenced: self.fenced.clone(),
                    };
                    tracing::info!(task_id = %t.task_id, "start task");
                    tokio::spawn(run.run());
                    tasks.insert(
                        t.task_id,
                        LocalTask {
                            stop,
                            done,
                            containers,
                        },
                    );
                }
                (None, DesiredStatus::Stopped) => {
                    // Stopped before this node ever started it.
                    let ended = Ended {
                        stop_code: None,
                        reason: None,
                        event: None,
                    };
                    self.ended_here(&mut tasks, t.task_id, ended);
                }
                (Some(local), DesiredStatus::Stopped) => {
                    local.stop.send_replace(true);
                }
                (Some(_), DesiredStatus::Running) => {}
            }
        }
        // What the servers do not want on this node any more is removed.
        for (task_id, containers) in existing {
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
        tasks.retain(|id, local| {
            if wanted.contains(id) {
                return true;
            }
            if local.done.load(Ordering::SeqCst) {
                latest.remove(id);
                return false;
            }
            // The server no longer wants it here.
            local.stop.send_replace(true);
            true
        });
    }
}

#[cfg(test)]
mod tests;
