//! Renewing the agent's certificate before it expires: when two thirds of its life have passed,
//! the agent sends a new signing request from the same key (`Join/Renew`, authenticated by its
//! current certificate), replaces its credentials in place and saves them. Open streams stay
//! up: TLS checks certificates only at the handshake, and the next handshakes (new streams,
//! servers dialling the agent's API) use the new certificate.

use std::time::Duration;

use anyhow::Context as _;
use berth_proto::v1::join_client::JoinClient;
use berth_proto::v1::RenewRequest;
use berth_tls::dir::{Material, TlsDir};
use berth_tls::{Identity, NodeKey};

use super::call::{call_servers, RPC_TIMEOUT};
use super::join::{join, save};
use super::{check_answer, format_time, how_to_join, unix_now, Held, Member, NodeTls, Vouch};

/// When a certificate the agent got at `issued_at`, valid until `not_after`, is to be renewed
/// (seconds since the Unix epoch): once two thirds of its life have passed, which leaves a
/// third of it (8 h of the default 24 h) to get through server outages.
pub fn renew_at(issued_at: i64, not_after: i64) -> i64 {
    if not_after <= issued_at {
        return not_after;
    }
    let life = not_after.saturating_sub(issued_at);
    // Two thirds of it, rounded down, without overflowing.
    issued_at.saturating_add(life / 3 * 2 + life % 3 * 2 / 3)
}

/// Whether the certificate is due for renewal at `now`.
pub fn renewal_due(issued_at: i64, not_after: i64, now: i64) -> bool {
    now >= renew_at(issued_at, not_after)
}

/// How long to wait after a failed renewal: a tenth of the time left, between 1 s and 1 min,
/// so that a short-lived certificate is tried often enough and a long-lived one not too often.
pub fn retry_after(now: i64, not_after: i64) -> Duration {
    let left = u64::try_from(not_after.saturating_sub(now)).unwrap_or(0);
    Duration::from_secs((left / 10).clamp(1, 60))
}

/// Each round of renewal attempts (all servers, with back-off) may take this long.
const ROUND: Duration = Duration::from_secs(30);

/// Renews the certificate whenever it is due, forever.
pub(crate) async fn renewals(config: &Member, tls: &NodeTls, mut held: Held, address: &str) {
    let identity = config.identity();
    let dir = TlsDir::new(&config.data_dir);
    loop {
        let now = unix_now();
        if !held.renew_now && !renewal_due(held.issued_at, held.not_after, now) {
            let wait = renew_at(held.issued_at, held.not_after) - now;
            let wait = Duration::from_secs(u64::try_from(wait).unwrap_or(0));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = tls.renew_now.notified() => {
                    tracing::info!("a server asked this node to renew its certificate now");
                    held.renew_now = true;
                }
            }
            continue;
        }
        let result = if held.not_after <= now {
            rejoin(config, tls, &identity, address, &dir).await
        } else {
            renew(config, tls, &held, &identity, address, &dir).await
        };
        match result {
            Ok(next) => {
                tracing::info!(
                    expires = %format_time(next.not_after),
                    "renewed this node's certificate"
                );
                held = next;
            }
            Err(e) => {
                let now = unix_now();
                if held.not_after <= now {
                    tracing::error!(
                        expired = %format_time(held.not_after),
                        "this node's certificate expired and the servers no longer accept it: {e:#}"
                    );
                } else {
                    tracing::warn!(
                        expires = %format_time(held.not_after),
                        "renew this node's certificate: {e:#}"
                    );
                }
                tokio::time::sleep(retry_after(now, held.not_after)).await;
            }
        }
    }
}

/// One renewal: a new certificate for the same key, over mutual TLS with the current one.
pub(super) async fn renew(
    config: &Member,
    tls: &NodeTls,
    held: &Held,
    identity: &Identity,
    address: &str,
    dir: &TlsDir,
) -> anyhow::Result<Held> {
    let key = NodeKey::from_pem(&held.material.key_pem).context("read this node's key")?;
    let request = RenewRequest {
        csr: key
            .csr(identity)
            .context("make a certificate signing request")?,
        addresses: vec![address.to_owned()],
    };
    let answer = call_servers(&config.servers, ROUND, |server| {
        let (dialer, request) = (tls.dialer.clone(), request.clone());
        async move {
            let channel = dialer.connect(&server).await?;
            let mut request = tonic::Request::new(request);
            request.set_timeout(RPC_TIMEOUT);
            Ok(JoinClient::new(channel).renew(request).await?.into_inner())
        }
    })
    .await?;
    let material = Material::answered(
        answer.ca,
        None,
        answer.certificate,
        held.material.key_pem.clone(),
        &answer.trust,
        &answer.chain,
    );
    let info = check_answer(&material, Vouch::Trusted(&tls.trust.pem()), identity)?;
    if material.ca_pem.trim() != held.material.ca_pem.trim() {
        tracing::info!(
            ca = %berth_tls::fingerprint(&material.ca_pem).unwrap_or_default(),
            "the cluster CA was rotated: this node's certificate is now from the new CA"
        );
    }
    // Saved first: if that fails, the old certificate stays in use (and on disk) and the
    // renewal is tried again.
    save(dir, &material).await?;
    let held = Held {
        material,
        issued_at: unix_now(),
        not_after: info.not_after,
        serial: info.serial,
        renew_now: false,
    };
    tls.replace(&held)?;
    Ok(held)
}

/// After expiry, renewal is no longer possible (the servers refuse the certificate): join again
/// with the join token if the agent was given one.
async fn rejoin(
    config: &Member,
    tls: &NodeTls,
    identity: &Identity,
    address: &str,
    dir: &TlsDir,
) -> anyhow::Result<Held> {
    let Some(token) = &config.join_token else {
        anyhow::bail!(
            "restart the {} with a join token: {}",
            config.role,
            how_to_join(config.role)
        );
    };
    let held = join(config, token, identity, address, dir).await?;
    tls.replace(&held)?;
    Ok(held)
}
