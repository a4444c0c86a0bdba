//! berth's wire types: `proto/berth/v1/*.proto` compiled once, and the only place where they are
//! converted to and from the domain types of `berth-model`.

mod convert;

pub use convert::{
    access_role, cluster_status_to_wire, deleted_event, desired_status, namespace_to_wire,
    node_role, node_status_change, node_status_to_wire, object_event, stop_code, stop_code_to_wire,
    synced_event, task_samples, task_status, try_all, ConversionError,
};

/// Metadata key with the leader's address on a follower's UNAVAILABLE answer.
pub const LEADER_HINT: &str = "berth-leader";

/// Generated code for package `berth.v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}

/// The encoded file descriptor set of every berth proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("berth_descriptor");
