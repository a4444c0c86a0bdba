//! The node agent: registers its host with the servers, keeps one stream to the leader, and
//! runs the tasks the leader assigns through a [`Runtime`].
//!
//! The server pushes the node's full desired task set; the [`engine`] plans what makes the node
//! match it (pure), and the executor in `reconcile` carries the plan out: unknown tasks that
//! should run are started (one [`supervisor::TaskRun`] each), tasks that should stop are
//! stopped, tasks that are not in the set are stopped and forgotten. Every state change goes
//! back to the server as a status report (`session`); on each new stream the agent resends the
//! last state of every task it knows, so reports survive reconnects. Without contact for most
//! of the node TTL, the agent stops its tasks itself (`fencing`).
//!
//! Every connection is mutual TLS from the cluster CA ([`tls`]): the agent joins with a join
//! token once, keeps its certificate in `DATA_DIR/tls`, and renews it in the background.

mod api;
pub mod cni;
pub mod containerd;
pub mod discovery;
pub mod dns;
pub mod engine;
pub mod ephemeral;
mod fake;
mod fencing;
mod iproute;
pub mod logfile;
pub mod metrics;
mod reconcile;
mod runtime;
pub mod seccomp;
pub mod secret_files;
mod session;
pub mod spec;
pub mod supervisor;
mod tasks;
pub mod tls;
pub mod user;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use berth_model::TaskStatusUpdate;
use berth_tls::JoinToken;
use tokio::sync::mpsc;
use tracing::Instrument as _;

pub use api::AgentApiService;
pub use containerd::{ContainerdConfig, ContainerdRuntime};
pub use fake::FakeRuntime;
pub use metrics::Metrics;
pub use runtime::{
    ContainerSpec, ContainerStats, ExecOutput, ExistingContainer, ExitFuture, ExitStatus,
    ImageInfo, Progress, Runtime, RuntimeError, SecretMount, MAX_IMAGE_FILE,
};
pub use tasks::{TaskError, TaskTable};
pub use tls::{join_token, Advertise, ConfigError, Member, Membership};

/// How long after a failure service discovery is started again.
const DISCOVERY_AGAIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// Server addresses, `host:port`; the agent fails over between them.
    pub servers: Vec<String>,
    /// Where the agent's API (logs, exec) listens.
    pub listen: SocketAddr,
    /// Where servers reach that API; its host is a name in the agent's certificate.
    pub advertise: Advertise,
    /// Joins the cluster when `DATA_DIR/tls` holds no certificate (or an expired one).
    pub join_token: Option<JoinToken>,
    /// How long joining may take (servers may still be starting).
    pub join_timeout: Duration,
    /// Agents sharing a process (`--hollow`) join a few at a time: thousands of joins at once
    /// would starve the servers. `None`: join at once.
    pub join_gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// Serve `/metrics` to callers without a client certificate.
    pub metrics_public: bool,
    /// CPU units offered to tasks.
    pub cpu: u64,
    /// MiB offered to tasks.
    pub memory: u64,
    pub attributes: BTreeMap<String, String>,
    /// Heartbeat interval until a server says which one it wants.
    pub heartbeat_interval: Duration,
    /// How often resource usage of running tasks is sampled and sent.
    pub metrics_interval: Duration,
    /// This agent's metrics, served on `/metrics` at its API address.
    pub metrics: Metrics,
    /// Service discovery for the node's tasks (none for hollow agents).
    pub discovery: Option<discovery::DiscoveryConfig>,
}

impl AgentConfig {
    /// Who the agent is in the cluster, for its certificate.
    pub fn member(&self) -> Member {
        Member {
            role: berth_tls::Role::Agent,
            name: self.node_name.clone(),
            data_dir: self.data_dir.clone(),
            servers: self.servers.clone(),
            join_token: self.join_token.clone(),
            join_timeout: self.join_timeout,
            join_gate: self.join_gate.clone(),
            advertise: self.advertise.clone(),
        }
    }
}

pub struct Agent {
    config: AgentConfig,
    runtime: Arc<dyn Runtime>,
    tasks: TaskTable,
    updates_tx: mpsc::UnboundedSender<TaskStatusUpdate>,
    /// Containers found at start-up, by task ID, until the first desired set claims them.
    found: Mutex<Option<BTreeMap<String, Vec<ExistingContainer>>>>,
    contact: fencing::Contact,
    /// The CA, this agent's certificate and the dialer of TLS channels to the servers.
    tls: tls::NodeTls,
    discovery: Option<Arc<discovery::Discovery>>,
}

