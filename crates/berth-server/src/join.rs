//! The `Join` service: how agents and servers get their certificates. A join is authenticated
//! by a join token's secret (the joiner has no certificate yet, and has already pinned the
//! cluster CA by the token's fingerprint during the handshake); a renewal by the caller's
//! current certificate.
//!
//! Every certificate issued to an agent is recorded in the replicated state
//! (`RecordCertificate`) before it is answered, and an agent's renewal and stream are accepted
//! only with a recorded certificate ([`certificate_recorded`]): removing a node forgets its
//! records, which revokes its certificates.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use berth_model::{NodeRole, NodeStatus};
use berth_proto::v1::join_server::{Join, JoinServer};
use berth_proto::v1::{JoinRequest, JoinResponse, RenewRequest};
use berth_state::{Command, CommandResult, Rejection};
use berth_store::Store;
use berth_tls::{hash_secret, Identity, Issued, Role};
use tonic::{Request, Response, Status};

use crate::auth::peer_identity;
use crate::tls::{hosts, ServerTls};
use crate::{now_ms, status};

pub struct JoinService {
    store: Store,
    tls: Arc<ServerTls>,
    cert_ttl: Duration,
    /// The keys that seal secrets: given to joining servers, exchanged with peers.
    keyring: Arc<crate::keyring::Keyring>,
    /// Node IDs this server gave joining servers recently, so that two joiners asking at once
    /// do not get the same one.
    given: Mutex<BTreeSet<u64>>,
}

impl JoinService {
    pub fn new(
        store: Store,
        tls: Arc<ServerTls>,
        cert_ttl: Duration,
        keyring: Arc<crate::keyring::Keyring>,
    ) -> JoinServer<Self> {
        JoinServer::new(Self {
            store,
            tls,
            cert_ttl,
            keyring,
            given: Mutex::default(),
        })
    }

    /// A node ID no member has and this server has not given out.
    fn free_node_id(&self) -> u64 {
        let members: BTreeSet<u64> = self
            .store
            .cluster_status()
            .members
            .iter()
            .map(|m| m.id)
            .collect();
        let mut given = self.given.lock().unwrap_or_else(PoisonError::into_inner);
        let id = members
            .iter()
            .chain(given.iter())
            .max()
            .copied()
            .unwrap_or(0)
            + 1;
        given.insert(id);
        id
    }

    /// Issues a certificate for `identity` and the answer that carries it, with the fingerprint
    /// of the CA that signed it. A CA rotation this server has not followed yet is followed
    /// first, so that a node asked to renew onto the new CA gets it from any server.
    fn answer(
        &self,
        identity: &Identity,
        csr: &str,
        addresses: &[String],
    ) -> Result<(JoinResponse, Issued, String), Status> {
        crate::rotation::follow_now(&self.store, &self.tls, self.cert_ttl);
        let signing = self.tls.signing();
        let issued = signing
            .ca
            .issue(csr, identity, &hosts(addresses, &[]), self.cert_ttl)
            .map_err(|e| {
                status::bad_request(format!(
                    "certificate for {identity}: {}",
                    berth_model::error_chain(&e)
                ))
            })?;
        let server = identity.role == Role::Server;
        let response = JoinResponse {
            certificate: issued.cert_pem.clone(),
            ca: signing.ca.cert_pem().to_owned(),
            ca_key: if server {
                signing.ca.key_pem().to_owned()
            } else {
                String::new()
            },
            node_id: if server {
                identity.name.parse().unwrap_or(0)
            } else {
                0
            },
            trust: self.tls.trust_pem(),
            chain: signing.chain.clone(),
            keyring: server.then(|| berth_proto::v1::Keyring {
                keys: self.keyring.export(),
            }),
        };
        Ok((response, issued, signing.fingerprint.clone()))
    }

