//! The Raft transport over gRPC: a client per peer, and the `berth.v1.Raft` service that hands
//! incoming RPCs to the local Raft. Payloads are openraft's own types as JSON.

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use berth_proto::v1::raft_client::RaftClient;
use berth_proto::v1::{raft_server, RaftPayload};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::{BerthNode, CommandResult, NodeId, Store, StoreError, TypeConfig, Write};

/// One lazily connected channel per peer address. A real member keeps two sets: one for Raft's
/// replication (made on Raft's own runtime) and one for forwarded writes and read indexes.
/// With a dialer (every real server) the channels are mutual TLS with this server's
/// certificate; without, plain HTTP/2 (only the store's own tests, which never listen); in the
/// simulation, forwarded writes go to the peer's [`Store`] in the same process.
#[derive(Clone, Default)]
pub struct Peers {
    clients: Arc<Mutex<HashMap<String, RaftClient<Channel>>>>,
    dialer: Option<berth_tls::net::Dialer>,
    simulated: Option<SimulatedPeers>,
}

/// How a simulation reaches the member at an address: its [`Store`] and whether the answer
/// to this call is lost on the way back (the write executed, the caller hears a transport
/// failure), or `None` when it is down or cut off.
pub type SimulatedPeers = Arc<dyn Fn(&str) -> Option<(Store, bool)> + Send + Sync>;

impl Peers {
    pub(crate) fn new(dialer: Option<berth_tls::net::Dialer>) -> Self {
        Self {
            clients: Arc::default(),
            // Keep-alive pings while a call is open: a forwarded `cluster add` may wait long
            // for its new server, and a leader that vanished without closing the connection
            // (powered off, cut off) would otherwise hold it until its deadline.
            dialer: dialer.map(|d| {
                d.with_connect_timeout(Duration::from_secs(1))
                    .with_keep_alive(Duration::from_secs(5))
            }),
            simulated: None,
        }
    }

    pub(crate) fn simulated(reach: SimulatedPeers) -> Self {
        Self {
            simulated: Some(reach),
            ..Self::default()
        }
    }

    fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut peers = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let channel = match &self.dialer {
            Some(dialer) => dialer.lazy(addr)?,
            None => Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(1))
                .connect_lazy(),
        };
        let client = RaftClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        peers.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Hands a write to the leader at `addr`. Transport failures answer "not the leader", so
    /// the caller looks for the leader again.
    pub(crate) async fn forward(
        &self,
        addr: &str,
        write: &Write,
        deadline: Instant,
    ) -> Result<CommandResult, StoreError> {
        if let Some(reach) = &self.simulated {
            return simulated_forward(reach, addr, write, deadline).await;
        }
        let reply: Result<CommandResult, crate::RemoteError> =
            self.call(addr, write, deadline, true).await?;
        reply.map_err(StoreError::from)
    }

    /// Asks the leader at `addr` for its read index.
    pub(crate) async fn read_index(
        &self,
        addr: &str,
        deadline: Instant,
    ) -> Result<u64, StoreError> {
        let reply: Result<u64, crate::RemoteError> = self.call(addr, &(), deadline, false).await?;
        reply.map_err(StoreError::from)
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        req: &Req,
        deadline: Instant,
        forward: bool,
    ) -> Result<Resp, StoreError> {
        let not_leader = || StoreError::NotLeader {
            leader_id: None,
            leader_addr: Some(addr.to_owned()),
        };
        let mut client = self.client(addr).map_err(|_| not_leader())?;
        let json = serde_json::to_vec(req).map_err(|source| StoreError::Codec {
            what: "encode a request to the leader",
            source,
        })?;
        let mut request = tonic::Request::new(RaftPayload { json, data: vec![] });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let reply = if forward {
            client.forward(request).await
        } else {
            client.read_index(request).await
        };
        let reply = reply.map_err(|status| {
            tracing::debug!(%addr, "call leader: {status}");
            not_leader()
        })?;
        serde_json::from_slice(&reply.into_inner().json).map_err(|source| StoreError::Codec {
            what: "decode the leader's reply",
            source,
        })
    }
}

