//! Domain types of berth and their validation rules.
//!
//! These types follow Amazon ECS semantics (task definitions with immutable revisions, tasks with
//! `desiredStatus`/`lastStatus` and stop codes) so that an ECS-compatible API can later be a thin
//! adapter. They serialise to JSON with the camelCase field names the CLI contract promises.
//!
//! This crate is pure: no IO, no async, no clock. Timestamps are passed in by the caller (the Raft
//! leader assigns them before proposing).

mod access;
mod assignment;
mod certificate;
mod cluster;
mod event;
mod metering;
mod namespace;
mod network;
mod node;
mod placement;
mod sandbox;
mod secret;
mod service;
mod task;
mod task_definition;
mod time;

pub use access::{
    aws_access_key_id, token_id_of_access_key, AccessRole, ApiTokenRecord, Denied, JoinTokenRecord,
    NodeRole, Permission, ALL_NAMESPACES, AWS_ACCESS_KEY_PREFIX, MAX_TOKEN_DESCRIPTION,
};
pub use assignment::Assignment;
pub use certificate::{CaRotation, CertificateRecord, NodeCertificates, MAX_NODE_CERTIFICATES};
pub use cluster::{ClusterMember, ClusterStatus, MemberRole, PlannedTask};
pub use event::{Event, EventLog, MAX_EVENTS};
pub use metering::{
    Accrued, Ledger, LedgerBucket, LedgerRow, LedgerTotal, Rates, TaskUsage, USAGE_BUCKET_MS,
};
pub use namespace::{
    Namespace, Quota, QuotaExceeded, QuotaResource, Usage, MAX_QUOTA_CPU, MAX_QUOTA_MEMORY,
};
pub use network::{
    published_tcp_ports, routable, service_endpoints, Endpoint, IngressRule, NetworkBinding,
    PortMapping, Protocol, ServiceEndpoints, DEFAULT_DEREGISTRATION_DELAY_SECS,
};
pub use node::{Node, NodeStatus, Resources};
pub use placement::{
    BinpackField, Expression, PlacementConstraint, PlacementSpec, PlacementStrategy,
};
pub use sandbox::{
    EphemeralStorage, KernelCapabilities, LinuxParameters, Ulimit, CAPABILITIES,
    DEFAULT_EPHEMERAL_STORAGE_GIB, MAX_EPHEMERAL_STORAGE_GIB, ULIMIT_NAMES,
};
pub use secret::{
    validate_secret, ContainerSecrets, RepositoryCredentials, SealedValue, Secret,
    SecretEnvironment, SecretFile, SecretKeyRef, SecretKeys, TaskSecrets, MAX_SECRET_BYTES,
    MAX_SECRET_KEYS, MAX_TASK_SECRET_BYTES,
};
pub use service::{
    Autoscaling, CircuitBreaker, Deployment, DeploymentConfiguration, DeploymentStatus,
    DeploymentStrategy, LaunchBackoff, MetricValue, RolloutState, ScaleToZero, ScalingMetric,
    Service, ServiceSpec, ServiceStatus, StopOrder, TargetTracking, MAX_ACTIVATION_TIMEOUT_SECS,
    MAX_DESIRED_COUNT, MIN_IDLE_AFTER_SECS,
};
pub use task::{
    ContainerOverride, ContainerState, DesiredStatus, HealthStatus, RemovedTask, StopCode, Task,
    TaskMetrics, TaskStatus, TaskStatusUpdate, MAX_OVERRIDE_BYTES, MAX_REASON_BYTES,
};
pub use task_definition::{
    fixed_host_ports, ContainerDefinition, ContainerDependency, DependencyCondition, HealthCheck,
    TaskDefinition, TaskDefinitionRef, TaskDefinitionSpec, TaskDefinitionStatus,
    DEFAULT_STOP_TIMEOUT_SECS,
};
pub use time::{format_timestamp, Timestamp};

/// Labels (for selecting with `-l key=value`) and annotations (for people and tools) of an
/// object, kept as given. Flattened into the object's JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// `key=value` and `key!=value` terms, comma separated, all of which must hold (as kubectl's
/// equality-based selectors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<(String, bool, String)>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ValidationError::new(
                    "selector",
                    format!("{term:?} is not key=value or key!=value"),
                ));
            };
            terms.push((key.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(k, equal, v)| (labels.get(k) == Some(v)) == *equal)
    }
}

/// The namespace objects land in when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// CPU units per vCPU, as in ECS.
pub const CPU_UNITS_PER_VCPU: u32 = 1024;

/// A rule of the model that an input broke. `field` is the camelCase path of the offending field
/// (`containers[0].image`) so that manifests and the API can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks that `name` is a valid object name: 1-255 characters of ASCII letters, digits, `-`
/// and `_`, starting with a letter or digit (the rules ECS applies to families).
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if name.len() > 255 {
        return Err(ValidationError::new(
            field,
            "must be at most 255 characters",
        ));
    }
    let mut chars = name.chars();
    let first = chars.next().expect("name is not empty");
    if !first.is_ascii_alphanumeric() {
        return Err(ValidationError::new(
            field,
            format!("{name:?} must start with a letter or digit"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(ValidationError::new(
            field,
            format!("{name:?} contains {bad:?}; use letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

/// Checks a DNS label (RFC 1123, as Kubernetes names objects): 1 to 63 lower-case letters,
/// digits and '-', starting and ending with a letter or digit.
pub fn validate_dns_label(field: &str, name: &str) -> Result<(), ValidationError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!(
            "{name:?} is not a DNS label: use 1 to 63 lower-case letters, digits and '-', \
             starting and ending with a letter or digit"
        ),
    ))
}

/// An error and its causes, `: `-separated (what anyhow's `{:#}` prints), for log lines and
/// messages about errors that carry their cause as a source.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `true`: a serde default for flags that are on unless turned off.
pub(crate) fn yes() -> bool {
    true
}

/// Whether a flag is on (serde leaves flags that are on by default out).
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
pub(crate) fn is_true(flag: &bool) -> bool {
    *flag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]
        .into();
        let m = |s: &str| LabelSelector::parse(s).expect("parses").matches(&labels);
        assert!(m("app=web"));
        assert!(m("app==web, tier=front"));
        assert!(m("app!=db"));
        assert!(!m("app=web,tier=back"));
        assert!(!m("zone=a"));
        assert!(m("zone!=a"));
        assert!(m(""));
        assert!(LabelSelector::parse("app").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("family", "web-1_a").is_ok());
        assert_eq!(
            validate_name("family", "").unwrap_err().to_string(),
            "family: must not be empty"
        );
        assert_eq!(
            validate_name("family", "-web").unwrap_err().to_string(),
            "family: \"-web\" must start with a letter or digit"
        );
        assert_eq!(
            validate_name("family", "web app").unwrap_err().to_string(),
            "family: \"web app\" contains ' '; use letters, digits, '-' and '_'"
        );
    }
}
