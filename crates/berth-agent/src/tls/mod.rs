//! The agent's identity in the cluster (issue 14): a certificate naming `berth://agent/NAME`,
//! issued by the cluster CA, kept in `DATA_DIR/tls` and renewed before it expires.
//!
//! - [`Advertise`] and [`join_token`]: the `--advertise` and `--join-token[-file]` flags,
//!   checked before anything starts (pure).
//! - `establish`: at start, the stored material when there is some (no token needed), else a
//!   join with the token (`join`).
//! - `renew`: a background task that renews the certificate when two thirds of its life have
//!   passed ([`renew::renewal_due`]).
//!
//! Every connection the agent makes or accepts is TLS from the cluster CA: its stream to the
//! servers presents the agent's certificate, and its own API (logs, exec) presents it too and
//! answers only callers whose certificate names a server (`api::authorize`).

mod call;
mod cert;
mod join;
pub mod renew;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use berth_tls::dir::{Material, TlsDir};
use berth_tls::net::Dialer;
use berth_tls::tls::{client_config_for, verify_chain, Credentials, Trust, TrustStore};
use berth_tls::{Identity, JoinToken, Role, TlsError};

pub(crate) use cert::CertInfo;

/// What to tell someone who has neither a certificate nor a token.
fn how_to_join(role: Role) -> String {
    format!("create a join token on a server with `berth cluster token create --role {role}` and pass it with --join-token or --join-token-file")
}

/// A node of the cluster that is not a server (an agent, an ingress): who it is, where it
/// keeps its certificate and how it joins.
#[derive(Debug, Clone)]
pub struct Member {
    pub role: Role,
    /// The node name, or the ingress's name.
    pub name: String,
    /// Its certificate lives in `DATA_DIR/tls`.
    pub data_dir: PathBuf,
    pub servers: Vec<String>,
    /// Joins the cluster when `DATA_DIR/tls` holds no certificate (or an expired one).
    pub join_token: Option<JoinToken>,
    /// How long joining may take (servers may still be starting).
    pub join_timeout: Duration,
    /// Members sharing a process join a few at a time; `None`: join at once.
    pub join_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// The host its certificate names.
    pub advertise: Advertise,
}

impl Member {
    fn identity(&self) -> Identity {
        Identity::new(self.role, self.name.clone())
    }
}

/// A member's certificate, kept valid: the dialer of TLS channels to the servers presenting
/// it, renewed in place by [`Membership::keep_renewed`].
pub struct Membership {
    tls: NodeTls,
    held: Held,
}

impl Membership {
    /// Loads the member's certificate, or joins with its token (see `establish`).
    pub async fn establish(member: &Member, address: &str) -> anyhow::Result<Self> {
        let (tls, held) = establish(member, address).await?;
        Ok(Self { tls, held })
    }

    /// Dials servers over mutual TLS with the member's certificate.
    pub fn dialer(&self) -> &Dialer {
        &self.tls.dialer
    }

    /// Renews the certificate whenever it is due, forever.
    pub async fn keep_renewed(&self, member: &Member, address: &str) {
        renew::renewals(member, &self.tls, self.held.clone(), address).await;
    }
}

/// A flag that cannot work, said so that the user knows what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the agent API listens on {listen}, which servers cannot dial; set --advertise HOST[:PORT] to the address servers reach this node at")]
    UnspecifiedListen { listen: SocketAddr },
    #[error("--advertise {value:?}: {reason}")]
    Advertise { value: String, reason: &'static str },
    #[error("give either --join-token or --join-token-file, not both")]
    TwoTokens,
    #[error("read the join token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("the join token file {} is empty", path.display())]
    EmptyTokenFile { path: PathBuf },
    #[error("{origin}")]
    Token {
        origin: String,
        #[source]
        error: TlsError,
    },
}

