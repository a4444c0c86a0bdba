//! Joining the cluster with a join token: the agent trusts a server only if it presents the CA
//! the token pins (the TLS handshake fails otherwise, before anything is sent), then trades the
//! token's secret and a signing request for its certificate, and keeps both in `DATA_DIR/tls`.

use anyhow::Context as _;
use berth_proto::v1::join_client::JoinClient;
use berth_proto::v1::JoinRequest;
use berth_tls::dir::{Material, TlsDir};
use berth_tls::net::Dialer;
use berth_tls::tls::{client_config_for, Pinned, Trust};
use berth_tls::{Identity, JoinToken, NodeKey, Role};

use super::call::{call_servers, Attempt, CallError, RPC_TIMEOUT};
use super::{check_answer, format_time, how_to_join, unix_now, Held, Member, Vouch};

pub(super) async fn join(
    config: &Member,
    token: &JoinToken,
    identity: &Identity,
    address: &str,
    dir: &TlsDir,
) -> anyhow::Result<Held> {
    let _turn = match &config.join_gate {
        Some(gate) => Some(gate.acquire().await.context("wait for a turn to join")?),
        None => None,
    };
    let pinned = Pinned::new(&token.ca_fingerprint);
    let dialer = Dialer::new(
        client_config_for(&Trust::Pinned(pinned.clone()), None, Role::Server)
            .context("TLS configuration for joining")?,
    );
    let key = NodeKey::generate().context("generate this node's key")?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        role: identity.role.to_string(),
        name: identity.name.clone(),
        csr: key
            .csr(identity)
            .context("make a certificate signing request")?,
        addresses: vec![address.to_owned()],
    };
    tracing::info!(servers = ?config.servers, "joining the cluster with the join token");
    let answer = call_servers(&config.servers, config.join_timeout, |server| {
        let (dialer, request, pinned) = (dialer.clone(), request.clone(), pinned.clone());
        async move {
            let channel = match dialer.connect(&server).await {
                Ok(channel) => channel,
                Err(_) if pinned.saw_another_ca() => return Err(Attempt::OtherCa),
                Err(e) => return Err(e.into()),
            };
            let mut request = tonic::Request::new(request);
            request.set_timeout(RPC_TIMEOUT);
            Ok(JoinClient::new(channel).join(request).await?.into_inner())
        }
    })
    .await
    .map_err(|e| advise(e, identity))?;
    let material = Material::answered(
        answer.ca,
        None,
        answer.certificate,
        key.pem(),
        &answer.trust,
        &answer.chain,
    );
    let info = check_answer(&material, Vouch::Pinned(&token.ca_fingerprint), identity)
        .context("join the cluster")?;
    save(dir, &material).await?;
    tracing::info!(
        expires = %format_time(info.not_after),
        "joined the cluster; certificate saved in {}",
        dir.path().display()
    );
    Ok(Held {
        material,
        issued_at: unix_now(),
        not_after: info.not_after,
        serial: info.serial,
        renew_now: false,
    })
}

/// The error of a join that failed, followed by what to do about it.
fn advise(e: CallError, identity: &Identity) -> anyhow::Error {
    let advice = match &e {
        CallError::Refused { status, .. } if status.code() == tonic::Code::Unauthenticated => {
            format!(
                "the join token is not valid there (revoked, expired, mistyped, or not {} {} token); {}",
                if identity.role == Role::Agent || identity.role == Role::Ingress { "an" } else { "a" },
                identity.role,
                how_to_join(identity.role)
            )
        }
        CallError::Refused { .. } => {
            format!("{identity} cannot join as it is; fix what the server says")
        }
        CallError::Deadline { .. } => "check --servers and that a server is up".to_owned(),
        CallError::OtherCa { .. } => "nothing was sent to it".to_owned(),
    };
    // The cause first, then what to do: the whole sentence is the error (nothing below it).
    anyhow::anyhow!("join the cluster: {e}; {advice}")
}

/// Writes the material to `DATA_DIR/tls` (keys 0600) off the async threads.
pub(super) async fn save(dir: &TlsDir, material: &Material) -> anyhow::Result<()> {
    let (d, m) = (dir.clone(), material.clone());
    tokio::task::spawn_blocking(move || d.save(&m))
        .await
        .context("save the certificate")?
        .with_context(|| format!("save the certificate in {}", dir.path().display()))
}
