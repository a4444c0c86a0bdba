//! berth's replicated store: the only crate that knows openraft.
//!
//! A [`Store`] owns one Raft member: its durable log and state machine (redb, see
//! [`storage`]), the gRPC transport to its peers ([`network`]), and the in-memory [`State`]
//! every reader sees. The rest of berth calls [`Store::propose`] to change state and
//! [`Store::read`] / [`Store::read_stale`] / [`Store::watch`] to look at it.
//!
//! Any member accepts any call: a follower forwards writes (and membership changes) to the
//! leader over the Raft transport, and serves linearizable reads by asking the leader for its
//! read index and waiting until it has applied that far. Calls retry across leader changes
//! until `write_timeout`, then fail with [`StoreError::NoQuorum`].

pub mod changes;
mod clock;
mod commit;
mod elect;
mod error;
mod file;
mod lease;
pub mod network;
mod node_watch;
mod runtime;
pub mod storage;
mod tail;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftNetworkFactory, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use commit::{group_commit, timed_out, Pending};

pub use berth_model::error_chain;
use berth_model::{ClusterMember, ClusterStatus, MemberRole};
use berth_state::{Command, CommandResult, Credentials, State, TaskView};
use error::RemoteError;
pub use error::{Attempt, MembershipError, NoQuorum, StoreError};
pub use network::{RaftService, SimulatedPeers};
pub use node_watch::{NodeChanges, NodeWatch};

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
    /// Elections start after a random timeout in `[min, max)`.
    pub election_timeout: (Duration, Duration),
    /// How long a write or linearizable read may wait for a leader and a quorum before it
    /// fails with [`StoreError::NoQuorum`].
    pub write_timeout: Duration,
    /// Build a snapshot after this many new log entries,
    pub snapshot_every: u64,
    /// or after this many bytes appended to the log (as stored, compressed), whichever comes
    /// first: entries are batches of very different sizes, and the log's size is what it
    /// costs on disk.
    pub snapshot_log_bytes: u64,
    /// Log entries kept after a snapshot, for followers that are a little behind.
    pub keep_logs: u64,
    /// How long one request of a snapshot transfer may take. The request carrying the last
    /// chunk answers once the member has installed the whole snapshot (written it, decoded
    /// it and built the state from it): seconds for a large state. openraft's default, 200 ms, made
    /// every transfer of the 2-hour chaos run's state time out and start again, forever, so a
    /// member that re-joined never caught up.
    pub install_snapshot_timeout: Duration,
    /// Answer linearizable reads on the leader from its lease (`lease` module) when it holds
    /// one, instead of confirming leadership with a round of heartbeats each time. Off by
    /// default: the lease assumes the servers' clocks run at about the same rate and that
    /// every server has the same election timeouts.
    pub lease_reads: bool,
    /// How to reach peers: mutual TLS with this server's certificate. `None` only in the
    /// store's own tests.
    pub dialer: Option<berth_tls::net::Dialer>,
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
            snapshot_every: 5000,
            snapshot_log_bytes: 16 << 20,
            keep_logs: 1000,
            install_snapshot_timeout: Duration::from_secs(60),
            lease_reads: false,
            dialer: None,
        }
    }

    /// A leader that has not heard from a quorum for this long cannot commit.
    fn quorum_timeout(&self) -> Duration {
        self.election_timeout.1 * 2
    }

    /// How long after sending an AppendEntries that a majority accepted the leader may read
    /// from its lease: openraft's leader lease (`election_timeout_max`), a quarter short.
    fn read_lease(&self) -> Option<Duration> {
        self.lease_reads.then(|| self.election_timeout.1 * 3 / 4)
    }
}

/// A write the leader executes: a state-machine command or a membership change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Write {
    Command(Command),
    /// Adds a learner, waits until it caught up, then (with `voter`) promotes it.
    AddMember {
        id: NodeId,
        addr: String,
        voter: bool,
    },
    RemoveMember {
        id: NodeId,
    },
}

/// Who leads, as this member knows it.
enum Leader {
    Me,
    Other(String),
    Unknown,
}

pub use clock::{leading_since, now_ms, wall_ms};

/// One Raft member with its state.
#[derive(Clone)]
pub struct Store {
    raft: Raft,
    shared: Arc<storage::Shared>,
    config: Arc<StoreConfig>,
    peers: network::Peers,
    commits: mpsc::UnboundedSender<Pending>,
    /// Whether this member leads: one watch for every controller and agent stream, changed only
    /// when leadership does (Raft's own metrics change on every heartbeat and commit).
    leadership: Arc<watch::Sender<bool>>,
    /// IDs for the writes this member proposes for callers.
    requests: Arc<RequestIds>,
    /// The term this member leads in and its last log index when it first confirmed a read in
    /// it: no read index below it ([`Store::read_index_once`]).
    read_floor: Arc<std::sync::Mutex<Option<(u64, u64)>>>,
    /// The term in which this member, leading, last completed a linearizable read
    /// ([`Store::read_leading_queued`]).
    confirmed_term: Arc<AtomicU64>,
    /// The AppendEntries peers accepted, for reads from the leader's lease.
    acks: Arc<lease::Acks>,
    /// When each peer last took entries or a snapshot's chunk from this member.
    heard: network::Heard,
    /// Raft's own threads (`None` in the simulation, which runs on one paused thread).
    runtime: Option<Arc<runtime::RaftRuntime>>,
    /// The log's newest entries, decoded.
    tail: Arc<tail::Tail>,
    /// Writes begun on this member that failed to commit ([`Store::failed_writes`]).
    failed_writes: Arc<AtomicU64>,
}

