//! Who this server is at start-up: its node ID and TLS material, found in the data dir (a
//! restart), obtained by joining with a join token (a new member), or created with a new
//! cluster CA (a new cluster). A new cluster also gets its first admin token, written with the
//! CA and the server's address to `DATA_DIR/admin.toml` (0600) for the CLI.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use berth_model::{AccessRole, ApiTokenRecord};
use berth_proto::v1::join_client::JoinClient;
use berth_proto::v1::JoinRequest;
use berth_state::{Command, CommandResult};
use berth_store::Store;
use berth_tls::dir::Material;
use berth_tls::net::Dialer;
use berth_tls::tls::{client_config_for, Pinned, Trust};
use berth_tls::{hash_secret, ApiToken, Identity, JoinToken, NodeKey, Role};

use crate::now_ms;
use crate::tls::ServerTls;

const NODE_ID_FILE: &str = "node-id";

fn stored_node_id(data_dir: &Path) -> anyhow::Result<Option<u64>> {
    match std::fs::read_to_string(data_dir.join(NODE_ID_FILE)) {
        Ok(text) => {
            text.trim().parse().map(Some).with_context(|| {
                format!("{} is not a node ID", data_dir.join(NODE_ID_FILE).display())
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("read the stored node ID"),
    }
}

fn store_node_id(data_dir: &Path, id: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    berth_tls::dir::write(&data_dir.join(NODE_ID_FILE), &format!("{id}\n"), 0o644)
        .context("store the node ID")
}

/// How this server came to be who it is.
pub enum Origin {
    /// Its data dir already held its identity.
    Restarted,
    /// It joined an existing cluster.
    Joined,
    /// It created the cluster's CA: the cluster is new.
    Bootstrapped,
}

/// What a server needs to establish who it is.
pub struct Wanted<'a> {
    pub data_dir: &'a Path,
    /// `--node-id`, when given.
    pub node_id: Option<u64>,
    pub advertise: &'a str,
    pub sans: Vec<String>,
    /// `--join ADDR` and its token.
    pub join: Option<(&'a str, &'a str)>,
    /// Whether a server with nothing stored and no `--join` may create a new cluster.
    pub may_bootstrap: bool,
    pub cert_ttl: Duration,
}

/// This server's node ID and TLS material.
pub async fn establish(w: Wanted<'_>) -> anyhow::Result<(u64, ServerTls, Origin)> {
    let node_id = match (w.node_id, stored_node_id(w.data_dir)?) {
        (Some(given), Some(stored)) if given != stored => bail!(
            "--node-id {given} does not match the ID {stored} this data dir belongs to ({})",
            w.data_dir.display()
        ),
        (given, stored) => given.or(stored),
    };
    if let Some(id) = node_id {
        if let Some(tls) = ServerTls::load(w.data_dir, id, w.sans.clone())? {
            store_node_id(w.data_dir, id)?;
            return Ok((id, tls, Origin::Restarted));
        }
    }
    if let Some((addr, token)) = w.join {
        let (id, material, keyring) = join(addr, token, node_id, w.advertise).await?;
        store_node_id(w.data_dir, id)?;
        // The keys that seal secrets, so that this server can open them too.
        crate::keyring::Keyring::open(w.data_dir)?.merge(&keyring)?;
        let tls = ServerTls::joined(w.data_dir, material, id, w.sans)?;
        tracing::info!(node_id = id, %addr, "joined the cluster: certificate received");
        return Ok((id, tls, Origin::Joined));
    }
    anyhow::ensure!(
        w.may_bootstrap,
        "this server has no certificate yet: start it with --join ADDR --join-token TOKEN (a token from `berth cluster token create --role server`)"
    );
    let id = node_id.unwrap_or(1);
    store_node_id(w.data_dir, id)?;
    let tls = ServerTls::bootstrap(w.data_dir, id, w.sans, w.cert_ttl)?;
    tracing::info!(node_id = id, "created the cluster CA");
    Ok((id, tls, Origin::Bootstrapped))
}

/// Joins through the server at `addr` with a join token: the handshake must show the CA the
/// token pins before anything is sent; then a node ID (when none was given) and a certificate.
async fn join(
    addr: &str,
    token: &str,
    node_id: Option<u64>,
    advertise: &str,
) -> anyhow::Result<(u64, Material, String)> {
    let token = JoinToken::parse(token)?;
    let pinned = Pinned::new(&token.ca_fingerprint);
    let dialer = Dialer::new(client_config_for(
        &Trust::Pinned(pinned.clone()),
        None,
        Role::Server,
    )?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let channel = loop {
        match dialer.connect(addr).await {
            Ok(channel) => break channel,
            Err(_) if pinned.saw_another_ca() => bail!(
                "{addr} presented a CA that does not match the join token's fingerprint: the token is from another cluster (nothing was sent)"
            ),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%addr, "join: connect: {}; retrying", berth_model::error_chain(&e));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "connect to {addr} to join (is it up, and is this token from its cluster?)"
                    )
                })
            }
        }
    };
    let mut client = JoinClient::new(channel);
    let request = |name: String, csr: String| JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        role: "server".into(),
        name,
        csr,
        addresses: vec![advertise.to_owned()],
    };
    let id = match node_id {
        Some(id) => id,
        None => {
            client
                .join(request(String::new(), String::new()))
                .await
                .map_err(|s| anyhow::anyhow!("join {addr}: {}", s.message()))?
                .into_inner()
                .node_id
        }
    };
    let key = NodeKey::generate()?;
    let csr = key.csr(&Identity::new(Role::Server, id.to_string()))?;
    let answer = client
        .join(request(id.to_string(), csr))
        .await
        .map_err(|s| anyhow::anyhow!("join {addr}: {}", s.message()))?
        .into_inner();
    anyhow::ensure!(
        !answer.ca_key.is_empty(),
        "{addr} answered no CA key for a server"
    );
    let keyring = answer.keyring.map(|k| k.keys).unwrap_or_default();
    let material = Material::answered(
        answer.ca,
        Some(answer.ca_key),
        answer.certificate,
        key.pem(),
        &answer.trust,
        &answer.chain,
    );
    anyhow::ensure!(
        pinned.ca_pem().is_some() && material.trusts(&token.ca_fingerprint),
        "the CAs {addr} answered do not include the one the join token names"
    );
    Ok((id, material, keyring))
}

