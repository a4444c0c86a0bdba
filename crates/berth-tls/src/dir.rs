//! A node's TLS material in its data dir (`DATA_DIR/tls/`): the CA certificate (`ca.pem`), the
//! node's certificate and key (`node.pem`, `node-key.pem`), on servers the CA's key
//! (`ca-key.pem`), and during a CA rotation the CAs the node trusts (`trust.pem`) and the
//! certificates it presents after its own (`chain.pem`); without them, both are the CA alone.
//! Private keys are written 0600, and every file is replaced atomically (written aside, then
//! renamed), so a crash never leaves half a certificate.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// What a node keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub ca_pem: String,
    /// Servers only.
    pub ca_key_pem: Option<String>,
    pub cert_pem: String,
    pub key_pem: String,
    /// The CAs this node trusts, when not `ca_pem` alone (during a CA rotation, both roots).
    pub trust_pem: Option<String>,
    /// What the node presents after its certificate, when not `ca_pem` alone (during a CA
    /// rotation, the cross-signed certificate and both roots).
    pub chain_pem: Option<String>,
}

impl Material {
    /// What a join or a renewal answered: a certificate signed by `ca_pem`, and the CAs to
    /// trust and the certificates to present after it (empty, or the CA alone: `None`).
    pub fn answered(
        ca_pem: String,
        ca_key_pem: Option<String>,
        cert_pem: String,
        key_pem: String,
        trust: &str,
        chain: &str,
    ) -> Self {
        let unless_ca = |pem: &str| {
            (!pem.trim().is_empty() && pem.trim() != ca_pem.trim()).then(|| pem.to_owned())
        };
        Self {
            trust_pem: unless_ca(trust),
            chain_pem: unless_ca(chain),
            ca_pem,
            ca_key_pem,
            cert_pem,
            key_pem,
        }
    }

    /// Whether the CA with SHA-256 `fingerprint` is among those this node trusts.
    pub fn trusts(&self, fingerprint: &str) -> bool {
        crate::fingerprints(self.trust())
            .iter()
            .any(|f| f == fingerprint)
    }

    /// The CAs this node trusts (PEM).
    pub fn trust(&self) -> &str {
        self.trust_pem.as_deref().unwrap_or(&self.ca_pem)
    }

    /// The certificates this node presents after its own (PEM).
    pub fn chain(&self) -> &str {
        self.chain_pem.as_deref().unwrap_or(&self.ca_pem)
    }
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("has_ca_key", &self.ca_key_pem.is_some())
            .field("has_trust", &self.trust_pem.is_some())
            .field("has_chain", &self.chain_pem.is_some())
            .finish_non_exhaustive()
    }
}

const CA: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT: &str = "node.pem";
const KEY: &str = "node-key.pem";
const TRUST: &str = "trust.pem";
const CHAIN: &str = "chain.pem";

/// Where a node's material lives: `DATA_DIR/tls`.
#[derive(Debug, Clone)]
pub struct TlsDir(PathBuf);

impl TlsDir {
    pub fn new(data_dir: &Path) -> Self {
        Self(data_dir.join("tls"))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The stored material, or `None` when this node has none yet (it must bootstrap or join).
    pub fn load(&self) -> std::io::Result<Option<Material>> {
        let read = |name: &str| std::fs::read_to_string(self.0.join(name));
        let optional = |name: &str| match read(name) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let Some(cert_pem) = optional(CERT)? else {
            return Ok(None);
        };
        let mut m = Material {
            ca_pem: read(CA)?,
            ca_key_pem: optional(CA_KEY)?,
            cert_pem,
            key_pem: read(KEY)?,
            trust_pem: optional(TRUST)?,
            chain_pem: optional(CHAIN)?,
        };
        // A server that stopped between writing a rotation's new CA key and its certificate
        // (see `save`) finds the certificate among the CAs it trusts.
        if let (Some(key), Some(trust)) = (&m.ca_key_pem, &m.trust_pem) {
            if crate::ClusterCa::load(&m.ca_pem, key).is_err() {
                if let Some(ca) =
                    certificates(trust).find(|cert| crate::ClusterCa::load(cert, key).is_ok())
                {
                    m.ca_pem = ca;
                }
            }
        }
        Ok(Some(m))
    }

    /// Writes the material (keys 0600): the CAs to trust first, then the CA key before the CA
    /// certificate (a stop in between leaves a key whose certificate is among those trusted,
    /// which `load` picks up), the node certificate last, since its presence is what `load`
    /// looks for. Without a trust or a chain, their files are removed (a finished CA rotation
    /// goes back to the CA alone).
    pub fn save(&self, m: &Material) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        for (name, text) in [(TRUST, &m.trust_pem), (CHAIN, &m.chain_pem)] {
            match text {
                Some(text) => write(&self.0.join(name), text, 0o644)?,
                None => remove(&self.0.join(name))?,
            }
        }
        if let Some(key) = &m.ca_key_pem {
            write(&self.0.join(CA_KEY), key, 0o600)?;
        }
        write(&self.0.join(CA), &m.ca_pem, 0o644)?;
        write(&self.0.join(KEY), &m.key_pem, 0o600)?;
        write(&self.0.join(CERT), &m.cert_pem, 0o644)
    }
}

