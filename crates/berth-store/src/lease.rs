//! Leader-lease reads: a leader may answer a linearizable read from its committed index,
//! without a round of heartbeats, while a majority of every voter configuration accepted an
//! AppendEntries of its term sent less than a lease ago.
//!
//! Why that is safe with openraft 0.9: a follower that accepted an AppendEntries (a heartbeat
//! too) refuses every vote for `election_timeout_max` after it (openraft's leader lease), and
//! campaigns itself only after that plus an election timeout; so no other leader can be
//! elected by a quorum that overlaps the one that acknowledged, before the oldest of those
//! acknowledged requests was sent plus `election_timeout_max`, as the followers' clocks run.
//! The leader itself is the overlap otherwise, and while its core says it leads it has granted
//! no vote of a later term. The lease is the monotonic clock, a quarter short of that:
//! SIGSTOP or a wall-clock jump move nothing (a suspended host or VM, whose monotonic clock
//! stops, does); what it assumes is that the servers' clocks run at about the same rate and
//! that every server has the same election timeouts. `Raft::trigger().elect()` skips the lease
//! on the member that stands, and berth's prompt elections (`elect`) check the lease and stand
//! in two steps of Raft's core: with lease reads on, the store does not run them.
//! A read whose check fails (no leader, a lease run out, a membership change in flight) takes
//! the heartbeat round as before.
//!
//! The check runs outside Raft's core first ([`Facts`]: what the storage saw the core save,
//! append and apply), so that a read does not wait for the core's turn; inside it
//! (`with_raft_state`) when that fails, the first moments of a term for instance. The same
//! check without a lease is how a lone voter answers reads: a majority of it is itself.
//!
//! The acknowledgements are taken from the Raft network itself, [`Acking`] wrapping whatever
//! transport the member has (gRPC, or the simulation's), so the simulation checks lease reads
//! like the real servers make them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{LogId, Membership, RaftNetwork, RaftNetworkFactory, Vote};
use tokio::time::Instant;

use crate::{BerthNode, NodeId, TypeConfig};

/// For each peer, the latest AppendEntries of this member's leadership it accepted: the
/// leader's term then, and when the request was sent (taken before sending: never late).
#[derive(Debug, Default)]
pub(crate) struct Acks(Mutex<HashMap<NodeId, (u64, Instant)>>);

impl Acks {
    fn acked(&self, peer: NodeId, term: u64, sent: Instant) {
        let mut acks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = acks.entry(peer).or_insert((term, sent));
        if (term, sent) > *latest {
            *latest = (term, sent);
        }
    }

    /// Whether, at `now`, a majority of each of `configs` (voter sets; two while the membership
    /// changes) counts `me` or accepted an AppendEntries of term `term` sent less than `lease`
    /// ago.
    pub(crate) fn quorum_within(
        &self,
        term: u64,
        configs: &[Vec<NodeId>],
        me: NodeId,
        now: Instant,
        lease: Duration,
    ) -> bool {
        let acks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        !configs.is_empty()
            && configs.iter().all(|voters| {
                let fresh = voters
                    .iter()
                    .filter(|v| {
                        **v == me
                            || acks
                                .get(*v)
                                .is_some_and(|&(t, sent)| t == term && now < sent + lease)
                    })
                    .count();
                fresh * 2 > voters.len()
            })
    }
}

/// What a lease read checks without a turn of Raft's core, kept by the storage as the core
/// hands it over. Under a burst the core waits for its own appends (fsync included) between
/// messages, and a read that asked it waited 10-90 ms for its turn; these are as fresh:
///
/// - the vote as last saved: a member grants a vote of a later term, and a leader takes one it
///   learned of, only once it is saved, so a saved vote that is this member's, committed, says
///   it has voted for no one else since;
/// - the index of the newest membership entry appended (the last log index at start, not
///   knowing what the log holds): while it is beyond what the state machine applied, a change
///   is in flight and the read takes the core's path;
/// - the voters of the membership the state machine applied (each configuration's IDs),
///   changed before the applied index that makes them readable moves;
/// - the highest commit index this member sent a follower or learner (in an AppendEntries,
///   noted before it goes): what another member may have applied, and read since.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    vote: Mutex<Option<Vote<NodeId>>>,
    membership_appended: AtomicU64,
    voters: Mutex<Vec<Vec<NodeId>>>,
    commit_sent: AtomicU64,
}

impl Facts {
    pub(crate) fn saved_vote(&self, vote: Vote<NodeId>) {
        *self.vote.lock().unwrap_or_else(PoisonError::into_inner) = Some(vote);
    }

