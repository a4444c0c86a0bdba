//! Tasks: their state, their containers' state, and the status reports agents send.

use berth_model as m;

use super::network::{address, address_to_wire};
use super::placement::{placement_from_wire, placement_to_wire};
use super::{
    all_to_wire, desired_status, events_from_wire, events_to_wire, opt_str, opt_ts, stop_code,
    stop_code_to_wire, task_status, try_all, ConversionError, FromWire as _,
};
use crate::v1;

impl From<m::ContainerState> for v1::ContainerState {
    fn from(c: m::ContainerState) -> Self {
        Self {
            name: c.name,
            image: c.image,
            image_digest: c.image_digest.unwrap_or_default(),
            last_status: v1::TaskStatus::from(c.last_status) as i32,
            exit_code: c.exit_code,
            reason: c.reason.unwrap_or_default(),
            health_status: v1::HealthStatus::from(c.health_status) as i32,
            network_bindings: all_to_wire(c.network_bindings),
        }
    }
}

impl TryFrom<v1::ContainerState> for m::ContainerState {
    type Error = ConversionError;
    fn try_from(c: v1::ContainerState) -> Result<Self, ConversionError> {
        Ok(Self {
            name: c.name,
            image: c.image,
            image_digest: opt_str(c.image_digest),
            last_status: m::TaskStatus::from_wire("containers.lastStatus", c.last_status)?,
            exit_code: c.exit_code,
            reason: opt_str(c.reason),
            health_status: m::HealthStatus::from_wire("containers.healthStatus", c.health_status)?,
            network_bindings: try_all(c.network_bindings)?,
        })
    }
}

impl From<m::TaskMetrics> for v1::TaskMetrics {
    fn from(m: m::TaskMetrics) -> Self {
        Self {
            cpu_units: m.cpu_units,
            memory_bytes: m.memory_bytes,
            sampled_at: m.sampled_at,
        }
    }
}

impl From<v1::TaskMetrics> for m::TaskMetrics {
    fn from(m: v1::TaskMetrics) -> Self {
        Self {
            cpu_units: m.cpu_units,
            memory_bytes: m.memory_bytes,
            sampled_at: m.sampled_at,
        }
    }
}

impl From<m::Task> for v1::Task {
    fn from(t: m::Task) -> Self {
        Self {
            task_id: t.task_id,
            namespace: t.namespace,
            task_definition: t.task_definition.to_string(),
            group: t.group.unwrap_or_default(),
            started_by: t.started_by.unwrap_or_default(),
            labels: t.labels,
            node: t.node.unwrap_or_default(),
            desired_status: v1::DesiredStatus::from(t.desired_status) as i32,
            last_status: v1::TaskStatus::from(t.last_status) as i32,
            cpu: t.cpu,
            memory: t.memory,
            created_at: t.created_at,
            pull_started_at: t.pull_started_at.unwrap_or_default(),
            started_at: t.started_at.unwrap_or_default(),
            stopped_at: t.stopped_at.unwrap_or_default(),
            stop_code: stop_code_to_wire(t.stop_code),
            stopped_reason: t.stopped_reason.unwrap_or_default(),
            events: events_to_wire(&t.events),
            placement: placement_to_wire(t.placement),
            metrics: t.metrics.map(Into::into),
            containers: all_to_wire(t.containers),
            ip_address: address_to_wire(t.ip_address),
            overrides: all_to_wire(t.overrides),
        }
    }
}

impl From<m::ContainerOverride> for v1::ContainerOverride {
    fn from(o: m::ContainerOverride) -> Self {
        Self {
            name: o.name,
            command: o.command.unwrap_or_default(),
            environment: o.environment.into_iter().collect(),
        }
    }
}

impl From<v1::ContainerOverride> for m::ContainerOverride {
    fn from(o: v1::ContainerOverride) -> Self {
        Self {
            name: o.name,
            command: (!o.command.is_empty()).then_some(o.command),
            environment: o.environment.into_iter().collect(),
        }
    }
}

