//! A node's TLS material in its data dir (`DATA_DIR/tls/`): the CA certificate, the node's
//! certificate and key, and on servers the CA's key. Private keys are written 0600, and every
//! file is replaced atomically (written aside, then renamed), so a crash never leaves half a
//! certificate.

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
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("has_ca_key", &self.ca_key_pem.is_some())
            .finish_non_exhaustive()
    }
}

const CA: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT: &str = "node.pem";
const KEY: &str = "node-key.pem";

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
        let cert_pem = match read(CERT) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let ca_key_pem = match read(CA_KEY) {
            Ok(k) => Some(k),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Some(Material {
            ca_pem: read(CA)?,
            ca_key_pem,
            cert_pem,
            key_pem: read(KEY)?,
        }))
    }

    /// Writes the material (keys 0600); the node certificate last, since its presence is what
    /// `load` looks for.
    pub fn save(&self, m: &Material) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.0)?;
        write(&self.0.join(CA), &m.ca_pem, 0o644)?;
        if let Some(key) = &m.ca_key_pem {
            write(&self.0.join(CA_KEY), key, 0o600)?;
        }
        write(&self.0.join(KEY), &m.key_pem, 0o600)?;
        write(&self.0.join(CERT), &m.cert_pem, 0o644)
    }
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
        };
        tls.save(&m).expect("save");
        assert_eq!(tls.load().expect("load"), Some(m.clone()));
        for (name, mode) in [(CA_KEY, 0o600), (KEY, 0o600), (CERT, 0o644)] {
            let meta = std::fs::metadata(tls.path().join(name)).expect("stat");
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        assert!(!format!("{m:?}").contains("key\""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