/// The host servers dial to reach this node's API: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Where servers reach this node's API (logs, exec), from `--advertise HOST[:PORT]` or, without
/// it, the listen address. Its host is also a name in the agent's certificate, since servers
/// check it when they dial. Without a port, the port the API is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    host: Host,
    port: Option<u16>,
}

impl Advertise {
    /// `--advertise` (if given) checked against `--listen`: an unspecified bind address such as
    /// `0.0.0.0` or `[::]` is no address to dial, so it needs `--advertise`.
    pub fn new(listen: SocketAddr, flag: Option<&str>) -> Result<Self, ConfigError> {
        let Some(value) = flag else {
            if listen.ip().is_unspecified() {
                return Err(ConfigError::UnspecifiedListen { listen });
            }
            return Ok(Self {
                host: Host::Ip(listen.ip()),
                port: None,
            });
        };
        let bad = |reason| ConfigError::Advertise {
            value: value.to_owned(),
            reason,
        };
        let text = value.trim();
        let (host, port) = if let Ok(addr) = text.parse::<SocketAddr>() {
            (Host::Ip(addr.ip()), Some(addr.port()))
        } else if let Ok(ip) = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text)
            .parse::<IpAddr>()
        {
            (Host::Ip(ip), None)
        } else {
            let (name, port) = match text.rsplit_once(':') {
                Some((name, port)) => {
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| bad("expected HOST or HOST:PORT"))?;
                    (name, Some(port))
                }
                None => (text, None),
            };
            if !is_dns_name(name) {
                return Err(bad("not an IP address or a DNS name"));
            }
            (Host::Name(name.to_ascii_lowercase()), port)
        };
        if matches!(host, Host::Ip(ip) if ip.is_unspecified()) {
            return Err(bad(
                "an unspecified address cannot be dialled; give this node's address",
            ));
        }
        if port == Some(0) {
            return Err(bad(
                "port 0 cannot be dialled; leave the port out to use the API's port",
            ));
        }
        Ok(Self { host, port })
    }

    /// The host's IP address, when it is given as one (not as a DNS name).
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// The host alone: an IP address (IPv6 without brackets) or a DNS name.
    pub fn host(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }

    /// Whether a port was given (hollow agents, each on its own port, take a host only).
    pub fn has_port(&self) -> bool {
        self.port.is_some()
    }

    /// `host:port`, with the API's bound port unless one was given.
    pub fn address(&self, bound_port: u16) -> String {
        let port = self.port.unwrap_or(bound_port);
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, port).to_string(),
            Host::Name(name) => format!("{name}:{port}"),
        }
    }
}

impl fmt::Display for Advertise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The join token from `--join-token T` or `--join-token-file F` (the file's content, trimmed).
/// None when neither is given: an agent that has joined before needs none.
pub fn join_token(
    flag: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<JoinToken>, ConfigError> {
    let (text, origin) = match (flag, file) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoTokens),
        (None, None) => return Ok(None),
        (Some(t), None) => (t.to_owned(), "--join-token".to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::TokenFile {
                path: path.to_owned(),
                error,
            })?;
            if text.trim().is_empty() {
                return Err(ConfigError::EmptyTokenFile {
                    path: path.to_owned(),
                });
            }
            (text, format!("the join token file {}", path.display()))
        }
    };
    JoinToken::parse(text.trim())
        .map(Some)
        .map_err(|error| ConfigError::Token { origin, error })
}

/// Seconds since the Unix epoch, as certificates count time.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(crate) fn format_time(unix: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What the agent's connections use: the CAs it trusts (replaced in place when the cluster CA
/// is rotated), its certificate (replaced in place on renewal, so open streams stay) and its
/// serial (which heartbeats report), a dialer of channels to the servers that presents it, and
/// the servers' requests to renew now.
pub(crate) struct NodeTls {
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) credentials: Arc<Credentials>,
    pub(crate) serial: tokio::sync::watch::Sender<String>,
    pub(crate) dialer: Dialer,
    pub(crate) renew_now: Arc<tokio::sync::Notify>,
}