    /// Records an agent's new certificate before it is answered (servers' are not recorded).
    async fn record(
        &self,
        identity: &Identity,
        issued: &Issued,
        ca_fingerprint: String,
        renewing: Option<String>,
    ) -> Result<(), Status> {
        record_certificate(&self.store, identity, issued, ca_fingerprint, renewing)
            .await
            .inspect_err(|e| {
                if e.code() == tonic::Code::PermissionDenied {
                    tracing::warn!(target: "berth::audit", caller = %identity, "renewal refused: {}", e.message());
                }
            })
    }
}

/// Records a certificate issued to an agent, so that its stream and renewals are accepted
/// (other roles' certificates are not recorded). `renewing`: the serial of the certificate the
/// agent renews with, which must still be recorded when this applies (a removal in between
/// wins: PERMISSION_DENIED). `ca_fingerprint`: the fingerprint of the CA that signed it.
pub(crate) async fn record_certificate(
    store: &Store,
    identity: &Identity,
    issued: &Issued,
    ca_fingerprint: String,
    renewing: Option<String>,
) -> Result<(), Status> {
    if identity.role != Role::Agent {
        return Ok(());
    }
    let command = Command::RecordCertificate {
        node: identity.name.clone(),
        serial: issued.serial.clone(),
        expires_at: u64::try_from(issued.not_after)
            .unwrap_or(0)
            .saturating_mul(1000),
        renewing,
        at: now_ms(),
        ca_fingerprint,
    };
    match store.propose(command).await {
        Ok(CommandResult::Rejected(Rejection::NotFound(reason))) => Err(status::denied(reason)),
        Ok(CommandResult::Rejected(r)) => Err(status::from_rejection(r)),
        Ok(_) => Ok(()),
        Err(e) => Err(status::from_store(e)),
    }
}

/// What an agent whose certificate is not recorded is told.
pub(crate) fn revoked(node: &str, serial: &str) -> String {
    format!(
        "the certificate of node {node} (serial {serial}) is not accepted: it was revoked or the node removed (`berth node remove`); join again with a token (delete the agent's stored certificate, DATA_DIR/tls, and start it with --join-token)"
    )
}

/// The serial number of the verified client certificate of `req`, if any.
pub(crate) fn peer_serial<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    berth_tls::serial(certs.first()?.as_ref())
}

/// Whether certificate `serial` is recorded for agent node `node`. This server's own state
/// first; when it is not there, a linearizable read, so that a certificate recorded a moment
/// ago through another server (or before a leader change) is found.
pub(crate) async fn certificate_recorded(
    store: &Store,
    node: &str,
    serial: &str,
) -> Result<bool, Status> {
    if store.read_stale(|s| s.certificate_recorded(node, serial)) {
        return Ok(true);
    }
    store
        .read(|s| s.certificate_recorded(node, serial))
        .await
        .map_err(status::from_store)
}

