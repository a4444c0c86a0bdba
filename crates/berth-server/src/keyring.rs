//! The keyring that seals secrets: AES-256-GCM keys by ID, in `DATA_DIR/secrets.keyring`
//! (0600, TOML `[keys]`). The replicated state names the active key but never holds one; keys
//! travel only between servers over mutual TLS (a joining server gets the keyring with its
//! certificate; a server missing a key asks its peers, `Join.ExchangeKeyring`).
//!
//! Every value is sealed with a fresh random nonce and bound to where it belongs (namespace,
//! secret and key name as associated data), so a sealed value moved to another secret does not
//! open.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use berth_model::SealedValue;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};

/// The keyring file in a server's data dir.
pub const KEYRING_FILE: &str = "secrets.keyring";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// This server does not hold the key (a peer may: see [`Keyring::merge`]).
    #[error("key {0} of the secrets keyring is not on this server")]
    MissingKey(String),
    #[error("a sealed value does not open (it was changed, or belongs to another secret)")]
    Corrupt,
    #[error("secrets keyring: {0}")]
    Io(String),
}

#[derive(serde::Deserialize, Default)]
struct KeyringFile {
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

pub struct Keyring {
    path: PathBuf,
    keys: Mutex<BTreeMap<String, [u8; 32]>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({})", self.path.display())
    }
}

impl Keyring {
    /// The keyring in `data_dir` (empty when there is no file yet).
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEYRING_FILE);
        let keys = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).with_context(|| format!("read {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        Ok(Self {
            path,
            keys: Mutex::new(keys),
            rng: SystemRandom::new(),
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, [u8; 32]>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn contains(&self, key_id: &str) -> bool {
        self.keys().contains_key(key_id)
    }

    /// A new random key, saved; answers its ID.
    pub fn generate(&self) -> anyhow::Result<String> {
        let mut key = [0u8; 32];
        let mut id = [0u8; 6];
        self.rng
            .fill(&mut key)
            .and_then(|()| self.rng.fill(&mut id))
            .map_err(|_| anyhow::anyhow!("no randomness for a secrets key"))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut keys = self.keys();
        keys.insert(id.clone(), key);
        save(&self.path, &keys)?;
        Ok(id)
    }

    /// The keyring as sent to another server.
    pub fn export(&self) -> String {
        render(&self.keys())
    }

    /// Adds the keys of an exported keyring that this one lacks (a key ID never changes its
    /// key: a different key under a known ID is refused). Answers how many were added.
    pub fn merge(&self, exported: &str) -> anyhow::Result<usize> {
        let theirs = parse(exported).context("a peer's secrets keyring")?;
        let mut keys = self.keys();
        let mut added = 0;
        for (id, key) in theirs {
            match keys.get(&id) {
                Some(mine) if *mine != key => {
                    anyhow::bail!("a peer holds a different key under ID {id}")
                }
                Some(_) => {}
                None => {
                    keys.insert(id, key);
                    added += 1;
                }
            }
        }
        if added > 0 {
            save(&self.path, &keys)?;
        }
        Ok(added)
    }

    /// Seals `value` with key `key_id`, bound to `(namespace, secret, key)`.
    pub fn seal(
        &self,
        key_id: &str,
        place: (&str, &str, &str),
        value: &[u8],
    ) -> Result<SealedValue, KeyringError> {
        let key = self.aead(key_id)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| KeyringError::Io("no randomness for a nonce".into()))?;
        let mut data = value.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(place)),
            &mut data,
        )
        .map_err(|_| KeyringError::Corrupt)?;
        Ok(SealedValue {
            key_id: key_id.to_owned(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(data),
        })
    }

    /// Opens a value sealed for `(namespace, secret, key)`.
    pub fn open_value(
        &self,
        sealed: &SealedValue,
        place: (&str, &str, &str),
    ) -> Result<Vec<u8>, KeyringError> {
        let key = self.aead(&sealed.key_id)?;
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(KeyringError::Corrupt)?;
        let mut data = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| KeyringError::Corrupt)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(place)),
                &mut data,
            )
            .map_err(|_| KeyringError::Corrupt)?;
        Ok(plain.to_vec())
    }

    fn aead(&self, key_id: &str) -> Result<LessSafeKey, KeyringError> {
        let keys = self.keys();
        let bytes = keys
            .get(key_id)
            .ok_or_else(|| KeyringError::MissingKey(key_id.to_owned()))?;
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyringError::Corrupt)?;
        Ok(LessSafeKey::new(unbound))
    }
}

