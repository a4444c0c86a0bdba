//! The control plane as users see it: Raft's view of the cluster (`berth cluster status`) and
//! where a dry run would place a service's tasks.

use serde::{Deserialize, Serialize};

/// Raft's view of the cluster, as the answering server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The server that answered.
    pub id: u64,
    /// The leader's ID; `None` while there is none.
    pub leader: Option<u64>,
    /// The current Raft term.
    pub term: u64,
    /// The last log index known committed.
    pub commit_index: u64,
    /// The last log index the answering server applied.
    pub applied_index: u64,
    /// Last log index in the answering server's latest snapshot; `None` before the first.
    pub snapshot_index: Option<u64>,
    /// Log entries up to here were compacted away on the answering server.
    pub purged_index: Option<u64>,
    /// Voters and learners.
    pub members: Vec<ClusterMember>,
}

/// One server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMember {
    /// Its Raft node ID.
    pub id: u64,
    /// Its gRPC address, `host:port`.
    pub address: String,
    pub role: MemberRole,
    /// Index of the last log entry known to be replicated to it; `None` when unknown.
    pub match_index: Option<u64>,
}

/// What a member does in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Leader,
    /// A voter that does not lead.
    Follower,
    /// Receives the log but does not vote.
    Learner,
}

impl MemberRole {
    /// `leader`, `follower` or `learner`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Leader => "leader",
            MemberRole::Follower => "follower",
            MemberRole::Learner => "learner",
        }
    }
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a dry run of a service would put one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedTask {
    /// On this node.
    Node(String),
    /// Nowhere; `reason` says why, in numbers.
    Unplaceable { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_serialise_as_their_names() {
        for role in [
            MemberRole::Leader,
            MemberRole::Follower,
            MemberRole::Learner,
        ] {
            assert_eq!(
                serde_json::to_value(role).expect("serialises"),
                serde_json::Value::from(role.as_str())
            );
            assert_eq!(role.to_string(), role.as_str());
        }
    }
}
