//! Who may do what: clients' API tokens with a role in a namespace, and the join tokens that
//! let a node join the cluster. Only the SHA-256 of a token's secret is kept (berth-tls hashes
//! it); the secret itself is shown once, when the token is created, and never stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{format_timestamp, validate_name, SealedValue, Timestamp, ValidationError};

/// The namespace stored in an admin token: admins act on every namespace.
pub const ALL_NAMESPACES: &str = "*";

/// Longest description a token may carry.
pub const MAX_TOKEN_DESCRIPTION: usize = 256;

/// What a call needs. Each API call asks for one permission, in a namespace or cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// get, describe, logs, events, watch.
    Read,
    /// run, apply, scale, stop, delete.
    Write,
    /// exec into a task's container.
    Exec,
    /// cluster membership, nodes, namespaces and tokens.
    ManageCluster,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Write,
        Permission::Exec,
        Permission::ManageCluster,
    ];

    /// `read`, `write`, `exec` or `manage-cluster`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Exec => "exec",
            Permission::ManageCluster => "manage-cluster",
        }
    }

    /// The calls the permission covers, for messages.
    pub fn calls(self) -> &'static str {
        match self {
            Permission::Read => "get, describe, logs, events, watch",
            Permission::Write => "run, apply, scale, stop, delete",
            Permission::Exec => "exec",
            Permission::ManageCluster => "cluster membership, nodes, namespaces, tokens",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client token's role. Viewers and deployers act in their namespace only; admins everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessRole {
    /// Reads.
    Viewer,
    /// Reads, changes and exec.
    Deployer,
    /// Everything, cluster management included, in every namespace.
    Admin,
}

impl AccessRole {
    pub const ALL: [AccessRole; 3] = [AccessRole::Viewer, AccessRole::Deployer, AccessRole::Admin];

    /// `viewer`, `deployer` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessRole::Viewer => "viewer",
            AccessRole::Deployer => "deployer",
            AccessRole::Admin => "admin",
        }
    }

    /// Whether the role grants `permission` (in the namespaces it reaches).
    pub fn allows(self, permission: Permission) -> bool {
        match self {
            AccessRole::Viewer => permission == Permission::Read,
            AccessRole::Deployer => permission != Permission::ManageCluster,
            AccessRole::Admin => true,
        }
    }

    /// Whether the role reaches every namespace (its token's namespace is ignored).
    pub fn is_cluster_wide(self) -> bool {
        self == AccessRole::Admin
    }
}

impl fmt::Display for AccessRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessRole {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccessRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "role",
                    format!("{s:?} is not a role; use viewer, deployer or admin"),
                )
            })
    }
}

/// A client's bearer token as the cluster stores it: its ID, the SHA-256 of its secret, and
/// what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenRecord {
    /// Public; the token names it (`berth_<id>_<secret>`), so the record is found without
    /// knowing the secret.
    pub id: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_hash: String,
    /// The namespace a viewer or deployer acts in; [`ALL_NAMESPACES`] for an admin.
    pub namespace: String,
    pub role: AccessRole,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
    /// None: never expires.
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Timestamp>,
    /// Who or what it is for, as its creator said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A token made with `--aws`: its secret, sealed under the secrets keyring, for checking
    /// the AWS Signature Version 4 of ECS requests (an HMAC keyed by the secret, which its hash
    /// cannot check). `None`: a bearer token only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret: Option<SealedValue>,
}

/// How the AWS access key ID of an `--aws` token begins; the token's ID, in capitals, follows.
pub const AWS_ACCESS_KEY_PREFIX: &str = "BERTH";

/// The AWS access key ID of the token with ID `id`: `BERTH` and the ID in capitals (AWS's
/// key IDs are capitals and digits).
pub fn aws_access_key_id(id: &str) -> String {
    format!("{AWS_ACCESS_KEY_PREFIX}{}", id.to_ascii_uppercase())
}

