//! The node monitor's decisions: a node whose agent has not been heard from for the node TTL
//! becomes DOWN, and its tasks STOPPED with stop code NodeLost (one command per node).
//! Heartbeats live in the leader's memory only; a new leader gives every node a full TTL.

use std::time::{Duration, Instant};

use berth_model::NodeStatus;
use berth_state::{Command, State};

/// Nodes to declare DOWN, with how long they have been silent. A node never heard from by
/// this leader counts from `leader_since`.
pub fn lost_nodes(
    state: &State,
    last_seen: impl Fn(&str) -> Option<Instant>,
    leader_since: Instant,
    now: Instant,
    ttl: Duration,
) -> Vec<(String, Duration)> {
    state
        .nodes()
        .filter(|n| n.status != NodeStatus::Down)
        .filter_map(|n| {
            let last = last_seen(&n.name).map_or(leader_since, |t| t.max(leader_since));
            let silent = now.saturating_duration_since(last);
            (silent > ttl).then(|| (n.name.clone(), silent))
        })
        .collect()
}

/// The node monitor's round: one `MarkNodeDown` per node silent for longer than `ttl`, with a
/// reason that says for how long.
pub fn plan(
    state: &State,
    last_seen: impl Fn(&str) -> Option<Instant>,
    leader_since: Instant,
    now: Instant,
    ttl: Duration,
    at: u64,
) -> Vec<Command> {
    lost_nodes(state, last_seen, leader_since, now, ttl)
        .into_iter()
        .map(|(node, silent)| Command::MarkNodeDown {
            reason: format!(
                "its agent has not been heard from for {:.1}s (node TTL {:?})",
                silent.as_secs_f64(),
                ttl
            ),
            node,
            at,
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use berth_model::Node;

    use super::*;

    fn state(nodes: &[(&str, NodeStatus)]) -> State {
        let mut s = State::default();
        for (name, status) in nodes {
            let node = Node::new(*name, "127.0.0.1:1", 0, 0);
            s.apply(Command::RegisterNode { node, at: 0 });
            if *status == NodeStatus::Down {
                s.apply(Command::MarkNodeDown {
                    node: (*name).into(),
                    reason: "test".into(),
                    at: 0,
                });
            }
        }
        s
    }

    #[test]
    fn silent_nodes_are_lost_after_the_ttl_counting_from_the_leaders_start() {
        let s = state(&[
            ("a", NodeStatus::Active),
            ("b", NodeStatus::Active),
            ("c", NodeStatus::Down),
        ]);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let seen = |n: &str| (n == "a").then_some(t0 + Duration::from_secs(5));
        // 12 s after the leader started: b (never heard from) is past its grace; a is not.
        let lost = lost_nodes(&s, seen, t0, t0 + Duration::from_secs(12), ttl);
        assert_eq!(lost, vec![("b".to_owned(), Duration::from_secs(12))]);
        // A new leader started at t0 + 8 s: nobody is lost yet at t0 + 12 s.
        let lost = lost_nodes(
            &s,
            seen,
            t0 + Duration::from_secs(8),
            t0 + Duration::from_secs(12),
            ttl,
        );
        assert!(lost.is_empty());
    }
}