/// A forwarded write in the simulation, failing as the gRPC call does: a member down, cut off
/// or stopping, or an answer lost, is "not the leader" to the caller, who looks again.
async fn simulated_forward(
    reach: &SimulatedPeers,
    addr: &str,
    write: &Write,
    deadline: Instant,
) -> Result<CommandResult, StoreError> {
    let not_leader = || StoreError::NotLeader {
        leader_id: None,
        leader_addr: Some(addr.to_owned()),
    };
    let Some((peer, lost)) = reach(addr) else {
        return Err(not_leader());
    };
    let result = tokio::time::timeout_at(deadline, peer.accept_forwarded(write.clone()))
        .await
        .map_err(|_| not_leader())?;
    match result {
        _ if lost => Err(not_leader()),
        Err(StoreError::Stopped(_) | StoreError::Fatal(_)) => Err(not_leader()),
        other => other,
    }
}

/// When each peer last took a part of the log or a chunk of a snapshot from this member: how
/// `cluster add` tells a new server that is catching up slowly (a large snapshot on its way)
/// from one that is not catching up at all.
#[derive(Clone, Default)]
pub(crate) struct Heard(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Heard {
    fn took(&self, peer: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    pub(crate) fn last(&self, peer: NodeId) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&peer)
            .copied()
    }
}

/// Opens connections to peers on demand.
#[derive(Clone)]
pub struct Network {
    peers: Peers,
    backoff: Duration,
    heard: Heard,
}

impl Network {
    /// `backoff`: how long Raft sends a peer nothing after a call found it unreachable (see
    /// [`Connection::backoff`]); `heard` records what peers took.
    pub(crate) fn new(peers: Peers, backoff: Duration, heard: Heard) -> Self {
        Self {
            peers,
            backoff,
            heard,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BerthNode) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            backoff: self.backoff,
            budget: AppendBudget::default(),
            heard: self.heard.clone(),
            chunks_beside: true,
        }
    }
}

/// A client to one peer.
pub struct Connection {
    target: NodeId,
    addr: String,
    peers: Peers,
    backoff: Duration,
    budget: AppendBudget,
    heard: Heard,
    /// Whether the peer takes a snapshot's chunks beside the request (`InstallSnapshotChunk`);
    /// cleared for good once it answers that it does not.
    chunks_beside: bool,
}

enum Rpc {
    Append,
    Vote,
    /// A snapshot's chunk inside the JSON request (to servers of older versions).
    Snapshot,
    /// A snapshot's chunk as raw bytes beside it.
    SnapshotChunk,
}

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BerthNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let json = encode(req).map_err(RPCError::Network)?;
        self.send(rpc, RaftPayload { json, data: vec![] }, option)
            .await
    }

    async fn send<Resp, E>(
        &mut self,
        rpc: Rpc,
        payload: RaftPayload,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BerthNode, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
            Rpc::SnapshotChunk => client.install_snapshot_chunk(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status)
                if matches!(rpc, Rpc::SnapshotChunk)
                    && status.code() == tonic::Code::Unimplemented =>
            {
                // A server of an older version: openraft sends the chunk again (a network
                // error), inside the request this time.
                self.chunks_beside = false;
                return Err(RPCError::Network(NetworkError::new(&status)));
            }
            Err(status) => return Err(failed(&status)),
        };
        let result: Result<Resp, E> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A request as openraft's JSON; a failure to encode is a network error to Raft.
fn encode<T: Serialize>(request: &T) -> Result<Vec<u8>, NetworkError> {
    serde_json::to_vec(request).map_err(|e| NetworkError::new(&e))
}

/// Tries of an unreachable peer one heartbeat apart before they slow down ([`Connection::backoff`]):
/// two seconds with the default heartbeat, longer than a restarted member takes to come back.
const FAST_RETRIES: usize = 20;
/// The shortest wait between tries of an unreachable peer, whatever the heartbeat.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The wait between tries once the fast ones are spent (openraft's own).
const SLOW_BACKOFF: Duration = Duration::from_millis(500);

