//! When a rotation of the cluster CA can finish: every Raft member signs with the new CA (it
//! adopted it) and every node that is not DOWN uses a certificate from it (its agent said so in
//! a heartbeat: one issued may never have reached it). Until then the old
//! CA stays trusted, so nothing that still depends on it is cut off.

use berth_state::{Command, State};

/// What a running rotation still waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub generation: u64,
    /// Members (node IDs) that have not adopted the new CA.
    pub servers: Vec<u64>,
    /// Nodes, not DOWN, that use no certificate from the new CA.
    pub nodes: Vec<String>,
}

/// What the running rotation waits for; `None` when no rotation runs.
pub fn pending(state: &State, members: &[u64]) -> Option<Pending> {
    let rotation = state.ca_rotation().filter(|r| !r.is_finished())?;
    Some(Pending {
        generation: rotation.generation,
        servers: members
            .iter()
            .filter(|id| !rotation.servers_adopted.contains(id))
            .copied()
            .collect(),
        nodes: state.nodes_without_ca(rotation.generation),
    })
}

/// The leader's round: `FinishCaRotation` once the running rotation waits for nothing.
pub fn plan(state: &State, members: &[u64], at: u64) -> Option<Command> {
    let p = pending(state, members)?;
    (!members.is_empty() && p.servers.is_empty() && p.nodes.is_empty()).then_some(
        Command::FinishCaRotation {
            generation: p.generation,
            at,
        },
    )
}

#[cfg(test)]
mod tests {
    use berth_model::{CaRotation, Node};

    use super::*;

    fn started() -> State {
        let mut s = State::default();
        for node in ["n1", "n2"] {
            s.apply(Command::RegisterNode {
                node: Node::new(node, "127.0.0.1:1", 1024, 1024),
                at: 1,
            });
        }
        let rotation = CaRotation {
            generation: 1,
            from_cert: "a".into(),
            from_fingerprint: "a".repeat(64),
            cert: "b".into(),
            fingerprint: "b".repeat(64),
            cross_cert: "b by a".into(),
            sealed_key: "v1:00".into(),
            started_at: 0,
            finished_at: None,
            servers_adopted: Default::default(),
        };
        s.apply(Command::StartCaRotation {
            rotation: Box::new(rotation),
            at: 2,
        });
        s
    }

    /// Records a certificate of `node` signed by the CA whose fingerprint is `ca` 64 times.
    fn record(s: &mut State, node: &str, ca: char) {
        s.apply(Command::RecordCertificate {
            node: node.into(),
            serial: "0b".into(),
            expires_at: 10_000,
            renewing: None,
            at: 3,
            ca_fingerprint: ca.to_string().repeat(64),
        });
    }

    /// `node`'s agent says it uses the certificate [`record`] records.
    fn in_use(s: &mut State, node: &str) {
        s.apply(Command::CertificateInUse {
            node: node.into(),
            serial: "0b".into(),
            at: 4,
        });
    }

    #[test]
    fn a_rotation_finishes_once_every_server_and_live_node_moved_to_the_new_ca() {
        let mut s = started();
        let members = [1, 2];
        assert_eq!(
            pending(&s, &members),
            Some(Pending {
                generation: 1,
                servers: vec![1, 2],
                nodes: vec!["n1".into(), "n2".into()],
            })
        );
        for server in members {
            s.apply(Command::AdoptCaRotation {
                server,
                generation: 1,
                at: 4,
            });
        }
        record(&mut s, "n1", 'b');
        // Issued is not enough: the answer may not have reached the agent.
        assert!(s.certificate_use_news("n1", "0b"));
        assert_eq!(pending(&s, &members).map(|p| p.nodes.len()), Some(2));
        in_use(&mut s, "n1");
        assert!(!s.certificate_use_news("n1", "0b"));
        // A certificate of the old CA does not count, even in use.
        record(&mut s, "n2", 'a');
        assert!(!s.certificate_use_news("n2", "0b"));
        in_use(&mut s, "n2");
        assert_eq!(
            pending(&s, &members).map(|p| p.nodes),
            Some(vec!["n2".to_owned()])
        );
        assert_eq!(plan(&s, &members, 5), None);
        // A DOWN node does not hold the rotation back (it joins again with a token).
        s.apply(Command::MarkNodeDown {
            node: "n2".into(),
            reason: "gone".into(),
            at: 5,
        });
        assert_eq!(
            plan(&s, &members, 6),
            Some(Command::FinishCaRotation {
                generation: 1,
                at: 6
            })
        );
        // A member that joined since has not adopted it yet.
        assert_eq!(plan(&s, &[1, 2, 3], 6), None);
        s.apply(Command::FinishCaRotation {
            generation: 1,
            at: 6,
        });
        assert_eq!(pending(&s, &members), None);
        assert_eq!(plan(&s, &members, 7), None);
        // The new CA's sealed key does not outlive the rotation.
        assert_eq!(s.ca_rotation().map(|r| r.sealed_key.as_str()), Some(""));
        assert!(s.node_has_ca("n1", 1) && !s.node_has_ca("n2", 1));
        // n1 got its certificate before the rotation finished: it still trusts the old CA
        // too, until it renews once more.
        assert!(s.node_behind_ca("n1"));
        s.apply(Command::RecordCertificate {
            node: "n1".into(),
            serial: "0c".into(),
            expires_at: 10_000,
            renewing: Some("0b".into()),
            at: 8,
            ca_fingerprint: "b".repeat(64),
        });
        assert!(!s.node_behind_ca("n1"));
    }

    #[test]
    fn a_node_is_behind_while_it_uses_no_certificate_of_the_running_rotation_s_new_ca() {
        let mut s = started();
        assert!(s.node_behind_ca("n1"));
        record(&mut s, "n1", 'b');
        assert!(s.node_behind_ca("n1"), "issued, but not known to be in use");
        in_use(&mut s, "n1");
        assert!(!s.node_behind_ca("n1"));
        // Without any rotation, nothing is behind.
        assert!(!State::default().node_behind_ca("n1"));
    }
}
