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
//! [`STAGGER`] later, and so on. One that ranks after the first and has not won within
//! [`STAGGER`] stands once more, in the next term: when the first to stand had the shorter
//! log, the others refuse it, but it keeps the term it stood in, and the next one's request in
//! that same term meets its vote and fails too. The first never stands twice (openraft's
//! timer does, later), so two candidates never outbid each other's terms for ever.
//!
//! The watcher reads Raft's own state (the vote and when it last changed or was renewed by
//! the leader's AppendEntries) inside Raft's core, every [`TICK`], and calls
//! `Raft::trigger().elect()`, which stands without looking at the lease: so it never calls it
//! before the lease has run out on this member. Raft's safety does not depend on when anyone
//! stands; the lease's does, and is kept.

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

/// One member's watcher: what it decided so far.
struct Watcher {
    me: NodeId,
    /// The leader's lease (`election_timeout_max`).
    lease: Duration,
    /// Since this member stood, while it stands: when, its rank, and whether it stood again.
    standing: Option<(Instant, u32, bool)>,
}

impl Watcher {
    /// Whether this member should stand now, seeing `seen` at `now`.
    fn stand(&mut self, seen: &Seen, now: Instant) -> bool {
        if seen.voters.len() < 2 || !seen.voters.contains(&self.me) {
            self.standing = None;
            return false;
        }
        match seen.state {
            ServerState::Follower if seen.committed && seen.voted_for != Some(self.me) => {
                self.standing = None;
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
                let due = now >= since + self.lease + MARGIN + STAGGER * rank;
                if due {
                    self.standing = Some((now, rank, false));
                }
                due
            }
            ServerState::Candidate => match &mut self.standing {
                Some((stood, rank, again)) if *rank > 0 && !*again && now >= *stood + STAGGER => {
                    *again = true;
                    true
                }
                _ => false,
            },
            _ => {
                self.standing = None;
                false
            }
        }
    }
}

/// Watches this member's Raft state and stands when [`Watcher::stand`] says so, until Raft
/// stops.
pub(crate) async fn watch(raft: Raft, me: NodeId, lease: Duration) {
    let mut watcher = Watcher {
        me,
        lease,
        standing: None,
    };
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
        Watcher {
            me,
            lease: LEASE,
            standing: None,
        }
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
        let (mut two, mut three) = (watcher(2), watcher(3));
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
    async fn only_a_later_candidate_stands_again_and_only_once() {
        let heard = Instant::now();
        let (mut two, mut three) = (watcher(2), watcher(3));
        // Member 2 stands first; its election does not end: it waits for openraft's timer.
        let first = heard + LEASE + MARGIN;
        assert!(two.stand(&following(1, heard), first));
        assert!(!two.stand(&standing(2, first), first + STAGGER * 10));
        // Member 3 stands a stagger later, and once more a stagger after that, then no more.
        let second = first + STAGGER;
        assert!(three.stand(&following(1, heard), second));
        assert!(!three.stand(&standing(3, second), second + STAGGER / 2));
        assert!(three.stand(&standing(3, second), second + STAGGER));
        assert!(!three.stand(&standing(3, second), second + STAGGER * 10));
        // Elected or following again, the next loss of a leader starts afresh.
        let later = second + STAGGER * 20;
        assert!(!three.stand(&following(2, later), later));
        assert!(three.stand(&following(2, later), later + LEASE + MARGIN + STAGGER));
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
