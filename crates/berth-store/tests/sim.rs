//! Deterministic simulation of the replicated store: three members with in-memory redb
//! databases (the real storage code), a simulated network that delays, drops and partitions
//! messages from a seeded RNG, crashes and restarts, and tokio's paused clock. Writes go
//! straight to the leader's Raft or, as the servers' callers send them, through any member
//! (forwarded, retried; answers lost on the way back). After every step it checks:
//! - election safety, as openraft defines it: a leader is a term and a member (openraft 0.9's
//!   default leader IDs, ordered by term, then member), so a term may see a second leader
//!   (two members stood in it; a voter that granted the lower ID may then grant the higher),
//!   but never one with a lower member ID than a leader it already had: votes only go up;
//! - state machine safety: any two members that applied the same index hold the same state;
//! - linearizable reads at the leader: every acknowledged registration is in them, and every
//!   registration an earlier read answered (odd seeds read from the leader's lease, even
//!   seeds with a round of heartbeats);
//!   at the end, every member holds the same state, every acknowledged write is in it, and
//!   none was applied twice.
//!
//! `BERTH_SIM_SEEDS=N` (or `START..END`) runs seeds 0..N (default 500); `BERTH_SIM_SEED=S`
//! replays one seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::{
    ContainerDefinition, DesiredStatus, EventLog, Task, TaskDefinitionSpec, TaskStatus,
};
use berth_state::{Command, CommandResult};
use berth_store::{BerthNode, NodeId, Raft, Store, StoreConfig, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory, ServerState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::backends::InMemoryBackend;
use redb::StorageBackend;

const MEMBERS: u64 = 3;
const STEPS: usize = 40;

/// A redb backend that outlives the database using it, so a "crashed" member reopens the
/// bytes it had written. A crash also fences the old incarnation: tasks of the dead member that
/// are still winding down can no longer read or write, as after a real kill -9.
#[derive(Debug, Clone)]
struct SharedBackend {
    bytes: Arc<InMemoryBackend>,
    alive: Arc<AtomicBool>,
}

impl SharedBackend {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.alive.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(std::io::Error::other("this member crashed"))
        }
    }
}

impl StorageBackend for SharedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.check()?;
        self.bytes.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.bytes.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.bytes.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.bytes.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.bytes.write(offset, data)
    }
}

/// The simulated network shared by all members.
struct NetState {
    rng: StdRng,
    live: BTreeMap<NodeId, Raft>,
    /// The running members' stores, which forwarded writes reach.
    stores: BTreeMap<NodeId, Store>,
    /// Members cut off from everyone.
    cut: BTreeSet<NodeId>,
    /// Probability that a request or its reply is lost.
    loss: f64,
    /// Malformed messages seen on the wire.
    violations: Vec<String>,
}

/// One incarnation's view of the network: a crashed incarnation sends nothing more.
#[derive(Clone)]
struct Net {
    from: NodeId,
    alive: Arc<AtomicBool>,
    state: Arc<Mutex<NetState>>,
}

impl Net {
    /// How a write this member forwards fares: lost on the way (as if the target were down),
    /// or delivered with its answer lost on the way back (executed, yet the caller retries).
    fn reach(&self, addr: &str) -> Option<(Store, bool)> {
        let target: NodeId = addr.strip_prefix("sim-")?.parse().ok()?;
        let mut s = self.state.lock().expect("net lock");
        let cut = !self.alive.load(Ordering::SeqCst)
            || s.cut.contains(&self.from)
            || s.cut.contains(&target);
        let loss = s.loss;
        if cut || s.rng.gen_bool(loss) {
            return None;
        }
        let lose_reply = s.rng.gen_bool(loss);
        s.stores
            .get(&target)
            .map(|store| (store.clone(), lose_reply))
    }
}

