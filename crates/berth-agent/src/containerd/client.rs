//! The connection to containerd and the headers every request carries: the agent's containerd
//! namespace (`containerd-namespace`) and, for requests that create content, snapshots or
//! containers, a lease (`containerd-lease`) that keeps them from the garbage collector and
//! expires by itself. Both are checked once, when they are made: a request never goes out
//! without them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use tokio::sync::Mutex;

use super::{ContainerdConfig, ContainerdRuntime};
use crate::runtime::RuntimeError;

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";

/// The agent's containerd namespace, as the header value every request carries.
#[derive(Debug, Clone)]
pub(super) struct Namespace(AsciiMetadataValue);

impl Namespace {
    /// Fails when `name` is not a containerd identifier, which is also what makes it a valid
    /// header value: never a request without the namespace (containerd would use its default).
    pub(super) fn new(name: &str) -> Result<Self, RuntimeError> {
        header(
            "namespace",
            name,
            "give one of ASCII letters, digits, '.', '_' and '-'",
        )
        .map(Self)
    }

    /// `msg` as a request in this namespace.
    pub(super) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(NAMESPACE_HEADER, self.0.clone());
        req
    }
}

/// `value` as a header value, when it is a containerd identifier: ASCII letters, digits, `.`,
/// `_` and `-`, not empty.
fn header(
    what: &'static str,
    value: &str,
    fix: &'static str,
) -> Result<AsciiMetadataValue, RuntimeError> {
    let identifier = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match value.parse::<AsciiMetadataValue>() {
        Ok(v) if identifier => Ok(v),
        _ => Err(RuntimeError::InvalidIdentifier {
            what,
            value: value.to_owned(),
            fix,
        }),
    }
}

/// A containerd lease held while a pull or a container creation runs.
pub(super) struct Lease {
    id: String,
    header: AsciiMetadataValue,
}

impl ContainerdRuntime {
    /// Connects to containerd's socket. Fails before connecting when the namespace cannot be
    /// sent as a header.
    pub async fn connect(config: ContainerdConfig) -> Result<Self, RuntimeError> {
        let namespace = Namespace::new(&config.namespace)?;
        let channel: Channel =
            containerd_client::connect(&config.socket)
                .await
                .map_err(|source| RuntimeError::Connect {
                    path: config.socket.clone(),
                    source,
                })?;
        let registry_client = |protocol| {
            oci_client::Client::new(oci_client::client::ClientConfig {
                protocol,
                ..Default::default()
            })
        };
        Ok(Self {
            channel,
            namespace,
            networks: Arc::new(super::network::TaskNetworks::new(
                crate::cni::Cni::new(config.network.clone()),
                &config.network,
            )),
            config,
            pull_locks: Mutex::new(HashMap::new()),
            https: registry_client(oci_client::client::ClientProtocol::Https),
            http: registry_client(oci_client::client::ClientProtocol::Http),
            pids_limit: Some(crate::spec::DEFAULT_PIDS_LIMIT),
        })
    }

    /// A request in this agent's containerd namespace.
    pub(super) fn req<T>(&self, msg: T) -> Request<T> {
        self.namespace.request(msg)
    }

    /// A request that also holds `lease`, so the garbage collector keeps what it creates.
    pub(super) fn leased<T>(&self, msg: T, lease: &Lease) -> Request<T> {
        let mut req = self.req(msg);
        req.metadata_mut()
            .insert(LEASE_HEADER, lease.header.clone());
        req
    }

    /// Creates a lease that expires by itself after an hour, should we crash before deleting it.
    pub(super) async fn create_lease(&self) -> Result<Lease, RuntimeError> {
        let id = format!("berth-{}", uuid::Uuid::new_v4());
        let header = header("lease", &id, "lease IDs are made of a prefix and a UUID")?;
        let expire =
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire.to_string())]);
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(RuntimeError::containerd("create lease"))?;
        Ok(Lease { id, header })
    }

    pub(super) async fn delete_lease(&self, lease: Lease) {
        let req = self.req(DeleteLeaseRequest {
            id: lease.id.clone(),
            sync: false,
        });
        if let Err(e) = LeasesClient::new(self.channel.clone()).delete(req).await {
            tracing::warn!(lease = %lease.id, "delete lease: {}", berth_model::error_chain(&e));
        }
    }
}

/// Success when containerd answered NotFound: removing what is gone succeeds.
pub(super) fn ok_if_not_found(
    result: Result<(), containerd_client::tonic::Status>,
    op: &'static str,
) -> Result<(), RuntimeError> {
    match result {
        Err(s) if s.code() != Code::NotFound => Err(RuntimeError::containerd(op)(s)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(namespace: &str) -> ContainerdConfig {
        ContainerdConfig {
            socket: "/nonexistent/containerd.sock".into(),
            namespace: namespace.into(),
            insecure_registries: vec![],
            registry_auth: HashMap::new(),
            cgroup_parent: "/berth/test".into(),
            exec_dir: std::env::temp_dir(),
            image_budget: None,
            log_driver: None,
            init: crate::containerd::DEFAULT_INIT.into(),
            network: crate::cni::NetworkSettings {
                bridge: crate::cni::DEFAULT_BRIDGE.into(),
                subnet: crate::cni::DEFAULT_SUBNET
                    .parse()
                    .expect("the default subnet"),
                plugin_dir: crate::cni::DEFAULT_PLUGIN_DIR.into(),
                state_dir: std::env::temp_dir(),
                host_address: std::net::Ipv4Addr::UNSPECIFIED,
                warm: 0,
            },
        }
    }

    #[test]
    fn every_request_carries_the_namespace() {
        let ns = Namespace::new("berth-node-1").expect("a valid namespace");
        let req = ns.request(());
        assert_eq!(
            req.metadata()
                .get(NAMESPACE_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("berth-node-1")
        );
    }

    #[tokio::test]
    async fn a_namespace_that_is_no_header_value_fails_the_connect() {
        for bad in ["", "berth\nnode", "berth-nœud", "berth node"] {
            let Err(e) = ContainerdRuntime::connect(config(bad)).await else {
                panic!("{bad:?} was accepted");
            };
            assert_eq!(
                e.to_string(),
                format!(
                    "containerd namespace {bad:?} is not a valid identifier; give one of \
                     ASCII letters, digits, '.', '_' and '-'"
                )
            );
        }
    }

    #[tokio::test]
    async fn a_valid_namespace_gets_as_far_as_the_socket() {
        let Err(e) = ContainerdRuntime::connect(config("berth-dev")).await else {
            panic!("connected to a socket that does not exist");
        };
        assert!(
            matches!(e, RuntimeError::Connect { .. }),
            "{e}: not a connect error"
        );
    }
}
