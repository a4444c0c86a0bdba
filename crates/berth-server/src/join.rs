//! The `Join` service: how agents and servers get their certificates. A join is authenticated
//! by a join token's secret (the joiner has no certificate yet, and has already pinned the
//! cluster CA by the token's fingerprint during the handshake); a renewal by the caller's
//! current certificate.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use berth_model::{NodeRole, NodeStatus};
use berth_proto::v1::join_server::{Join, JoinServer};
use berth_proto::v1::{JoinRequest, JoinResponse, RenewRequest};
use berth_store::Store;
use berth_tls::{hash_secret, Identity, Role};
use tonic::{Request, Response, Status};

use crate::auth::peer_identity;
use crate::tls::{hosts, ServerTls};
use crate::{now_ms, status};

pub struct JoinService {
    store: Store,
    tls: Arc<ServerTls>,
    cert_ttl: Duration,
    /// Node IDs this server gave joining servers recently, so that two joiners asking at once
    /// do not get the same one.
    given: Mutex<BTreeSet<u64>>,
}

impl JoinService {
    pub fn new(store: Store, tls: Arc<ServerTls>, cert_ttl: Duration) -> JoinServer<Self> {
        JoinServer::new(Self {
            store,
            tls,
            cert_ttl,
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

    fn answer(
        &self,
        identity: &Identity,
        csr: &str,
        addresses: &[String],
    ) -> Result<JoinResponse, Status> {
        let issued = self
            .tls
            .ca()
            .issue(csr, identity, &hosts(addresses, &[]), self.cert_ttl)
            .map_err(|e| {
                status::bad_request(format!(
                    "certificate for {identity}: {}",
                    berth_model::error_chain(&e)
                ))
            })?;
        let server = identity.role == Role::Server;
        Ok(JoinResponse {
            certificate: issued.cert_pem,
            ca: self.tls.ca().cert_pem().to_owned(),
            ca_key: if server {
                self.tls.ca().key_pem().to_owned()
            } else {
                String::new()
            },
            node_id: if server {
                identity.name.parse().unwrap_or(0)
            } else {
                0
            },
        })
    }
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
        // Linearizable: a token created a moment ago on the leader must be found here.
        let (record, node) = self
            .store
            .read(|s| {
                (
                    s.join_token(&req.token_id).cloned(),
                    s.node(&req.name).map(|n| n.status),
                )
            })
            .await
            .map_err(status::from_store)?;
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
        let answer = self.answer(&identity, &req.csr, &req.addresses)?;
        tracing::info!(target: "berth::audit", caller = %who, joined = %identity, "issued a certificate");
        Ok(Response::new(answer))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<JoinResponse>, Status> {
        let identity = peer_identity(&req).ok_or_else(|| {
            status::unauthenticated("renewing needs the current certificate (mutual TLS)")
        })?;
        let req = req.into_inner();
        if identity.role == Role::Agent {
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
        }
        let answer = self.answer(&identity, &req.csr, &req.addresses)?;
        tracing::info!(target: "berth::audit", caller = %identity, "renewed a certificate");
        Ok(Response::new(answer))
    }
}
