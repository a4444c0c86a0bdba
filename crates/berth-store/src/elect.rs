//! Prompt elections: a follower stands as soon as its leader's lease has run out.
//!
//! openraft 0.9 lets a follower of an established leader stand only once it has heard nothing
//! from it for the leader's lease (`election_timeout_max`) *plus* an election timeout drawn
//! once per process from `election_timeout_min..max`: 1.2 to 1.6 s with berth's defaults, and
//! the clients' writes wait all of it when a leader dies. The lease is what stops a vote
//! while the leader may still act (a follower that heard from it refuses every vote within
//! it, which is also what reads from the lease rely on), so it stays; the random wait after
//! it only spreads the candidates out. Here the survivors are spread by rank instead: the
//! voter with the lowest ID other than the leader stands [`MARGIN`] after the lease, the next
//! [`STAGGER`] later, and so on, each once (then openraft's own timer, as before). When the
//! first to stand had the shorter log, the others refuse it; the next one stands in the same
//! term, and wins all the same: openraft 0.9's leader IDs are a term and a member, ordered, so
//! its higher ID beats the first one's vote in that term.
//!
//! The watcher reads Raft's own state (the vote and when it last changed or was renewed by
//! the leader's AppendEntries) inside Raft's core, every [`TICK`], and then calls
//! `Raft::trigger().elect()`, which stands without looking at the lease. Those are two steps of
//! the core: an AppendEntries of the old leader accepted between them renews the lease and is
//! counted by that leader, yet this member stands. Raft's safety does not depend on when anyone
//! stands, but reads from the lease (`lease`) do: the store runs no watcher when they are on.

use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use crate::{NodeId, Raft};

/// How often the watcher looks.
const TICK: Duration = Duration::from_millis(20);

/// How long after its lease ran out on this member the first-ranked survivor stands: its
/// fellow voters' leases, renewed by the same heartbeat a little later, must have run out too.
const MARGIN: Duration = Duration::from_millis(30);

/// How far apart the survivors stand, by rank: many times a vote's round trip (a few ms on a
/// LAN), so the first one's election has ended before the next stands.
const STAGGER: Duration = Duration::from_millis(60);

/// What the watcher reads of Raft's state.
#[derive(Debug)]
struct Seen {
    state: ServerState,
    /// Whether the vote is an established leader's (committed).
    committed: bool,
    /// Whom the vote is for.
    voted_for: Option<NodeId>,
    /// When the vote last changed or was renewed (by the leader's AppendEntries).
    since: Option<Instant>,
    /// The voters of the effective membership, in order.
    voters: Vec<NodeId>,
}

/// One member's watcher.
struct Watcher {
    me: NodeId,
    /// The leader's lease (`election_timeout_max`).
    lease: Duration,
}

impl Watcher {
    /// Whether this member should stand now, seeing `seen` at `now`.
    fn stand(&self, seen: &Seen, now: Instant) -> bool {
        if seen.voters.len() < 2 || !seen.voters.contains(&self.me) {
            return false;
        }
        match seen.state {
            ServerState::Follower if seen.committed && seen.voted_for != Some(self.me) => {
                let Some(since) = seen.since else {
                    return false;
                };
                // Its rank among the voters other than the leader.
                let rank = seen
                    .voters
                    .iter()
                    .filter(|v| Some(**v) != seen.voted_for)
                    .position(|v| *v == self.me)
                    .unwrap_or(0) as u32;
                now >= since + self.lease + MARGIN + STAGGER * rank
            }
            // Standing (the election runs its course, then openraft's timer stands again), or
            // leading, or following a candidate it voted for.
            _ => false,
        }
    }
}

