//! berth's replicated store: the only crate that knows openraft.
//!
//! A [`Store`] owns one Raft member: its durable log and state machine (redb, see
//! [`storage`]), the gRPC transport to its peers ([`network`]), and the in-memory [`State`]
//! every reader sees. The rest of berth calls [`Store::propose`] to change state and
//! [`Store::read`] / [`Store::read_stale`] / [`Store::watch`] to look at it.

mod command;
pub mod network;
mod state;
pub mod storage;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio::sync::watch;

pub use command::{Command, CommandResult, Placement, Rejection, Unplaced};
pub use network::RaftService;
pub use state::{Key, Object, State};

/// A Raft member's ID.
pub type NodeId = u64;
/// What the cluster knows about a member: its gRPC address.
pub type BerthNode = BasicNode;

openraft::declare_raft_types!(
    /// openraft's type configuration for berth.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BerthNode,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// The address peers and clients reach this member at, `host:port`.
    pub advertise_addr: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: (Duration, Duration),
    /// How long a write may wait for a quorum before it fails with [`StoreError::NoQuorum`].
    pub write_timeout: Duration,
}

impl StoreConfig {
    pub fn new(node_id: NodeId, data_dir: PathBuf, advertise_addr: String) -> Self {
        Self {
            node_id,
            data_dir,
            advertise_addr,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            write_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open raft database {path}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("start raft: {0}")]
    Start(String),
    #[error("this server is not the leader")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("the cluster has no quorum: {0}")]
    NoQuorum(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
}

/// Raft's view of the cluster, for `berth cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub address: String,
    pub role: Role,
    pub match_index: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
        }
    }
}

/// One Raft member with its state.
#[derive(Clone)]
pub struct Store {
    raft: Raft,
    shared: Arc<storage::Shared>,
    config: Arc<StoreConfig>,
}

impl Store {
    /// Opens (or creates) the member's database under `data_dir` and starts Raft. Does not
    /// form a cluster: see [`Store::bootstrap_if_new`].
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Open {
            path: config.data_dir.clone(),
            source: redb::Error::Io(e),
        })?;
        let path = config.data_dir.join("raft.redb");
        let open_err = |source: redb::Error| StoreError::Open {
            path: path.clone(),
            source,
        };
        let db = Arc::new(redb::Database::create(&path).map_err(|e| open_err(e.into()))?);
        storage::init_tables(&db).map_err(open_err)?;
        let committed = Arc::new(AtomicU64::new(0));
        let log = storage::LogStore::new(db.clone(), committed.clone());
        let (sm, shared) = storage::StateMachine::load(db, committed)
            .map_err(|e| StoreError::Start(format!("load state machine: {e}")))?;
        let raft_config = openraft::Config {
            cluster_name: "berth".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Start(e.to_string()))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network::Network,
            log,
            sm,
        )
        .await
        .map_err(|e| StoreError::Start(e.to_string()))?;
        Ok(Self {
            raft,
            shared,
            config: Arc::new(config),
        })
    }

    /// Forms a one-member cluster of this server when it has never been part of one.
    pub async fn bootstrap_if_new(&self) -> Result<bool, StoreError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Fatal(e.to_string()))?
        {
            return Ok(false);
        }
        let members = BTreeMap::from([(
            self.config.node_id,
            BasicNode {
                addr: self.config.advertise_addr.clone(),
            },
        )]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| StoreError::Start(e.to_string()))?;
        Ok(true)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Proposes a command and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, StoreError> {
        let write = self.raft.client_write(command);
        match tokio::time::timeout(self.config.write_timeout, write).await {
            Err(_) => Err(StoreError::NoQuorum(format!(
                "a write was not committed within {:?}; fewer than a majority of servers are reachable",
                self.config.write_timeout
            ))),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(StoreError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(StoreError::Fatal(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(StoreError::Fatal(e.to_string())),
        }
    }

    /// A linearizable read: confirms leadership with a quorum (read index), waits until the
    /// state machine has applied up to it, then runs `f` on the state.
    pub async fn read<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, StoreError> {
        let check = self.raft.ensure_linearizable();
        match tokio::time::timeout(self.config.write_timeout, check).await {
            Err(_) => {
                return Err(StoreError::NoQuorum(
                    "could not confirm leadership with a majority of servers".into(),
                ))
            }
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Err(StoreError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(RaftError::APIError(e @ CheckIsLeaderError::QuorumNotEnough(_)))) => {
                return Err(StoreError::NoQuorum(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => return Err(StoreError::Fatal(e.to_string())),
        }
        Ok(self.read_stale(f))
    }

    /// Reads this member's state as applied so far, without asking the leader.
    pub fn read_stale<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.read())
    }

    /// Changes whenever the state machine applied new entries (the value is the applied index).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Whether this member currently is the leader, as a watch for controllers.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        let mut metrics = self.raft.metrics();
        let (tx, rx) = watch::channel(metrics.borrow().state == ServerState::Leader);
        tokio::spawn(async move {
            loop {
                let is_leader = metrics.borrow_and_update().state == ServerState::Leader;
                tx.send_if_modified(|v| std::mem::replace(v, is_leader) != is_leader);
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    pub fn cluster_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let role = if Some(*id) == m.current_leader {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Follower
                } else {
                    Role::Learner
                };
                let match_index = if *id == m.id {
                    m.last_log_index
                } else {
                    replication.get(id).and_then(|l| l.map(|l| l.index))
                };
                Member {
                    id: *id,
                    address: node.addr.clone(),
                    role,
                    match_index,
                }
            })
            .collect();
        ClusterStatus {
            leader: m.current_leader,
            term: m.current_term,
            commit_index: self.shared.committed.load(Ordering::Relaxed),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }
    }

    /// Stops Raft (used by tests and on shutdown).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

// `declare_raft_types!` names `Cursor` unqualified for the default snapshot data type.
#[allow(dead_code)]
type SnapshotData = Cursor<Vec<u8>>;
