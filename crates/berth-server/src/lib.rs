//! A berth control node: one Raft member ([`berth_store`]) plus every gRPC service on one
//! listen address (public API, agent stream, Raft transport, health, reflection) and the
//! leader's controllers.

mod agents;
mod api;
pub mod scheduler;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use berth_store::{RaftService, Store, StoreConfig};
use tokio_stream::wrappers::TcpListenerStream;

pub use agents::{desired_tasks, Liveness};

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
}

/// A started server: its store and the address it actually listens on.
pub struct Server {
    pub store: Store,
    pub address: SocketAddr,
    listener: tokio::net::TcpListener,
}

impl Server {
    /// Binds the listen address and opens the store (bootstrapping a one-member cluster when
    /// there is no state yet).
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}; is another server running there?", config.listen))?;
        let address = listener.local_addr().context("read listen address")?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| address.to_string());
        let store = Store::open(StoreConfig::new(
            config.node_id,
            config.data_dir.join("raft"),
            advertise,
        ))
        .await
        .context("open raft store")?;
        if store
            .bootstrap_if_new()
            .await
            .context("bootstrap cluster")?
        {
            tracing::info!(
                node_id = config.node_id,
                "bootstrapped a new one-member cluster"
            );
        }
        Ok(Self {
            store,
            address,
            listener,
        })
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
        let controllers = tokio::spawn(scheduler::run(self.store.clone()));
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
        let serve = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api::BerthService::new(self.store.clone()))
            .add_service(agents::AgentServiceImpl::new(
                self.store.clone(),
                Liveness::default(),
            ))
            .add_service(RaftService::new(self.store.raft().clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown);
        let result = tokio::select! {
            r = serve => r.context("serve gRPC"),
            () = grace => Ok(()),
        };
        controllers.abort();
        self.store.shutdown().await;
        result
    }
}
