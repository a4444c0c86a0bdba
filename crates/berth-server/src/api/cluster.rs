//! The cluster: Raft status, membership changes, the change feed, and backups.

use berth_proto::v1 as pb;
use berth_store::Store;
use tonic::{Response, Status};

use berth_model::Permission;
use berth_tls::Role;

use super::{namespace, Answer, BerthService, SnapshotStream};
use crate::auth::Caller;
use crate::{now_ms, status};

/// The kinds of object `Watch` can filter on.
const KINDS: [&str; 4] = ["task", "service", "node", "taskdefinition"];

impl BerthService {
    pub(super) fn cluster_status(&self) -> pb::ClusterStatusResponse {
        berth_proto::cluster_status_to_wire(self.store.cluster_status(), env!("CARGO_PKG_VERSION"))
    }

    /// An admin adds any server; a server (its certificate) may add only itself, as it does
    /// when it joins.
    pub(super) async fn add_server(
        &self,
        caller: &Caller,
        req: pb::AddServerRequest,
    ) -> Answer<pb::AddServerResponse> {
        let itself = matches!(caller, Caller::Node(id)
            if id.role == Role::Server && id.name == req.id.to_string());
        if !itself {
            caller.authorize(Permission::ManageCluster, None, now_ms())?;
        }
        if req.id == 0 {
            return Err(status::bad_request("server id must be a positive integer"));
        }
        if req.address.parse::<std::net::SocketAddr>().is_err() && !req.address.contains(':') {
            return Err(status::bad_request(format!(
                "address {:?} is not host:port",
                req.address
            )));
        }
        if let Some(m) = self
            .store
            .cluster_status()
            .members
            .into_iter()
            .find(|m| m.id == req.id && m.address != req.address)
        {
            return Err(status::already_exists(format!(
                "server {} is already a member at {}; remove it first with `berth cluster remove {}`",
                req.id, m.address, req.id
            )));
        }
        let servers = self
            .tls
            .server_dialer()
            .map_err(|e| status::internal(format!("{e:#}")))?;
        check_joinable(&self.store, &servers, req.id, &req.address).await?;
        self.store
            .add_member(req.id, req.address, !req.learner_only)
            .await
            .map_err(status::from_store)?;
        Ok(Response::new(pb::AddServerResponse {}))
    }

    pub(super) async fn remove_server(
        &self,
        caller: &Caller,
        req: pb::RemoveServerRequest,
    ) -> Answer<pb::RemoveServerResponse> {
        caller.authorize(Permission::ManageCluster, None, now_ms())?;
        self.store
            .remove_member(req.id)
            .await
            .map_err(status::from_store)?;
        Ok(Response::new(pb::RemoveServerResponse {}))
    }

    /// A scoped token watches its own namespace when it names none.
    pub(super) fn watch(
        &self,
        caller: &Caller,
        req: pb::WatchRequest,
    ) -> Answer<crate::watch::WatchStream> {
        let namespace = match (req.namespace.is_empty(), caller.scope()) {
            (true, None) => None,
            (true, Some(scope)) => Some(scope.to_owned()),
            (false, _) => Some(namespace(req.namespace)?),
        };
        if !caller.may_watch_routes(&req.kinds) {
            caller.authorize(Permission::Read, namespace.as_deref(), now_ms())?;
        }
        if let Some(bad) = req.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(status::bad_request(format!(
                "kinds: unknown kind {bad:?}; use {}",
                KINDS.join(", ")
            )));
        }
        let filter = crate::watch::Filter {
            namespace,
            kinds: req.kinds,
        };
        Ok(Response::new(crate::watch::watch(
            self.store.clone(),
            filter,
            req.from_revision,
        )))
    }

    pub(super) async fn save_snapshot(&self, caller: &Caller) -> Answer<SnapshotStream> {
        caller.authorize(Permission::ManageCluster, None, now_ms())?;
        let backup = self.store.backup().await.map_err(status::from_store)?;
        let chunks: Vec<Result<pb::SnapshotChunk, Status>> = backup
            .chunks(1 << 20)
            .map(|c| Ok(pb::SnapshotChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// Refuses to add a server that is unreachable or already leads a cluster of its own (a server
/// started without `--join` or `--no-bootstrap` bootstraps one): its log would conflict.
async fn check_joinable(
    store: &Store,
    dialer: &berth_tls::net::Dialer,
    id: u64,
    address: &str,
) -> Result<(), Status> {
    let ours = store.cluster_status();
    let unreachable = |e: String| {
        status::precondition(format!(
            "cannot reach server {id} at {address} ({e}); start it first with `berth server --node-id {id} --no-bootstrap --join ADDR --join-token TOKEN`"
        ))
    };
    let mut client =
        tokio::time::timeout(std::time::Duration::from_secs(3), dialer.connect(address))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map(pb::berth_client::BerthClient::new)
            .map_err(|e| unreachable(berth_store::error_chain(&e)))?;
    let theirs = client
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map_err(|e| unreachable(e.message().to_owned()))?
        .into_inner();
    if theirs.id != id {
        return Err(status::bad_request(format!(
            "the server at {address} has id {}, not {id}",
            theirs.id
        )));
    }
    let ours_ids: Vec<u64> = ours.members.iter().map(|m| m.id).collect();
    let foreign = theirs
        .members
        .iter()
        .any(|m| !ours_ids.contains(&m.id) && m.id != id)
        || (!theirs.members.is_empty() && !theirs.members.iter().any(|m| ours_ids.contains(&m.id)));
    if foreign {
        return Err(status::precondition(format!(
            "server {id} at {address} already belongs to another cluster; wipe its --data-dir and start it with --no-bootstrap (or --join)"
        )));
    }
    Ok(())
}
