//! What can go wrong in the store, by kind: the server maps each kind to a gRPC status
//! (`NotLeader` and `NoQuorum` to UNAVAILABLE, `Membership` to FAILED_PRECONDITION, the rest to
//! INTERNAL). Errors that cross the wire from the leader travel as [`RemoteError`].

use std::path::PathBuf;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, Fatal};
use serde::{Deserialize, Serialize};

use crate::NodeId;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open raft database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("{step}")]
    Start {
        step: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("this server is not the leader")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("the cluster has no quorum: {0}")]
    NoQuorum(#[from] NoQuorum),
    #[error("membership change refused: {0}")]
    Membership(#[from] MembershipError),
    #[error("raft stopped")]
    Fatal(#[source] Box<Fatal<NodeId>>),
    /// A task of this member that writes depend on has ended (the store is shutting down).
    #[error("{0} stopped")]
    Stopped(&'static str),
    #[error("{what}")]
    Codec {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The state machine answered a batch with something else than one answer per command.
    #[error("a batch was answered with {0}")]
    BatchAnswer(String),
    /// The leader failed in a way this member cannot name (its text is kept).
    #[error("the leader failed: {0}")]
    Remote(String),
}

impl StoreError {
    pub(crate) fn start(step: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Start {
            step,
            source: source.into(),
        }
    }

    /// The same error again, for each of the writers a failed batch answers.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            StoreError::NotLeader {
                leader_id,
                leader_addr,
            } => StoreError::NotLeader {
                leader_id: *leader_id,
                leader_addr: leader_addr.clone(),
            },
            StoreError::NoQuorum(q) => StoreError::NoQuorum(q.clone()),
            StoreError::Membership(m) => StoreError::Membership(m.clone()),
            StoreError::Fatal(f) => StoreError::Fatal(f.clone()),
            other => StoreError::Remote(chain(other)),
        }
    }
}

/// Why the cluster could not do something that needs a majority of its servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NoQuorum {
    #[error("the write was not committed in time; fewer than a majority of servers are reachable")]
    NotCommitted,
    #[error("the membership change was not committed in time")]
    MembershipNotCommitted,
    #[error(
        "the leader has not heard from a majority of the {voters} servers for over {timeout:?}"
    )]
    LeaderIsolated { voters: usize, timeout: Duration },
    #[error(
        "no leader could be reached within {timeout:?}; fewer than a majority of servers may be up"
    )]
    NoLeader { timeout: Duration },
    #[error("could not confirm leadership with a majority of servers")]
    LeadershipNotConfirmed,
    #[error("the leader hears from only {heard} of {voters} servers, not a majority")]
    Minority { heard: usize, voters: usize },
    #[error("this server did not catch up to the leader's index {index} in time")]
    Lagging { index: u64 },
}

/// A membership change the cluster refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    #[error("server {id} is the only voter; add another server first")]
    OnlyVoter { id: NodeId },
    #[error("server {id} is not a member")]
    NotAMember { id: NodeId },
    #[error(transparent)]
    Refused(Box<ChangeMembershipError<NodeId>>),
}

/// A [`StoreError`] as it crosses the wire from the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum RemoteError {
    NotLeader,
    NoQuorum(NoQuorum),
    Membership(MembershipError),
    Fatal(String),
}

impl From<StoreError> for RemoteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotLeader { .. } => RemoteError::NotLeader,
            StoreError::NoQuorum(q) => RemoteError::NoQuorum(q),
            StoreError::Membership(m) => RemoteError::Membership(m),
            other => RemoteError::Fatal(chain(&other)),
        }
    }
}

impl From<RemoteError> for StoreError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::NotLeader => StoreError::NotLeader {
                leader_id: None,
                leader_addr: None,
            },
            RemoteError::NoQuorum(q) => StoreError::NoQuorum(q),
            RemoteError::Membership(m) => StoreError::Membership(m),
            RemoteError::Fatal(m) => StoreError::Remote(m),
        }
    }
}

/// The error and its causes, `: `-separated (as anyhow's `{:#}`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
