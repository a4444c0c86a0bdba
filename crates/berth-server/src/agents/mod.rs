//! The agent stream (`berth.v1.AgentService/Attach`): an agent registers
//! ([`registration`]), then the server pushes its node's desired task set whenever it changes
//! ([`push`]) while it reads the agent's heartbeats, status and metrics reports ([`reports`]).
//! Agents keep their stream to the leader, which tracks their liveness in memory.
//!
//! A stream is accepted only with the agent certificate of the node it registers, and only if
//! that certificate is recorded for the node (`crate::join`): a removed node's agent is refused
//! (PERMISSION_DENIED), and the stream of an agent whose node is removed ends.

mod push;
mod registration;
mod reports;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use berth_proto::v1::{AgentMessage, ServerMessage};
use berth_store::Store;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::metrics::Metrics;
use crate::Usage;

/// Liveness of connected agents, kept in the leader's memory only (never in the Raft log).
#[derive(Clone, Default)]
pub struct Liveness(Arc<Mutex<HashMap<String, Instant>>>);

impl Liveness {
    fn seen(&self, node: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node.to_owned(), Instant::now());
    }

    /// When the node was last heard from, if it ever was by this server.
    pub fn last_seen(&self, node: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .copied()
    }
}

pub struct AgentServiceImpl {
    store: Store,
    /// Its CA changes (rotations) make the agents renew.
    tls: Arc<crate::tls::ServerTls>,
    liveness: Liveness,
    usage: Usage,
    node_ttl: Duration,
    metrics: Metrics,
    /// Pushed to every agent, for its service discovery.
    endpoints: crate::endpoints::Published,
    /// Opens the secrets of the tasks a node is to start.
    secrets: crate::secrets::Secrets,
}

impl AgentServiceImpl {
    /// The service of a server whose store, TLS and keyring `secrets` holds.
    pub(crate) fn new(
        secrets: crate::secrets::Secrets,
        liveness: Liveness,
        usage: Usage,
        node_ttl: Duration,
        metrics: Metrics,
        endpoints: crate::endpoints::Published,
    ) -> AgentServiceServer<Self> {
        AgentServiceServer::new(Self {
            store: secrets.store().clone(),
            tls: secrets.tls().clone(),
            liveness,
            usage,
            node_ttl,
            metrics,
            endpoints,
            secrets,
        })
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

/// What a session's tasks queue for its agent. Boxed: the channel allocates room for 32
/// messages at once per agent, 16 bytes a slot boxed against 104 (2.8 KiB per agent, 14 MiB
/// for 5,000 of them).
type Outbound = mpsc::Sender<Result<Box<ServerMessage>, Status>>;

/// What the agent of a node that is no longer in the state is told as its stream ends.
fn removed(node: &str) -> Status {
    crate::status::denied(format!(
        "node {node} was removed from the cluster and its certificate revoked; join again with a token (delete the agent's stored certificate, DATA_DIR/tls, and start it with --join-token)"
    ))
}

/// After registering `node`: whether its certificates were revoked in between (a removal that
/// applied between the certificate check and the registration). The registration then undid
/// the removal, so the node is removed again.
async fn removed_meanwhile(store: &Store, node: &str) -> bool {
    if store.read_stale(|s| s.node_certificates(node).is_some()) {
        return false;
    }
    let again = berth_state::Command::RemoveNode {
        node: node.to_owned(),
        at: crate::now_ms(),
    };
    if let Err(e) = store.propose(again).await {
        tracing::warn!(
            node,
            "remove a node registered while it was removed: {}",
            berth_store::error_chain(&e)
        );
    }
    true
}

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    type AttachStream = OutStream;

    async fn attach(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        // Only an agent certificate, and only for the node it names.
        let identity = crate::auth::peer_identity(&req)
            .filter(|id| id.role == berth_tls::Role::Agent)
            .ok_or_else(|| {
                crate::status::unauthenticated(
                    "the agent stream takes only agent certificates of this cluster (join with `berth agent --join-token`)",
                )
            })?;
        let serial = crate::join::peer_serial(&req).ok_or_else(|| {
            crate::status::unauthenticated("the agent certificate has no readable serial number")
        })?;
        let mut inbound = req.into_inner();
        let (node, registered) = self.register(&identity.name, &serial, &mut inbound).await?;
        let span = tracing::info_span!("agent", node = %node.name);
        let (tx, rx) = mpsc::channel::<Result<Box<ServerMessage>, Status>>(16);
        let _ = tx.send(Ok(Box::new(registered))).await;
        tokio::spawn(
            push::desired_sets(
                self.store.clone(),
                self.secrets.clone(),
                node.name.clone(),
                tx.clone(),
            )
            .instrument(span.clone()),
        );
        tokio::spawn(
            push::renewals(
                self.store.clone(),
                node.name.clone(),
                self.tls.changes(),
                tx.clone(),
            )
            .instrument(span.clone()),
        );
        tokio::spawn(push::endpoints(self.endpoints.clone(), tx.clone()).instrument(span.clone()));
        let reader = reports::Reader {
            store: self.store.clone(),
            liveness: self.liveness.clone(),
            usage: self.usage.clone(),
            metrics: self.metrics.clone(),
            node,
            tx,
        };
        tokio::spawn(reader.run(inbound).instrument(span));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|message| message.map(|m| *m)),
        )))
    }
}
