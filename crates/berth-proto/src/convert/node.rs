//! Nodes: the hosts agents run on, and the status changes users may ask for.

use berth_model as m;

use super::{events_from_wire, events_to_wire, invalid, ConversionError, FromWire as _};
use crate::v1;

impl From<m::Resources> for v1::Resources {
    fn from(r: m::Resources) -> Self {
        Self {
            total: r.total,
            allocated: r.allocated,
        }
    }
}

impl From<v1::Resources> for m::Resources {
    fn from(r: v1::Resources) -> Self {
        Self {
            total: r.total,
            allocated: r.allocated,
        }
    }
}

impl From<m::Node> for v1::Node {
    fn from(n: m::Node) -> Self {
        Self {
            name: n.name,
            address: n.address,
            status: v1::NodeStatus::from(n.status) as i32,
            attributes: n.attributes,
            cpu: Some(n.cpu.into()),
            memory: Some(n.memory.into()),
            registered_at: n.registered_at,
            down_since: n.down_since,
            events: events_to_wire(&n.events),
        }
    }
}

impl TryFrom<v1::Node> for m::Node {
    type Error = ConversionError;
    fn try_from(n: v1::Node) -> Result<Self, ConversionError> {
        let res = |r: Option<v1::Resources>, field| {
            r.map(Into::into).ok_or(ConversionError::Missing { field })
        };
        Ok(Self {
            name: n.name,
            address: n.address,
            status: m::NodeStatus::from_wire("status", n.status)?,
            attributes: n.attributes,
            cpu: res(n.cpu, "cpu")?,
            memory: res(n.memory, "memory")?,
            registered_at: n.registered_at,
            down_since: n.down_since,
            events: events_from_wire(n.events),
        })
    }
}

/// The status a user may set on a node (`UpdateNodeStatusRequest.status`): ACTIVE or DRAINING.
/// DOWN is the servers' verdict on a silent node, not a choice.
pub fn node_status_change(v: i32) -> Result<m::NodeStatus, ConversionError> {
    match m::NodeStatus::from_wire("status", v) {
        Ok(status @ (m::NodeStatus::Active | m::NodeStatus::Draining)) => Ok(status),
        Ok(m::NodeStatus::Down) | Err(_) => Err(invalid("status", "must be ACTIVE or DRAINING")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_may_set_active_or_draining_only() {
        let change = |s: v1::NodeStatus| node_status_change(s as i32).map_err(|e| e.to_string());
        assert_eq!(change(v1::NodeStatus::Active), Ok(m::NodeStatus::Active));
        assert_eq!(
            change(v1::NodeStatus::Draining),
            Ok(m::NodeStatus::Draining)
        );
        let refused = Err("status: must be ACTIVE or DRAINING".to_owned());
        assert_eq!(change(v1::NodeStatus::Down), refused);
        assert_eq!(change(v1::NodeStatus::Unspecified), refused);
        assert_eq!(node_status_change(42).map_err(|e| e.to_string()), refused);
    }

    #[test]
    fn a_node_without_resources_is_an_error() {
        let wire = v1::Node {
            name: "node-1".into(),
            status: v1::NodeStatus::Active as i32,
            cpu: Some(v1::Resources {
                total: 2048,
                allocated: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            m::Node::try_from(wire).unwrap_err().to_string(),
            "memory is required"
        );
    }
}
