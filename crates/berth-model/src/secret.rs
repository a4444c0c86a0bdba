//! Secrets: namespaced objects whose values are stored sealed (AES-256-GCM under the servers'
//! keyring), and the references task definitions make to them, with ECS's names (`secrets`,
//! `repositoryCredentials`) plus `secretFiles`.
//!
//! The model only ever holds sealed values: sealing and opening happen in the servers, which
//! hold the keyring. [`TaskSecrets`] (the opened values for one task, on their way to the node
//! running it) prints keys, never values.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Timestamp, ValidationError};

/// The most a secret's values may add up to, in bytes (AWS Secrets Manager's limit).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// The most secret content one task may receive in all, in bytes: what it references must fit
/// in one message of its node's stream.
pub const MAX_TASK_SECRET_BYTES: usize = 1 << 20;
/// The most keys one secret may have.
pub const MAX_SECRET_KEYS: usize = 100;

/// A secret as stored: its keys with their sealed values. Never holds a value in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, SealedValue>,
    /// Bumped by every change; a change names the version it replaces.
    pub version: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: Timestamp,
}

impl Secret {
    /// The secret's keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.data.keys().map(String::as_str)
    }
}

/// A value sealed with AES-256-GCM under one key of the servers' keyring. The nonce and the
/// ciphertext (with its tag) are base64 in JSON.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedValue {
    /// The keyring key it was sealed with.
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedValue(key {})", self.key_id)
    }
}

/// The keyring's state as the replicated state knows it: key IDs only, never a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeys {
    /// The key new values are sealed with; `None` until the first secret is created.
    pub active: Option<String>,
    /// Every key made active so far, oldest first.
    pub history: Vec<String>,
}

