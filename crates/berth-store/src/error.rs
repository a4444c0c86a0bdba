//! What can go wrong in the store, by kind: the server maps each kind to a gRPC status
//! (`NotLeader` and `NoQuorum` to UNAVAILABLE, `Membership` to FAILED_PRECONDITION, the rest to
//! INTERNAL). Errors that cross the wire from the leader travel as [`RemoteError`].

use std::path::PathBuf;
use std::time::Duration;

use berth_model::error_chain as chain;
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
    /// The database file was damaged outside the server (a disk error, a stray write): the
    /// server must not start from it, since it cannot tell what of its log and vote it lost.
    #[error(
        "raft database {path} is corrupted ({detail}); this server cannot start from it. Remove \
         it from the cluster (`berth cluster remove ID` on another server), move its data dir \
         aside, and start it again with an empty data dir, --join and a new server join token: \
         it takes a fresh copy of the state from the others"
    )]
    Corrupted { path: PathBuf, detail: String },
    /// The state in the database could not be read back.
    #[error("load the state from raft database {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: BoxError,
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
    #[error("a batch was answered with {kind}")]
    BatchAnswer { kind: &'static str },
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

    /// Whether the write was refused for what it asked (a membership change the cluster
    /// cannot make), rather than failing to commit.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Membership(_))
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
    /// A write or a read index that ran out of time on a leader that a majority answered
    /// during the wait (or that is the only voter): the servers are too busy, not cut off.
    #[error(
        "no majority {what} in time, though a majority of servers answer heartbeats: they are too busy (CPU or disk) to keep up, not cut off; try again, or give the servers more capacity"
    )]
    Overloaded { what: Attempt },
    #[error("the leader hears from only {heard} of {voters} servers, not a majority")]
    Minority { heard: usize, voters: usize },
    #[error("this server did not catch up to the leader's index {index} in time")]
    Lagging { index: u64 },
    /// As the leader said it (the reason crossed the wire as text).
    #[error("{0}")]
    AtLeader(String),
}

/// What ran out of time in [`NoQuorum::Overloaded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attempt {
    Write,
    Read,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attempt::Write => "acknowledged the write (it may still commit)",
            Attempt::Read => "confirmed the leadership for a linearizable read",
        })
    }
}

/// A membership change the cluster refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    #[error("server {id} is the only voter; add another server first")]
    OnlyVoter { id: NodeId },
    #[error("server {id} is not a member")]
    NotAMember { id: NodeId },
    #[error(
        "server {id} took nothing from the leader for {stalled:?} while catching up (it holds the log up to {}); it stays a learner: check that it runs and that the leader reaches it, then add it again",
        index_or_none(*matched)
    )]
    Stalled {
        id: NodeId,
        matched: Option<u64>,
        stalled: Duration,
    },
    #[error(
        "server {id} had not caught up after {limit:?} (it holds the log up to {}); it stays a learner: add it again to wait longer",
        index_or_none(*matched)
    )]
    TooSlow {
        id: NodeId,
        matched: Option<u64>,
        limit: Duration,
    },
    #[error(transparent)]
    Refused(Box<ChangeMembershipError<NodeId>>),
    /// As the leader said it (the reason crossed the wire as text).
    #[error("{0}")]
    AtLeader(String),
}

fn index_or_none(index: Option<u64>) -> String {
    index.map_or_else(|| "no index yet".to_owned(), |i| format!("index {i}"))
}

/// A [`StoreError`] as it crosses the wire from the leader: its kind and its text, so that
/// servers of different versions understand each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum RemoteError {
    NotLeader,
    NoQuorum(String),
    Membership(String),
    Fatal(String),
}

impl From<StoreError> for RemoteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotLeader { .. } => RemoteError::NotLeader,
            StoreError::NoQuorum(q) => RemoteError::NoQuorum(q.to_string()),
            StoreError::Membership(m) => RemoteError::Membership(m.to_string()),
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
            RemoteError::NoQuorum(q) => StoreError::NoQuorum(NoQuorum::AtLeader(q)),
            RemoteError::Membership(m) => StoreError::Membership(MembershipError::AtLeader(m)),
            RemoteError::Fatal(m) => StoreError::Remote(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_the_wire_in_the_format_older_servers_use() {
        let e = RemoteError::from(StoreError::NoQuorum(NoQuorum::Minority {
            heard: 1,
            voters: 3,
        }));
        let json = serde_json::to_string(&e).expect("encode");
        assert_eq!(
            json,
            r#"{"NoQuorum":"the leader hears from only 1 of 3 servers, not a majority"}"#
        );
        let back = StoreError::from(serde_json::from_str::<RemoteError>(&json).expect("decode"));
        assert_eq!(
            back.to_string(),
            "the cluster has no quorum: the leader hears from only 1 of 3 servers, not a majority"
        );
        let old = r#"{"Membership":"server 4 is not a member"}"#;
        let back = StoreError::from(serde_json::from_str::<RemoteError>(old).expect("decode"));
        assert!(matches!(
            back,
            StoreError::Membership(MembershipError::AtLeader(_))
        ));
    }
}
