//! Tokens and namespaces: records as listed (never a secret or its hash), quotas both ways,
//! and listings back into records for clients.

use berth_model as m;

use super::ConversionError;
use crate::v1;

fn opt_ts(ts: Option<m::Timestamp>) -> u64 {
    ts.unwrap_or(0)
}

/// A listed token as a record for clients: the wire never carries the hash, so `secret_hash`
/// is empty (such a record is for display, not for checking a secret).
impl TryFrom<v1::ApiToken> for m::ApiTokenRecord {
    type Error = ConversionError;

    fn try_from(t: v1::ApiToken) -> Result<Self, Self::Error> {
        let mut record = m::ApiTokenRecord::new(
            t.id,
            String::new(),
            t.namespace,
            access_role("role", &t.role)?,
            t.created_at,
            super::opt_ts(t.expires_at),
        );
        record.description = t.description;
        // A display record: an `--aws` token is marked by an empty sealed value (the wire
        // never carries its secret), so that `aws_access_key_id` names its key.
        if !t.aws_access_key_id.is_empty() {
            record.aws_secret = Some(m::SealedValue {
                key_id: String::new(),
                nonce: String::new(),
                ciphertext: String::new(),
            });
        }
        Ok(record)
    }
}

/// A listed join token as a record for clients; `secret_hash` is empty, as for API tokens.
impl TryFrom<v1::JoinToken> for m::JoinTokenRecord {
    type Error = ConversionError;

    fn try_from(t: v1::JoinToken) -> Result<Self, Self::Error> {
        Ok(Self {
            id: t.id,
            secret_hash: String::new(),
            role: node_role("role", &t.role)?,
            created_at: t.created_at,
            expires_at: super::opt_ts(t.expires_at),
        })
    }
}

impl From<m::ApiTokenRecord> for v1::ApiToken {
    fn from(t: m::ApiTokenRecord) -> Self {
        Self {
            aws_access_key_id: t.aws_access_key_id().unwrap_or_default(),
            id: t.id,
            namespace: t.namespace,
            role: t.role.to_string(),
            created_at: t.created_at,
            expires_at: opt_ts(t.expires_at),
            description: t.description,
        }
    }
}

impl From<m::JoinTokenRecord> for v1::JoinToken {
    fn from(t: m::JoinTokenRecord) -> Self {
        Self {
            id: t.id,
            role: t.role.to_string(),
            created_at: t.created_at,
            expires_at: opt_ts(t.expires_at),
        }
    }
}

impl From<m::Quota> for v1::Quota {
    fn from(q: m::Quota) -> Self {
        Self {
            cpu: q.cpu,
            memory: q.memory,
            tasks: q.tasks,
        }
    }
}

impl From<v1::Quota> for m::Quota {
    fn from(q: v1::Quota) -> Self {
        Self {
            cpu: q.cpu,
            memory: q.memory,
            tasks: q.tasks,
        }
    }
}

impl From<v1::NamespaceUsage> for m::Usage {
    fn from(u: v1::NamespaceUsage) -> Self {
        Self {
            cpu: u.cpu,
            memory: u.memory,
            tasks: u.tasks,
        }
    }
}

/// A listed namespace and what its tasks use, for clients (without its events).
impl TryFrom<v1::Namespace> for (m::Namespace, m::Usage) {
    type Error = ConversionError;

    fn try_from(ns: v1::Namespace) -> Result<Self, Self::Error> {
        let namespace = m::Namespace::new(
            ns.name,
            ns.quota.map(m::Quota::from).unwrap_or_default(),
            ns.created_at,
        );
        namespace.validate()?;
        Ok((namespace, ns.usage.map(m::Usage::from).unwrap_or_default()))
    }
}

