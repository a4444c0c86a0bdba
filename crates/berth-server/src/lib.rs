//! A berth control node: one Raft member ([`berth_store`]) plus every gRPC service on one
//! listen address (public API, agent stream, Raft transport, health, reflection) and the
//! leader's controllers.

mod agents;
mod api;
mod auth;
pub mod controllers;
mod ecs;
mod endpoints;
mod identity;
mod join;
mod keyring;
pub mod metrics;
mod rotation;
mod secrets;
pub mod status;
mod threads;
pub mod tls;
mod usage;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_store::{RaftService, Store, StoreConfig};
use berth_tls::Role;
use controllers::{
    leader_loop, Autoscaler, Meter, NodeMonitor, Retention, Scheduler, ServiceReconciler,
};
use identity::Origin;
use tls::ServerTls;

pub use agents::Liveness;
pub use berth_control::metering::Policy as MeteringPolicy;
pub use berth_control::retention::Policy as RetentionPolicy;
pub use usage::Usage;

/// Milliseconds since the Unix epoch by the leader's clock (`berth_store::now_ms`: a step of the
/// wall clock while this server leads moves no timestamp); only the leader's handlers call it,
/// before proposing.
pub fn now_ms() -> u64 {
    berth_store::now_ms()
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This server's Raft member ID; `None`: the one its data dir holds, 1 for a new cluster,
    /// or a free one given by the cluster it joins.
    pub node_id: Option<u64>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The address other servers and agents reach this one at; `listen` when unset.
    pub advertise: Option<String>,
    /// Join the cluster of the server at this address (first start only): get a certificate
    /// with `join_token`, then ask to be added (unless `no_bootstrap`).
    pub join: Option<String>,
    /// A join token for a server (`berth cluster token create --role server`).
    pub join_token: Option<String>,
    /// More names for this server's certificate (DNS names or IP addresses).
    pub tls_san: Vec<String>,
    /// How long certificates this server issues (its own included) live; renewed at two thirds.
    pub cert_ttl: Duration,
    /// Serve `/metrics` without a token or certificate.
    pub metrics_public: bool,
    /// Start a new cluster whose state is this backup (`berth cluster snapshot save`).
    pub restore: Option<PathBuf>,
    /// With no state, wait to be added (`berth cluster add`) instead of bootstrapping (with
    /// `join`: get a certificate, but do not ask to be added).
    pub no_bootstrap: bool,
    /// Raft timing and compaction; `data_dir`, `node_id` and `advertise_addr` are filled in.
    pub raft: RaftTuning,
    /// A node whose agent is silent this long becomes DOWN and its tasks are lost.
    pub node_ttl: Duration,
    /// How long finished work is kept (stopped tasks, unused INACTIVE revisions, DOWN nodes).
    pub retention: berth_control::retention::Policy,
    /// The metering ledger's bucket length and retention.
    pub metering: berth_control::metering::Policy,
    /// Serve ECS's API here (plain HTTP on a loopback address, HTTPS otherwise).
    pub ecs_listen: Option<SocketAddr>,
    /// The AWS account ID in the ARNs the ECS endpoint answers (12 digits).
    pub ecs_account: String,
}

/// The account ID ECS ARNs carry unless `--ecs-account-id` says otherwise.
pub const DEFAULT_ECS_ACCOUNT: &str = "000000000000";

/// Raft timing and log compaction settings.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_interval: Duration,
    pub election_timeout: (Duration, Duration),
    pub write_timeout: Duration,
    pub snapshot_every: u64,
    pub snapshot_log_bytes: u64,
    pub keep_logs: u64,
    /// Linearizable reads from the leader's lease (see `berth_store::StoreConfig`).
    pub lease_reads: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        let d = StoreConfig::new(0, PathBuf::new(), String::new());
        Self {
            heartbeat_interval: d.heartbeat_interval,
            election_timeout: d.election_timeout,
            write_timeout: d.write_timeout,
            snapshot_every: d.snapshot_every,
            snapshot_log_bytes: d.snapshot_log_bytes,
            keep_logs: d.keep_logs,
            lease_reads: d.lease_reads,
        }
    }
}

impl ServerConfig {
    /// A server with default tuning that bootstraps (or rejoins) on its own.
    pub fn new(node_id: Option<u64>, data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            node_id,
            data_dir,
            listen,
            advertise: None,
            join: None,
            join_token: None,
            tls_san: Vec::new(),
            cert_ttl: berth_tls::DEFAULT_CERT_TTL,
            metrics_public: false,
            restore: None,
            no_bootstrap: false,
            raft: RaftTuning::default(),
            node_ttl: Duration::from_secs(10),
            retention: berth_control::retention::Policy {
                tasks_ms: 3_600_000,
                keep_per_service: 5,
                nodes_ms: 86_400_000,
            },
            metering: berth_control::metering::Policy {
                bucket_ms: berth_model::USAGE_BUCKET_MS,
                keep_ms: 7 * 86_400_000,
            },
            ecs_listen: None,
            ecs_account: DEFAULT_ECS_ACCOUNT.to_owned(),
        }
    }
}

