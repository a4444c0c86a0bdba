//! The control plane: Raft's view of the cluster.

use berth_model as m;

use super::{all_to_wire, invalid, try_all, ConversionError};
use crate::v1;

/// `status` as the answer to `ClusterStatus`; `version` is the answering server's berth version
/// (not part of the model: it describes the binary, not the cluster).
pub fn cluster_status_to_wire(
    status: m::ClusterStatus,
    version: &str,
) -> v1::ClusterStatusResponse {
    v1::ClusterStatusResponse {
        leader: status.leader,
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        members: all_to_wire(status.members),
        id: status.id,
        snapshot_index: status.snapshot_index,
        purged_index: status.purged_index,
        version: version.to_owned(),
    }
}

impl From<m::ClusterMember> for v1::ClusterMember {
    fn from(m: m::ClusterMember) -> Self {
        Self {
            id: m.id,
            address: m.address,
            role: m.role.as_str().to_owned(),
            match_index: m.match_index,
        }
    }
}

impl TryFrom<v1::ClusterMember> for m::ClusterMember {
    type Error = ConversionError;
    fn try_from(m: v1::ClusterMember) -> Result<Self, ConversionError> {
        let role = match m.role.as_str() {
            "leader" => m::MemberRole::Leader,
            "follower" => m::MemberRole::Follower,
            "learner" => m::MemberRole::Learner,
            other => {
                return Err(invalid(
                    "members.role",
                    format!("unknown role {other:?}; expected leader, follower or learner"),
                ))
            }
        };
        Ok(Self {
            id: m.id,
            address: m.address,
            role,
            match_index: m.match_index,
        })
    }
}

/// The answer without the server's version (read `version` from the response for that).
impl TryFrom<v1::ClusterStatusResponse> for m::ClusterStatus {
    type Error = ConversionError;
    fn try_from(s: v1::ClusterStatusResponse) -> Result<Self, ConversionError> {
        Ok(Self {
            id: s.id,
            leader: s.leader,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            members: try_all(s.members)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> m::ClusterStatus {
        let member = |id, role| m::ClusterMember {
            id,
            address: format!("10.0.0.{id}:7400"),
            role,
            match_index: Some(40 + id),
        };
        m::ClusterStatus {
            id: 2,
            leader: Some(1),
            term: 3,
            commit_index: 42,
            applied_index: 41,
            snapshot_index: None,
            purged_index: Some(7),
            members: vec![
                member(1, m::MemberRole::Leader),
                member(2, m::MemberRole::Follower),
                m::ClusterMember {
                    match_index: None,
                    ..member(3, m::MemberRole::Learner)
                },
            ],
        }
    }

    #[test]
    fn cluster_status_carries_every_field_and_the_version() {
        let wire = cluster_status_to_wire(status(), "1.2.3");
        assert_eq!(
            wire,
            v1::ClusterStatusResponse {
                leader: Some(1),
                term: 3,
                commit_index: 42,
                applied_index: 41,
                members: vec![
                    v1::ClusterMember {
                        id: 1,
                        address: "10.0.0.1:7400".into(),
                        role: "leader".into(),
                        match_index: Some(41),
                    },
                    v1::ClusterMember {
                        id: 2,
                        address: "10.0.0.2:7400".into(),
                        role: "follower".into(),
                        match_index: Some(42),
                    },
                    v1::ClusterMember {
                        id: 3,
                        address: "10.0.0.3:7400".into(),
                        role: "learner".into(),
                        match_index: None,
                    },
                ],
                id: 2,
                snapshot_index: None,
                purged_index: Some(7),
                version: "1.2.3".into(),
            }
        );
        assert_eq!(m::ClusterStatus::try_from(wire).ok(), Some(status()));
    }

    #[test]
    fn an_unknown_role_is_an_error() {
        let mut wire = cluster_status_to_wire(status(), "1.2.3");
        wire.members[0].role = "observer".into();
        assert_eq!(
            m::ClusterStatus::try_from(wire).unwrap_err().to_string(),
            "members.role: unknown role \"observer\"; expected leader, follower or learner"
        );
    }
}