/// A namespace as listed: its record (or the implicit `default`) and what its tasks use.
pub fn namespace_to_wire(ns: m::Namespace, usage: m::Usage) -> v1::Namespace {
    v1::Namespace {
        name: ns.name,
        quota: Some(ns.quota.into()),
        usage: Some(v1::NamespaceUsage {
            cpu: usage.cpu,
            memory: usage.memory,
            tasks: usage.tasks,
        }),
        created_at: ns.created_at,
    }
}

/// A role named on the wire (`viewer|deployer|admin`).
pub fn access_role(field: &'static str, role: &str) -> Result<m::AccessRole, ConversionError> {
    role.parse::<m::AccessRole>()
        .map_err(|e| ConversionError::Invalid(m::ValidationError::new(field, e.message)))
}

/// A node role named on the wire (`agent|server`).
pub fn node_role(field: &'static str, role: &str) -> Result<m::NodeRole, ConversionError> {
    role.parse::<m::NodeRole>()
        .map_err(|e| ConversionError::Invalid(m::ValidationError::new(field, e.message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_records_are_listed_without_their_hash() {
        let record = m::ApiTokenRecord::new(
            "abcd",
            "0".repeat(64),
            "team-a",
            m::AccessRole::Deployer,
            5,
            Some(9),
        );
        let wire = v1::ApiToken::from(record);
        assert_eq!(
            (wire.namespace.as_str(), wire.role.as_str(), wire.expires_at),
            ("team-a", "deployer", 9)
        );
        assert!(!format!("{wire:?}").contains(&"0".repeat(64)));
        assert!(access_role("role", "owner").is_err());
        assert_eq!(node_role("role", "agent").ok(), Some(m::NodeRole::Agent));
        let quota = m::Quota {
            cpu: Some(2048),
            memory: None,
            tasks: Some(4),
        };
        assert_eq!(m::Quota::from(v1::Quota::from(quota)), quota);
    }

    #[test]
    fn listed_tokens_become_records_without_a_hash() {
        let mut record = m::ApiTokenRecord::new(
            "abcd",
            "0".repeat(64),
            "team-a",
            m::AccessRole::Viewer,
            5,
            None,
        );
        record.description = "ci".into();
        let back = m::ApiTokenRecord::try_from(v1::ApiToken::from(record.clone())).expect("valid");
        assert_eq!(
            back,
            m::ApiTokenRecord {
                secret_hash: String::new(),
                ..record
            }
        );
        let admin = v1::ApiToken {
            role: "admin".into(),
            namespace: "team-a".into(),
            ..v1::ApiToken::default()
        };
        let admin = m::ApiTokenRecord::try_from(admin).expect("valid");
        assert_eq!(admin.namespace, m::ALL_NAMESPACES);
        let owner = v1::ApiToken {
            role: "owner".into(),
            ..v1::ApiToken::default()
        };
        assert!(m::ApiTokenRecord::try_from(owner).is_err());

        let join = m::JoinTokenRecord {
            id: "ef01".into(),
            secret_hash: "0".repeat(64),
            role: m::NodeRole::Agent,
            created_at: 7,
            expires_at: Some(70),
        };
        let back = m::JoinTokenRecord::try_from(v1::JoinToken::from(join.clone())).expect("valid");
        assert_eq!(
            back,
            m::JoinTokenRecord {
                secret_hash: String::new(),
                ..join
            }
        );
    }

    #[test]
    fn listed_namespaces_keep_quota_and_usage() {
        let quota = m::Quota {
            cpu: Some(4096),
            memory: None,
            tasks: Some(10),
        };
        let usage = m::Usage::of_tasks(2, 256, 512);
        let wire = namespace_to_wire(m::Namespace::new("team-a", quota, 9), usage);
        let (ns, used) = <(m::Namespace, m::Usage)>::try_from(wire).expect("valid");
        assert_eq!((ns, used), (m::Namespace::new("team-a", quota, 9), usage));
        let bad = v1::Namespace {
            name: "Team A".into(),
            ..v1::Namespace::default()
        };
        assert!(<(m::Namespace, m::Usage)>::try_from(bad).is_err());
    }
}
