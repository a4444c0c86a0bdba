//! Rotating the cluster CA (`berth cluster ca rotate`), as Docker Swarm does it: the server
//! that takes the request creates a new CA, has the current CA cross-sign it, seals the new
//! CA's key under the current CA's key and proposes the rotation ([`start`]). Every server
//! then follows it ([`follow_rotations`]): it opens the new key, signs with the new CA, trusts
//! both CAs and presents its new certificate with the cross-signed one, so that peers, agents
//! and clients that still trust only the old CA accept it; then it says so in the state
//! (`AdoptCaRotation`). The leader's agent streams tell their agents to renew, and agents move
//! onto the new CA with the old one vouching for it. The leader finishes the rotation once
//! nothing depends on the old CA ([`Finisher`], `berth_control::ca`); servers then trust and
//! present the new CA alone, and agents are told to renew once more to drop the old one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_model::CaRotation;
use berth_proto::v1 as pb;
use berth_state::{Command, State};
use berth_store::{error_chain, Store};

use crate::controllers::{Controller, ReadPolicy};
use crate::tls::{rotation_layout, ServerTls};

/// A new rotation replacing the CA this server signs with (the rotation after the state's
/// last one).
pub fn start(tls: &ServerTls, generation: u64) -> Result<CaRotation, berth_tls::TlsError> {
    let current = tls.signing();
    let (next, cross_cert) = current.ca.successor(&format!("rotation {generation}"))?;
    Ok(CaRotation {
        generation,
        from_cert: current.ca.cert_pem().to_owned(),
        from_fingerprint: current.fingerprint.clone(),
        cert: next.cert_pem().to_owned(),
        fingerprint: next.fingerprint()?,
        cross_cert,
        sealed_key: current.ca.seal_successor(&next)?,
        started_at: 0,
        finished_at: None,
        servers_adopted: Default::default(),
    })
}

/// The CA as `berth cluster ca status` shows it.
pub fn status(state: &State, members: &[u64], tls: &ServerTls) -> pb::CaStatus {
    let pending = berth_control::ca::pending(state, members);
    let Some(r) = state.ca_rotation() else {
        let signing = tls.signing();
        return pb::CaStatus {
            fingerprint: signing.fingerprint.clone(),
            trust: signing.ca.cert_pem().to_owned(),
            ..Default::default()
        };
    };
    let (trust, _) = rotation_layout(r);
    pb::CaStatus {
        generation: r.generation,
        fingerprint: r.fingerprint.clone(),
        trust,
        rotating: !r.is_finished(),
        started_at: r.started_at,
        finished_at: r.finished_at.unwrap_or(0),
        servers_pending: pending
            .as_ref()
            .map_or_else(Vec::new, |p| p.servers.clone()),
        nodes_pending: pending.map_or_else(Vec::new, |p| p.nodes),
        previous_fingerprint: r.from_fingerprint.clone(),
    }
}

/// The node IDs of the Raft members (voters and learners).
pub fn members(store: &Store) -> Vec<u64> {
    store
        .cluster_status()
        .members
        .iter()
        .map(|m| m.id)
        .collect()
}

/// Follows the CA rotation this server's state shows, if any, now (a join or renewal is being
/// answered, a rotation was just started); a failure is logged and the follower tries again.
pub fn follow_now(store: &Store, tls: &ServerTls, cert_ttl: Duration) {
    if let Some(r) = store.read_stale(|s| s.ca_rotation().cloned()) {
        if let Err(e) = tls.follow(&r, cert_ttl) {
            tracing::warn!("follow CA rotation {}: {e:#}", r.generation);
        }
    }
}

/// Follows the state's CA rotation on this server, forever: see the module's doc. Each change
/// also rewrites the CA of this server's `admin.toml`, if it has one.
pub async fn follow_rotations(
    store: Store,
    tls: Arc<ServerTls>,
    cert_ttl: Duration,
    data_dir: PathBuf,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let Some(r) = store.read_stale(|s| s.ca_rotation().cloned()) else {
            continue;
        };
        match tls.follow(&r, cert_ttl) {
            Ok(false) => {}
            Ok(true) => {
                last_error.clear();
                if r.is_finished() {
                    tracing::info!(
                        generation = r.generation,
                        fingerprint = %r.fingerprint,
                        "CA rotation finished: trusting the new CA alone"
                    );
                } else {
                    tracing::info!(
                        generation = r.generation,
                        fingerprint = %r.fingerprint,
                        "CA rotation: signing with the new CA, trusting both"
                    );
                }
                if let Err(e) = crate::identity::update_admin_ca(&data_dir, &tls.trust_pem()) {
                    tracing::warn!("update the CA in admin.toml: {e:#}");
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                if message != last_error {
                    tracing::error!(
                        generation = r.generation,
                        "follow the CA rotation: {message}"
                    );
                    last_error = message;
                }
                continue;
            }
        }
        let node_id = store.node_id();
        if !r.is_finished()
            && tls.signs_with(&r.fingerprint)
            && !r.servers_adopted.contains(&node_id)
        {
            let adopt = Command::AdoptCaRotation {
                server: node_id,
                generation: r.generation,
                at: crate::now_ms(),
            };
            if let Err(e) = store.propose(adopt).await {
                tracing::debug!("say this server adopted the new CA: {}", error_chain(&e));
            }
        }
    }
}

/// The leader's controller that finishes a CA rotation once every member adopted the new CA
/// and every node that is not DOWN uses a certificate from it.
pub struct Finisher {
    pub store: Store,
}

impl Controller for Finisher {
    const NAME: &'static str = "ca-rotation";
    const READ: ReadPolicy = ReadPolicy::Linearizable;
    const ON_APPLY: bool = false;

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn plan(&mut self, state: &State, at: u64) -> Vec<Command> {
        let command = berth_control::ca::plan(state, &members(&self.store), at);
        if let Some(Command::FinishCaRotation { generation, .. }) = &command {
            tracing::info!(
                generation,
                "every server and node moved to the new CA: finishing the rotation"
            );
        }
        command.into_iter().collect()
    }
}