/// What a failed call tells Raft. A call that ran out of time is a `Network` error, and the
/// next one goes at once; anything else (no connection, a refusal, an answer it cannot read)
/// is `Unreachable`, after which openraft sends that peer nothing for its backoff
/// ([`Connection::backoff`]: a heartbeat interval at first, then 500 ms) rather than again and
/// again as fast as it fails. An AppendEntries (a heartbeat too) times out after the heartbeat interval, and on a
/// loaded machine a follower often answers later than that; when such a time-out was taken for
/// unreachable (before it was told apart), the follower got no entries for the backoff (with
/// openraft's 500 ms, in the soak, one of the two was in it two thirds of the time, both a
/// fifth of it: no commit then).
fn failed<E: std::error::Error>(status: &tonic::Status) -> RPCError<NodeId, BerthNode, E> {
    match status.code() {
        // tonic's own deadline (the request's timeout) is `Cancelled`; the peer's is
        // `DeadlineExceeded`.
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
            RPCError::Network(NetworkError::new(status))
        }
        _ => RPCError::Unreachable(Unreachable::new(status)),
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BerthNode, RaftError<NodeId>>> {
        let json = encode(&rpc).map_err(RPCError::Network)?;
        let entries = rpc.entries.len();
        if let Some(fit) = self.budget.fewer_entries(entries, json.len()) {
            return Err(PayloadTooLarge::new_entries_hint(fit).into());
        }
        self.budget.sending(entries, json.len());
        let sent = Instant::now();
        let reply = self
            .send(Rpc::Append, RaftPayload { json, data: vec![] }, &option)
            .await;
        let answered = match reply {
            Ok(_) => Answered::InTime,
            // What `failed` makes of a call out of time.
            Err(RPCError::Network(_)) => Answered::TimedOut,
            Err(_) => Answered::Failed,
        };
        self.budget
            .answered(answered, sent.elapsed(), option.hard_ttl());
        if entries > 0 && matches!(reply, Ok(AppendEntriesResponse::Success)) {
            self.heard.took(self.target);
        }
        reply
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BerthNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let reply = if self.chunks_beside {
            let data = std::mem::take(&mut rpc.data);
            let json = encode(&rpc).map_err(RPCError::Network)?;
            self.send(Rpc::SnapshotChunk, RaftPayload { json, data }, &option)
                .await
        } else {
            self.call(Rpc::Snapshot, &rpc, &option).await
        };
        if reply.is_ok() {
            self.heard.took(self.target);
        }
        reply
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BerthNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }

    /// One heartbeat interval (at least [`MIN_BACKOFF`]) for the first [`FAST_RETRIES`]
    /// tries, then openraft's 500 ms. With only the 500 ms, a member that was down for a
    /// moment and came back heard nothing from the leader until the backoff ran out: its
    /// election timer then ran hundreds of milliseconds behind the other follower's, and after
    /// the next leader loss it stood first with the shorter log and split the term (failover
    /// trials of 2.8–4.7 s). A member down for longer is tried twice a second again, as before:
    /// openraft logs three lines for every failed try.
    fn backoff(&self) -> Backoff {
        let fast = std::iter::repeat_n(self.backoff.max(MIN_BACKOFF), FAST_RETRIES);
        Backoff::new(fast.chain(std::iter::repeat(SLOW_BACKOFF)))
    }
}

/// The most bytes an AppendEntries with more than one entry may carry. openraft 0.9 gives each
/// AppendEntries one heartbeat interval (100 ms) to be answered, and the answer comes once the
/// follower has decoded, encoded and fsynced the entries: sixteen batches of a thousand tasks
/// (megabytes of JSON) took longer than that on a busy two-core machine, and a request that
/// times out goes again with the same entries, costing the same again, while the leader hears
/// no acknowledgement from that follower (after 1.6 s without a quorum it stops taking
/// writes). A larger request is refused here, before it is sent, with a hint of how many
/// entries fit: openraft sends that many, at once, for its next ten requests.
const MAX_APPEND_BYTES: usize = 1 << 20;
/// The least the budget shrinks to ([`AppendBudget`]).
const MIN_APPEND_BYTES: usize = 32 << 10;

