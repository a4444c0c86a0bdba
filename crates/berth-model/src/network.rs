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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
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

/// Seconds a service's task is out of routing before it gets SIGTERM, when none is given.
pub const DEFAULT_DEREGISTRATION_DELAY_SECS: u32 = 5;

/// How ingresses reach a service: HTTP requests for `host` (and `path_prefix`), or TCP
/// connections to `listener_port` of every ingress, go to `container_port` of `container_name`
/// on the service's healthy tasks (through the port it publishes on its node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// HTTP: the Host header to match (any port stripped, case-insensitive); `*` matches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: the path prefix to match, on segment boundaries; `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// TCP: the port every ingress listens on for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_port: Option<u16>,
    pub container_name: String,
    pub container_port: u16,
}

impl IngressRule {
    /// An HTTP rule for `host` on `/`.
    pub fn http(host: &str, container_name: &str, container_port: u16) -> Self {
        Self {
            host: Some(host.to_owned()),
            path_prefix: None,
            listener_port: None,
            container_name: container_name.to_owned(),
            container_port,
        }
    }

    /// The path prefix, `/` when none was given.
    pub fn path(&self) -> &str {
        self.path_prefix.as_deref().unwrap_or("/")
    }

    /// The rule's form is one of the two and its values are usable. `field` names the rule
    /// (`ingress[0]`).
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let f = |name: &str| format!("{field}.{name}");
        match (&self.host, self.listener_port) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ValidationError::new(
                    field,
                    "give either host (HTTP, with an optional pathPrefix) or listenerPort (TCP)",
                ))
            }
            (Some(host), None) => {
                let name_ok = host == "*"
                    || (!host.is_empty()
                        && host.len() <= 253
                        && host.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        }));
                if !name_ok {
                    return Err(ValidationError::new(
                        f("host"),
                        format!("{host:?} is not a host name (or * for any host)"),
                    ));
                }
            }
            (None, Some(0)) => {
                return Err(ValidationError::new(
                    f("listenerPort"),
                    "must be a port number, 1..=65535",
                ))
            }
            (None, Some(_)) => {
                if self.path_prefix.is_some() {
                    return Err(ValidationError::new(
                        f("pathPrefix"),
                        "applies to HTTP rules only (this one has a listenerPort)",
                    ));
                }
            }
        }
        if let Some(p) = &self.path_prefix {
            if !p.starts_with('/') || p.chars().any(char::is_whitespace) {
                return Err(ValidationError::new(
                    f("pathPrefix"),
                    format!("{p:?} must start with / and contain no spaces"),
                ));
            }
        }
        crate::validate_name(&f("containerName"), &self.container_name)?;
        if self.container_port == 0 {
            return Err(ValidationError::new(
                f("containerPort"),
                "must be a port number, 1..=65535",
            ));
        }
        Ok(())
    }

    /// The rule reaches a port `containers` publish: the container exists and maps the port.
    pub fn check_target(
        &self,
        field: &str,
        containers: &[crate::ContainerDefinition],
    ) -> Result<(), ValidationError> {
        let Some(c) = containers.iter().find(|c| c.name == self.container_name) else {
            return Err(ValidationError::new(
                format!("{field}.containerName"),
                format!(
                    "the task definition has no container {:?}",
                    self.container_name
                ),
            ));
        };
        if !c
            .port_mappings
            .iter()
            .any(|m| m.container_port == self.container_port && m.protocol == Protocol::Tcp)
        {
            return Err(ValidationError::new(
                format!("{field}.containerPort"),
                format!(
                    "container {} publishes no port {}/tcp; add portMappings: [{{containerPort: {}}}] to it",
                    c.name, self.container_port, self.container_port
                ),
            ));
        }
        Ok(())
    }
}

/// Where one published port of a service's task is reached: an endpoint of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub task_id: String,
    pub node: String,
    pub container_name: String,
    pub container_port: u16,
    /// The node's advertised address.
    #[serde(rename = "bindIP")]
    pub bind_ip: String,
    pub host_port: u16,
}

/// The endpoints of one service: its tasks that may receive traffic, by published TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoints {
    pub namespace: String,
    pub service: String,
    /// The container ports the service's task definition publishes over TCP, sorted: a name
    /// answers on each, even while no task is ready.
    pub ports: Vec<u16>,
    /// Sorted by task, then port.
    pub endpoints: Vec<Endpoint>,
}