impl TryFrom<v1::Task> for m::Task {
    type Error = ConversionError;
    fn try_from(t: v1::Task) -> Result<Self, ConversionError> {
        Ok(Self {
            task_id: t.task_id,
            namespace: t.namespace,
            task_definition: t.task_definition.parse()?,
            group: opt_str(t.group),
            started_by: opt_str(t.started_by),
            labels: t.labels,
            node: opt_str(t.node),
            desired_status: desired_status("desiredStatus", t.desired_status)?,
            last_status: task_status("lastStatus", t.last_status)?,
            cpu: t.cpu,
            memory: t.memory,
            created_at: t.created_at,
            pull_started_at: opt_ts(t.pull_started_at),
            started_at: opt_ts(t.started_at),
            stopped_at: opt_ts(t.stopped_at),
            stop_code: stop_code(t.stop_code)?,
            stopped_reason: opt_str(t.stopped_reason),
            containers: try_all(t.containers)?,
            events: events_from_wire(t.events),
            placement: placement_from_wire(t.placement)?,
            metrics: t.metrics.map(Into::into),
            ip_address: address("ipAddress", &t.ip_address)?,
            overrides: t.overrides.into_iter().map(Into::into).collect(),
        })
    }
}

impl From<m::TaskStatusUpdate> for v1::TaskStatusUpdate {
    fn from(u: m::TaskStatusUpdate) -> Self {
        Self {
            task_id: u.task_id,
            last_status: v1::TaskStatus::from(u.last_status) as i32,
            containers: all_to_wire(u.containers),
            stop_code: stop_code_to_wire(u.stop_code),
            stopped_reason: u.stopped_reason.unwrap_or_default(),
            event: u.event.unwrap_or_default(),
            ip_address: address_to_wire(u.ip_address),
        }
    }
}

impl TryFrom<v1::TaskStatusUpdate> for m::TaskStatusUpdate {
    type Error = ConversionError;
    fn try_from(u: v1::TaskStatusUpdate) -> Result<Self, ConversionError> {
        Ok(Self {
            task_id: u.task_id,
            last_status: task_status("lastStatus", u.last_status)?,
            containers: try_all(u.containers)?,
            stop_code: stop_code(u.stop_code)?,
            stopped_reason: opt_str(u.stopped_reason),
            event: opt_str(u.event),
            ip_address: address("ipAddress", &u.ip_address)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_round_trips() {
        let mut events = m::EventLog::default();
        events.push(5, "placed on node-1");
        let task = m::Task {
            labels: Default::default(),
            task_id: "t1".into(),
            namespace: "default".into(),
            task_definition: "web:2".parse().expect("valid ref"),
            group: None,
            started_by: None,
            node: Some("node-1".into()),
            desired_status: m::DesiredStatus::Stopped,
            last_status: m::TaskStatus::Stopped,
            cpu: 256,
            memory: 64,
            created_at: 1,
            pull_started_at: Some(2),
            started_at: Some(2),
            stopped_at: Some(3),
            stop_code: Some(m::StopCode::EssentialContainerExited),
            stopped_reason: Some("Essential container in task exited".into()),
            containers: vec![m::ContainerState {
                exit_code: Some(3),
                network_bindings: vec![m::NetworkBinding {
                    bind_ip: "10.0.0.5".into(),
                    container_port: 8080,
                    host_port: 49153,
                    protocol: m::Protocol::Tcp,
                }],
                ..m::ContainerState::pending("app", "busybox")
            }],
            ip_address: Some(std::net::Ipv4Addr::new(10, 88, 0, 2)),
            overrides: vec![m::ContainerOverride {
                name: "app".into(),
                command: Some(vec!["sh".into(), "-c".into(), "exit 3".into()]),
                environment: [("MODE".to_owned(), "once".to_owned())].into(),
            }],
            events,
            placement: m::PlacementSpec {
                strategy: vec![
                    m::PlacementStrategy::Spread {
                        field: "attribute:zone".into(),
                    },
                    m::PlacementStrategy::Binpack {
                        field: m::BinpackField::Memory,
                    },
                    m::PlacementStrategy::Random,
                ],
                constraints: vec![
                    m::PlacementConstraint::DistinctInstance,
                    m::PlacementConstraint::MemberOf {
                        expression: "attribute:disk == ssd".into(),
                    },
                ],
            },
            metrics: Some(m::TaskMetrics {
                cpu_units: 300.5,
                memory_bytes: 1 << 20,
                sampled_at: 9,
            }),
        };
        let wire = v1::Task::from(task.clone());
        assert_eq!(m::Task::try_from(wire).ok(), Some(task));
    }

    #[test]
    fn unknown_enum_is_an_error() {
        let wire = v1::Task {
            task_definition: "web:1".into(),
            last_status: 42,
            desired_status: 1,
            ..Default::default()
        };
        assert_eq!(
            m::Task::try_from(wire).unwrap_err().to_string(),
            "lastStatus: value 42 is not a known task status"
        );
    }
}