/// How many bytes of entries one AppendEntries to a peer carries: [`MAX_APPEND_BYTES`] at most,
/// halved each time a request near the budget with more than one entry was not answered within
/// its time (openraft drops it at one heartbeat interval), and doubled after a request near the
/// budget was answered within half that time. A follower slower than the fixed budget assumed
/// (a learner catching up on large entries while its machine is busy, a debug build) was
/// otherwise sent the same megabyte again and again, each try timing out, and never caught up:
/// a server added behind 60 revisions of 56 KiB spent 15 s so, under load more than the 36 s
/// `cluster add` then allowed. A small request that times out says the follower is busy, not
/// that requests are too large, and leaves the budget alone.
#[derive(Debug)]
struct AppendBudget {
    bytes: usize,
    /// The request sent and not yet answered, as (entries, bytes): if the next call finds it
    /// still set, openraft dropped that one at its time-out.
    in_flight: Option<(usize, usize)>,
}

impl Default for AppendBudget {
    fn default() -> Self {
        Self {
            bytes: MAX_APPEND_BYTES,
            in_flight: None,
        }
    }
}

/// How a request [`AppendBudget`] follows ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    InTime,
    TimedOut,
    /// Refused, unreachable, or an answer it could not read: nothing about its size.
    Failed,
}

impl AppendBudget {
    /// How many entries to send instead of `entries` that encode to `bytes`, or `None` to send
    /// them all: one entry always goes, however large.
    fn fewer_entries(&mut self, entries: usize, bytes: usize) -> Option<u64> {
        if let Some(sent) = self.in_flight.take() {
            self.timed_out(sent);
        }
        if entries <= 1 || bytes <= self.bytes {
            return None;
        }
        Some((entries * self.bytes / bytes).max(1) as u64)
    }

    /// A request of `bytes` with `entries` entries is on its way.
    fn sending(&mut self, entries: usize, bytes: usize) {
        self.in_flight = (entries > 0).then_some((entries, bytes));
    }

    /// The request sent last ended so after `took` of `ttl`.
    fn answered(&mut self, answered: Answered, took: Duration, ttl: Duration) {
        let Some(sent) = self.in_flight.take() else {
            return;
        };
        match answered {
            Answered::TimedOut => self.timed_out(sent),
            Answered::InTime if took < ttl / 2 && self.near(sent.1) => {
                self.bytes = (self.bytes * 2).min(MAX_APPEND_BYTES);
            }
            Answered::InTime | Answered::Failed => {}
        }
    }

    fn timed_out(&mut self, (entries, bytes): (usize, usize)) {
        // A lone entry goes whatever the budget; a small request says nothing about size.
        if entries > 1 && self.near(bytes) {
            self.bytes = (self.bytes / 2).max(MIN_APPEND_BYTES);
        }
    }

    /// Whether a request of `bytes` came near the budget (at least half of it).
    fn near(&self, bytes: usize) -> bool {
        bytes >= self.bytes / 2
    }
}

/// The server side of the transport.
pub struct RaftService {
    store: Store,
}