/// The token ID an AWS access key ID names, if it is of [`aws_access_key_id`]'s form.
pub fn token_id_of_access_key(key: &str) -> Option<String> {
    let id = key.strip_prefix(AWS_ACCESS_KEY_PREFIX)?;
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    valid.then(|| id.to_ascii_lowercase())
}

impl ApiTokenRecord {
    /// A token record; an admin's namespace becomes [`ALL_NAMESPACES`] whatever is given.
    pub fn new(
        id: impl Into<String>,
        secret_hash: impl Into<String>,
        namespace: impl Into<String>,
        role: AccessRole,
        created_at: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Self {
        let mut record = Self {
            id: id.into(),
            secret_hash: secret_hash.into(),
            namespace: namespace.into(),
            role,
            created_at,
            expires_at,
            description: String::new(),
            aws_secret: None,
        };
        record.normalize();
        record
    }

    /// An admin's namespace is [`ALL_NAMESPACES`].
    pub fn normalize(&mut self) {
        if self.role.is_cluster_wide() {
            self.namespace = ALL_NAMESPACES.to_owned();
        }
    }

    /// Checks the ID, the hash, the namespace (unless admin) and the description.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_token_id(&self.id)?;
        validate_secret_hash(&self.secret_hash)?;
        if !self.role.is_cluster_wide() {
            validate_name("namespace", &self.namespace)?;
        }
        if self.description.chars().count() > MAX_TOKEN_DESCRIPTION {
            return Err(ValidationError::new(
                "description",
                format!("must be at most {MAX_TOKEN_DESCRIPTION} characters"),
            ));
        }
        Ok(())
    }

    /// The AWS access key ID of an `--aws` token.
    pub fn aws_access_key_id(&self) -> Option<String> {
        self.aws_secret
            .as_ref()
            .map(|_| aws_access_key_id(&self.id))
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether `secret_hash` (the SHA-256 of the secret a caller presented, hex) is this
    /// token's, compared in constant time.
    pub fn secret_matches(&self, secret_hash: &str) -> bool {
        constant_time_eq(self.secret_hash.as_bytes(), secret_hash.as_bytes())
    }

    /// Whether the token may use `permission` in `namespace` (`None`: across every namespace,
    /// or on the cluster itself) at `now`. The refusal says in a sentence what was missing.
    pub fn allows(
        &self,
        permission: Permission,
        namespace: Option<&str>,
        now: Timestamp,
    ) -> Result<(), Denied> {
        if let Some(at) = self.expires_at.filter(|_| self.is_expired(now)) {
            return Err(Denied::Expired {
                token: self.id.clone(),
                at,
            });
        }
        if !self.role.allows(permission) {
            return Err(Denied::Permission {
                token: self.id.clone(),
                role: self.role,
                namespace: self.namespace.clone(),
                permission,
            });
        }
        if self.role.is_cluster_wide() || namespace == Some(self.namespace.as_str()) {
            return Ok(());
        }
        Err(Denied::Namespace {
            token: self.id.clone(),
            role: self.role,
            namespace: self.namespace.clone(),
            wanted: namespace.map(str::to_owned),
        })
    }
}

/// Why a token may not do what it was used for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The token is past its expiry (answer UNAUTHENTICATED: it no longer says who calls).
    #[error("token {token} expired at {}", format_timestamp(*at))]
    Expired { token: String, at: Timestamp },
    /// Its role lacks the permission.
    #[error(
        "token {token} is {} {role} of namespace {namespace}: it lacks the {permission} permission ({})",
        article(*role),
        permission.calls()
    )]
    Permission {
        token: String,
        role: AccessRole,
        namespace: String,
        permission: Permission,
    },
    /// Its role has the permission, but not in the namespace asked for (`wanted`; `None`: the
    /// call spans every namespace).
    #[error(
        "token {token} is {} {role} of namespace {namespace}: it has no access to {}",
        article(*role),
        match wanted {
            Some(ns) => format!("namespace {ns}"),
            None => "other namespaces (name its namespace with -n)".to_owned(),
        }
    )]
    Namespace {
        token: String,
        role: AccessRole,
        namespace: String,
        wanted: Option<String>,
    },
    /// A join token used to join a node of the other role.
    #[error("join token {token} joins {}s: it cannot join {} {role}", allowed.as_str(), node_article(*role))]
    NodeRole {
        token: String,
        allowed: NodeRole,
        role: NodeRole,
    },
}