/// Whether `t` may receive traffic: RUNNING, wanted RUNNING, and every container with a
/// health check HEALTHY (a container's health is UNKNOWN until its first check decides; with
/// `def` unknown, UNKNOWN counts as "no health check").
pub fn routable(t: &crate::Task, def: Option<&crate::TaskDefinition>) -> bool {
    use crate::{DesiredStatus, HealthStatus, TaskStatus};
    if t.last_status != TaskStatus::Running || t.desired_status != DesiredStatus::Running {
        return false;
    }
    t.containers.iter().all(|c| {
        let checked = def.is_some_and(|d| {
            d.containers
                .iter()
                .any(|cd| cd.name == c.name && cd.health_check.is_some())
        });
        match c.health_status {
            HealthStatus::Unhealthy => false,
            HealthStatus::Unknown => !checked,
            HealthStatus::Healthy => true,
        }
    })
}

/// The TCP container ports `def` publishes, sorted and without repeats.
pub fn published_tcp_ports(def: &crate::TaskDefinition) -> Vec<u16> {
    let mut ports: Vec<u16> = def
        .containers
        .iter()
        .flat_map(|c| &c.port_mappings)
        .filter(|m| m.protocol == Protocol::Tcp)
        .map(|m| m.container_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The endpoints of service `service` of `namespace` among `tasks` (any tasks: those of other
/// services are skipped), publishing `ports`; `definition` finds a task's definition.
pub fn service_endpoints<'a>(
    namespace: &str,
    service: &str,
    ports: Vec<u16>,
    tasks: impl Iterator<Item = &'a crate::Task>,
    definition: impl Fn(&crate::Task) -> Option<&'a crate::TaskDefinition>,
) -> ServiceEndpoints {
    let group = format!("service:{service}");
    let mut endpoints: Vec<Endpoint> = tasks
        .filter(|t| t.namespace == namespace && t.group.as_deref() == Some(group.as_str()))
        .filter(|t| routable(t, definition(t)))
        .flat_map(|t| {
            t.containers.iter().flat_map(move |c| {
                c.network_bindings
                    .iter()
                    .filter(|b| b.protocol == Protocol::Tcp)
                    .map(move |b| Endpoint {
                        task_id: t.task_id.clone(),
                        node: t.node.clone().unwrap_or_default(),
                        container_name: c.name.clone(),
                        container_port: b.container_port,
                        bind_ip: b.bind_ip.clone(),
                        host_port: b.host_port,
                    })
            })
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.task_id, a.container_port).cmp(&(&b.task_id, b.container_port)));
    ServiceEndpoints {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        ports,
        endpoints,
    }
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
    fn an_ingress_rule_is_http_or_tcp_and_reaches_a_published_port() {
        let check = |r: IngressRule| r.validate("ingress[0]").map_err(|e| e.to_string());
        assert_eq!(check(IngressRule::http("web.local", "httpd", 8080)), Ok(()));
        assert_eq!(check(IngressRule::http("*", "httpd", 8080)), Ok(()));
        let tcp = IngressRule {
            host: None,
            listener_port: Some(5432),
            ..IngressRule::http("x", "db", 5432)
        };
        assert_eq!(check(tcp.clone()), Ok(()));
        assert!(check(IngressRule {
            listener_port: Some(1),
            ..IngressRule::http("a", "b", 1)
        })
        .unwrap_err()
        .contains("either host"));
        assert!(check(IngressRule::http("web local", "httpd", 8080))
            .unwrap_err()
            .contains("not a host name"));
        assert!(check(IngressRule {
            path_prefix: Some("api".into()),
            ..IngressRule::http("a", "httpd", 80)
        })
        .unwrap_err()
        .contains("must start with /"));
        let mut httpd = crate::ContainerDefinition::new("httpd", "img");
        httpd.port_mappings = vec![PortMapping::tcp(8080)];
        let rule = IngressRule::http("web.local", "httpd", 8080);
        assert!(rule.check_target("ingress[0]", &[httpd.clone()]).is_ok());
        let other = IngressRule::http("web.local", "httpd", 9090);
        assert_eq!(
            other.check_target("ingress[0]", &[httpd.clone()]).unwrap_err().to_string(),
            "ingress[0].containerPort: container httpd publishes no port 9090/tcp; add portMappings: [{containerPort: 9090}] to it"
        );
        let missing = IngressRule::http("web.local", "app", 8080);
        assert!(missing.check_target("ingress[0]", &[httpd]).is_err());
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