impl NodeTls {
    fn new(held: &Held) -> anyhow::Result<Self> {
        let m = &held.material;
        let credentials = Arc::new(
            Credentials::new(&m.cert_pem, &m.key_pem, m.chain())
                .context("load this node's certificate and key")?,
        );
        let trust = TrustStore::new(m.trust()).context("read the CAs this agent trusts")?;
        let dialer = Dialer::new(
            // Only servers: nothing this node sends is for another agent.
            client_config_for(
                &Trust::Store(trust.clone()),
                Some(credentials.clone()),
                Role::Server,
            )
            .context("TLS configuration for the servers")?,
        );
        Ok(Self {
            trust,
            credentials,
            serial: tokio::sync::watch::Sender::new(held.serial.clone()),
            dialer,
            renew_now: Arc::default(),
        })
    }

    /// Uses `held` from now on: its certificate for new handshakes, its CAs for new peers.
    pub(crate) fn replace(&self, held: &Held) -> anyhow::Result<()> {
        let m = &held.material;
        self.trust
            .replace(m.trust())
            .context("use the CAs the servers answered")?;
        self.credentials
            .replace(&m.cert_pem, &m.key_pem, m.chain())
            .context("use the new certificate")?;
        self.serial.send_replace(held.serial.clone());
        Ok(())
    }
}

/// The certificate in use and what the renewal task needs to know about it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) material: Material,
    /// When this process got it (or, when loaded from disk, its `notBefore`, which errs on
    /// the early side).
    pub(crate) issued_at: i64,
    pub(crate) not_after: i64,
    /// Its serial number, as heartbeats report it.
    pub(crate) serial: String,
    /// Renew at once: the certificate does not name the advertised host, or a server asked.
    pub(crate) renew_now: bool,
}

/// Loads this node's material from `DATA_DIR/tls`, or joins the cluster with the token when
/// there is none (or the stored certificate has expired and a token is given), and saves it.
pub(crate) async fn establish(config: &Member, address: &str) -> anyhow::Result<(NodeTls, Held)> {
    let dir = TlsDir::new(&config.data_dir);
    let identity = config.identity();
    let how_to_join = how_to_join(config.role);
    let stored = dir
        .load()
        .with_context(|| format!("read this node's certificate in {}", dir.path().display()))?;
    let held = match stored {
        Some(material) => {
            let info = CertInfo::read(&material.cert_pem).with_context(|| {
                format!(
                    "read the certificate in {}; remove the directory and join again with a token",
                    dir.path().display()
                )
            })?;
            if info.identity.as_ref() != Some(&identity) {
                let found = info
                    .identity
                    .as_ref()
                    .map_or_else(|| "no berth identity".to_owned(), ToString::to_string);
                anyhow::bail!(
                    "{} holds a certificate of {found}, not of {identity}: start with the name it was issued for, or remove {} and join again with --join-token",
                    dir.path().display(),
                    dir.path().display()
                );
            }
            let now = unix_now();
            if info.not_after <= now {
                let Some(token) = &config.join_token else {
                    anyhow::bail!(
                        "the certificate in {} expired at {}; join again: {how_to_join}",
                        dir.path().display(),
                        format_time(info.not_after)
                    );
                };
                tracing::warn!(
                    expired = %format_time(info.not_after),
                    "this node's certificate expired; joining again with the join token"
                );
                join::join(config, token, &identity, address, &dir).await?
            } else {
                let host = config.advertise.to_string();
                let names_host = info.names(&host);
                if !names_host {
                    tracing::info!(
                        %host,
                        "the stored certificate does not name the advertised host; renewing it"
                    );
                }
                tracing::info!(
                    expires = %format_time(info.not_after),
                    "using this node's certificate from {}",
                    dir.path().display()
                );
                Held {
                    material,
                    issued_at: info.not_before,
                    not_after: info.not_after,
                    serial: info.serial,
                    renew_now: !names_host,
                }
            }
        }
        None => {
            let Some(token) = &config.join_token else {
                anyhow::bail!(
                    "this {} has not joined the cluster yet ({} holds no certificate): {how_to_join}",
                    config.role,
                    dir.path().display()
                );
            };
            join::join(config, token, &identity, address, &dir).await?
        }
    };
    Ok((NodeTls::new(&held)?, held))
}