/// A started server: its store and the address it actually listens on.
pub struct Server {
    pub store: Store,
    pub address: SocketAddr,
    /// Where the ECS endpoint listens, when there is one.
    pub ecs_address: Option<SocketAddr>,
    listener: tokio::net::TcpListener,
    /// Set when this server must still ask a member to add it.
    join: Option<String>,
    advertise: String,
    node_ttl: Duration,
    retention: berth_control::retention::Policy,
    metering: berth_control::metering::Policy,
    tls: Arc<ServerTls>,
    /// This start created the cluster: make its first admin credentials.
    fresh: bool,
    data_dir: PathBuf,
    cert_ttl: Duration,
    metrics_public: bool,
    /// The keys that seal secrets (`DATA_DIR/secrets.keyring`).
    keyring: Arc<keyring::Keyring>,
    /// The ECS endpoint, when asked for.
    ecs: Option<ecs::Endpoint>,
}

impl Server {
    /// Binds the listen address and opens the store. A server with no state bootstraps a
    /// one-member cluster, unless it is to join one (`join`); with `restore` the new cluster
    /// starts from a backup.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.node_id != Some(0),
            "--node-id must be a positive integer"
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}; is another server running there?", config.listen))?;
        let address = listener.local_addr().context("read listen address")?;
        anyhow::ensure!(
            config.ecs_account.len() == 12
                && config.ecs_account.bytes().all(|b| b.is_ascii_digit()),
            "--ecs-account-id must be 12 digits, as an AWS account ID is (got {:?})",
            config.ecs_account
        );
        let ecs = match config.ecs_listen {
            Some(addr) => Some(ecs::Endpoint {
                listener: tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!("bind the ECS endpoint's {addr}; is something else listening there?")
                })?,
                account: config.ecs_account.clone(),
            }),
            None => None,
        };
        anyhow::ensure!(
            config.advertise.is_some() || !address.ip().is_unspecified(),
            "the server listens on {address}, which others cannot dial; set --advertise HOST:PORT to the address other servers and agents reach it at"
        );
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| address.to_string());
        let join_with = match (&config.join, &config.join_token) {
            (Some(addr), Some(token)) => Some((addr.as_str(), token.as_str())),
            _ => None,
        };
        let (node_id, tls, origin) = identity::establish(identity::Wanted {
            data_dir: &config.data_dir,
            node_id: config.node_id,
            advertise: &advertise,
            sans: tls::hosts(std::slice::from_ref(&advertise), &config.tls_san),
            join: join_with,
            may_bootstrap: !config.no_bootstrap && config.join.is_none(),
            cert_ttl: config.cert_ttl,
        })
        .await?;
        let keyring = Arc::new(keyring::Keyring::open(&config.data_dir)?);
        let mut store_config =
            StoreConfig::new(node_id, config.data_dir.join("raft"), advertise.clone());
        store_config.dialer = Some(tls.server_dialer()?);
        store_config.heartbeat_interval = config.raft.heartbeat_interval;
        store_config.election_timeout = config.raft.election_timeout;
        store_config.write_timeout = config.raft.write_timeout;
        store_config.snapshot_every = config.raft.snapshot_every;
        store_config.snapshot_log_bytes = config.raft.snapshot_log_bytes;
        store_config.keep_logs = config.raft.keep_logs;
        store_config.lease_reads = config.raft.lease_reads;
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
        let join = config
            .join
            .clone()
            .filter(|_| !initialized && !config.no_bootstrap);
        let wait_to_be_added = config.no_bootstrap || config.join.is_some();
        let mut fresh = config.restore.is_some() && matches!(origin, Origin::Bootstrapped);
        if config.restore.is_none() && !wait_to_be_added && store.bootstrap_if_new().await? {
            tracing::info!(node_id, "bootstrapped a new one-member cluster");
            fresh = true;
        }
        let ecs_address = match &ecs {
            Some(e) => Some(
                e.listener
                    .local_addr()
                    .context("read the ECS endpoint's address")?,
            ),
            None => None,
        };
        Ok(Self {
            store,
            address,
            ecs_address,
            listener,
            join,
            advertise,
            node_ttl: config.node_ttl,
            retention: config.retention,
            metering: config.metering,
            tls: Arc::new(tls),
            fresh,
            data_dir: config.data_dir,
            cert_ttl: config.cert_ttl,
            metrics_public: config.metrics_public,
            keyring,
            ecs,
        })
    }

    /// TLS material for an agent or an ingress in this same process (`berth dev`): a key and
    /// a certificate for `role` `name` from this server's CA, valid for `addresses`, recorded
    /// in the state as a join records it (the agent stream accepts only recorded
    /// certificates).
    pub async fn local_material(
        &self,
        role: Role,
        name: &str,
        addresses: &[String],
    ) -> anyhow::Result<berth_tls::dir::Material> {
        let identity = berth_tls::Identity::new(role, name);
        let signing = self.tls.signing();
        let (issued, key) =
            signing
                .ca
                .issue_new(&identity, &tls::hosts(addresses, &[]), self.cert_ttl)?;
        join::record_certificate(
            &self.store,
            &identity,
            &issued,
            signing.fingerprint.clone(),
            None,
        )
        .await
        .map_err(|s| anyhow::anyhow!("record the certificate of {identity}: {}", s.message()))?;
        Ok(berth_tls::dir::Material::answered(
            signing.ca.cert_pem().to_owned(),
            None,
            issued.cert_pem,
            key.pem(),
            &self.tls.trust_pem(),
            &signing.chain,
        ))
    }

    /// Asks the member at `addr` (any member: it forwards to the leader) to add this server,
    /// retrying until it answers.
    async fn join(store: Store, tls: Arc<ServerTls>, addr: String, advertise: String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let attempt = async {
                // This server's own certificate: a server may add itself.
                let channel = tls.server_dialer()?.connect(&addr).await?;
                let mut client = berth_proto::v1::berth_client::BerthClient::new(channel);
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
        // Both versions of reflection: grpcurl and evans ask v1; Python's grpcio-reflection,
        // Postman and older tools ask v1alpha only.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("build reflection service (v1alpha)")?;
        let reflection = reflection()
            .build_v1()
            .context("build reflection service")?;
        // Before anything is spawned: a failure here leaves nothing running.
        let api_threads = threads::ApiThreads::start().context("start the API's threads")?;
        let metrics = metrics::Metrics::default();
        let liveness = Liveness::default();
        let usage = Usage::default();
        let store = &self.store;
        let (endpoints, publish_endpoints) = endpoints::publisher(store.clone());
        let controllers = [
            tokio::spawn(publish_endpoints),
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
            tokio::spawn(leader_loop(store.clone(), Retention::new(self.retention))),
            tokio::spawn(leader_loop(
                store.clone(),
                Meter {
                    usage: usage.clone(),
                    policy: self.metering,
                },
            )),
            tokio::spawn(leader_loop(
                store.clone(),
                rotation::Finisher {
                    store: store.clone(),
                },
            )),
            tokio::spawn(rotation::follow_rotations(
                store.clone(),
                self.tls.clone(),
                self.cert_ttl,
                self.data_dir.clone(),
            )),
        ];
        if let Some(addr) = self.join.clone() {
            tokio::spawn(Self::join(
                self.store.clone(),
                self.tls.clone(),
                addr,
                self.advertise.clone(),
            ));
        }
        if self.fresh {
            let (store, dir, advertise) = (
                self.store.clone(),
                self.data_dir.clone(),
                self.advertise.clone(),
            );
            let ca = self.tls.ca().cert_pem().to_owned();
            tokio::spawn(async move {
                if let Err(e) =
                    identity::write_admin_credentials(&store, &dir, &advertise, &ca).await
                {
                    tracing::error!("create the admin credentials: {e:#}");
                }
            });
        }
        let renewals = tokio::spawn(renew_certificates(self.tls.clone(), self.cert_ttl));
        tracing::info!(address = %self.address, "server listening");
        // The shutdown signal: both servers below stop on it (or once it is dropped).
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = {
            let stop_rx = stop_rx.clone();
            move || {
                let mut stop = stop_rx.clone();
                async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                }
            }
        };
        let shutdown = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        // Agent streams never end by themselves: after the shutdown signal, give connections a
        // short grace period instead of waiting for them forever.
        let grace = async move {
            let mut stop = stop_rx;
            if stop.wait_for(|stop| *stop).await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let mut builder = tonic::transport::Server::builder()
            // HTTP/1 for `/metrics`; gRPC stays HTTP/2.
            .accept_http1(true)
            .layer(metrics::ApiLatencyLayer(metrics.clone()));
        let dialer = self.tls.agent_dialer()?;
        let secrets =
            secrets::Secrets::new(self.store.clone(), self.keyring.clone(), self.tls.clone());
        let keyrings = tokio::spawn(secrets.clone().keep_keyrings_complete());
        let api = Arc::new(api::BerthService::new(
            self.store.clone(),
            usage.clone(),
            self.tls.clone(),
            dialer,
            self.cert_ttl,
            secrets.clone(),
        ));
        let tls_config = Arc::new(self.tls.server_config()?);
        let ecs = self.ecs.map(|endpoint| {
            let (tls, api) = (tls_config.clone(), api.clone());
            tokio::spawn(async move {
                if let Err(e) = ecs::serve(endpoint, tls, api).await {
                    tracing::error!("ECS endpoint: {e:#}");
                }
            })
        });
        // HTTP beside gRPC: /metrics, and the web console under /ui/.
        let http_routes = metrics
            .router(self.store.clone(), self.metrics_public)
            .merge(api::console_routes(api.clone()));
        let router = builder
            .add_routes(tonic::service::Routes::from(http_routes))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(api::BerthService::grpc(api))
            .add_service(agents::AgentServiceImpl::new(
                secrets,
                liveness,
                usage,
                self.node_ttl,
                metrics.clone(),
                endpoints,
            ))
            .add_service(join::JoinService::new(
                self.store.clone(),
                self.tls.clone(),
                self.cert_ttl,
                self.keyring.clone(),
            ))
            // Raft traffic only from servers of this cluster.
            .add_service(tonic::service::interceptor::InterceptedService::new(
                RaftService::new(self.store.clone()),
                |req: tonic::Request<()>| match auth::peer_identity(&req) {
                    Some(id) if id.role == Role::Server => Ok(req),
                    _ => Err(status::denied(
                        "the Raft transport takes only server certificates of this cluster",
                    )),
                },
            ));
        // Agents' connections here, every other one on the API's threads (`threads.rs`).
        let (agents, others) = berth_tls::net::incoming_split(
            self.listener,
            tls_config,
            threads::from_an_agent,
            Some(api_threads.handle().clone()),
        );
        let api = api_threads.handle().spawn(
            router
                .clone()
                .serve_with_incoming_shutdown(others, stopped()),
        );
        let serve = async move {
            let api = async move {
                api.await
                    .context("the API's server stopped")?
                    .context("serve the API")
            };
            let agents = async move {
                router
                    .serve_with_incoming_shutdown(agents, stopped())
                    .await
                    .context("serve the agents")
            };
            let shutdown = async move {
                shutdown.await;
                Ok(())
            };
            tokio::try_join!(shutdown, agents, api).map(|_| ())
        };
        let store = self.store.clone();
        let result = tokio::select! {
            r = serve => r,
            () = grace => Ok(()),
            why = store.fatal() => {
                let raft = self.data_dir.join("raft");
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                health
                    .set_not_serving::<berth_proto::v1::berth_server::BerthServer<api::BerthService>>()
                    .await;
                tracing::error!(
                    data_dir = %raft.display(),
                    "storage failed: {why}; health is NOT_SERVING and the server exits"
                );
                // A moment for health checks to see it before the port closes.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err(anyhow::anyhow!(
                    "storage under {} failed: {why}. This server stopped (nothing it acknowledged is lost: Raft acknowledges only what is on disk). Free space or repair the disk, then start it again with the same --data-dir: it catches up from the other servers",
                    raft.display()
                ))
            }
        };
        for c in controllers {
            c.abort();
        }
        renewals.abort();
        keyrings.abort();
        if let Some(ecs) = ecs {
            ecs.abort();
        }
        self.store.shutdown().await;
        // After the store: a channel its calls made from the API's threads runs there.
        drop(api_threads);
        result
    }
}

/// Renews this server's certificate from the CA it holds once two thirds of its life have
/// passed; open connections keep theirs, new handshakes present the new one.
async fn renew_certificates(tls: Arc<ServerTls>, ttl: Duration) {
    loop {
        // Certificates' validity is wall-clock time.
        let now = i64::try_from(berth_store::wall_ms() / 1000).unwrap_or(i64::MAX);
        let not_after = tls.not_after();
        let life = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let renew_at = not_after - life / 3;
        if now >= renew_at {
            match tls.renew(ttl) {
                Ok(()) => tracing::info!(
                    expires = tls.not_after(),
                    "renewed this server's certificate"
                ),
                Err(e) => tracing::warn!("renew this server's certificate: {e:#}"),
            }
        }
        let wait = (renew_at - now).clamp(1, 60);
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(60))).await;
    }
}
