//! What a task publishes on its node (ECS `portMappings`) and where it was published
//! (`networkBindings`).

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// The transport a port mapping forwards.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!("unknown protocol {s:?}; use tcp or udp")),
        }
    }
}

/// A container port published on the task's node: traffic to the node's `host_port` reaches
/// the container's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: u16,
    /// 0 (the default): the node picks a free port when the task starts. A fixed port is a
    /// placement constraint: two tasks needing it never share a node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_port: u16,
    #[serde(default, skip_serializing_if = "is_tcp")]
    pub protocol: Protocol,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(port: &u16) -> bool {
    *port == 0
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_tcp(protocol: &Protocol) -> bool {
    *protocol == Protocol::Tcp
}

impl PortMapping {
    pub fn tcp(container_port: u16) -> Self {
        Self {
            container_port,
            host_port: 0,
            protocol: Protocol::Tcp,
        }
    }
}

/// Where a container port was published (ECS `networkBindings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    /// The node's advertised address.
    #[serde(rename = "bindIP")]
    pub bind_ip: String,
    pub container_port: u16,
    pub host_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A task's port mappings make sense together: container ports set, no container port or
/// fixed host port published twice (per protocol) in the task. `field(i, j)` names mapping
/// `j` of container `i`.
pub(crate) fn validate_port_mappings<'a>(
    containers: impl Iterator<Item = &'a [PortMapping]>,
) -> Result<(), ValidationError> {
    let mut container_ports = HashSet::new();
    let mut host_ports = HashSet::new();
    for (i, mappings) in containers.enumerate() {
        for (j, m) in mappings.iter().enumerate() {
            let field = |f: &str| format!("containers[{i}].portMappings[{j}].{f}");
            if m.container_port == 0 {
                return Err(ValidationError::new(
                    field("containerPort"),
                    "must be a port number, 1..=65535",
                ));
            }
            // The task's containers share one network namespace: a port is the task's.
            if !container_ports.insert((m.container_port, m.protocol)) {
                return Err(ValidationError::new(
                    field("containerPort"),
                    format!(
                        "{}/{} is mapped twice in this task (its containers share one network)",
                        m.container_port, m.protocol
                    ),
                ));
            }
            if m.host_port != 0 && !host_ports.insert((m.host_port, m.protocol)) {
                return Err(ValidationError::new(
                    field("hostPort"),
                    format!("{}/{} is used twice in this task", m.host_port, m.protocol),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_default_to_a_dynamic_tcp_port_and_bindings_use_ecs_names() {
        let m: PortMapping = serde_json::from_str(r#"{"containerPort": 8080}"#).unwrap();
        assert_eq!(m, PortMapping::tcp(8080));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"containerPort":8080}"#
        );
        let b = NetworkBinding {
            bind_ip: "10.0.0.5".into(),
            container_port: 8080,
            host_port: 49153,
            protocol: Protocol::Udp,
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"bindIP":"10.0.0.5","containerPort":8080,"hostPort":49153,"protocol":"udp"}"#
        );
    }

    #[test]
    fn a_port_is_published_once_per_task_and_protocol() {
        let check = |containers: &[&[PortMapping]]| {
            validate_port_mappings(containers.iter().copied()).map_err(|e| e.to_string())
        };
        let fixed = |c, h| PortMapping {
            container_port: c,
            host_port: h,
            protocol: Protocol::Tcp,
        };
        let udp = PortMapping {
            protocol: Protocol::Udp,
            ..PortMapping::tcp(53)
        };
        assert_eq!(
            check(&[&[PortMapping::tcp(53), udp], &[fixed(80, 8080)]]),
            Ok(())
        );
        assert_eq!(
            check(&[&[PortMapping::tcp(0)]]).unwrap_err(),
            "containers[0].portMappings[0].containerPort: must be a port number, 1..=65535"
        );
        assert_eq!(
            check(&[&[PortMapping::tcp(80)], &[PortMapping::tcp(80)]]).unwrap_err(),
            "containers[1].portMappings[0].containerPort: 80/tcp is mapped twice in this task (its containers share one network)"
        );
        assert_eq!(
            check(&[&[fixed(80, 8080), fixed(81, 8080)]]).unwrap_err(),
            "containers[0].portMappings[1].hostPort: 8080/tcp is used twice in this task"
        );
    }
}