struct Conn {
    from: NodeId,
    alive: Arc<AtomicBool>,
    target: NodeId,
    state: Arc<Mutex<NetState>>,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = Conn;
    async fn new_client(&mut self, target: NodeId, _node: &BerthNode) -> Conn {
        Conn {
            from: self.from,
            alive: self.alive.clone(),
            target,
            state: self.state.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("simulated network dropped the message")]
struct Dropped;

impl Conn {
    /// Decides the fate of one message: its delay, and whether it (or its reply) is lost.
    fn fate(&self) -> (Duration, bool, bool, Option<Raft>) {
        let mut s = self.state.lock().expect("net lock");
        let dead = !self.alive.load(Ordering::SeqCst);
        let cut = dead || s.cut.contains(&self.from) || s.cut.contains(&self.target);
        let loss = s.loss;
        let delay = Duration::from_millis(s.rng.gen_range(1..20));
        let lose_request = cut || s.rng.gen_bool(loss);
        let lose_reply = cut || s.rng.gen_bool(loss);
        (
            delay,
            lose_request,
            lose_reply,
            s.live.get(&self.target).cloned(),
        )
    }

    async fn send<Resp, E: std::error::Error>(
        &self,
        call: impl AsyncFnOnce(Raft) -> Result<Resp, RaftError<NodeId, E>>,
    ) -> Result<Resp, RPCError<NodeId, BerthNode, RaftError<NodeId, E>>> {
        let (delay, lose_request, lose_reply, target) = self.fate();
        tokio::time::sleep(delay).await;
        let Some(raft) = target.filter(|_| !lose_request) else {
            return Err(RPCError::Unreachable(Unreachable::new(&Dropped)));
        };
        let result = call(raft).await;
        if lose_reply || !self.alive.load(Ordering::SeqCst) {
            return Err(RPCError::Unreachable(Unreachable::new(&Dropped)));
        }
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BerthNode, RaftError<NodeId>>> {
        if let Some(first) = rpc.entries.first() {
            let expected = rpc.prev_log_id.map_or(0, |p| p.index + 1);
            if first.log_id.index != expected {
                let v = format!(
                    "member {} sent member {} entries from {} after prev_log_id {:?}",
                    self.from, self.target, first.log_id, rpc.prev_log_id
                );
                self.state.lock().expect("net lock").violations.push(v);
            }
        }
        self.send(async move |r: Raft| r.append_entries(rpc).await)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BerthNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(async move |r: Raft| r.install_snapshot(rpc).await)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BerthNode, RaftError<NodeId>>> {
        self.send(async move |r: Raft| r.vote(rpc).await).await
    }
}

struct Sim {
    rng: StdRng,
    net: Arc<Mutex<NetState>>,
    backends: BTreeMap<NodeId, Arc<InMemoryBackend>>,
    /// The liveness flag of each running member's backend.
    alive: BTreeMap<NodeId, Arc<AtomicBool>>,
    stores: BTreeMap<NodeId, Store>,
    /// term -> the leaders seen in it.
    leaders: BTreeMap<u64, BTreeSet<NodeId>>,
    /// applied index -> the state (as JSON) every member must hold at that index.
    states: BTreeMap<u64, String>,
    /// Families whose registration was acknowledged.
    acked: BTreeSet<String>,
    /// Families a linearizable read has answered: every later one answers them too.
    read_seen: BTreeSet<String>,
    /// Client tokens whose task creation was acknowledged, with the task IDs answered.
    tokens: BTreeMap<String, Vec<String>>,
    next: u64,
    /// Whether members read from the leader's lease (odd seeds) or with a round of heartbeats.
    lease_reads: bool,
}

fn addr(id: NodeId) -> String {
    format!("sim-{id}")
}

impl Sim {
    async fn start_member(&mut self, id: NodeId) -> Result<(), String> {
        let bytes = self
            .backends
            .entry(id)
            .or_insert_with(|| Arc::new(InMemoryBackend::new()))
            .clone();
        let alive = Arc::new(AtomicBool::new(true));
        self.alive.insert(id, alive.clone());
        let db = redb::Builder::new()
            .create_with_backend(SharedBackend {
                bytes,
                alive: alive.clone(),
            })
            .map_err(|e| format!("open member {id}: {e}"))?;
        let mut config = StoreConfig::new(id, PathBuf::from(format!("/sim/{id}")), addr(id));
        config.heartbeat_interval = Duration::from_millis(50);
        // A one-millisecond window: openraft draws the timeout from an unseeded RNG, so the
        // seeded network delays are what breaks ties.
        config.election_timeout = (Duration::from_millis(300), Duration::from_millis(301));
        config.snapshot_every = 8;
        config.keep_logs = 2;
        // Its snapshots are small, and a lost reply waits the timeout out.
        config.install_snapshot_timeout = Duration::from_millis(200);
        config.lease_reads = self.lease_reads;
        let net = Net {
            from: id,
            alive,
            state: self.net.clone(),
        };
        let reach = net.clone();
        let store = Store::open_simulated(config, db, net, Arc::new(move |a| reach.reach(a)))
            .await
            .map_err(|e| format!("start member {id}: {}", berth_store::error_chain(&e)))?;
        {
            let mut net = self.net.lock().expect("net lock");
            net.live.insert(id, store.raft().clone());
            net.stores.insert(id, store.clone());
        }
        self.stores.insert(id, store);
        Ok(())
    }

    async fn crash(&mut self, id: NodeId) {
        if let Some(store) = self.stores.remove(&id) {
            {
                let mut net = self.net.lock().expect("net lock");
                net.live.remove(&id);
                net.stores.remove(&id);
            }
            if let Some(alive) = self.alive.remove(&id) {
                alive.store(false, Ordering::SeqCst);
            }
            store.shutdown().await;
        }
    }

    fn leader(&self) -> Option<&Store> {
        self.stores
            .values()
            .find(|s| s.raft().metrics().borrow().state == ServerState::Leader)
    }

    /// The next command. Stamped with the wall clock, as a leader re-stamps forwarded ones (a
    /// client token then expires an hour after it, not at once).
    fn command(&mut self) -> (Command, Option<String>) {
        self.next += 1;
        let n = self.next;
        if self.rng.gen_bool(0.5) || self.acked.is_empty() {
            let family = format!("f{n}");
            let spec = TaskDefinitionSpec {
                meta: Default::default(),
                family: family.clone(),
                cpu: 256,
                memory: 64,
                containers: vec![ContainerDefinition::new("app", "busybox")],
                placement: Default::default(),
                ephemeral_storage: None,
            };
            let cmd = Command::RegisterTaskDefinition {
                namespace: "default".into(),
                spec,
                reuse_identical: false,
                at: berth_store::now_ms(),
            };
            return (cmd, Some(family));
        }
        // A task of an acknowledged family, with a token that is sometimes reused (a retry).
        let family = self
            .acked
            .iter()
            .next()
            .cloned()
            .expect("an acknowledged family");
        let token = if !self.tokens.is_empty() && self.rng.gen_bool(0.3) {
            self.tokens.keys().next().cloned().expect("a token")
        } else {
            format!("tok-{n}")
        };
        let task = Task {
            labels: Default::default(),
            task_id: format!("t{n}"),
            namespace: "default".into(),
            task_definition: format!("{family}:1").parse().expect("valid ref"),
            group: None,
            started_by: None,
            node: None,
            desired_status: DesiredStatus::Running,
            last_status: TaskStatus::Pending,
            cpu: 256,
            memory: 64,
            created_at: 0,
            pull_started_at: None,
            started_at: None,
            stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            containers: vec![],
            ip_address: None,
            events: EventLog::default(),
            placement: Default::default(),
            metrics: None,
            overrides: Vec::new(),
        };
        (
            Command::CreateTasks {
                tasks: vec![task],
                client_token: Some(token),
                at: berth_store::now_ms(),
            },
            None,
        )
    }

    /// Proposes a command: half of them straight to the leader's Raft, half as the servers'
    /// callers do, through any member (forwarded to the leader, retried when the leader
    /// changes or an answer is lost).
    async fn propose(&mut self) -> Result<(), String> {
        let (command, family) = self.command();
        let token = match &command {
            Command::CreateTasks { client_token, .. } => client_token.clone(),
            _ => None,
        };
        let answer = if self.rng.gen_bool(0.5) {
            let Some(leader) = self.leader().cloned() else {
                return Ok(());
            };
            let write = leader.raft().client_write(command);
            match tokio::time::timeout(Duration::from_secs(2), write).await {
                Ok(Ok(resp)) => resp.data,
                _ => return Ok(()), // not acknowledged: allowed to be lost or applied
            }
        } else {
            let members: Vec<Store> = self.stores.values().cloned().collect();
            if members.is_empty() {
                return Ok(());
            }
            let member = &members[self.rng.gen_range(0..members.len())];
            match member.propose(command).await {
                Ok(answer) => answer,
                Err(_) => return Ok(()),
            }
        };
        match (answer, family, token) {
            (CommandResult::TaskDefinition { .. }, Some(f), _) => {
                self.acked.insert(f);
            }
            (CommandResult::Tasks(tasks), _, Some(token)) => {
                let ids: Vec<String> = tasks.into_iter().map(|t| t.task_id).collect();
                if let Some(before) = self.tokens.get(&token) {
                    if *before != ids {
                        return Err(format!("token {token} answered {ids:?}, before {before:?}"));
                    }
                }
                self.tokens.insert(token, ids);
            }
            (other, _, _) => return Err(format!("unexpected answer {other:?}")),
        }
        Ok(())
    }

    /// A linearizable read at the leader (`Store::read`, as the servers' readers call it; a
    /// follower asks the leader over gRPC, which the simulation has not): every registration
    /// acknowledged before it began must be in its answer. A leader that kept its term across a
    /// restart once answered from before entries it had acknowledged (the 2-hour chaos run).
    async fn read(&mut self) -> Result<(), String> {
        let Some(leader) = self.leader().cloned() else {
            return Ok(());
        };
        let acked = self.acked.clone();
        let read = leader.read(|s| {
            s.task_definitions("default")
                .map(|d| d.family.clone())
                .collect::<BTreeSet<String>>()
        });
        // No answer (no quorum, a crash): nothing to check.
        let Ok(families) = read.await else {
            return Ok(());
        };
        let member = leader.raft().metrics().borrow().id;
        if let Some(missing) = acked.iter().find(|f| !families.contains(*f)) {
            return Err(format!(
                "a linearizable read at member {member} missed the acknowledged registration of {missing}"
            ));
        }
        // Nor one that an earlier read answered (not yet acknowledged, but seen).
        if let Some(missing) = self.read_seen.iter().find(|f| !families.contains(*f)) {
            return Err(format!(
                "a linearizable read at member {member} missed {missing}, which an earlier read answered"
            ));
        }
        self.read_seen.extend(families);
        Ok(())
    }

    /// Election safety and state machine safety, after every step.
    fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.net.lock().expect("net lock").violations.first() {
            return Err(format!("malformed append-entries: {v}"));
        }
        for store in self.stores.values() {
            let m = store.raft().metrics().borrow().clone();
            if m.state == ServerState::Leader {
                // A leader seen before may still think it leads (its metrics a step behind).
                let term = self.leaders.entry(m.current_term).or_default();
                if term.insert(m.id) {
                    if let Some(higher) = term.iter().find(|l| **l > m.id) {
                        return Err(format!(
                            "member {} leads term {} after member {higher} led it: a vote went down",
                            m.id, m.current_term
                        ));
                    }
                }
            }
            let applied = *store.watch().borrow();
            let state = store
                .read_stale(|s| serde_json::to_string(&s.objects().collect::<Vec<_>>()))
                .map_err(|e| e.to_string())?;
            match self.states.get(&applied) {
                Some(expected) if *expected != state => {
                    return Err(format!(
                        "member {} differs from another member at applied index {applied}",
                        m.id
                    ));
                }
                Some(_) => {}
                None => {
                    self.states.insert(applied, state);
                }
            }
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<(), String> {
        let down: Vec<NodeId> = (1..=MEMBERS)
            .filter(|id| !self.stores.contains_key(id))
            .collect();
        match self.rng.gen_range(0..100) {
            0..=39 => self.propose().await?,
            40..=49 if down.len() < 2 => {
                let id = self.rng.gen_range(1..=MEMBERS);
                self.crash(id).await;
            }
            50..=64 if !down.is_empty() => {
                let id = down[self.rng.gen_range(0..down.len())];
                self.start_member(id).await?;
            }
            65..=72 => {
                let id = self.rng.gen_range(1..=MEMBERS);
                self.net.lock().expect("net lock").cut.insert(id);
            }
            73..=82 => self.net.lock().expect("net lock").cut.clear(),
            83..=91 => self.read().await?,
            _ => {
                let ms = self.rng.gen_range(10..800);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        self.check()
    }

    /// Heals everything and waits until all members applied the same index.
    async fn converge(&mut self) -> Result<(), String> {
        {
            let mut net = self.net.lock().expect("net lock");
            net.cut.clear();
            net.loss = 0.0;
        }
        for id in 1..=MEMBERS {
            if !self.stores.contains_key(&id) {
                self.start_member(id).await?;
            }
        }
        // Commit a final entry so every member learns the last commit index.
        for _ in 0..100 {
            if let Some(leader) = self.leader().cloned() {
                let spec = TaskDefinitionSpec {
                    meta: Default::default(),
                    family: "final".into(),
                    cpu: 256,
                    memory: 64,
                    containers: vec![ContainerDefinition::new("app", "busybox")],
                    placement: Default::default(),
                    ephemeral_storage: None,
                };
                let write = leader.raft().client_write(Command::RegisterTaskDefinition {
                    namespace: "default".into(),
                    spec,
                    reuse_identical: true,
                    at: 0,
                });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), write).await {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..300 {
            let applied: BTreeSet<u64> =
                self.stores.values().map(|s| *s.watch().borrow()).collect();
            let has_final = self.stores.values().all(|s| {
                s.read_stale(|st| st.task_definitions("default").any(|d| d.family == "final"))
            });
            if applied.len() == 1 && has_final {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.check()?;
        let states: BTreeSet<String> = self
            .stores
            .values()
            .map(|s| {
                s.read_stale(|st| serde_json::to_string(&st.objects().collect::<Vec<_>>()))
                    .unwrap_or_default()
            })
            .collect();
        if states.len() != 1 {
            let applied: Vec<String> = self
                .stores
                .iter()
                .map(|(id, s)| {
                    let m = s.raft().metrics().borrow().clone();
                    format!(
                        "member {id}: applied {} leader {:?} term {} state {:?} running {:?}",
                        *s.watch().borrow(),
                        m.current_leader,
                        m.current_term,
                        m.state,
                        m.running_state
                    )
                })
                .collect();
            return Err(format!(
                "members did not converge to one state: (member, applied index, leader) {applied:?}"
            ));
        }
        let store = self.stores.values().next().expect("a member");
        let (families, tasks): (BTreeSet<String>, BTreeSet<String>) = store.read_stale(|s| {
            (
                s.task_definitions("default")
                    .map(|d| d.family.clone())
                    .collect(),
                s.tasks().map(|t| t.task_id.clone()).collect(),
            )
        });
        if let Some(missing) = self.acked.iter().find(|f| !families.contains(*f)) {
            return Err(format!("acknowledged registration of {missing} was lost"));
        }
        // Each family was registered by one command: a second revision is a write applied twice.
        let twice = store.read_stale(|s| {
            s.task_definitions("default")
                .find(|d| d.revision > 1)
                .map(|d| d.family.clone())
        });
        if let Some(family) = twice {
            return Err(format!("one registration of {family} made two revisions"));
        }
        for ids in self.tokens.values() {
            if let Some(missing) = ids.iter().find(|id| !tasks.contains(*id)) {
                return Err(format!("acknowledged task {missing} was lost"));
            }
        }
        Ok(())
    }
}

async fn simulate(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let net = Arc::new(Mutex::new(NetState {
        rng: StdRng::seed_from_u64(rng.gen()),
        live: BTreeMap::new(),
        stores: BTreeMap::new(),
        cut: BTreeSet::new(),
        loss: rng.gen_range(0.0..0.2),
        violations: Vec::new(),
    }));
    let mut sim = Sim {
        rng,
        net,
        backends: BTreeMap::new(),
        alive: BTreeMap::new(),
        stores: BTreeMap::new(),
        leaders: BTreeMap::new(),
        states: BTreeMap::new(),
        acked: BTreeSet::new(),
        read_seen: BTreeSet::new(),
        tokens: BTreeMap::new(),
        next: 0,
        lease_reads: seed % 2 == 1,
    };
    for id in 1..=MEMBERS {
        sim.start_member(id).await?;
    }
    let members: BTreeMap<NodeId, BerthNode> = (1..=MEMBERS)
        .map(|id| (id, BerthNode { addr: addr(id) }))
        .collect();
    sim.stores[&1]
        .raft()
        .initialize(members)
        .await
        .map_err(|e| format!("initialize: {e}"))?;
    for _ in 0..STEPS {
        sim.step().await?;
    }
    sim.converge().await?;
    for id in 1..=MEMBERS {
        sim.crash(id).await;
    }
    Ok(())
}

fn run_seed(seed: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(simulate(seed))
}

#[test]
fn replicated_store_survives_crashes_partitions_and_message_loss() {
    berth_tests::sim::run_seeds(
        500,
        "BERTH_SIM_SEED={seed} cargo test -p berth-store --test sim",
        run_seed,
    );
}