/// Each certificate of a PEM bundle, as PEM (as rcgen writes it: LF line endings).
fn certificates(bundle: &str) -> impl Iterator<Item = String> {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::parse_many(bundle)
        .unwrap_or_default()
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(move |block| pem::encode_config(&block, lf))
}

/// Removes `path`, if it is there.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sets the `ca` of the credentials file (TOML: `servers`, `ca`, `token`) at `path` to
/// `trust`, keeping every other key, so that the file keeps working after a CA rotation.
/// Nothing is written when it holds `trust` already.
pub fn set_credentials_ca(path: &Path, trust: &str) -> std::io::Result<()> {
    let invalid = |e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    let text = std::fs::read_to_string(path)?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| invalid(&e))?;
    if table.get("ca").and_then(toml::Value::as_str) == Some(trust) {
        return Ok(());
    }
    table.insert("ca".into(), toml::Value::String(trust.to_owned()));
    write(
        path,
        &toml::to_string(&table).map_err(|e| invalid(&e))?,
        0o600,
    )
}

/// Writes `text` to `path` atomically with `mode`.
pub fn write(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn material_round_trips_and_keys_are_private() {
        let dir = std::env::temp_dir().join(format!("berth-tls-dir-{}", std::process::id()));
        let tls = TlsDir::new(&dir);
        assert!(tls.load().expect("load").is_none());
        let m = Material {
            ca_pem: "ca".into(),
            ca_key_pem: Some("ca key".into()),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            trust_pem: None,
            chain_pem: None,
        };
        tls.save(&m).expect("save");
        assert_eq!(tls.load().expect("load"), Some(m.clone()));
        assert_eq!((m.trust(), m.chain()), ("ca", "ca"));
        for (name, mode) in [(CA_KEY, 0o600), (KEY, 0o600), (CERT, 0o644)] {
            let meta = std::fs::metadata(tls.path().join(name)).expect("stat");
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        assert!(!format!("{m:?}").contains("key\""));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_server_stopped_between_a_rotation_s_new_ca_key_and_certificate_starts_with_both() {
        let dir = std::env::temp_dir().join(format!("berth-tls-torn-{}", std::process::id()));
        let tls = TlsDir::new(&dir);
        let old = crate::ClusterCa::create("test").expect("old CA");
        let (new, _cross) = old.successor("rotation 1").expect("new CA");
        let trust = format!("{}{}", old.cert_pem(), new.cert_pem());
        let node = Material {
            ca_pem: old.cert_pem().to_owned(),
            ca_key_pem: Some(old.key_pem().to_owned()),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            trust_pem: Some(trust.clone()),
            chain_pem: None,
        };
        tls.save(&node).expect("save");
        // The new key is written, the new certificate not yet.
        write(&tls.path().join(CA_KEY), new.key_pem(), 0o600).expect("write key");
        let loaded = tls.load().expect("load").expect("material");
        assert_eq!(loaded.ca_pem.trim(), new.cert_pem().trim());
        let ca = crate::ClusterCa::load(&loaded.ca_pem, new.key_pem()).expect("a usable CA");
        assert_eq!(ca.fingerprint().ok(), new.fingerprint().ok());
        assert_eq!(certificates(&trust).count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rotation_s_trust_and_chain_are_kept_then_removed_when_it_ends() {
        let dir = std::env::temp_dir().join(format!("berth-tls-rotation-{}", std::process::id()));
        let tls = TlsDir::new(&dir);
        let rotating = Material {
            ca_pem: "old".into(),
            ca_key_pem: None,
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            trust_pem: Some("old new".into()),
            chain_pem: Some("cross new old".into()),
        };
        tls.save(&rotating).expect("save");
        assert_eq!(tls.load().expect("load"), Some(rotating.clone()));
        assert_eq!(
            (rotating.trust(), rotating.chain()),
            ("old new", "cross new old")
        );

        let done = Material {
            ca_pem: "new".into(),
            trust_pem: None,
            chain_pem: None,
            ..rotating
        };
        tls.save(&done).expect("save");
        assert_eq!(tls.load().expect("load"), Some(done));
        for name in [TRUST, CHAIN] {
            assert!(!tls.path().join(name).exists(), "{name}");
        }
        // Saving without them again is no error.
        tls.save(&tls.load().expect("load").expect("material"))
            .expect("save");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