impl RaftService {
    pub fn new(store: Store) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(Self { store })
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

fn decode<T: DeserializeOwned>(req: tonic::Request<RaftPayload>) -> Result<T, tonic::Status> {
    decode_json(&req.into_inner().json)
}

fn decode_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, tonic::Status> {
    serde_json::from_slice(json)
        .map_err(|e| tonic::Status::invalid_argument(format!("decode raft payload: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    serde_json::to_vec(v)
        .map(|json| tonic::Response::new(RaftPayload { json, data: vec![] }))
        .map_err(|e| tonic::Status::internal(format!("encode raft payload: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        reply(&self.store.raft().append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode(req)?;
        reply(&self.store.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        reply(&self.store.raft().install_snapshot(rpc).await)
    }

    async fn install_snapshot_chunk(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let payload = req.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> = decode_json(&payload.json)?;
        rpc.data = payload.data;
        reply(&self.store.raft().install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let write: Write = decode(req)?;
        if let Write::Command(command) = &write {
            if command.leader_only() {
                return Err(tonic::Status::permission_denied(format!(
                    "{} may only be proposed by the leader itself, never forwarded",
                    command.subject()
                )));
            }
        }
        let result = self.store.accept_forwarded(write).await;
        reply(&result.map_err(crate::RemoteError::from))
    }

    async fn read_index(
        &self,
        _req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let deadline = Instant::now() + self.store.config().write_timeout;
        let result = self.store.read_index_local(deadline).await;
        reply(&result.map_err(crate::RemoteError::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_ran_out_of_time_is_retried_at_once_not_backed_off() {
        // A call that ran out of time (tonic's own deadline) is retried at once.
        let timeout = tonic::Status::cancelled("Timeout expired");
        assert!(matches!(
            failed::<RaftError<NodeId>>(&timeout),
            RPCError::Network(_)
        ));
        let deadline = tonic::Status::deadline_exceeded("deadline exceeded");
        assert!(matches!(
            failed::<RaftError<NodeId>>(&deadline),
            RPCError::Network(_)
        ));
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        assert!(matches!(
            failed::<RaftError<NodeId>>(&refused),
            RPCError::Unreachable(_)
        ));
        // A refusal that would come back as fast: backed off too.
        let denied = tonic::Status::permission_denied("not a server certificate");
        assert!(matches!(
            failed::<RaftError<NodeId>>(&denied),
            RPCError::Unreachable(_)
        ));
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_tried_each_heartbeat_at_first_then_twice_a_second() {
        let heartbeat = Duration::from_millis(100);
        let mut network = Network::new(Peers::new(None), heartbeat, Heard::default());
        let node = BerthNode::new("127.0.0.1:1");
        let connection = network.new_client(2, &node).await;
        let waits: Vec<Duration> = connection.backoff().take(FAST_RETRIES + 2).collect();
        assert_eq!(
            waits[..FAST_RETRIES],
            vec![heartbeat; FAST_RETRIES],
            "not 500 ms at first"
        );
        assert_eq!(
            waits[FAST_RETRIES..],
            [SLOW_BACKOFF; 2],
            "then as openraft does"
        );
        // No busy loop whatever the heartbeat.
        let mut network = Network::new(Peers::new(None), Duration::ZERO, Heard::default());
        let connection = network.new_client(2, &node).await;
        assert_eq!(connection.backoff().next(), Some(MIN_BACKOFF));
    }

    #[test]
    fn an_append_over_the_byte_budget_asks_for_as_many_entries_as_fit() {
        let mut budget = AppendBudget::default();
        let mut fewer = |entries, bytes| budget.fewer_entries(entries, bytes);
        assert_eq!(fewer(16, MAX_APPEND_BYTES), None, "at the budget");
        assert_eq!(fewer(16, 4 * MAX_APPEND_BYTES), Some(4));
        assert_eq!(fewer(16, 100 * MAX_APPEND_BYTES), Some(1));
        assert_eq!(
            fewer(1, 100 * MAX_APPEND_BYTES),
            None,
            "one entry goes however large"
        );
        assert_eq!(fewer(0, 0), None, "a heartbeat");
    }

    #[test]
    fn the_budget_halves_on_time_outs_near_it_and_grows_back_on_quick_answers_near_it() {
        let ttl = Duration::from_millis(100);
        let mut budget = AppendBudget::default();
        // Dropped by openraft at its time-out: the next call finds it in flight.
        budget.sending(16, MAX_APPEND_BYTES);
        assert_eq!(budget.fewer_entries(16, MAX_APPEND_BYTES), Some(8));
        assert_eq!(budget.bytes, MAX_APPEND_BYTES / 2);
        // Timed out by the transport's own deadline.
        budget.sending(8, MAX_APPEND_BYTES / 2);
        budget.answered(Answered::TimedOut, ttl, ttl);
        assert_eq!(budget.bytes, MAX_APPEND_BYTES / 4);
        for _ in 0..20 {
            budget.sending(2, budget.bytes);
            budget.answered(Answered::TimedOut, ttl, ttl);
        }
        assert_eq!(budget.bytes, MIN_APPEND_BYTES, "never below the floor");
        assert_eq!(
            budget.fewer_entries(4, 100 * MAX_APPEND_BYTES),
            Some(1),
            "one entry still goes"
        );
        // Quick answers to lone entries near the budget grow it.
        budget.sending(1, MIN_APPEND_BYTES * 3 / 4);
        budget.answered(Answered::InTime, ttl / 10, ttl);
        assert_eq!(budget.bytes, 2 * MIN_APPEND_BYTES);
        // A lone entry or a small request timing out, a heartbeat, a failure however quick, a
        // slow answer, or a quick answer to a small request: none changes it.
        let unchanged = budget.bytes;
        budget.sending(1, MAX_APPEND_BYTES);
        budget.answered(Answered::TimedOut, ttl, ttl);
        budget.sending(16, unchanged / 4);
        assert_eq!(budget.fewer_entries(0, 0), None);
        budget.sending(0, 100);
        budget.answered(Answered::InTime, Duration::ZERO, ttl);
        budget.sending(4, unchanged);
        budget.answered(Answered::Failed, Duration::ZERO, ttl);
        budget.sending(4, unchanged);
        budget.answered(Answered::InTime, ttl * 3 / 4, ttl);
        budget.sending(4, unchanged / 4);
        budget.answered(Answered::InTime, Duration::ZERO, ttl);
        assert_eq!(budget.bytes, unchanged);
        // Quick answers to full requests double it, up to the most.
        for _ in 0..20 {
            budget.sending(4, budget.bytes);
            budget.answered(Answered::InTime, ttl / 10, ttl);
        }
        assert_eq!(budget.bytes, MAX_APPEND_BYTES);
    }

    /// A server of an older version: it has no `InstallSnapshotChunk` (tonic answers such a
    /// call `Unimplemented`), and takes a chunk inside the JSON of `InstallSnapshot`.
    struct OlderServer {
        got: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    #[tonic::async_trait]
    impl raft_server::Raft for OlderServer {
        async fn append_entries(
            &self,
            _: tonic::Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
            Err(tonic::Status::unavailable("not in this test"))
        }

        async fn vote(
            &self,
            _: tonic::Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
            Err(tonic::Status::unavailable("not in this test"))
        }

        async fn install_snapshot(
            &self,
            req: tonic::Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
            let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
            self.got
                .lock()
                .expect("not poisoned")
                .push(rpc.data.clone());
            let answer: Result<_, RaftError<NodeId, InstallSnapshotError>> =
                Ok(InstallSnapshotResponse { vote: rpc.vote });
            reply(&answer)
        }

        async fn install_snapshot_chunk(
            &self,
            _: tonic::Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
            Err(tonic::Status::unimplemented("unknown method"))
        }

        async fn forward(
            &self,
            _: tonic::Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
            Err(tonic::Status::unavailable("not in this test"))
        }

        async fn read_index(
            &self,
            _: tonic::Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
            Err(tonic::Status::unavailable("not in this test"))
        }
    }

    #[tokio::test]
    async fn a_server_without_chunks_beside_the_request_gets_them_inside_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let server = raft_server::RaftServer::new(OlderServer { got: got.clone() });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let heard = Heard::default();
        let mut network = Network::new(Peers::new(None), Duration::from_millis(100), heard.clone());
        let mut connection = network.new_client(2, &BerthNode::new(addr)).await;
        let chunk = || InstallSnapshotRequest {
            vote: openraft::Vote::new_committed(1, 1),
            meta: openraft::SnapshotMeta::default(),
            offset: 0,
            data: b"a chunk".to_vec(),
            done: true,
        };
        let option = RPCOption::new(Duration::from_secs(10));
        // Refused as unknown: a network error, so that openraft sends the chunk again.
        let first = connection.install_snapshot(chunk(), option.clone()).await;
        assert!(matches!(first, Err(RPCError::Network(_))), "{first:?}");
        assert!(got.lock().expect("not poisoned").is_empty());
        assert!(heard.last(2).is_none(), "nothing was taken yet");
        for _ in 0..2 {
            connection
                .install_snapshot(chunk(), option.clone())
                .await
                .expect("the chunk inside the request");
        }
        assert_eq!(
            *got.lock().expect("not poisoned"),
            vec![b"a chunk".to_vec(); 2]
        );
        assert!(heard.last(2).is_some(), "taken chunks count as progress");
    }
}
