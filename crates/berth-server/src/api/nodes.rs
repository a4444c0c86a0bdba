//! Nodes: list them, and operators' drain/activate.

use berth_proto::v1 as pb;
use berth_state::{Command, CommandResult};
use tonic::Response;

use berth_model::Permission;

use super::{selector, Answer, BerthService};
use crate::auth::Caller;
use crate::{now_ms, status};

impl BerthService {
    pub(super) async fn list_nodes(
        &self,
        caller: &Caller,
        req: pb::ListNodesRequest,
    ) -> Answer<pb::ListNodesResponse> {
        caller.authorize(Permission::Read, None, now_ms())?;
        let selector = selector(&req.selector)?;
        let nodes = self
            .read(req.stale, |s| {
                s.nodes_with_allocation()
                    .into_iter()
                    .filter(|n| selector.matches(&n.attributes))
                    .map(Into::into)
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.name))]
    pub(super) async fn update_node_status(
        &self,
        caller: &Caller,
        req: pb::UpdateNodeStatusRequest,
    ) -> Answer<pb::Node> {
        caller.authorize(Permission::ManageCluster, None, now_ms())?;
        let status = berth_proto::node_status_change(req.status)
            .map_err(|e| status::invalid_request("", &e))?;
        let command = Command::SetNodeStatus {
            node: req.name.clone(),
            status,
            at: now_ms(),
        };
        self.propose(caller, command, |r| match r {
            CommandResult::Done => Some(()),
            _ => None,
        })
        .await?;
        let node = self
            .read(false, |s| {
                s.node(&req.name).map(|n| s.node_with_allocation(n))
            })
            .await?
            .ok_or_else(|| status::not_found(format!("node {} not found", req.name)))?;
        Ok(Response::new(node.into()))
    }
}