    pub(crate) fn vote(&self) -> Option<Vote<NodeId>> {
        *self.vote.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A membership entry at `index` was appended (or, at start, may be in the log up to it).
    pub(crate) fn appended_membership(&self, index: u64) {
        self.membership_appended.fetch_max(index, Ordering::AcqRel);
    }

    /// An AppendEntries telling a peer that `index` is committed is about to go.
    pub(crate) fn sending_commit(&self, index: u64) {
        self.commit_sent.fetch_max(index, Ordering::AcqRel);
    }

    pub(crate) fn membership_appended(&self) -> u64 {
        self.membership_appended.load(Ordering::Acquire)
    }

    pub(crate) fn applied_membership(&self, membership: &Membership<NodeId, BerthNode>) {
        let voters = membership
            .get_joint_config()
            .iter()
            .map(|config| config.iter().copied().collect())
            .collect();
        *self.voters.lock().unwrap_or_else(PoisonError::into_inner) = voters;
    }

    /// The read index member `me` may answer without a turn of Raft's core, or `None` (then
    /// the core's path): where its saved vote is its own and committed (it leads its term and
    /// has voted for no one since), an entry of that term is applied (`last_applied`, from
    /// Raft's metrics, which may lag the core: then false, never wrongly true; from then on
    /// what the leaders before it acknowledged is applied), no membership change is in flight,
    /// and a majority of each voter configuration is `me` with the followers that acknowledged
    /// it within `lease` (a zero lease: `me` alone, a lone voter). The index, read last, is
    /// `readable()` or the highest commit index sent to another member, whichever is later.
    /// A write is acknowledged only once the leader applied it (its client's answer comes
    /// from the state machine), and a reader here never sees a state ahead of `readable`;
    /// another member applies only what it was told is committed, so a read there saw at most
    /// the commit index sent. What is committed but neither applied here nor sent was seen
    /// by no one: a read need not wait for it (on a lone voter, for an apply in progress).
    pub(crate) fn read_index(
        &self,
        me: NodeId,
        last_applied: Option<LogId<NodeId>>,
        readable: impl Fn() -> u64,
        acks: &Acks,
        now: Instant,
        lease: Duration,
    ) -> Option<u64> {
        let vote = self.vote()?;
        let leader = *vote.leader_id();
        if !vote.is_committed() || leader.voted_for() != Some(me) {
            return None;
        }
        if last_applied.map(|a| a.leader_id) != Some(leader) {
            return None;
        }
        if self.membership_appended() > readable() {
            return None;
        }
        let voters = self.voters.lock().unwrap_or_else(PoisonError::into_inner);
        let held = acks.quorum_within(leader.term, &voters, me, now, lease);
        drop(voters);
        held.then(|| readable().max(self.commit_sent.load(Ordering::Acquire)))
    }
}

/// A Raft network factory that notes in [`Acks`] every AppendEntries a peer accepted.
pub(crate) struct Acking<N> {
    inner: N,
    acks: Arc<Acks>,
    facts: Arc<Facts>,
}

impl<N> Acking<N> {
    pub(crate) fn new(inner: N, acks: Arc<Acks>, facts: Arc<Facts>) -> Self {
        Self { inner, acks, facts }
    }
}

impl<N: RaftNetworkFactory<TypeConfig>> RaftNetworkFactory<TypeConfig> for Acking<N> {
    type Network = AckingConnection<N::Network>;

    async fn new_client(&mut self, target: NodeId, node: &BerthNode) -> Self::Network {
        AckingConnection {
            inner: self.inner.new_client(target, node).await,
            target,
            acks: self.acks.clone(),
            facts: self.facts.clone(),
        }
    }
}

/// One peer's connection of an [`Acking`] network.
pub(crate) struct AckingConnection<C> {
    inner: C,
    target: NodeId,
    acks: Arc<Acks>,
    facts: Arc<Facts>,
}

impl<C: RaftNetwork<TypeConfig>> RaftNetwork<TypeConfig> for AckingConnection<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BerthNode, RaftError<NodeId>>> {
        // Only an established leader's requests (a committed vote) renew a follower's lease.
        let (term, committed) = (rpc.vote.leader_id().term, rpc.vote.is_committed());
        if let Some(commit) = rpc.leader_commit {
            self.facts.sending_commit(commit.index);
        }
        let sent = Instant::now();
        let reply = self.inner.append_entries(rpc, option).await;
        // A conflict too: the follower took the vote (and its lease) before it looked at its
        // log. A higher vote is a refusal.
        if committed
            && matches!(
                reply,
                Ok(AppendEntriesResponse::Success
                    | AppendEntriesResponse::PartialSuccess(_)
                    | AppendEntriesResponse::Conflict)
            )
        {
            self.acks.acked(self.target, term, sent);
        }
        reply
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BerthNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BerthNode, RaftError<NodeId>>> {
        self.inner.vote(rpc, option).await
    }

