//! berth's wire types: `proto/berth/v1/*.proto` compiled once, and the only place where they are
//! converted to and from the domain types of `berth-model`.

mod codec;
mod convert;

pub use codec::SmallBuffers;

pub use convert::{
    access_role, cluster_status_to_wire, deleted_event, desired_changes, desired_status,
    encoded_len, namespace_to_wire, node_role, node_status_change, node_status_to_wire,
    object_event, report_parts, secret_precondition, stop_code, stop_code_to_wire, synced_event,
    task_samples, task_status, try_all, ConversionError, DESIRED_CHANGES_BYTES, REPORT_BYTES,
};

/// Metadata key with the leader's address on a follower's UNAVAILABLE answer.
pub const LEADER_HINT: &str = "berth-leader";

/// Generated code for package `berth.v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}

/// Wire messages with secret values in clear print their keys only.
mod redacted {
    use std::fmt;

    use super::v1;

    impl fmt::Debug for v1::ContainerSecrets {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ContainerSecrets")
                .field("container_name", &self.container_name)
                .field("environment", &self.environment.keys().collect::<Vec<_>>())
                .field("files", &self.files)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for v1::SecretDirectory {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SecretDirectory")
                .field("path", &self.path)
                .field("files", &self.files.keys().collect::<Vec<_>>())
                .finish()
        }
    }

    impl fmt::Debug for v1::Keyring {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Keyring(..)")
        }
    }

    impl fmt::Debug for v1::PutSecretRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("PutSecretRequest")
                .field("namespace", &self.namespace)
                .field("name", &self.name)
                .field("data", &self.data.keys().collect::<Vec<_>>())
                .field("precondition", &self.precondition)
                .finish()
        }
    }
}

/// The encoded file descriptor set of every berth proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("berth_descriptor");

/// The path of every RPC berth serves (`/berth.v1.Berth/RunTask`, …), read from
/// [`FILE_DESCRIPTOR_SET`].
pub fn rpc_paths() -> Vec<String> {
    use prost::Message as _;
    let Ok(set) = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rpc_has_a_path() {
        let paths = super::rpc_paths();
        for expected in [
            "/berth.v1.Berth/RunTask",
            "/berth.v1.Berth/Watch",
            "/berth.v1.AgentService/Attach",
            "/berth.v1.Join/Join",
        ] {
            assert!(paths.iter().any(|p| p == expected), "{expected}: {paths:?}");
        }
    }
}