/// The CLI's credentials: where the servers are, the CA to trust, and a token.
#[derive(serde::Serialize)]
struct Credentials<'a> {
    servers: Vec<&'a str>,
    ca: &'a str,
    token: String,
}

/// Creates the cluster's first admin token and writes `DATA_DIR/admin.toml` (0600) with it,
/// the CA and this server's address. Waits until this server leads (it just bootstrapped).
pub async fn write_admin_credentials(
    store: &Store,
    data_dir: &Path,
    advertise: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let path = data_dir.join("admin.toml");
    let mut leading = store.leadership();
    tokio::time::timeout(Duration::from_secs(60), leading.wait_for(|l| *l))
        .await
        .context("wait to lead the new cluster")?
        .context("the store stopped")?;
    let token = ApiToken::generate()?;
    let now = now_ms();
    let mut record = ApiTokenRecord::new(
        token.id.clone(),
        hash_secret(&token.secret),
        berth_model::ALL_NAMESPACES,
        AccessRole::Admin,
        now,
        None,
    );
    record.description = "the bootstrap server's admin token (admin.toml)".into();
    match store
        .propose(Command::CreateApiToken { record, at: now })
        .await
        .context("store the admin token")?
    {
        CommandResult::ApiToken(_) => {}
        other => bail!(
            "store the admin token: the state machine answered {}",
            other.kind()
        ),
    }
    let text = toml::to_string(&Credentials {
        servers: vec![advertise],
        ca: ca_pem,
        token: token.to_string(),
    })
    .context("encode admin credentials")?;
    berth_tls::dir::write(&path, &text, 0o600)
        .with_context(|| format!("write {}", path.display()))?;
    tracing::info!(path = %path.display(), "wrote admin credentials");
    Ok(())
}

/// Replaces the CA in `DATA_DIR/admin.toml` (if this server has one) with `trust`: after a
/// CA rotation, the file keeps working.
pub fn update_admin_ca(data_dir: &Path, trust: &str) -> anyhow::Result<()> {
    let path = data_dir.join("admin.toml");
    match berth_tls::dir::set_credentials_ca(&path, trust) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.with_context(|| format!("update the CA in {}", path.display())),
    }
}