fn article(role: AccessRole) -> &'static str {
    match role {
        AccessRole::Admin => "an",
        AccessRole::Viewer | AccessRole::Deployer => "a",
    }
}

fn node_article(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Agent | NodeRole::Ingress => "an",
        NodeRole::Server => "a",
    }
}

/// What a join token lets a node join as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// A Raft member.
    Server,
    /// Runs tasks.
    Agent,
    /// Routes requests to services (reads the cluster, writes nothing).
    Ingress,
}

impl NodeRole {
    /// `server`, `agent` or `ingress`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Server => "server",
            NodeRole::Agent => "agent",
            NodeRole::Ingress => "ingress",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeRole {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(NodeRole::Server),
            "agent" => Ok(NodeRole::Agent),
            "ingress" => Ok(NodeRole::Ingress),
            _ => Err(ValidationError::new(
                "role",
                format!("{s:?} is not a node role; use agent, server or ingress"),
            )),
        }
    }
}

/// A token that lets a node join the cluster, as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenRecord {
    pub id: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_hash: String,
    pub role: NodeRole,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Timestamp>,
}

impl JoinTokenRecord {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_token_id(&self.id)?;
        validate_secret_hash(&self.secret_hash)
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether `secret_hash` is this token's, compared in constant time.
    pub fn secret_matches(&self, secret_hash: &str) -> bool {
        constant_time_eq(self.secret_hash.as_bytes(), secret_hash.as_bytes())
    }

    /// Whether the token may join a node of `role` at `now`.
    pub fn allows(&self, role: NodeRole, now: Timestamp) -> Result<(), Denied> {
        if let Some(at) = self.expires_at.filter(|_| self.is_expired(now)) {
            return Err(Denied::Expired {
                token: self.id.clone(),
                at,
            });
        }
        if role != self.role {
            return Err(Denied::NodeRole {
                token: self.id.clone(),
                allowed: self.role,
                role,
            });
        }
        Ok(())
    }
}

/// A token's ID: 1-64 lowercase letters, digits or `-` (berth-tls makes 16 hex digits).
fn validate_token_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.len() > 64 {
        return Err(ValidationError::new("id", "must be 1-64 characters"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ValidationError::new(
            "id",
            format!("{id:?} contains {bad:?}; use lowercase letters, digits and '-'"),
        ));
    }
    Ok(())
}

fn validate_secret_hash(hash: &str) -> Result<(), ValidationError> {
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if hash.len() != 64 || !hash.chars().all(hex) {
        return Err(ValidationError::new(
            "secretHash",
            "must be a SHA-256 in lowercase hex (64 characters), never the secret itself",
        ));
    }
    Ok(())
}