/// Whether an exported keyring holds key `id`.
pub fn holds(exported: &str, id: &str) -> bool {
    parse(exported).is_ok_and(|keys| keys.contains_key(id))
}

/// What a sealed value is bound to: it opens only as the same key of the same secret.
fn aad((namespace, secret, key): (&str, &str, &str)) -> Vec<u8> {
    format!("berth-secret\0{namespace}\0{secret}\0{key}").into_bytes()
}

fn parse(text: &str) -> anyhow::Result<BTreeMap<String, [u8; 32]>> {
    // Not the parser's message: it quotes the line, which may hold a key.
    let file: KeyringFile = toml::from_str(text)
        .map_err(|_| anyhow::anyhow!("not a keyring (TOML: [keys] ID = \"base64\")"))?;
    file.keys
        .into_iter()
        .map(|(id, b64)| {
            anyhow::ensure!(
                !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "a key ID has characters other than letters, digits, '-' and '_'"
            );
            let key: [u8; 32] = B64
                .decode(b64.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .with_context(|| format!("key {id} is not 32 bytes of base64"))?;
            Ok((id, key))
        })
        .collect()
}

fn render(keys: &BTreeMap<String, [u8; 32]>) -> String {
    // By hand: IDs are letters, digits, '-' and '_' (`parse` refuses others), so this cannot
    // fail, and an empty rendering is never written over a keyring.
    let mut text = String::from("[keys]\n");
    for (id, key) in keys {
        text.push_str(&format!("{id} = \"{}\"\n", B64.encode(key)));
    }
    text
}

/// Writes the keyring whole (a temporary file renamed over the old one), readable by its
/// owner only.
fn save(path: &Path, keys: &BTreeMap<String, [u8; 32]>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("keyring.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    file.write_all(render(keys).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    // The rename itself must reach the disk: a key counted as held must survive a power loss.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_where_they_were_sealed_and_the_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = Keyring::open(dir.path()).expect("open");
        let id = ring.generate().expect("key");
        let sealed = ring
            .seal(&id, ("default", "db", "password"), b"hunter2")
            .expect("seal");
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_eq!(
            ring.open_value(&sealed, ("default", "db", "password"))
                .expect("open"),
            b"hunter2"
        );
        // Moved to another key or namespace, it does not open.
        assert!(matches!(
            ring.open_value(&sealed, ("team-b", "db", "password")),
            Err(KeyringError::Corrupt)
        ));
        // Another sealing of the same value differs (a fresh nonce each time).
        let again = ring
            .seal(&id, ("default", "db", "password"), b"hunter2")
            .expect("seal");
        assert_ne!(again.ciphertext, sealed.ciphertext);

        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEYRING_FILE))
            .expect("saved")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Another server: empty until it merges this one's keys; then it opens the value.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = Keyring::open(other_dir.path()).expect("open");
        assert!(matches!(
            other.open_value(&sealed, ("default", "db", "password")),
            Err(KeyringError::MissingKey(_))
        ));
        assert_eq!(other.merge(&ring.export()).expect("merge"), 1);
        assert_eq!(other.merge(&ring.export()).expect("merge"), 0);
        let reopened = Keyring::open(other_dir.path()).expect("reopen");
        assert_eq!(
            reopened
                .open_value(&sealed, ("default", "db", "password"))
                .expect("open"),
            b"hunter2"
        );
        // A different key under a known ID is refused.
        let forged = format!("[keys]\n{id} = \"{}\"\n", B64.encode([7u8; 32]));
        assert!(other.merge(&forged).is_err());
    }
}
