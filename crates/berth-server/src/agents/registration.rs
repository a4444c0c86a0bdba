//! An agent's first message: `Register` makes (or refreshes) its node, ACTIVE.

use berth_model::Node;
use berth_proto::v1::agent_message::Msg as AgentMsg;
use berth_proto::v1::server_message::Msg as ServerMsg;
use berth_proto::v1::{AgentMessage, Registered, ServerMessage};
use berth_state::Command;
use tokio_stream::StreamExt as _;
use tonic::{Status, Streaming};

use super::AgentServiceImpl;
use crate::{now_ms, status};

/// Heartbeats the leader takes per second across all agents, at most: larger clusters
/// heartbeat less often (as Nomad's `max_heartbeats_per_second`), within the node TTL.
const MAX_HEARTBEATS_PER_SEC: usize = 2_500;

/// Seconds between an agent's heartbeats in a cluster of `nodes`: 1 up to 2,500 nodes, then
/// one more per 2,500, but never more than a third of the TTL (so a node misses at least two
/// before it is declared lost). Any message from an agent counts, not only heartbeats.
pub fn heartbeat_interval_secs(nodes: usize, ttl: std::time::Duration) -> u32 {
    let wanted = nodes.div_ceil(MAX_HEARTBEATS_PER_SEC).max(1) as u64;
    let cap = (ttl.as_secs() / 3).max(1);
    u32::try_from(wanted.min(cap)).unwrap_or(1)
}

impl AgentServiceImpl {
    /// Reads the agent's `Register`, checks that the certificate (node `certified`, serial
    /// `serial`) is recorded, records its node, and answers with the heartbeat interval and
    /// node TTL it must keep.
    pub(super) async fn register(
        &self,
        certified: &str,
        serial: &str,
        inbound: &mut Streaming<AgentMessage>,
    ) -> Result<(Node, ServerMessage), Status> {
        let first = inbound
            .next()
            .await
            .ok_or_else(|| status::bad_request("stream closed before registering"))??;
        let Some(AgentMsg::Register(reg)) = first.msg else {
            return Err(status::bad_request("the first message must be Register"));
        };
        let node = Node::try_from(reg).map_err(|e| status::invalid_request("", &e))?;
        if node.name != certified {
            tracing::warn!(target: "berth::audit", node = %node.name, certified, "refused an agent registering as another node");
            return Err(status::denied(format!(
                "this certificate is node {certified}'s: it cannot register node {}",
                node.name
            )));
        }
        // Agents keep their stream to the leader, which tracks their liveness in memory.
        if !self.store.is_leader() {
            return Err(status::not_leader(self.store.leader_addr()));
        }
        if !crate::join::certificate_recorded(&self.store, certified, serial).await? {
            tracing::warn!(target: "berth::audit", node = %node.name, serial, "refused an agent whose certificate is not recorded");
            return Err(status::denied(crate::join::revoked(certified, serial)));
        }
        // Seen before it is ACTIVE again: otherwise the node monitor could find it ACTIVE with
        // a heartbeat older than the TTL and declare it lost once more.
        self.liveness.seen(&node.name);
        self.store
            .propose(Command::RegisterNode {
                node: node.clone(),
                at: now_ms(),
            })
            .await
            .map_err(status::from_store)?;
        if super::removed_meanwhile(&self.store, &node.name).await {
            return Err(super::removed(&node.name));
        }
        tracing::info!(node = %node.name, "agent registered");
        let registered = Registered {
            heartbeat_interval_secs: heartbeat_interval_secs(
                self.store.read_stale(|s| s.nodes().count()),
                self.node_ttl,
            ),
            node_ttl_ms: u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX),
        };
        let message = ServerMessage {
            msg: Some(ServerMsg::Registered(registered)),
        };
        Ok((node, message))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::heartbeat_interval_secs;

    #[test]
    fn large_clusters_heartbeat_less_often_within_the_ttl() {
        let ttl = Duration::from_secs(10);
        assert_eq!(heartbeat_interval_secs(0, ttl), 1);
        assert_eq!(heartbeat_interval_secs(2_500, ttl), 1);
        assert_eq!(heartbeat_interval_secs(2_501, ttl), 2);
        assert_eq!(
            heartbeat_interval_secs(10_000, ttl),
            3,
            "a third of the TTL at most"
        );
        assert_eq!(heartbeat_interval_secs(10_000, Duration::from_secs(60)), 4);
        assert_eq!(heartbeat_interval_secs(10_000, Duration::from_secs(2)), 1);
    }
}