impl Agent {
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
        let bound = listener.local_addr().context("agent API address")?;
        let address = config.advertise.address(bound.port());
        let span = tracing::info_span!("agent", node = %config.node_name);
        let (node_tls, held) = tls::establish(&config.member(), &address)
            .instrument(span.clone())
            .await?;
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
        let mut by_task: BTreeMap<String, Vec<ExistingContainer>> = BTreeMap::new();
        for c in found {
            by_task.entry(c.task_id.clone()).or_default().push(c);
        }
        // Networks of tasks without containers are left from a crash (or from containers
        // removed behind the agent's back): they go before anything else runs, so addresses,
        // ports and firewall rules never leak. The others go with their tasks.
        let keep: std::collections::BTreeSet<String> = by_task.keys().cloned().collect();
        let stale = runtime
            .remove_stale_networks(&keep)
            .await
            .context("remove the networks of tasks a previous agent left")?;
        if !stale.is_empty() {
            tracing::info!(tasks = ?stale, "removed the networks of tasks that are gone");
        }
        // Secret files live on a tmpfs; those of tasks without containers go now.
        let secrets_dir = config.data_dir.join("secrets");
        runtime
            .prepare_secrets_dir(&secrets_dir)
            .await
            .with_context(|| format!("prepare {}", secrets_dir.display()))?;
        let swept = secret_files::sweep(&secrets_dir, &keep)
            .with_context(|| format!("remove stale secret files in {}", secrets_dir.display()))?;
        if !swept.is_empty() {
            tracing::info!(tasks = ?swept, "removed the secret files of tasks that are gone");
        }
        let agent = Arc::new(Agent {
            runtime,
            tasks: TaskTable::default(),
            updates_tx,
            found: Mutex::new(Some(by_task)),
            contact: fencing::Contact::new(),
            tls: node_tls,
            discovery: config.discovery.clone().map(discovery::Discovery::new),
            config,
        });
        let log_root = agent.log_root();
        tokio::fs::create_dir_all(&log_root)
            .await
            .with_context(|| format!("create {}", log_root.display()))?;
        let server_tls =
            berth_tls::tls::server_config(agent.tls.trust.clone(), agent.tls.credentials.clone())
                .context("TLS configuration of the agent API")?;
        let api = tonic::transport::Server::builder()
            // HTTP/1 for `/metrics`; the API stays gRPC over HTTP/2.
            .accept_http1(true)
            .add_routes(metrics::routes(
                agent.config.metrics.clone(),
                agent.tasks.clone(),
                agent.config.metrics_public,
            ))
            .add_service(AgentApiService::new(
                log_root,
                agent.tasks.clone(),
                agent.runtime.clone(),
            ))
            .serve_with_incoming(berth_tls::net::incoming(listener, Arc::new(server_tls)));
        span.in_scope(|| tracing::info!(%bound, %address, "agent started"));
        let sessions = agent.clone().sessions(address.clone(), updates_rx);
        let fence = fencing::fence(&agent.contact, &agent.tasks);
        let member = agent.config.member();
        let renewals = tls::renew::renewals(&member, &agent.tls, held, &address);
        let discovery = async {
            let Some(d) = agent.discovery.clone() else {
                return std::future::pending().await;
            };
            // The node's tasks run on meanwhile; only discovery by name is missing. A start
            // that failed (a bridge being made at the same moment, a busy firewall) is tried
            // again rather than leaving the node without it for good.
            loop {
                if let Err(e) = d.clone().run().await {
                    tracing::error!(
                        "service discovery stopped: {e:#}; starting it again in {}s",
                        DISCOVERY_AGAIN.as_secs()
                    );
                }
                tokio::time::sleep(DISCOVERY_AGAIN).await;
            }
        };
        tokio::select! {
            r = api => r.context("agent API server")?,
            () = sessions.instrument(span.clone()) => {}
            () = fence.instrument(span.clone()) => {}
            () = renewals.instrument(span.clone()) => {}
            () = discovery.instrument(span) => {}
            () = shutdown => {}
        }
        Ok(())
    }

    fn log_root(&self) -> PathBuf {
        self.config.data_dir.join("logs")
    }

    /// Where tasks' secret files are written (a tmpfs: see [`secret_files`]).
    fn secrets_dir(&self) -> PathBuf {
        self.config.data_dir.join("secrets")
    }
}

#[cfg(test)]
mod tests;