/// Compares without stopping at the first difference, so timing tells nothing about a hash.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn token(role: AccessRole, expires_at: Option<Timestamp>) -> ApiTokenRecord {
        ApiTokenRecord::new("abc123", HASH, "a", role, 1, expires_at)
    }

    /// One line per (role, permission, namespace): `ok` or the refusal.
    #[test]
    fn permission_table() {
        let mut lines = Vec::new();
        for role in AccessRole::ALL {
            for permission in Permission::ALL {
                for ns in [Some("a"), Some("b"), None] {
                    let answer = match token(role, None).allows(permission, ns, 5) {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    lines.push(format!(
                        "{role} {permission} {}: {answer}",
                        ns.unwrap_or("-")
                    ));
                }
            }
        }
        let expected = "\
viewer read a: ok
viewer read b: token abc123 is a viewer of namespace a: it has no access to namespace b
viewer read -: token abc123 is a viewer of namespace a: it has no access to other namespaces (name its namespace with -n)
viewer write a: token abc123 is a viewer of namespace a: it lacks the write permission (run, apply, scale, stop, delete)
viewer write b: token abc123 is a viewer of namespace a: it lacks the write permission (run, apply, scale, stop, delete)
viewer write -: token abc123 is a viewer of namespace a: it lacks the write permission (run, apply, scale, stop, delete)
viewer exec a: token abc123 is a viewer of namespace a: it lacks the exec permission (exec)
viewer exec b: token abc123 is a viewer of namespace a: it lacks the exec permission (exec)
viewer exec -: token abc123 is a viewer of namespace a: it lacks the exec permission (exec)
viewer manage-cluster a: token abc123 is a viewer of namespace a: it lacks the manage-cluster permission (cluster membership, nodes, namespaces, tokens)
viewer manage-cluster b: token abc123 is a viewer of namespace a: it lacks the manage-cluster permission (cluster membership, nodes, namespaces, tokens)
viewer manage-cluster -: token abc123 is a viewer of namespace a: it lacks the manage-cluster permission (cluster membership, nodes, namespaces, tokens)
deployer read a: ok
deployer read b: token abc123 is a deployer of namespace a: it has no access to namespace b
deployer read -: token abc123 is a deployer of namespace a: it has no access to other namespaces (name its namespace with -n)
deployer write a: ok
deployer write b: token abc123 is a deployer of namespace a: it has no access to namespace b
deployer write -: token abc123 is a deployer of namespace a: it has no access to other namespaces (name its namespace with -n)
deployer exec a: ok
deployer exec b: token abc123 is a deployer of namespace a: it has no access to namespace b
deployer exec -: token abc123 is a deployer of namespace a: it has no access to other namespaces (name its namespace with -n)
deployer manage-cluster a: token abc123 is a deployer of namespace a: it lacks the manage-cluster permission (cluster membership, nodes, namespaces, tokens)
deployer manage-cluster b: token abc123 is a deployer of namespace a: it lacks the manage-cluster permission (cluster membership, nodes, namespaces, tokens)
deployer manage-cluster -: token abc123 is a deployer of namespace a: it lacks the manage-cluster permission (cluster membership, nodes, namespaces, tokens)
admin read a: ok
admin read b: ok
admin read -: ok
admin write a: ok
admin write b: ok
admin write -: ok
admin exec a: ok
admin exec b: ok
admin exec -: ok
admin manage-cluster a: ok
admin manage-cluster b: ok
admin manage-cluster -: ok";
        assert_eq!(lines.join("\n"), expected);
    }

    #[test]
    fn expiry_comes_first_and_is_exact() {
        let t = token(AccessRole::Admin, Some(1_800_000_000_000));
        assert_eq!(t.allows(Permission::Read, None, 1_799_999_999_999), Ok(()));
        assert_eq!(
            t.allows(Permission::Read, None, 1_800_000_000_000)
                .unwrap_err()
                .to_string(),
            "token abc123 expired at 2027-01-15T08:00:00.000Z"
        );
    }

    #[test]
    fn an_admin_token_is_cluster_wide_and_serialises_camel_case() {
        let mut t = token(AccessRole::Admin, Some(1_800_000_000_000));
        t.description = "ci".into();
        assert_eq!(t.namespace, ALL_NAMESPACES);
        assert_eq!(t.validate(), Ok(()));
        let json = serde_json::to_string(&t).expect("encodes");
        assert_eq!(
            json,
            format!(
                r#"{{"id":"abc123","secretHash":"{HASH}","namespace":"*","role":"admin","createdAt":"1970-01-01T00:00:00.001Z","expiresAt":"2027-01-15T08:00:00.000Z","description":"ci"}}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<ApiTokenRecord>(&json).expect("decodes"),
            t
        );
    }

    #[test]
    fn aws_tokens_name_their_access_key_and_keep_the_secret_sealed() {
        let mut t = token(AccessRole::Deployer, None);
        assert_eq!(
            t.aws_access_key_id(),
            None,
            "a bearer token has no access key"
        );
        t.aws_secret = Some(SealedValue {
            key_id: "k1".into(),
            nonce: "bm9uY2U=".into(),
            ciphertext: "c2VhbGVk".into(),
        });
        assert_eq!(t.aws_access_key_id().as_deref(), Some("BERTHABC123"));
        assert_eq!(
            token_id_of_access_key("BERTHABC123").as_deref(),
            Some("abc123")
        );
        for other in ["AKIAIOSFODNN7EXAMPLE", "BERTH", "BERTHabc123", "BERTHAB_C"] {
            assert_eq!(token_id_of_access_key(other), None, "{other}");
        }
        let json = serde_json::to_string(&t).expect("encodes");
        assert!(json.contains(r#""awsSecret":{"keyId":"k1","#), "{json}");
        assert_eq!(
            serde_json::from_str::<ApiTokenRecord>(&json).expect("decodes"),
            t
        );
    }

    #[test]
    fn roles_parse_and_print_lowercase() {
        for role in AccessRole::ALL {
            assert_eq!(role.to_string().parse::<AccessRole>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).expect("encodes"),
                serde_json::Value::from(role.as_str())
            );
        }
        assert_eq!(
            "owner".parse::<AccessRole>().unwrap_err().to_string(),
            "role: \"owner\" is not a role; use viewer, deployer or admin"
        );
        assert_eq!("agent".parse::<NodeRole>(), Ok(NodeRole::Agent));
        assert_eq!(
            serde_json::to_value(NodeRole::Server).expect("encodes"),
            serde_json::Value::from("server")
        );
        assert_eq!("ingress".parse::<NodeRole>(), Ok(NodeRole::Ingress));
        assert!("admin".parse::<NodeRole>().is_err());
    }

    #[test]
    fn records_are_validated() {
        let check = |t: ApiTokenRecord| t.validate().map_err(|e| e.to_string());
        assert_eq!(check(token(AccessRole::Viewer, None)), Ok(()));
        let mut bad = token(AccessRole::Viewer, None);
        bad.secret_hash = "hunter2".into();
        assert_eq!(
            check(bad),
            Err("secretHash: must be a SHA-256 in lowercase hex (64 characters), never the secret itself".into())
        );
        let mut bad = token(AccessRole::Deployer, None);
        bad.namespace = "*".into();
        assert_eq!(
            check(bad),
            Err("namespace: \"*\" must start with a letter or digit".into())
        );
        let mut bad = token(AccessRole::Viewer, None);
        bad.id = "ABC".into();
        assert!(check(bad).is_err());
    }

    #[test]
    fn join_tokens_join_their_role_until_they_expire() {
        let t = JoinTokenRecord {
            id: "j1".into(),
            secret_hash: HASH.into(),
            role: NodeRole::Agent,
            created_at: 1,
            expires_at: Some(10),
        };
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.allows(NodeRole::Agent, 9), Ok(()));
        assert_eq!(
            t.allows(NodeRole::Server, 9).unwrap_err().to_string(),
            "join token j1 joins agents: it cannot join a server"
        );
        assert!(matches!(
            t.allows(NodeRole::Agent, 10),
            Err(Denied::Expired { .. })
        ));
        assert!(t.secret_matches(HASH));
        assert!(!t.secret_matches(&HASH.replace('0', "1")));
        assert!(!t.secret_matches(""));
    }
}
