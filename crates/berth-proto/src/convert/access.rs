//! Tokens and namespaces: records as listed (never a secret or its hash), quotas both ways.

use berth_model as m;

use super::ConversionError;
use crate::v1;

fn opt_ts(ts: Option<m::Timestamp>) -> u64 {
    ts.unwrap_or(0)
}

impl From<m::ApiTokenRecord> for v1::ApiToken {
    fn from(t: m::ApiTokenRecord) -> Self {
        Self {
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
}