/// What [`Store::stored`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSizes {
    pub log_entries: u64,
    pub log_bytes: u64,
    pub object_bytes: u64,
    pub file_bytes: Option<u64>,
}

/// Makes the IDs of [`Command::Request`]s: this member, when this process started, and a
/// count, so no two proposals anywhere share one.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new(node_id: NodeId) -> Self {
        // And a random nonce: a member reopened within the same millisecond (a clock stepped
        // back, the simulation) must not reuse its IDs, or a new write would get an old answer.
        use std::hash::{BuildHasher as _, Hasher as _};
        let nonce = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            prefix: format!("{node_id}-{}-{nonce:016x}", clock::wall_ms()),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Follows Raft's metrics and changes `leadership` only when this member gains or loses it.
async fn follow_leadership(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BerthNode>>,
    leadership: Arc<watch::Sender<bool>>,
) {
    loop {
        let is_leader = metrics.borrow_and_update().state == ServerState::Leader;
        if *leadership.borrow() != is_leader {
            // The clock first: controllers woken by the change stamp with it.
            clock::set_leading(is_leader);
            leadership.send_replace(is_leader);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Asks for a snapshot once `limit` bytes were appended to the log since the last one (openraft
/// counts entries only): what the log holds on disk between snapshots stays bounded however
/// large its entries are.
async fn snapshot_by_size(raft: Raft, appended: Arc<AtomicU64>, limit: u64) {
    let mut metrics = raft.metrics();
    let mut snapshot = metrics.borrow().snapshot;
    // From nothing: what the log held at start (`appended` starts there) is a start's to
    // apply again as well, and counts towards the next snapshot.
    let mut since = 0;
    while metrics.changed().await.is_ok() {
        let now = appended.load(Ordering::Relaxed);
        let latest = metrics.borrow_and_update().snapshot;
        if latest != snapshot {
            (snapshot, since) = (latest, now);
        } else if limit > 0 && now - since >= limit {
            // Counted from here again: one request per `limit`, even while it is built.
            since = now;
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

/// The longest `cluster add` waits for a new server that keeps catching up ([`Store::catch_up`]).
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(3600);

/// How many revisions old a shared listing of the state may be for a new watcher to start
/// from it ([`Store::listing`]).
pub const LISTING_REUSE: u64 = 256;

impl Store {
    /// Opens (or creates) the member's database under `data_dir` and starts Raft. Does not
    /// form a cluster: see [`Store::bootstrap_if_new`].
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Open {
            path: config.data_dir.clone(),
            source: redb::Error::Io(e),
        })?;
        let db = file::open_database(&config.data_dir.join("raft.redb"))?;
        let peers = network::Peers::new(config.dialer.clone());
        let snapshots = storage::SnapshotFiles::in_dir(config.data_dir.clone());
        // Replication's own connections: made by its tasks, so they live on Raft's runtime
        // (forwarded writes and read indexes use `peers`, from the API's).
        let replication = network::Peers::new(config.dialer.clone());
        let heard = network::Heard::default();
        let network = network::Network::new(replication, config.heartbeat_interval, heard.clone());
        let runtime = runtime::RaftRuntime::start()
            .await
            .map_err(|e| StoreError::start("start Raft's threads", e))?;
        // Everything the store spawns while it opens (Raft's core and replication, the state
        // machine, the group committer, the election watcher) and later from within those
        // (the state's and the log's writers) runs there.
        let mut store = runtime
            .handle()
            .spawn(Self::open_with(
                config, db, snapshots, network, peers, heard,
            ))
            .await
            .map_err(|e| StoreError::start("open the store", e))??;
        store.runtime = Some(Arc::new(runtime));
        Ok(store)
    }

    /// Opens a member on `db` with its Raft traffic going through `network` — the seam the
    /// deterministic simulation uses (in-memory databases, a lossy simulated network).
    #[doc(hidden)]
    pub async fn open_simulated<N: RaftNetworkFactory<TypeConfig>>(
        config: StoreConfig,
        db: redb::Database,
        network: N,
        peers: SimulatedPeers,
    ) -> Result<Self, StoreError> {
        let snapshots = storage::SnapshotFiles::in_database();
        let peers = network::Peers::simulated(peers);
        Self::open_with(config, db, snapshots, network, peers, Default::default()).await
    }

    async fn open_with<N: RaftNetworkFactory<TypeConfig>>(
        config: StoreConfig,
        db: redb::Database,
        snapshots: storage::SnapshotFiles,
        network: N,
        peers: network::Peers,
        heard: network::Heard,
    ) -> Result<Self, StoreError> {
        let db = Arc::new(db);
        storage::init_tables(&db).map_err(|source| StoreError::Open {
            path: config.data_dir.join("raft.redb"),
            source,
        })?;
        let committed = Arc::new(AtomicU64::new(0));
        let load_error = |e: openraft::StorageError<NodeId>| StoreError::Load {
            path: config.data_dir.join("raft.redb"),
            source: e.into(),
        };
        let facts = Arc::new(lease::Facts::default());
        let log = storage::LogStore::new(db.clone(), committed.clone(), facts.clone())
            .map_err(load_error)?;
        let appended = log.appended();
        let tail = log.tail();
        let stored = log.stored();
        let (sm, shared) = storage::StateMachine::load(
            db,
            log.on_disk(),
            snapshots,
            committed,
            stored,
            facts.clone(),
        )
        .map_err(load_error)?;
        let raft_config = openraft::Config {
            cluster_name: "berth".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout.0.as_millis() as u64,
            election_timeout_max: config.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_logs,
            // openraft gives each AppendEntries one heartbeat interval; entries are batches
            // (group commit, a thousand tasks in a RunTask), so fewer per request keep a busy
            // follower inside that bound instead of timing out and retrying the same payload.
            max_payload_entries: 16,
            install_snapshot_timeout: config.install_snapshot_timeout.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::start("check raft settings", e))?;
        let acks = Arc::new(lease::Acks::default());
        let network = lease::Acking::new(network, acks.clone(), facts.clone());
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StoreError::start("start raft", e))?;
        let (commits, queue) = mpsc::unbounded_channel();
        tokio::spawn(group_commit(raft.clone(), queue, config.quorum_timeout()));
        tokio::spawn(snapshot_by_size(
            raft.clone(),
            appended,
            config.snapshot_log_bytes,
        ));
        // Not beside reads from the lease: the watcher reads the vote and stands in two steps
        // of Raft's core, and an AppendEntries accepted between them would count towards the
        // old leader's lease while this member stands (openraft's own timer checks in one).
        if !config.lease_reads {
            tokio::spawn(elect::watch(
                raft.clone(),
                config.node_id,
                config.election_timeout.1,
            ));
        }
        let metrics = raft.metrics();
        let leads = metrics.borrow().state == ServerState::Leader;
        if leads {
            clock::set_leading(true);
        }
        let leadership = Arc::new(watch::channel(leads).0);
        tokio::spawn(tail::release(metrics.clone(), tail.clone()));
        tokio::spawn(follow_leadership(metrics, leadership.clone()));
        Ok(Self {
            raft,
            shared,
            requests: Arc::new(RequestIds::new(config.node_id)),
            config: Arc::new(config),
            peers,
            commits,
            leadership,
            read_floor: Arc::default(),
            confirmed_term: Arc::default(),
            failed_writes: Arc::default(),
            acks,
            heard,
            runtime: None,
            tail,
        })
    }

    /// Whether this member has ever been part of a cluster (has a log or a membership).
    pub async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::start("read raft state", e))
    }

    /// Forms a one-member cluster of this server when it has never been part of one.
    pub async fn bootstrap_if_new(&self) -> Result<bool, StoreError> {
        if self.is_initialized().await? {
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
            .map_err(|e| StoreError::start("bootstrap the cluster", e))?;
        Ok(true)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Resolves once Raft has stopped on a fatal error — a write to the data dir failed (disk
    /// full, an I/O error, a failed fsync) — with what failed. Raft acknowledges and applies
    /// nothing after it; the server is to stop serving.
    pub async fn fatal(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(e) = &metrics.borrow_and_update().running_state {
                // Its message already quotes the cause.
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                return "Raft stopped".to_owned();
            }
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn leader(&self) -> Leader {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(id) if id == self.config.node_id && m.state == ServerState::Leader => Leader::Me,
            Some(id) if id == self.config.node_id => Leader::Unknown,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Other(node.addr.clone()),
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// Whether this member leads right now.
    pub fn is_leader(&self) -> bool {
        matches!(self.leader(), Leader::Me)
    }

    /// The leader's address when another member leads.
    pub fn leader_addr(&self) -> Option<String> {
        match self.leader() {
            Leader::Other(addr) => Some(addr),
            Leader::Me => Some(self.config.advertise_addr.clone()),
            Leader::Unknown => None,
        }
    }

    /// Fails fast when this member leads but has not heard from a quorum recently.
    fn check_quorum(&self) -> Result<(), StoreError> {
        let m = self.raft.metrics().borrow().clone();
        let voters = m.membership_config.membership().voter_ids().count();
        // `None` means no round has completed since this member became leader: too early to
        // tell, so the write's own timeout decides.
        let stale = m
            .millis_since_quorum_ack
            .is_some_and(|ms| Duration::from_millis(ms) > self.config.quorum_timeout());
        if voters > 1 && stale {
            return Err(NoQuorum::LeaderIsolated {
                voters,
                timeout: self.config.quorum_timeout(),
            }
            .into());
        }
        Ok(())
    }

    /// Runs `attempt` until it stops answering "not the leader" or the deadline passes: again
    /// as soon as another leader is known, or every 50 ms.
    async fn retry<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut metrics = self.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            match attempt().await {
                Err(StoreError::NotLeader { .. }) if Instant::now() < deadline => {
                    // Again as soon as this member hears of another leader (an election
                    // ended), or in 50 ms (the leader it named may not have heard yet).
                    let changed = metrics.wait_for(|m| m.current_leader != leader);
                    let every = Duration::from_millis(50);
                    let stopped = matches!(tokio::time::timeout(every, changed).await, Ok(Err(_)));
                    if stopped {
                        tokio::time::sleep(every).await; // Raft stopped: no news will come.
                    }
                }
                Err(StoreError::NotLeader { .. }) => {
                    return Err(NoQuorum::NoLeader {
                        timeout: self.config.write_timeout,
                    }
                    .into())
                }
                other => return other,
            }
        }
    }

    /// Executes a write on the leader, forwarding it when another member leads. A command is
    /// proposed as a [`Command::Request`] under a new ID that every retry carries: a leader
    /// that fails after appending it may leave it in the log of the next one, which commits
    /// it beside the retry; the state machine applies the first copy only, and answers the
    /// retry with its answer. (Commands only the leader proposes are never retried elsewhere,
    /// and go as they are.)
    ///
    /// Boxed: the future of a write is several KiB (its retries, the forwarding to a leader
    /// over gRPC, openraft's client write), and a long-lived task that may write (an agent's
    /// stream: 5,000 of them on a leader) would hold that much inline all its life.
    async fn write(&self, write: Write, timeout: Duration) -> Result<CommandResult, StoreError> {
        let written = Box::pin(self.write_inline(write, timeout)).await;
        if written.as_ref().is_err_and(|e| !e.is_refusal()) {
            self.failed_writes.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    /// The writes begun on this member since it started (by API requests, agents' reports,
    /// controllers; forwarded to the leader or not) that failed to commit within their
    /// timeout: no leader, no quorum, leadership lost, the store stopped. A membership change
    /// refused for what it asked is not one.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    async fn write_inline(
        &self,
        write: Write,
        timeout: Duration,
    ) -> Result<CommandResult, StoreError> {
        let write = match write {
            Write::Command(command)
                if !command.leader_only() && !matches!(command, Command::Request { .. }) =>
            {
                Write::Command(Command::Request {
                    id: self.requests.next(),
                    at: now_ms(),
                    command: Box::new(command),
                })
            }
            other => other,
        };
        let deadline = Instant::now() + timeout;
        if matches!(&write, Write::Command(c) if c.leader_only()) {
            // Never forwarded (the leader refuses what another member proposes of these), so
            // not retried either: once this member no longer leads, it fails at once, rather
            // than at the write timeout.
            return match self.leader() {
                Leader::Me => self.write_local(write, deadline).await,
                _ => Err(StoreError::NotLeader {
                    leader_id: None,
                    leader_addr: self.leader_addr(),
                }),
            };
        }
        self.retry(deadline, || {
            let write = write.clone();
            // The leader bounds an addition's wait for the new server by its progress: the
            // call to it must not end first.
            let forwarding = match write {
                Write::AddMember { .. } => Instant::now() + CATCH_UP_LIMIT + timeout,
                _ => deadline,
            };
            async move {
                match self.leader() {
                    Leader::Me => self.write_local(write, deadline).await,
                    Leader::Other(addr) => self.peers.forward(&addr, &write, forwarding).await,
                    Leader::Unknown => Err(StoreError::NotLeader {
                        leader_id: None,
                        leader_addr: None,
                    }),
                }
            }
        })
        .await
    }

    /// Executes a write another member forwarded to this one, which must lead. The leader
    /// assigns timestamps, also to commands a follower received.
    pub(crate) async fn accept_forwarded(
        &self,
        mut write: Write,
    ) -> Result<CommandResult, StoreError> {
        let timeout = match &mut write {
            Write::Command(command) => {
                command.stamp(now_ms());
                self.config.write_timeout
            }
            Write::AddMember { .. } => self.config.write_timeout * 12,
            Write::RemoveMember { .. } => self.config.write_timeout * 2,
        };
        self.write_local(write, Instant::now() + timeout).await
    }

    /// Executes a write on this member, which must lead.
    pub(crate) async fn write_local(
        &self,
        write: Write,
        deadline: Instant,
    ) -> Result<CommandResult, StoreError> {
        self.check_quorum()?;
        match write {
            Write::Command(command) => {
                let (reply, answer) = oneshot::channel();
                let pending = Pending {
                    command,
                    deadline,
                    reply,
                };
                if self.commits.send(pending).is_err() {
                    return Err(StoreError::Stopped("the group committer"));
                }
                let started = Instant::now();
                tokio::time::timeout_at(deadline, answer)
                    .await
                    .map_err(|_| {
                        timed_out(
                            &self.raft,
                            self.config.quorum_timeout(),
                            Attempt::Write,
                            started.elapsed(),
                            NoQuorum::NotCommitted,
                        )
                    })?
                    .map_err(|_| StoreError::Stopped("the group committer"))?
            }
            Write::AddMember { id, addr, voter } => {
                let membership = self
                    .change_members(
                        ChangeMembers::AddNodes(BTreeMap::from([(id, BasicNode { addr })])),
                        deadline,
                    )
                    .await?;
                self.catch_up(id, membership).await?;
                if voter {
                    // A fresh bound: catching up may have taken far longer than the first.
                    let deadline = deadline.max(Instant::now() + self.config.write_timeout * 2);
                    self.change_members(ChangeMembers::AddVoterIds(BTreeSet::from([id])), deadline)
                        .await?;
                }
                Ok(CommandResult::Done)
            }
            Write::RemoveMember { id } => {
                let membership = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .clone();
                let change = if membership.voter_ids().any(|v| v == id) {
                    if membership.voter_ids().count() == 1 {
                        return Err(MembershipError::OnlyVoter { id }.into());
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else if membership.get_node(&id).is_some() {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    return Err(MembershipError::NotAMember { id }.into());
                };
                if let Some(log_id) = self.change_members(change, deadline).await? {
                    self.membership_shown(log_id, deadline).await;
                }
                Ok(CommandResult::Done)
            }
        }
    }

    /// Waits (until `deadline` at most) for this member's status to show the membership of
    /// `log_id` or a later one: openraft answers a change once it commits and publishes its
    /// metrics a moment later, and a `cluster status` right after a removal is to show it.
    async fn membership_shown(&self, log_id: openraft::LogId<NodeId>, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        loop {
            let shown = metrics
                .borrow_and_update()
                .membership_config
                .log_id()
                .is_some_and(|l| l.index >= log_id.index);
            if shown {
                return;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                // Committed all the same; the status catches up on its own.
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// Applies a membership change on this leader, waiting for one already in progress to
    /// finish first, and answers the log ID of the membership it committed. New nodes are
    /// added as learners: [`Store::catch_up`] waits for them.
    async fn change_members(
        &self,
        change: ChangeMembers<NodeId, BerthNode>,
        deadline: Instant,
    ) -> Result<Option<openraft::LogId<NodeId>>, StoreError> {
        loop {
            let attempt = async {
                match change.clone() {
                    ChangeMembers::AddNodes(nodes) => {
                        let mut result = Ok(None);
                        for (id, node) in nodes {
                            result = self
                                .raft
                                .add_learner(id, node, false)
                                .await
                                .map(|r| Some(r.log_id));
                            if result.is_err() {
                                break;
                            }
                        }
                        result
                    }
                    other => self
                        .raft
                        .change_membership(other, false)
                        .await
                        .map(|r| Some(r.log_id)),
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(NoQuorum::MembershipNotCommitted.into()),
                Ok(Ok(log_id)) => return Ok(log_id),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                )))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    return Err(StoreError::NotLeader {
                        leader_id: f.leader_id,
                        leader_addr: f.leader_node.map(|n| n.addr),
                    })
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(MembershipError::Refused(Box::new(e)).into())
                }
                Ok(Err(RaftError::Fatal(e))) => return Err(StoreError::Fatal(Box::new(e))),
            }
        }
    }

    /// Waits on this leader until learner `id` holds the log up to `membership` (the entry
    /// that added it), as openraft's blocking `add_learner` does, but with no bound on the
    /// whole wait: a large state takes as long as it takes to stream and install. It fails
    /// once the learner has taken nothing (no entries, no snapshot chunk) for
    /// [`StoreConfig::write_timeout`] × 12 (at least one snapshot request's time and a write
    /// timeout: the last chunk is answered only once the whole snapshot is installed), or
    /// after [`CATCH_UP_LIMIT`] in all; when the learner was removed meanwhile; and when this
    /// member stopped leading (`NotLeader`: the write is retried at the next leader).
    async fn catch_up(
        &self,
        id: NodeId,
        membership: Option<openraft::LogId<NodeId>>,
    ) -> Result<(), StoreError> {
        let stall = (self.config.write_timeout * 12)
            .max(self.config.install_snapshot_timeout + self.config.write_timeout);
        let started = Instant::now();
        let mut metrics = self.raft.metrics();
        let (mut matched, mut progressed) = (None, started);
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.membership_config.log_id() >= &membership {
                    if m.membership_config.membership().get_node(&id).is_none() {
                        return Err(MembershipError::NotAMember { id }.into());
                    }
                    let Some(replication) = &m.replication else {
                        return Err(StoreError::NotLeader {
                            leader_id: m.current_leader,
                            leader_addr: None,
                        });
                    };
                    let now = replication.get(&id).cloned().flatten();
                    if now >= membership {
                        return Ok(());
                    }
                    if now != matched {
                        (matched, progressed) = (now, Instant::now());
                    }
                }
            }
            if let Some(heard) = self.heard.last(id) {
                progressed = progressed.max(heard);
            }
            let now = Instant::now();
            if now >= progressed + stall {
                return Err(MembershipError::Stalled {
                    id,
                    matched: matched.map(|l| l.index),
                    stalled: stall,
                }
                .into());
            }
            if now >= started + CATCH_UP_LIMIT {
                return Err(MembershipError::TooSlow {
                    id,
                    matched: matched.map(|l| l.index),
                    limit: CATCH_UP_LIMIT,
                }
                .into());
            }
            // Woken by the next change of Raft's metrics (any commit or heartbeat answer), and
            // at least once a second to look at what the transport heard.
            let wake = (progressed + stall).min(now + Duration::from_secs(1));
            if let Ok(Err(_)) = tokio::time::timeout_at(wake, metrics.changed()).await {
                return Err(StoreError::Stopped("raft"));
            }
        }
    }

    /// Proposes a command and waits until it is committed and applied (on the leader).
    /// Commands only the leader proposes ([`Command::leader_only`]) fail at once with
    /// `NotLeader` on any other member, and on a leader that stops leading before they
    /// commit: the leader refuses them forwarded.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, StoreError> {
        self.propose_within(command, self.config.write_timeout)
            .await
    }

    /// [`Store::propose`], given `timeout` instead of the write timeout.
    async fn propose_within(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, StoreError> {
        if command.leader_only() && !self.is_leader() {
            return Err(StoreError::NotLeader {
                leader_id: None,
                leader_addr: self.leader_addr(),
            });
        }
        self.write(Write::Command(command), timeout).await
    }

    /// Adds a server: as a learner first, promoted to voter once it has caught up.
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        voter: bool,
    ) -> Result<(), StoreError> {
        // Catching up may mean streaming a snapshot: allow longer than a plain write.
        self.write(
            Write::AddMember { id, addr, voter },
            self.config.write_timeout * 12,
        )
        .await
        .map(drop)
    }

    /// Removes a server (voter or learner). Removing the leader hands leadership on.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), StoreError> {
        self.write(Write::RemoveMember { id }, self.config.write_timeout * 2)
            .await
            .map(drop)
    }

    /// The leader's read index: confirms leadership with a quorum and waits until applied.
    pub(crate) async fn read_index_local(&self, deadline: Instant) -> Result<u64, StoreError> {
        loop {
            match self.read_index_once(deadline).await {
                // One round of heartbeats timed out (openraft allows each one heartbeat
                // interval) although the leader heard from a majority recently: a busy leader,
                // not a partition — `check_quorum` fails fast once it is one. Try again.
                Err(StoreError::NoQuorum(_))
                    if Instant::now() + self.config.heartbeat_interval < deadline
                        && self.check_quorum().is_ok() => {}
                other => return other,
            }
        }
    }

    async fn read_index_once(&self, deadline: Instant) -> Result<u64, StoreError> {
        self.check_quorum()?;
        if let Some(index) = self.read_index_outside_core() {
            return Ok(index.max(self.read_floor()));
        }
        if let Some(index) = self.lease_read_index(deadline).await {
            return Ok(index.max(self.read_floor()));
        }
        let check = self.raft.ensure_linearizable();
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, check).await {
            Err(_) => Err(timed_out(
                &self.raft,
                self.config.quorum_timeout(),
                Attempt::Read,
                started.elapsed(),
                NoQuorum::LeadershipNotConfirmed,
            )),
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index).max(self.read_floor())),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(StoreError::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                let voters = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .count();
                Err(NoQuorum::Minority {
                    heard: q.got.len(),
                    voters,
                }
                .into())
            }
            Ok(Err(RaftError::Fatal(e))) => Err(StoreError::Fatal(Box::new(e))),
        }
    }

    /// A read index without a turn of Raft's core ([`lease::Facts::read_index`]): on a lone
    /// voter, or on a leader holding its lease with `--lease-reads`.
    fn read_index_outside_core(&self) -> Option<u64> {
        let last_applied = self.raft.metrics().borrow().last_applied;
        self.shared.facts.read_index(
            self.config.node_id,
            last_applied,
            || self.shared.readable.borrow().index,
            &self.acks,
            Instant::now(),
            self.config.read_lease().unwrap_or_default(),
        )
    }

    /// The read index this member may answer without a round of heartbeats: its committed
    /// index, when its core says it leads (an established leader, the membership committed)
    /// and a majority holds its lease ([`lease`]). `None` otherwise, or when the core does not
    /// answer before `deadline`.
    async fn lease_read_index(&self, deadline: Instant) -> Option<u64> {
        let lease = self.config.read_lease()?;
        let (me, acks) = (self.config.node_id, self.acks.clone());
        let check = self.raft.with_raft_state(move |st| {
            // Inside Raft's core: what it holds now, not metrics that may be a step behind.
            let now = Instant::now();
            let vote = st.vote_ref();
            let membership = &st.membership_state;
            // Its committed index is of its own leadership (its first entry committed): before
            // that, a new leader's may lag what the one before acknowledged. (A leader is a
            // term and a member: openraft 0.9's default leader IDs.)
            let leads = st.server_state == ServerState::Leader
                && vote.is_committed()
                && vote.leader_id().voted_for() == Some(me)
                && st
                    .committed
                    .is_some_and(|c| c.leader_id == *vote.leader_id())
                && membership.effective().log_id() == membership.committed().log_id();
            let held = leads
                && acks.quorum_within(
                    vote.leader_id().term,
                    membership.effective().get_joint_config(),
                    me,
                    now,
                    lease,
                );
            held.then(|| st.committed.map_or(0, |c| c.index))
        });
        tokio::time::timeout_at(deadline, check).await.ok()?.ok()?
    }

    /// The least read index this leader may answer in its term: its last log index when it
    /// first confirmed a read in it. openraft 0.9 lets a leader that restarts keep its term
    /// without an election; its read index is then the first entry of its term or the commit
    /// index it restored, and that index (a hint not fsynced on its own) may be older than
    /// entries of the term it committed and acknowledged before the restart. The 2-hour chaos
    /// run read revision 205 of a family from such a leader after 206 was acknowledged, 18 ms
    /// before every server was killed. Everything a leader acknowledged is in its log, so until
    /// it has applied its log as of then, no read is answered. For an elected leader it costs
    /// the first read of the term the entries then in flight; later reads' indexes pass it.
    fn read_floor(&self) -> u64 {
        let (term, last) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.last_log_index.unwrap_or(0))
        };
        let mut floor = self
            .read_floor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *floor {
            Some((t, index)) if t == term => index,
            _ => {
                *floor = Some((term, last));
                last
            }
        }
    }

    /// Waits until this member's state is readable as of `index` (applied; its changes may
    /// still be on their way to watchers).
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), StoreError> {
        let mut applied = self.shared.readable.subscribe();
        let wait = async move { applied.wait_for(|a| a.index >= index).await.map(drop) };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Stopped("the state machine")),
            Err(_) => Err(NoQuorum::Lagging { index }.into()),
        }
    }

    /// A linearizable read: the leader confirms its leadership with a quorum (read index), this
    /// member waits until it has applied that far, then runs `f` on its state.
    pub async fn read<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, StoreError> {
        self.read_linearizable(f, false).await
    }

    /// [`Store::read`] for long reads (see [`Store::read_stale_queued`]).
    pub async fn read_queued<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, StoreError> {
        self.read_linearizable(f, true).await
    }

    async fn read_linearizable<R>(
        &self,
        f: impl FnOnce(&State) -> R,
        queued: bool,
    ) -> Result<R, StoreError> {
        self.read_barrier().await?;
        Ok(match queued {
            true => self.read_stale_queued(f),
            false => self.read_stale(f),
        })
    }

    /// The tasks ([`TaskView`]), linearizable, or as this member has applied so far when
    /// `stale`, for reads of one task: while such reads come, they never wait for an entry
    /// being applied (the applier publishes the tasks with every entry); the first after a
    /// quiet spell may (`storage::Shared::task_view`).
    pub async fn task_view(&self, stale: bool) -> Result<Arc<TaskView>, StoreError> {
        if !stale {
            // The view is at the readable index, which the barrier waits for.
            self.read_barrier().await?;
        }
        Ok(self.shared.task_view())
    }

    /// The API tokens as this member has applied them so far, for a request's
    /// authentication: never waits for an entry being applied.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.shared.readable.borrow().credentials.clone()
    }

    /// Waits until this member's state holds everything committed before the call: the leader
    /// confirms its leadership with a quorum (read index), this member waits until it has
    /// applied that far.
    async fn read_barrier(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.config.write_timeout;
        // Boxed, as a write is ([`Store::write`]): a read index may ask the leader over gRPC.
        let index = Box::pin(self.retry(deadline, || async {
            match self.leader() {
                Leader::Me => self.read_index_local(deadline).await,
                Leader::Other(addr) => self.peers.read_index(&addr, deadline).await,
                Leader::Unknown => Err(StoreError::NotLeader {
                    leader_id: None,
                    leader_addr: None,
                }),
            }
        }))
        .await?;
        self.wait_applied(index, deadline).await
    }

    /// For the leader's controllers: [`Store::read_queued`] the first time in a term, then the
    /// leader's own state once it has applied every entry it knows to be committed, without a
    /// round of heartbeats to confirm it still leads. The services controller runs after every
    /// applied entry: its linearizable reads sent the followers a heartbeat round per write,
    /// in the Raft streams the next write's AppendEntries waits behind. What a controller needs
    /// is a state that misses nothing committed: the first read of the term waited for the
    /// leader's first entry (everything committed before it led comes before that), and its
    /// commit index covers everything committed since. A member that lost the lead without
    /// hearing so yet may plan from an older state, as it may between any read and its
    /// proposal; the commands check what they change when they apply.
    pub async fn read_leading_queued<R>(
        &self,
        f: impl FnOnce(&State) -> R,
    ) -> Result<R, StoreError> {
        let (term, leading) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.state == ServerState::Leader)
        };
        if leading && self.confirmed_term.load(Ordering::Acquire) == term {
            let committed = self.shared.committed.load(Ordering::Acquire);
            self.wait_applied(committed, Instant::now() + self.config.write_timeout)
                .await?;
            return Ok(self.read_stale_queued(f));
        }
        let read = self.read_queued(f).await?;
        if leading {
            self.confirmed_term.fetch_max(term, Ordering::AcqRel);
        }
        Ok(read)
    }

    /// Reads this member's state as applied so far, without asking the leader. For short
    /// reads: it may pass a writer waiting behind a long read; long ones (a whole controller
    /// round, a scan of every task) go through [`Store::read_stale_queued`].
    pub fn read_stale<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.read())
    }

    /// [`Store::read_stale`] for long reads: it waits behind a writer already waiting, so
    /// that a stream of them never keeps the applier out.
    pub fn read_stale_queued<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.read_queued())
    }

    /// The object changes after `revision` and the state's revision now, or `None` when they are
    /// no longer all kept (then list the state instead).
    pub fn changes_since(&self, revision: u64) -> (Option<Vec<changes::Change>>, u64) {
        let now = *self.shared.applied.borrow();
        let changes = self
            .shared
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .since(revision);
        (changes, now)
    }

    /// Every object as of a recent revision (`(revision, objects)`), for watchers that start
    /// by listing the state: one copy of the state is shared by the watchers that start while
    /// another still sends it and it is recent — at most [`LISTING_REUSE`] revisions old, and
    /// still followed by the change feed, from which each watcher catches up — instead of a
    /// copy per watcher.
    pub fn listing(&self) -> (u64, Arc<berth_state::ObjectsCopy>) {
        let mut cached = self
            .shared
            .listing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = *self.shared.applied.borrow();
        if let Some((revision, objects)) = cached.as_ref() {
            let covered = self
                .shared
                .changes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .covers(*revision);
            if let Some(objects) = objects.upgrade() {
                if covered && now.saturating_sub(*revision) <= LISTING_REUSE {
                    return (*revision, objects);
                }
            }
        }
        // The revision is read before the state: the state may be newer, so some changes
        // come twice to the watcher, which is harmless; none is missed. A persistent copy:
        // taking it under the state's lock costs about nothing, whatever the state holds.
        let objects = Arc::new(self.read_stale(berth_state::State::objects_copy));
        // Kept only while a watcher still holds it: no copy of the state outlives its readers.
        *cached = Some((now, Arc::downgrade(&objects)));
        (now, objects)
    }

    /// Changes whenever the state machine applied new entries (the value is the applied index).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Changes whenever an applied entry touches `node` or one of the tasks placed on it —
    /// what an agent's desired task set is made of — and says which.
    pub fn watch_node(&self, node: &str) -> NodeWatch {
        self.shared.node_changes.watch(node)
    }

    /// Whether this member currently is the leader, as a watch for controllers.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.subscribe()
    }

    /// How much the store holds on disk: the Raft log's entries and their stored bytes, the
    /// current snapshot's bytes (the state), and the length of the database file (none for a
    /// store without one).
    pub fn stored(&self) -> StoredSizes {
        let stored = &self.shared.stored;
        StoredSizes {
            log_entries: stored.log_entries.load(Ordering::Relaxed),
            log_bytes: stored.log_bytes.load(Ordering::Relaxed),
            object_bytes: stored.object_bytes.load(Ordering::Relaxed),
            file_bytes: std::fs::metadata(self.config.data_dir.join("raft.redb"))
                .ok()
                .map(|m| m.len()),
        }
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
                    MemberRole::Leader
                } else if voters.contains(id) {
                    MemberRole::Follower
                } else {
                    MemberRole::Learner
                };
                let match_index = if *id == m.id {
                    m.last_log_index
                } else {
                    replication.get(id).and_then(|l| l.map(|l| l.index))
                };
                ClusterMember {
                    id: *id,
                    address: node.addr.clone(),
                    role,
                    match_index,
                }
            })
            .collect();
        ClusterStatus {
            id: m.id,
            leader: m.current_leader,
            term: m.current_term,
            commit_index: self.shared.committed.load(Ordering::Relaxed),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
        }
    }

    /// How many entries the log's in-memory tail holds, and their size as stored (JSON):
    /// what replication and the state machine have yet to read, and what a lagging follower
    /// will.
    pub fn log_tail(&self) -> (usize, usize) {
        self.tail.held()
    }

    /// A backup of the whole state (linearizable), in the format `restore` reads.
    pub async fn backup(&self) -> Result<Vec<u8>, StoreError> {
        let objects = self.read(|s| s.objects().collect::<Vec<_>>()).await?;
        serde_json::to_vec(&storage::SnapshotData { objects }).map_err(|source| StoreError::Codec {
            what: "encode backup",
            source,
        })
    }

    /// Replaces the whole state with a backup made by [`Store::backup`].
    pub async fn restore(&self, backup: &[u8]) -> Result<usize, StoreError> {
        let data: storage::SnapshotData =
            serde_json::from_slice(backup).map_err(|source| StoreError::Codec {
                what: "read backup",
                source,
            })?;
        let count = data.objects.len();
        // A new one-member cluster elects itself first.
        let mut leading = self.leadership();
        let _ = tokio::time::timeout(self.config.write_timeout, leading.wait_for(|l| *l)).await;
        // One entry carries the whole state: writing, applying and storing it takes longer
        // than a plain write (about 5 s for 160,000 objects here), so it gets the time a new
        // member gets to catch up.
        let replace = Command::ReplaceState {
            objects: data.objects,
            at: now_ms(),
        };
        self.propose_within(replace, self.config.write_timeout * 12)
            .await?;
        Ok(count)
    }

    /// Stops Raft, then Raft's threads, waiting for the work still on them (the state
    /// machine's queued applies, a snapshot being built). Once this answers, only the store's
    /// handles hold the database (unless the wait for Raft's threads ran out, which is
    /// logged). The next start applies the log after the last snapshot again.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        if let Some(runtime) = &self.runtime {
            runtime.stop().await;
        }
    }
}

// `declare_raft_types!` names `Cursor` unqualified for the default snapshot data type.
#[allow(dead_code)]
type SnapshotData = Cursor<Vec<u8>>;