/// Why a join is refused, logged for the audit trail and answered to the joiner.
fn refuse(who: &str, reason: String, status: fn(String) -> Status) -> Status {
    tracing::warn!(target: "berth::audit", caller = %who, "join refused: {reason}");
    status(reason)
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = req.into_inner();
        let who = format!("join token {}", req.token_id);
        let role = berth_proto::node_role("role", &req.role)
            .map_err(|e| status::invalid_request("", &e))?;
        let now = now_ms();
        // This server's own state first (a join storm of thousands of agents must not cost a
        // quorum round each); linearizable only when the token is not known here yet, for a
        // token created a moment ago on the leader.
        let look = |s: &berth_state::State| {
            (
                s.join_token(&req.token_id).cloned(),
                s.node(&req.name).map(|n| n.status),
            )
        };
        let (record, node) = match self.store.read_stale(look) {
            (Some(record), node) => (Some(record), node),
            (None, _) => self.store.read(look).await.map_err(status::from_store)?,
        };
        let record = record
            .filter(|r| r.secret_matches(&hash_secret(&req.secret)))
            .ok_or_else(|| {
                refuse(
                    &who,
                    format!(
                        "join token {} is not known (revoked, or from another cluster)",
                        req.token_id
                    ),
                    status::unauthenticated,
                )
            })?;
        record
            .allows(role, now)
            .map_err(|e| refuse(&who, e.to_string(), status::denied))?;
        let identity = match role {
            NodeRole::Agent => {
                berth_model::validate_name("name", &req.name)
                    .map_err(|e| status::invalid("", &e))?;
                if matches!(node, Some(s) if s != NodeStatus::Down) {
                    return Err(refuse(
                        &who,
                        format!(
                            "node {} is registered and not DOWN: a node cannot join under the name of one that is alive; pick another name, or wait until it is DOWN",
                            req.name
                        ),
                        status::already_exists,
                    ));
                }
                Identity::new(Role::Agent, req.name)
            }
            NodeRole::Ingress => {
                berth_model::validate_name("name", &req.name)
                    .map_err(|e| status::invalid("", &e))?;
                Identity::new(Role::Ingress, req.name)
            }
            NodeRole::Server if req.name.is_empty() => {
                let id = self.free_node_id();
                tracing::info!(target: "berth::audit", caller = %who, node_id = id, "gave a joining server a node ID");
                return Ok(Response::new(JoinResponse {
                    node_id: id,
                    ..Default::default()
                }));
            }
            NodeRole::Server => {
                let id: u64 = req.name.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
                    status::bad_request(format!(
                        "server node ID {:?} is not a positive integer",
                        req.name
                    ))
                })?;
                if self
                    .store
                    .cluster_status()
                    .members
                    .iter()
                    .any(|m| m.id == id)
                {
                    return Err(refuse(
                        &who,
                        format!("server {id} is already a member; remove it first with `berth cluster remove {id}`, or join without --node-id to get a free ID"),
                        status::already_exists,
                    ));
                }
                Identity::new(Role::Server, id.to_string())
            }
        };
        let (answer, issued, ca) = self.answer(&identity, &req.csr, &req.addresses)?;
        self.record(&identity, &issued, ca, None).await?;
        tracing::info!(target: "berth::audit", caller = %who, joined = %identity, serial = %issued.serial, "issued a certificate");
        Ok(Response::new(answer))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<JoinResponse>, Status> {
        let (identity, serial) = peer_identity(&req).zip(peer_serial(&req)).ok_or_else(|| {
            status::unauthenticated("renewing needs the current certificate (mutual TLS)")
        })?;
        let req = req.into_inner();
        // An agent renews only with a recorded certificate, and the renewal is recorded only
        // while that one still is.
        let mut renewing = None;
        if identity.role == Role::Agent {
            if !certificate_recorded(&self.store, &identity.name, &serial).await? {
                return Err(refuse(
                    &identity.to_string(),
                    revoked(&identity.name, &serial),
                    status::denied,
                ));
            }
            let known = self.store.read_stale(|s| s.node(&identity.name).is_some());
            if !known {
                return Err(refuse(
                    &identity.to_string(),
                    format!(
                        "node {} is not registered (removed?): join again with a token",
                        identity.name
                    ),
                    status::denied,
                ));
            }
            renewing = Some(serial);
        }
        let (answer, issued, generation) = self.answer(&identity, &req.csr, &req.addresses)?;
        self.record(&identity, &issued, generation, renewing)
            .await?;
        tracing::info!(target: "berth::audit", caller = %identity, serial = %issued.serial, "renewed a certificate");
        Ok(Response::new(answer))
    }

    async fn exchange_keyring(
        &self,
        req: Request<berth_proto::v1::KeyringRequest>,
    ) -> Result<Response<berth_proto::v1::Keyring>, Status> {
        let identity = peer_identity(&req)
            .filter(|i| i.role == Role::Server)
            .ok_or_else(|| status::denied("only servers exchange the secrets keyring"))?;
        let pull_from = req.into_inner().pull_from;
        if !pull_from.is_empty() {
            let peers = crate::secrets::Secrets::new(
                self.store.clone(),
                self.keyring.clone(),
                self.tls.clone(),
            );
            if let Err(e) = peers.pull(&pull_from).await {
                tracing::warn!(peer = %identity, addr = %pull_from, "pull the secrets keyring: {e:#}");
            }
        }
        Ok(Response::new(berth_proto::v1::Keyring {
            keys: self.keyring.export(),
        }))
    }
}