/// Watches this member's Raft state and stands when [`Watcher::stand`] says so, until Raft
/// stops.
pub(crate) async fn watch(raft: Raft, me: NodeId, lease: Duration) {
    let watcher = Watcher { me, lease };
    loop {
        tokio::time::sleep(TICK).await;
        let seen = raft
            .with_raft_state(|st| {
                let vote = st.vote_ref();
                let mut voters: Vec<NodeId> = st.membership_state.effective().voter_ids().collect();
                voters.sort_unstable();
                Seen {
                    state: st.server_state,
                    committed: vote.is_committed(),
                    voted_for: vote.leader_id().voted_for(),
                    since: st.vote_last_modified(),
                    voters,
                }
            })
            .await;
        let Ok(seen) = seen else {
            return; // Raft stopped.
        };
        if watcher.stand(&seen, Instant::now()) {
            tracing::info!(
                vote_for = ?seen.voted_for,
                quiet_ms = seen.since.map(|s| s.elapsed().as_millis()),
                "no word from the leader for its lease: standing for election"
            );
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn watcher(me: NodeId) -> Watcher {
        Watcher { me, lease: LEASE }
    }

    fn following(leader: NodeId, since: Instant) -> Seen {
        Seen {
            state: ServerState::Follower,
            committed: true,
            voted_for: Some(leader),
            since: Some(since),
            voters: vec![1, 2, 3],
        }
    }

    fn standing(me: NodeId, since: Instant) -> Seen {
        Seen {
            state: ServerState::Candidate,
            committed: false,
            voted_for: Some(me),
            since: Some(since),
            voters: vec![1, 2, 3],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn survivors_stand_once_the_lease_ran_out_one_after_another() {
        let heard = Instant::now();
        let seen = following(1, heard);
        let (two, three) = (watcher(2), watcher(3));
        // Within the lease and its margin: nobody stands.
        assert!(!two.stand(&seen, heard + LEASE));
        assert!(!three.stand(&seen, heard + LEASE));
        // Then the lowest ID other than the leader's, and the next a stagger later.
        assert!(two.stand(&seen, heard + LEASE + MARGIN));
        assert!(!three.stand(&seen, heard + LEASE + MARGIN));
        assert!(three.stand(&seen, heard + LEASE + MARGIN + STAGGER));
        // With another leader, member 1 ranks first.
        let seen = following(2, heard);
        assert!(watcher(1).stand(&seen, heard + LEASE + MARGIN));
        assert!(!watcher(3).stand(&seen, heard + LEASE + MARGIN));
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_stands_once_and_a_follower_again_after_the_next_lease() {
        let heard = Instant::now();
        let two = watcher(2);
        let first = heard + LEASE + MARGIN;
        assert!(two.stand(&following(1, heard), first));
        // Its election does not end: openraft's timer stands again, not the watcher.
        assert!(!two.stand(&standing(2, first), first + STAGGER * 10));
        // Following a new leader, the next loss of a leader starts afresh.
        let later = first + STAGGER * 20;
        assert!(!two.stand(&following(1, later), later));
        assert!(two.stand(&following(1, later), later + LEASE + MARGIN));
    }

    #[tokio::test(start_paused = true)]
    async fn leaders_learners_lone_members_and_voters_of_a_candidate_wait() {
        let heard = Instant::now();
        let late = heard + LEASE * 10;
        let mut seen = following(1, heard);
        seen.state = ServerState::Leader;
        assert!(!watcher(1).stand(&seen, late));
        // A learner: not a voter.
        assert!(!watcher(4).stand(&following(1, heard), late));
        // The only voter: openraft elects it itself.
        let mut seen = following(1, heard);
        seen.voters = vec![2];
        assert!(!watcher(2).stand(&seen, late));
        // Having voted for a candidate (an uncommitted vote), a follower leaves it to stand.
        let mut seen = following(3, heard);
        seen.committed = false;
        assert!(!watcher(2).stand(&seen, late));
        // A candidate it never was (a restart, or openraft's own timer): no second stand.
        assert!(!watcher(3).stand(&standing(3, heard), late));
    }
}
