//! A server's TLS material: the cluster CA (with its key: every server can sign), this
//! server's certificate, and the configurations built from them. The bootstrap server creates
//! the CA; joining servers receive it with their certificate; restarts load it from the data
//! dir. Servers renew their own certificates from the CA they hold, and follow rotations of
//! the CA ([`ServerTls::follow`]) as the replicated state shows them.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use berth_model::CaRotation;
use berth_tls::dir::{Material, TlsDir};
use berth_tls::net::Dialer;
use berth_tls::tls::{client_config_for, server_config, Credentials, Trust, TrustStore};
use berth_tls::{ClusterCa, Identity, NodeKey, Role};

/// The hosts of `addresses` (`host:port`), with `localhost` and the loopback address: the
/// names a certificate answers to.
pub fn hosts(addresses: &[String], extra: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = addresses
        .iter()
        .filter_map(|a| {
            let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (!host.is_empty() && host != "0.0.0.0" && host != "::").then(|| host.to_owned())
        })
        .chain(extra.iter().cloned())
        .chain(["localhost".to_owned(), "127.0.0.1".to_owned()])
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

pub struct ServerTls {
    dir: TlsDir,
    identity: Identity,
    /// This server's key (kept across renewals and rotations) and its names.
    key_pem: String,
    sans: Vec<String>,
    /// When the current certificate expires (seconds since the epoch).
    not_after: AtomicI64,
    credentials: Arc<Credentials>,
    /// The CAs this server trusts (both during a CA rotation).
    trust: Arc<TrustStore>,
    signing: RwLock<Arc<Signing>>,
    /// Counts the CA changes [`ServerTls::follow`] made: agent streams tell their agents to
    /// renew on each.
    changes: tokio::sync::watch::Sender<u64>,
    /// One [`ServerTls::follow`] at a time (the rotation follower and the Join service both
    /// call it).
    /// The last rotation followed, as (generation, finished): an older view of the state (a
    /// stale read in the Join service) is not followed back.
    following: std::sync::Mutex<(u64, bool)>,
}

/// The CA this server signs with and what it presents after its own certificate.
pub struct Signing {
    pub ca: ClusterCa,
    pub fingerprint: String,
    /// PEM: the CA, or during a rotation the cross-signed new CA and both CAs.
    pub chain: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// PEM certificates one after the other.
fn bundle(pems: &[&str]) -> String {
    pems.iter()
        .map(|p| {
            let p = p.trim_end();
            format!("{p}\n")
        })
        .collect()
}

/// What a node trusts and presents at each point of rotation `r`.
pub fn rotation_layout(r: &CaRotation) -> (String, String) {
    if r.is_finished() {
        (bundle(&[&r.cert]), bundle(&[&r.cert]))
    } else {
        (
            bundle(&[&r.from_cert, &r.cert]),
            bundle(&[&r.cross_cert, &r.cert, &r.from_cert]),
        )
    }
}

impl ServerTls {
    /// A new cluster: a new CA and this server's certificate, saved in the data dir.
    pub fn bootstrap(
        data_dir: &Path,
        node_id: u64,
        sans: Vec<String>,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let ca = ClusterCa::create(&format!("bootstrapped by server {node_id}"))
            .context("create the cluster CA")?;
        let identity = Identity::new(Role::Server, node_id.to_string());
        let (issued, key) = ca
            .issue_new(&identity, &sans, ttl)
            .context("issue the server's certificate")?;
        let material = Material {
            ca_pem: ca.cert_pem().to_owned(),
            ca_key_pem: Some(ca.key_pem().to_owned()),
            cert_pem: issued.cert_pem.clone(),
            key_pem: key.pem(),
            trust_pem: None,
            chain_pem: None,
        };
        Self::save_and_open(data_dir, material, identity, sans)
    }

    /// What a join answered (the CA with its key, this server's certificate) plus its key.
    pub fn joined(
        data_dir: &Path,
        material: Material,
        node_id: u64,
        sans: Vec<String>,
    ) -> anyhow::Result<Self> {
        Self::save_and_open(
            data_dir,
            material,
            Identity::new(Role::Server, node_id.to_string()),
            sans,
        )
    }

    fn save_and_open(
        data_dir: &Path,
        material: Material,
        identity: Identity,
        sans: Vec<String>,
    ) -> anyhow::Result<Self> {
        let dir = TlsDir::new(data_dir);
        dir.save(&material)
            .with_context(|| format!("write TLS material to {}", dir.path().display()))?;
        Self::open(dir, material, identity, sans)
    }

    /// The material saved by an earlier start, if any.
    pub fn load(data_dir: &Path, node_id: u64, sans: Vec<String>) -> anyhow::Result<Option<Self>> {
        let dir = TlsDir::new(data_dir);
        let Some(material) = dir
            .load()
            .with_context(|| format!("read TLS material in {}", dir.path().display()))?
        else {
            return Ok(None);
        };
        let identity = Identity::new(Role::Server, node_id.to_string());
        Self::open(dir, material, identity, sans).map(Some)
    }

    fn open(
        dir: TlsDir,
        material: Material,
        identity: Identity,
        sans: Vec<String>,
    ) -> anyhow::Result<Self> {
        let ca_key = material.ca_key_pem.as_deref().with_context(|| {
            format!(
                "{} has no CA key: a server needs one (was this data dir an agent's?)",
                dir.path().display()
            )
        })?;
        let ca = ClusterCa::load(&material.ca_pem, ca_key).context("read the cluster CA")?;
        let credentials = Arc::new(
            Credentials::new(&material.cert_pem, &material.key_pem, material.chain())
                .context("read the server's certificate")?,
        );
        let trust = TrustStore::new(material.trust()).context("read the trusted CAs")?;
        let not_after = AtomicI64::new(berth_tls::not_after(&material.cert_pem).unwrap_or(0));
        let signing = Signing {
            fingerprint: ca.fingerprint()?,
            chain: material.chain().to_owned(),
            ca,
        };
        Ok(Self {
            dir,
            identity,
            key_pem: material.key_pem,
            sans,
            not_after,
            credentials,
            trust,
            signing: RwLock::new(Arc::new(signing)),
            changes: tokio::sync::watch::Sender::new(0),
            following: std::sync::Mutex::new((0, false)),
        })
    }

    /// The CA this server signs with, and the chain it presents.
    pub fn signing(&self) -> Arc<Signing> {
        self.signing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The CA this server signs with.
    pub fn ca(&self) -> ClusterCa {
        self.signing().ca.clone()
    }

    /// The CAs this server trusts, PEM.
    pub fn trust_pem(&self) -> String {
        self.trust.pem()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The TLS configuration of the listener.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        Ok(server_config(self.trust.clone(), self.credentials.clone())?)
    }

    /// Channels to other servers (Raft, keyrings, joins): this server's certificate, the
    /// trusted CAs as roots, and the peer must present a server certificate.
    pub fn server_dialer(&self) -> anyhow::Result<Dialer> {
        let trust = Trust::Store(self.trust.clone());
        Ok(Dialer::new(client_config_for(
            &trust,
            Some(self.credentials.clone()),
            Role::Server,
        )?))
    }

    /// Channels to agents (logs, exec): this server's certificate, the trusted CAs as roots,
    /// and the peer must present an agent certificate.
    pub fn agent_dialer(&self) -> anyhow::Result<Dialer> {
        let trust = Trust::Store(self.trust.clone());
        Ok(Dialer::new(client_config_for(
            &trust,
            Some(self.credentials.clone()),
            Role::Agent,
        )?))
    }

    /// When this server's certificate expires (seconds since the epoch).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::SeqCst)
    }

    /// A new certificate for this server (same key and names), in place and on disk.
    pub fn renew(&self, ttl: Duration) -> anyhow::Result<()> {
        let _one = self
            .following
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let signing = self.signing();
        self.reissue(&signing, &self.trust.pem(), ttl)
            .context("renew the server's certificate")
    }

    /// Issues this server's certificate from `signing` and stores everything: certificate,
    /// chain, trust and signing CA, in memory and on disk.
    fn reissue(&self, signing: &Signing, trust: &str, ttl: Duration) -> anyhow::Result<()> {
        let key = NodeKey::from_pem(&self.key_pem)?;
        let issued =
            signing
                .ca
                .issue(&key.csr(&self.identity)?, &self.identity, &self.sans, ttl)?;
        // Saved first: if that fails, nothing changed.
        self.dir
            .save(&Material::answered(
                signing.ca.cert_pem().to_owned(),
                Some(signing.ca.key_pem().to_owned()),
                issued.cert_pem.clone(),
                self.key_pem.clone(),
                trust,
                &signing.chain,
            ))
            .context("save the certificate")?;
        self.trust.replace(trust)?;
        self.credentials
            .replace(&issued.cert_pem, &self.key_pem, &signing.chain)?;
        self.not_after.store(issued.not_after, Ordering::SeqCst);
        Ok(())
    }

    /// Whether this server signs with the CA whose fingerprint is `fingerprint`.
    pub fn signs_with(&self, fingerprint: &str) -> bool {
        self.signing().fingerprint == fingerprint
    }

    /// Follows CA rotation `r` as the state shows it: while it runs, sign with its new CA
    /// (opened with the old CA's key), trust both and present the cross-signed chain; once it
    /// finished, trust and present the new CA alone. Answers whether anything changed (the
    /// certificate is then reissued and everything saved). Cheap when nothing changes.
    pub fn follow(&self, r: &CaRotation, ttl: Duration) -> anyhow::Result<bool> {
        let (trust, chain) = rotation_layout(r);
        let mut last = self
            .following
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = (r.generation, r.is_finished());
        if seen < *last {
            return Ok(false);
        }
        *last = seen;
        let current = self.signing();
        if current.fingerprint == r.fingerprint
            && current.chain.trim() == chain.trim()
            && self.trust.pem().trim() == trust.trim()
        {
            return Ok(false);
        }
        let ca = if current.fingerprint == r.fingerprint {
            current.ca.clone()
        } else if current.fingerprint == r.from_fingerprint {
            current
                .ca
                .open_successor(&r.cert, &r.sealed_key)
                .with_context(|| format!("open the new CA of rotation {}", r.generation))?
        } else {
            anyhow::bail!(
                "this server signs with CA {}, which is neither the CA rotation {} replaces ({}) nor its new one ({}): join this server again (`berth cluster remove`, then --join with a new token)",
                current.fingerprint,
                r.generation,
                r.from_fingerprint,
                r.fingerprint
            );
        };
        let next = Signing {
            fingerprint: r.fingerprint.clone(),
            chain,
            ca,
        };
        self.reissue(&next, &trust, ttl)?;
        *self.signing.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        self.changes.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Changes of the CA this server signs with or trusts.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_the_advertised_hosts_and_loopback() {
        let hosts = hosts(
            &[
                "10.0.0.5:7400".into(),
                "0.0.0.0:7400".into(),
                "[::1]:7400".into(),
            ],
            &["berth.example".into()],
        );
        assert_eq!(
            hosts,
            ["10.0.0.5", "127.0.0.1", "::1", "berth.example", "localhost"]
        );
    }

    #[test]
    fn a_bootstrapped_server_reloads_and_renews() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sans = hosts(&["127.0.0.1:7400".into()], &[]);
        let first = ServerTls::bootstrap(dir.path(), 1, sans.clone(), Duration::from_secs(60))
            .expect("bootstrap");
        let again = ServerTls::load(dir.path(), 1, sans)
            .expect("load")
            .expect("material");
        assert_eq!(again.ca().fingerprint().ok(), first.ca().fingerprint().ok());
        let before = again.not_after();
        again.renew(Duration::from_secs(3600)).expect("renew");
        assert!(
            again.not_after() > before + 3000,
            "{before} {}",
            again.not_after()
        );
    }
}