    fn backoff(&self) -> Backoff {
        self.inner.backoff()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(600);

    #[tokio::test(start_paused = true)]
    async fn a_majority_of_fresh_acknowledgements_of_this_term_holds_the_lease() {
        let acks = Acks::default();
        let voters = [vec![1, 2, 3]];
        let start = Instant::now();
        // Alone, the leader is one of three.
        assert!(!acks.quorum_within(5, &voters, 1, start, LEASE));
        acks.acked(2, 5, start);
        assert!(acks.quorum_within(5, &voters, 1, start, LEASE));
        // Not in another term, and not once the lease ran out from the send.
        assert!(!acks.quorum_within(6, &voters, 1, start, LEASE));
        assert!(!acks.quorum_within(5, &voters, 1, start + LEASE, LEASE));
        // An older acknowledgement never replaces a newer one.
        acks.acked(3, 5, start + Duration::from_millis(500));
        acks.acked(3, 5, start);
        assert!(acks.quorum_within(5, &voters, 1, start + LEASE, LEASE));
        // Acknowledgements from outside the configuration do not count.
        assert!(!acks.quorum_within(5, &[vec![1, 4, 5]], 1, start, LEASE));
    }

    fn facts(vote: Vote<NodeId>, voters: Vec<Vec<NodeId>>) -> Facts {
        let facts = Facts::default();
        facts.saved_vote(vote);
        *facts.voters.lock().unwrap() = voters;
        facts
    }

    fn applied(term: u64, node: NodeId, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(
            openraft::CommittedLeaderId::new(term, node),
            index,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_voter_reads_what_it_applied_without_its_core() {
        let (acks, now) = (Acks::default(), Instant::now());
        let read = |f: &Facts, last| f.read_index(1, last, || 40, &acks, now, Duration::ZERO);
        let lone = facts(Vote::new_committed(3, 1), vec![vec![1]]);
        assert_eq!(read(&lone, applied(3, 1, 40)), Some(40));
        // Not before an entry of its own term is applied (its metrics may lag), and not while
        // a membership entry waits to be applied.
        assert_eq!(read(&lone, applied(2, 2, 40)), None);
        assert_eq!(read(&lone, None), None);
        lone.appended_membership(41);
        assert_eq!(read(&lone, applied(3, 1, 40)), None);
        // A vote not committed (standing), or for another member, or none saved.
        let standing = facts(Vote::new(3, 1), vec![vec![1]]);
        assert_eq!(read(&standing, applied(3, 1, 40)), None);
        let voted = facts(Vote::new_committed(4, 2), vec![vec![1]]);
        assert_eq!(read(&voted, applied(4, 2, 40)), None);
        assert_eq!(read(&Facts::default(), applied(3, 1, 40)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn with_followers_it_takes_their_acknowledgements_within_the_lease() {
        let (acks, now) = (Acks::default(), Instant::now());
        let three = facts(Vote::new_committed(5, 1), vec![vec![1, 2, 3]]);
        let read = |lease| three.read_index(1, applied(5, 1, 9), || 9, &acks, now, lease);
        assert_eq!(read(LEASE), None);
        acks.acked(2, 5, now);
        assert_eq!(read(LEASE), Some(9));
        // Without a lease (`--lease-reads` off) a leader with followers asks its core.
        assert_eq!(read(Duration::ZERO), None);
        // A follower told that 12 is committed may have applied it, and been read since: a
        // read here waits for it too.
        three.sending_commit(12);
        assert_eq!(read(LEASE), Some(12));
        three.sending_commit(10);
        assert_eq!(read(LEASE), Some(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_membership_change_needs_a_majority_of_both_configurations() {
        let acks = Acks::default();
        let now = Instant::now();
        acks.acked(2, 3, now);
        let joint = [vec![1, 2, 3], vec![1, 4, 5]];
        assert!(!acks.quorum_within(3, &joint, 1, now, LEASE));
        acks.acked(4, 3, now);
        assert!(acks.quorum_within(3, &joint, 1, now, LEASE));
        assert!(!acks.quorum_within(3, &[], 1, now, LEASE));
    }
}
