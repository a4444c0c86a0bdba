//! Published ports and task addresses.

use std::net::Ipv4Addr;

use berth_model as m;

use super::ConversionError;
use crate::v1;

impl From<m::Protocol> for v1::Protocol {
    fn from(p: m::Protocol) -> Self {
        match p {
            m::Protocol::Tcp => Self::Tcp,
            m::Protocol::Udp => Self::Udp,
        }
    }
}

/// UNSPECIFIED reads as TCP, the default of a port mapping.
fn protocol(field: &'static str, v: i32) -> Result<m::Protocol, ConversionError> {
    match v1::Protocol::try_from(v) {
        Ok(v1::Protocol::Unspecified | v1::Protocol::Tcp) => Ok(m::Protocol::Tcp),
        Ok(v1::Protocol::Udp) => Ok(m::Protocol::Udp),
        Err(_) => Err(ConversionError::UnknownEnum {
            field,
            kind: "protocol",
            value: v,
        }),
    }
}

fn port(field: &'static str, v: u32) -> Result<u16, ConversionError> {
    u16::try_from(v).map_err(|_| {
        ConversionError::Invalid(m::ValidationError::new(
            field,
            format!("{v} is not a port number; use 0..=65535"),
        ))
    })
}

impl From<m::PortMapping> for v1::PortMapping {
    fn from(p: m::PortMapping) -> Self {
        Self {
            container_port: p.container_port.into(),
            host_port: p.host_port.into(),
            protocol: v1::Protocol::from(p.protocol) as i32,
        }
    }
}

impl TryFrom<v1::PortMapping> for m::PortMapping {
    type Error = ConversionError;
    fn try_from(p: v1::PortMapping) -> Result<Self, ConversionError> {
        Ok(Self {
            container_port: port("portMappings.containerPort", p.container_port)?,
            host_port: port("portMappings.hostPort", p.host_port)?,
            protocol: protocol("portMappings.protocol", p.protocol)?,
        })
    }
}

impl From<m::NetworkBinding> for v1::NetworkBinding {
    fn from(b: m::NetworkBinding) -> Self {
        Self {
            bind_ip: b.bind_ip,
            container_port: b.container_port.into(),
            host_port: b.host_port.into(),
            protocol: v1::Protocol::from(b.protocol) as i32,
        }
    }
}

impl TryFrom<v1::NetworkBinding> for m::NetworkBinding {
    type Error = ConversionError;
    fn try_from(b: v1::NetworkBinding) -> Result<Self, ConversionError> {
        Ok(Self {
            bind_ip: b.bind_ip,
            container_port: port("networkBindings.containerPort", b.container_port)?,
            host_port: port("networkBindings.hostPort", b.host_port)?,
            protocol: protocol("networkBindings.protocol", b.protocol)?,
        })
    }
}

pub(super) fn address_to_wire(a: Option<Ipv4Addr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// An optional IPv4 address: empty means none.
pub(super) fn address(field: &'static str, v: &str) -> Result<Option<Ipv4Addr>, ConversionError> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        ConversionError::Invalid(m::ValidationError::new(
            field,
            format!("{v:?} is not an IPv4 address"),
        ))
    })
}

impl From<m::IngressRule> for v1::IngressRule {
    fn from(r: m::IngressRule) -> Self {
        Self {
            host: r.host.unwrap_or_default(),
            path_prefix: r.path_prefix.unwrap_or_default(),
            listener_port: r.listener_port.map(u32::from).unwrap_or_default(),
            container_name: r.container_name,
            container_port: r.container_port.into(),
        }
    }
}

impl TryFrom<v1::IngressRule> for m::IngressRule {
    type Error = ConversionError;
    fn try_from(r: v1::IngressRule) -> Result<Self, ConversionError> {
        let listener_port = port("ingress.listenerPort", r.listener_port)?;
        Ok(Self {
            host: super::opt_str(r.host),
            path_prefix: super::opt_str(r.path_prefix),
            listener_port: (listener_port != 0).then_some(listener_port),
            container_name: r.container_name,
            container_port: port("ingress.containerPort", r.container_port)?,
        })
    }
}

impl From<m::Endpoint> for v1::Endpoint {
    fn from(e: m::Endpoint) -> Self {
        Self {
            task_id: e.task_id,
            node: e.node,
            container_name: e.container_name,
            container_port: e.container_port.into(),
            bind_ip: e.bind_ip,
            host_port: e.host_port.into(),
        }
    }
}

impl TryFrom<v1::Endpoint> for m::Endpoint {
    type Error = ConversionError;
    fn try_from(e: v1::Endpoint) -> Result<Self, ConversionError> {
        Ok(Self {
            task_id: e.task_id,
            node: e.node,
            container_name: e.container_name,
            container_port: port("endpoints.containerPort", e.container_port)?,
            bind_ip: e.bind_ip,
            host_port: port("endpoints.hostPort", e.host_port)?,
        })
    }
}

impl From<m::ServiceEndpoints> for v1::ServiceEndpoints {
    fn from(s: m::ServiceEndpoints) -> Self {
        Self {
            namespace: s.namespace,
            service: s.service,
            ports: s.ports.into_iter().map(u32::from).collect(),
            endpoints: super::all_to_wire(s.endpoints),
        }
    }
}

impl TryFrom<v1::ServiceEndpoints> for m::ServiceEndpoints {
    type Error = ConversionError;
    fn try_from(s: v1::ServiceEndpoints) -> Result<Self, ConversionError> {
        Ok(Self {
            namespace: s.namespace,
            service: s.service,
            ports: s
                .ports
                .into_iter()
                .map(|p| port("ports", p))
                .collect::<Result<_, _>>()?,
            endpoints: super::try_all(s.endpoints)?,
        })
    }
}