/// Checks a secret's name and its keys and values (in clear, before they are sealed).
pub fn validate_secret(
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<(), ValidationError> {
    crate::validate_dns_label("name", name)?;
    if data.is_empty() {
        return Err(ValidationError::new(
            "data",
            "a secret needs at least one key",
        ));
    }
    if data.len() > MAX_SECRET_KEYS {
        return Err(ValidationError::new(
            "data",
            format!(
                "{} keys is too many; a secret has at most {MAX_SECRET_KEYS}",
                data.len()
            ),
        ));
    }
    for key in data.keys() {
        validate_secret_key(&format!("data.{key}"), key)?;
    }
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_SECRET_BYTES {
        return Err(ValidationError::new(
            "data",
            format!("{size} bytes is too large; a secret holds at most {MAX_SECRET_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// A secret's key: letters, digits, `-`, `_` and `.` (as Kubernetes), usable as a file name.
fn validate_secret_key(field: &str, key: &str) -> Result<(), ValidationError> {
    if key.is_empty() || key.len() > 253 {
        return Err(ValidationError::new(field, "a key has 1 to 253 characters"));
    }
    if key == "." || key == ".." {
        return Err(ValidationError::new(field, format!("{key:?} is not a key")));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(ValidationError::new(
            field,
            format!("{key:?} contains {bad:?}; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

/// `SECRET:KEY`: one key of a secret in the task's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretKeyRef {
    pub secret: String,
    pub key: String,
}

impl fmt::Display for SecretKeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.secret, self.key)
    }
}

impl FromStr for SecretKeyRef {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, ValidationError> {
        let Some((secret, key)) = s.split_once(':') else {
            return Err(ValidationError::new(
                "valueFrom",
                format!("{s:?} names no key; write SECRET:KEY"),
            ));
        };
        crate::validate_dns_label("valueFrom", secret)?;
        validate_secret_key("valueFrom", key)?;
        Ok(Self {
            secret: secret.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl TryFrom<String> for SecretKeyRef {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        s.parse()
    }
}

impl From<SecretKeyRef> for String {
    fn from(r: SecretKeyRef) -> Self {
        r.to_string()
    }
}

/// An environment variable whose value is one key of a secret (ECS `secrets`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretEnvironment {
    /// The variable's name.
    pub name: String,
    /// `SECRET:KEY`.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub value_from: SecretKeyRef,
}

/// Every key of a secret as a file in a directory on a tmpfs (`PATH/KEY`, read-only).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretFile {
    /// The secret's name.
    pub secret: String,
    /// An absolute directory in the container.
    pub path: String,
}

/// Registry credentials from a secret with the keys `username` and `password` (ECS
/// `repositoryCredentials`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryCredentials {
    /// The secret's name.
    pub credentials_parameter: String,
}

/// The secrets one container references, for validation.
pub(crate) fn validate_references(
    field: &dyn Fn(&str) -> String,
    env: &[SecretEnvironment],
    files: &[SecretFile],
    credentials: Option<&RepositoryCredentials>,
    plain_env: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    let mut names = std::collections::HashSet::new();
    for (i, s) in env.iter().enumerate() {
        if s.name.is_empty() || s.name.contains('=') || s.name.contains('\0') {
            return Err(ValidationError::new(
                field(&format!("secrets[{i}].name")),
                format!("{:?} is not a valid variable name", s.name),
            ));
        }
        if plain_env.contains_key(&s.name) || !names.insert(s.name.as_str()) {
            return Err(ValidationError::new(
                field(&format!("secrets[{i}].name")),
                format!(
                    "{:?} is set twice (environment and secrets share names)",
                    s.name
                ),
            ));
        }
    }
    let mut paths = std::collections::HashSet::new();
    for (i, f) in files.iter().enumerate() {
        crate::validate_dns_label(&field(&format!("secretFiles[{i}].secret")), &f.secret)?;
        let path_field = field(&format!("secretFiles[{i}].path"));
        if !f.path.starts_with('/')
            || f.path == "/"
            || f.path.split('/').any(|c| c == ".." || c == ".")
            || f.path.contains('\0')
            || f.path.len() > 4096
        {
            return Err(ValidationError::new(
                path_field,
                format!(
                    "{:?} is not an absolute directory such as /run/secrets/tls",
                    f.path
                ),
            ));
        }
        if !paths.insert(f.path.trim_end_matches('/')) {
            return Err(ValidationError::new(
                path_field,
                format!("{:?} is used twice", f.path),
            ));
        }
    }
    if let Some(c) = credentials {
        crate::validate_dns_label(
            &field("repositoryCredentials.credentialsParameter"),
            &c.credentials_parameter,
        )?;
    }
    Ok(())
}

/// The opened secret values one task's containers get, resolved by the leader for the node the
/// task runs on and sent over that node's stream only. Its `Debug` shows names, never values.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TaskSecrets {
    /// By container name.
    pub containers: BTreeMap<String, ContainerSecrets>,
    /// Why the task's secrets could not be resolved (a missing secret or key): the task fails
    /// to start with this reason.
    pub error: Option<String>,
}

impl TaskSecrets {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.error.is_none()
    }

    /// The bytes of every value, name and file name it carries.
    pub fn size(&self) -> usize {
        self.containers
            .values()
            .map(|c| {
                let env: usize = c.environment.iter().map(|(k, v)| k.len() + v.len()).sum();
                let files: usize = c
                    .files
                    .iter()
                    .flat_map(|(dir, files)| {
                        files
                            .iter()
                            .map(move |(k, v)| dir.len() + k.len() + v.len())
                    })
                    .sum();
                let registry = c.registry.as_ref().map_or(0, |(u, p)| u.len() + p.len());
                env + files + registry
            })
            .sum()
    }
}

/// The opened secret values of one container.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ContainerSecrets {
    /// Variable name → value.
    pub environment: BTreeMap<String, String>,
    /// Directory in the container → file name → content.
    pub files: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Registry credentials for the container's image: (username, password).
    pub registry: Option<(String, String)>,
}

impl fmt::Debug for TaskSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSecrets")
            .field("containers", &self.containers)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Debug for ContainerSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerSecrets")
            .field("environment", &self.environment.keys().collect::<Vec<_>>())
            .field(
                "files",
                &self
                    .files
                    .iter()
                    .map(|(dir, files)| (dir, files.keys().collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            )
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_names_are_checked() {
        let r: SecretKeyRef = "db-creds:password".parse().unwrap();
        assert_eq!(r.to_string(), "db-creds:password");
        assert_eq!(
            "db-creds".parse::<SecretKeyRef>().unwrap_err().to_string(),
            "valueFrom: \"db-creds\" names no key; write SECRET:KEY"
        );
        assert!("Db_Creds:password".parse::<SecretKeyRef>().is_err());
        let data = |k: &str, n: usize| BTreeMap::from([(k.to_owned(), vec![b'x'; n])]);
        assert!(validate_secret("db-creds", &data("password", 10)).is_ok());
        assert_eq!(
            validate_secret("db-creds", &data("a/b", 1))
                .unwrap_err()
                .to_string(),
            "data.a/b: \"a/b\" contains '/'; use letters, digits, '-', '_' and '.'"
        );
        assert_eq!(
            validate_secret("db", &data("k", MAX_SECRET_BYTES))
                .unwrap_err()
                .to_string(),
            "data: 65537 bytes is too large; a secret holds at most 65536 bytes"
        );
    }

    #[test]
    fn opened_values_never_print() {
        let mut c = ContainerSecrets::default();
        c.environment.insert("DB_PASSWORD".into(), "hunter2".into());
        c.files.insert(
            "/run/secrets/tls".into(),
            BTreeMap::from([("key.pem".into(), b"PRIVATE".to_vec())]),
        );
        c.registry = Some(("robot".into(), "s3cret".into()));
        let s = TaskSecrets {
            containers: BTreeMap::from([("app".into(), c)]),
            error: None,
        };
        let printed = format!("{s:?} {s:#?}");
        assert!(printed.contains("DB_PASSWORD") && printed.contains("key.pem"));
        for value in ["hunter2", "PRIVATE", "s3cret"] {
            assert!(!printed.contains(value), "{printed}");
        }
    }
}
