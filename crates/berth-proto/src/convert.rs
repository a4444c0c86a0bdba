//! Conversions between `berth_model` and the generated `v1` types. Wire timestamps use 0 for
//! "unset" and enums have an UNSPECIFIED zero value; both become `Option`/errors here.
//!
//! This module holds what every conversion shares (the error, the enum table, small helpers);
//! the conversions of each object live in a submodule named after it.

mod access;
mod agent;
mod cluster;
mod network;
mod node;
mod placement;
mod service;
mod task;
mod task_definition;
mod usage;
mod watch;

#[cfg(test)]
mod properties;

use std::collections::BTreeMap;

use berth_model as m;

use crate::v1;

pub use access::{access_role, namespace_to_wire, node_role};
pub use agent::{desired_changes, report_parts, task_samples, DESIRED_CHANGES_BYTES, REPORT_BYTES};
pub use cluster::cluster_status_to_wire;
pub use node::node_status_change;
pub use task_definition::{encoded_len, secret_precondition};
pub use watch::{deleted_event, object_event, synced_event};

/// A wire message that does not describe a valid domain object.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error("{field}: value {value} is not a known {kind}")]
    UnknownEnum {
        field: &'static str,
        kind: &'static str,
        value: i32,
    },
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error(transparent)]
    Invalid(#[from] m::ValidationError),
}

/// An [`ConversionError::Invalid`] for `field`.
fn invalid(field: &str, message: impl Into<String>) -> ConversionError {
    ConversionError::Invalid(m::ValidationError::new(field, message))
}

fn opt_ts(ts: u64) -> Option<m::Timestamp> {
    (ts != 0).then_some(ts)
}

fn opt_str(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Every element of a repeated wire field converted, or the first error.
pub fn try_all<W, T>(items: Vec<W>) -> Result<Vec<T>, ConversionError>
where
    T: TryFrom<W, Error = ConversionError>,
{
    items.into_iter().map(T::try_from).collect()
}

/// Every element of a repeated field converted to the wire.
fn all_to_wire<T, W: From<T>>(items: Vec<T>) -> Vec<W> {
    items.into_iter().map(W::from).collect()
}

fn meta(labels: BTreeMap<String, String>, annotations: BTreeMap<String, String>) -> m::ObjectMeta {
    m::ObjectMeta {
        labels,
        annotations,
    }
}

impl From<m::Event> for v1::Event {
    fn from(e: m::Event) -> Self {
        Self {
            at: e.at,
            message: e.message,
        }
    }
}

impl From<v1::Event> for m::Event {
    fn from(e: v1::Event) -> Self {
        Self {
            at: e.at,
            message: e.message,
        }
    }
}

fn events_to_wire(events: &m::EventLog) -> Vec<v1::Event> {
    events.iter().cloned().map(Into::into).collect()
}

fn events_from_wire(events: Vec<v1::Event>) -> m::EventLog {
    events.into_iter().map(Into::into).collect()
}

// `from_wire` needs to be an inherent method of a foreign type; a local extension trait
// carries it instead.
trait FromWire: Sized {
    fn from_wire(field: &'static str, v: i32) -> Result<Self, ConversionError>;
}

macro_rules! wire_enum {
    ($model:ty, $wire:ty, $kind:literal { $($m:ident <=> $w:ident),* $(,)? }) => {
        impl From<$model> for $wire {
            fn from(v: $model) -> Self {
                match v { $(<$model>::$m => <$wire>::$w),* }
            }
        }
        impl FromWire for $model {
            fn from_wire(field: &'static str, v: i32) -> Result<Self, ConversionError> {
                match <$wire>::try_from(v) {
                    $(Ok(<$wire>::$w) => Ok(<$model>::$m),)*
                    _ => Err(ConversionError::UnknownEnum { field, kind: $kind, value: v }),
                }
            }
        }
    };
}

wire_enum!(m::TaskDefinitionStatus, v1::TaskDefinitionStatus, "task definition status" {
    Active <=> Active,
    Inactive <=> Inactive,
});

wire_enum!(m::TaskStatus, v1::TaskStatus, "task status" {
    Provisioning <=> Provisioning,
    Pending <=> Pending,
    Activating <=> Activating,
    Running <=> Running,
    Deactivating <=> Deactivating,
    Stopping <=> Stopping,
    Deprovisioning <=> Deprovisioning,
    Stopped <=> Stopped,
});

wire_enum!(m::DesiredStatus, v1::DesiredStatus, "desired status" {
    Running <=> Running,
    Stopped <=> Stopped,
});

wire_enum!(m::StopCode, v1::StopCode, "stop code" {
    TaskFailedToStart <=> TaskFailedToStart,
    EssentialContainerExited <=> EssentialContainerExited,
    UserInitiated <=> UserInitiated,
    ServiceSchedulerInitiated <=> ServiceSchedulerInitiated,
    NodeLost <=> NodeLost,
});

wire_enum!(m::HealthStatus, v1::HealthStatus, "health status" {
    Unknown <=> Unknown,
    Healthy <=> Healthy,
    Unhealthy <=> Unhealthy,
});

wire_enum!(m::DependencyCondition, v1::DependencyCondition, "dependency condition" {
    Start <=> Start,
    Complete <=> Complete,
    Success <=> Success,
    Healthy <=> Healthy,
});

wire_enum!(m::NodeStatus, v1::NodeStatus, "node status" {
    Active <=> Active,
    Draining <=> Draining,
    Down <=> Down,
});

wire_enum!(m::ServiceStatus, v1::ServiceStatus, "service status" {
    Active <=> Active,
    Draining <=> Draining,
});

wire_enum!(m::DeploymentStatus, v1::DeploymentStatus, "deployment status" {
    Primary <=> Primary,
    Active <=> Active,
});

wire_enum!(m::RolloutState, v1::RolloutState, "rollout state" {
    InProgress <=> InProgress,
    Completed <=> Completed,
    Failed <=> Failed,
});

/// Wire enums are `i32` fields in prost; these read them back with a field name for errors.
pub fn task_status(field: &'static str, v: i32) -> Result<m::TaskStatus, ConversionError> {
    m::TaskStatus::from_wire(field, v)
}

pub fn desired_status(field: &'static str, v: i32) -> Result<m::DesiredStatus, ConversionError> {
    m::DesiredStatus::from_wire(field, v)
}

/// An optional stop code: UNSPECIFIED means none.
pub fn stop_code(v: i32) -> Result<Option<m::StopCode>, ConversionError> {
    if v == v1::StopCode::Unspecified as i32 {
        return Ok(None);
    }
    m::StopCode::from_wire("stopCode", v).map(Some)
}

/// A node status as the `i32` field of a request.
pub fn node_status_to_wire(status: m::NodeStatus) -> i32 {
    v1::NodeStatus::from(status) as i32
}

pub fn stop_code_to_wire(code: Option<m::StopCode>) -> i32 {
    code.map_or(v1::StopCode::Unspecified, v1::StopCode::from) as i32
}
