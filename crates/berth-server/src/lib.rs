//! A berth control node: one Raft member ([`berth_store`]) plus every gRPC service on one
//! listen address (public API, agent stream, Raft transport, health, reflection) and the
//! leader's controllers.

mod agents;
mod api;
pub mod controllers;
pub mod metrics;
pub mod status;
mod usage;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use berth_store::{RaftService, Store, StoreConfig};
use controllers::{leader_loop, Autoscaler, NodeMonitor, Scheduler, ServiceReconciler};
use tonic::transport::server::TcpIncoming;

pub use agents::Liveness;
pub use usage::Usage;

/// Milliseconds since the Unix epoch; only the leader's handlers call it, before proposing.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The address other servers and agents reach this one at; `listen` when unset.
    pub advertise: Option<String>,
    /// Ask the server at this address to add this one to its cluster (first start only).
    pub join: Option<String>,
    /// Start a new cluster whose state is this backup (`berth cluster snapshot save`).
    pub restore: Option<PathBuf>,
    /// With no state, wait to be added (`berth cluster add`) instead of bootstrapping.
    pub no_bootstrap: bool,
    /// Raft timing and compaction; `data_dir`, `node_id` and `advertise_addr` are filled in.
    pub raft: RaftTuning,
    /// A node whose agent is silent this long becomes DOWN and its tasks are lost.
    pub node_ttl: Duration,
}

/// Raft timing and log compaction settings.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_interval: Duration,
    pub election_timeout: (Duration, Duration),
    pub write_timeout: Duration,
    pub snapshot_every: u64,
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        let d = StoreConfig::new(0, PathBuf::new(), String::new());
        Self {
            heartbeat_interval: d.heartbeat_interval,
            election_timeout: d.election_timeout,
            write_timeout: d.write_timeout,
            snapshot_every: d.snapshot_every,
            keep_logs: d.keep_logs,
        }
    }
}

impl ServerConfig {
    /// A server with default tuning that bootstraps (or rejoins) on its own.
    pub fn new(node_id: u64, data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            node_id,
            data_dir,
            listen,
            advertise: None,
            join: None,
            restore: None,
            no_bootstrap: false,
            raft: RaftTuning::default(),
            node_ttl: Duration::from_secs(10),
        }
    }
}

/// A started server: its store and the address it actually listens on.
pub struct Server {
    pub store: Store,
    pub address: SocketAddr,
    listener: tokio::net::TcpListener,
    /// Set when this server must still ask a member to add it.
    join: Option<String>,
    advertise: String,
    node_ttl: Duration,
}

impl Server {
    /// Binds the listen address and opens the store. A server with no state bootstraps a
    /// one-member cluster, unless it is to join one (`join`); with `restore` the new cluster
    /// starts from a backup.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(config.node_id > 0, "--node-id must be a positive integer");
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}; is another server running there?", config.listen))?;
        let address = listener.local_addr().context("read listen address")?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| address.to_string());
        let mut store_config = StoreConfig::new(
            config.node_id,
            config.data_dir.join("raft"),
            advertise.clone(),
        );
        store_config.heartbeat_interval = config.raft.heartbeat_interval;
        store_config.election_timeout = config.raft.election_timeout;
        store_config.write_timeout = config.raft.write_timeout;
        store_config.snapshot_every = config.raft.snapshot_every;
        store_config.keep_logs = config.raft.keep_logs;
        let store = Store::open(store_config).await.context("open raft store")?;
        let initialized = store.is_initialized().await?;
        if let Some(backup) = &config.restore {
            anyhow::ensure!(
                !initialized,
                "--restore needs an empty --data-dir; {} already holds a cluster's state",
                config.data_dir.display()
            );
            anyhow::ensure!(
                config.join.is_none(),
                "--restore starts a new cluster; drop --join"
            );
            let bytes = std::fs::read(backup)
                .with_context(|| format!("read backup {}", backup.display()))?;
            store
                .bootstrap_if_new()
                .await
                .context("bootstrap cluster")?;
            let objects = store.restore(&bytes).await.context("restore backup")?;
            tracing::info!(objects, backup = %backup.display(), "restored a new cluster from a backup");
        }
        let join = config.join.clone().filter(|_| !initialized);
        let wait_to_be_added = config.no_bootstrap || join.is_some();
        if config.restore.is_none() && !wait_to_be_added && store.bootstrap_if_new().await? {
            tracing::info!(
                node_id = config.node_id,
                "bootstrapped a new one-member cluster"
            );
        }
        Ok(Self {
            store,
            address,
            listener,
            join,
            advertise,
            node_ttl: config.node_ttl,
        })
    }

    /// Asks the member at `addr` (any member: it forwards to the leader) to add this server,
    /// retrying until it answers.
    async fn join(store: Store, addr: String, advertise: String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let attempt = async {
                let mut client =
                    berth_proto::v1::berth_client::BerthClient::connect(format!("http://{addr}"))
                        .await?;
                client
                    .add_server(berth_proto::v1::AddServerRequest {
                        id: store.node_id(),
                        address: advertise.clone(),
                        learner_only: false,
                    })
                    .await?;
                anyhow::Ok(())
            };
            match attempt.await {
                Ok(()) => {
                    tracing::info!(%addr, "joined the cluster");
                    return;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%addr, "join cluster: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(%addr, "join cluster: {e:#}; giving up");
                    return;
                }
            }
        }
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<berth_proto::v1::berth_server::BerthServer<api::BerthService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("build reflection service")?;
        let metrics = metrics::Metrics::default();
        let liveness = Liveness::default();
        let usage = Usage::default();
        let store = &self.store;
        let controllers = [
            tokio::spawn(leader_loop(store.clone(), Scheduler::new(metrics.clone()))),
            tokio::spawn(leader_loop(store.clone(), ServiceReconciler)),
            tokio::spawn(leader_loop(
                store.clone(),
                NodeMonitor::new(liveness.clone(), self.node_ttl),
            )),
            tokio::spawn(leader_loop(
                store.clone(),
                Autoscaler {
                    usage: usage.clone(),
                },
            )),
        ];
        if let Some(addr) = self.join.clone() {
            tokio::spawn(Self::join(self.store.clone(), addr, self.advertise.clone()));
        }
        tracing::info!(address = %self.address, "server listening");
        // Agent streams never end by themselves: after the shutdown signal, give connections a
        // short grace period instead of waiting for them forever.
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let grace = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let mut builder = tonic::transport::Server::builder()
            // HTTP/1 for `/metrics`; gRPC stays HTTP/2.
            .accept_http1(true)
            .layer(metrics::ApiLatencyLayer(metrics.clone()));
        let serve = builder
            .add_routes(metrics.routes(self.store.clone()))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api::BerthService::new(self.store.clone(), usage.clone()))
            .add_service(agents::AgentServiceImpl::new(
                self.store.clone(),
                liveness,
                usage,
                self.node_ttl,
                metrics.clone(),
            ))
            .add_service(RaftService::new(self.store.clone()))
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY small responses wait ~40 ms for delayed ACKs.
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown,
            );
        let result = tokio::select! {
            r = serve => r.context("serve gRPC"),
            () = grace => Ok(()),
        };
        for c in controllers {
            c.abort();
        }
        self.store.shutdown().await;
        result
    }
}
