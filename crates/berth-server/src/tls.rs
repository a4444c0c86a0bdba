//! A server's TLS material: the cluster CA (with its key: every server can sign), this
//! server's certificate, and the configurations built from them. The bootstrap server creates
//! the CA; joining servers receive it with their certificate; restarts load it from the data
//! dir. Servers renew their own certificates from the CA they hold.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_tls::dir::{Material, TlsDir};
use berth_tls::net::Dialer;
use berth_tls::tls::{client_config, server_config, Credentials, Trust};
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
    ca: ClusterCa,
    identity: Identity,
    /// This server's key (kept across renewals) and its names.
    key_pem: String,
    sans: Vec<String>,
    /// When the current certificate expires (seconds since the epoch).
    not_after: AtomicI64,
    credentials: Arc<Credentials>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
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
            Credentials::new(&material.cert_pem, &material.key_pem, &material.ca_pem)
                .context("read the server's certificate")?,
        );
        let not_after = AtomicI64::new(berth_tls::not_after(&material.cert_pem).unwrap_or(0));
        Ok(Self {
            dir,
            ca,
            identity,
            key_pem: material.key_pem,
            sans,
            not_after,
            credentials,
        })
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The TLS configuration of the listener.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        Ok(server_config(self.ca.cert_pem(), self.credentials.clone())?)
    }

    /// Channels to peers and agents: this server's certificate, the cluster CA as the root.
    pub fn dialer(&self) -> anyhow::Result<Dialer> {
        let trust = Trust::Ca(self.ca.cert_pem().to_owned());
        Ok(Dialer::new(client_config(
            &trust,
            Some(self.credentials.clone()),
        )?))
    }

    /// When this server's certificate expires (seconds since the epoch).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::SeqCst)
    }

    /// A new certificate for this server (same key and names), in place and on disk.
    pub fn renew(&self, ttl: Duration) -> anyhow::Result<()> {
        let key = NodeKey::from_pem(&self.key_pem)?;
        let issued = self
            .ca
            .issue(&key.csr(&self.identity)?, &self.identity, &self.sans, ttl)
            .context("renew the server's certificate")?;
        self.credentials
            .replace(&issued.cert_pem, &self.key_pem, self.ca.cert_pem())?;
        self.dir
            .save(&Material {
                ca_pem: self.ca.cert_pem().to_owned(),
                ca_key_pem: Some(self.ca.key_pem().to_owned()),
                cert_pem: issued.cert_pem,
                key_pem: self.key_pem.clone(),
            })
            .context("save the renewed certificate")?;
        self.not_after.store(issued.not_after, Ordering::SeqCst);
        Ok(())
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