/// Whom a certificate the servers answered must be vouched for by.
enum Vouch<'a> {
    /// A join: the CA the join token pins must be among the CAs answered.
    Pinned(&'a str),
    /// A renewal: the CAs this agent trusts now (PEM). The certificate must chain to them
    /// (through the answered chain: during a CA rotation, the new CA cross-signed by the old),
    /// and every CA answered to be trusted must be one of them or the answered CA so vouched
    /// for.
    Trusted(&'a str),
}

/// Checks what the servers answered (a join's or a renewal's): a certificate that names this
/// agent, has not expired, is signed by the answered CA, and is vouched for as `vouch` says.
/// Answers what to hold.
fn check_answer(
    answered: &Material,
    vouch: Vouch<'_>,
    identity: &Identity,
) -> Result<CertInfo, AnswerError> {
    let info = CertInfo::read(&answered.cert_pem).map_err(AnswerError::Certificate)?;
    if info.identity.as_ref() != Some(identity) {
        return Err(AnswerError::WrongIdentity {
            found: info
                .identity
                .as_ref()
                .map_or_else(|| "no berth identity".to_owned(), ToString::to_string),
        });
    }
    if info.not_after <= unix_now() {
        return Err(AnswerError::Expired);
    }
    verify_chain(&answered.cert_pem, "", &answered.ca_pem).map_err(|_| AnswerError::OtherCa)?;
    match vouch {
        Vouch::Pinned(fingerprint) => {
            if !answered.trusts(fingerprint) {
                return Err(AnswerError::OtherCa);
            }
        }
        Vouch::Trusted(trust) => {
            verify_chain(&answered.cert_pem, answered.chain(), trust)
                .map_err(|_| AnswerError::OtherCa)?;
            let known = berth_tls::fingerprints(trust);
            let signer = berth_tls::fingerprint(&answered.ca_pem).map_err(AnswerError::Tls)?;
            let unknown = berth_tls::fingerprints(answered.trust())
                .into_iter()
                .any(|f| f != signer && !known.contains(&f));
            if unknown {
                return Err(AnswerError::UnknownCa);
            }
        }
    }
    Ok(info)
}

/// A server's answer that the agent does not accept.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error("the server answered a certificate that does not chain to a CA this node trusts (for a join: the one the token pins)")]
    OtherCa,
    #[error("the server answered a CA to trust that no CA this node trusts vouches for")]
    UnknownCa,
    #[error("the server answered a certificate of {found}")]
    WrongIdentity { found: String },
    #[error("the server answered a certificate that has already expired (check the clocks)")]
    Expired,
    #[error("the server answered a certificate that cannot be read")]
    Certificate(#[source] cert::CertError),
    #[error("the server answered a CA certificate that cannot be read")]
    Tls(#[source] TlsError),
}

#[cfg(test)]
impl NodeTls {
    /// Credentials from a throwaway CA, for tests that never dial.
    pub(crate) fn for_tests(node_name: &str) -> Self {
        let ca = berth_tls::ClusterCa::create("test").expect("a CA");
        let identity = Identity::new(Role::Agent, node_name);
        let (issued, key) = ca
            .issue_new(
                &identity,
                &["127.0.0.1".into()],
                berth_tls::DEFAULT_CERT_TTL,
            )
            .expect("a certificate");
        let material = Material::answered(
            ca.cert_pem().to_owned(),
            None,
            issued.cert_pem,
            key.pem(),
            "",
            "",
        );
        Self::new(&Held {
            material,
            issued_at: 0,
            not_after: 0,
            serial: issued.serial,
            renew_now: false,
        })
        .expect("node TLS")
    }
}

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod tests;
