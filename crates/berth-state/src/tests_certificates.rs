//! Tests of agent nodes' certificate records and node removal. Each runs a script of
//! `(at, command)` steps and compares one line per answer (with the keys it changed), then the
//! records it left, to the expected lines.

use berth_model::{Node, NodeStatus, StopCode, Task, TaskStatus};

use crate::command::*;
use crate::{Key, Object, State};

/// One line for an answer: `done` or the rejection, then the keys it changed.
fn show(result: &CommandResult, changed: &[Key]) -> String {
    let answer = match result {
        CommandResult::Done => "done".to_owned(),
        CommandResult::Rejected(r) => format!("{r}"),
        other => other.kind().to_owned(),
    };
    let keys: Vec<String> = changed.iter().map(Key::encode).collect();
    format!("{answer} [{}]", keys.join(" "))
}

/// Applies each command stamped with its time; one line per answer.
fn check(s: &mut State, steps: Vec<(u64, Command)>, expected: &[&str]) {
    let lines: Vec<String> = steps
        .into_iter()
        .map(|(at, mut command)| {
            command.stamp(at);
            let (result, changed) = s.apply(command);
            show(&result, &changed)
        })
        .collect();
    assert_eq!(lines, expected);
    crate::tests::round_trips(s);
}

/// `node: serial@expiry …` for every node with records.
fn records(s: &State) -> Vec<String> {
    s.objects()
        .filter_map(|o| match o {
            Object::Certificates(c) => Some(c),
            _ => None,
        })
        .map(|c| {
            let serials: Vec<String> = c
                .certificates
                .iter()
                .map(|r| format!("{}@{}", r.serial, r.expires_at))
                .collect();
            format!("{}: {}", c.node, serials.join(" "))
        })
        .collect()
}

fn record(node: &str, serial: &str, expires_at: u64) -> Command {
    Command::RecordCertificate {
        node: node.into(),
        serial: serial.into(),
        expires_at,
        renewing: None,
        at: 0,
        ca_fingerprint: String::new(),
    }
}

fn renew(node: &str, old: &str, serial: &str, expires_at: u64) -> Command {
    Command::RecordCertificate {
        node: node.into(),
        serial: serial.into(),
        expires_at,
        renewing: Some(old.into()),
        at: 0,
        ca_fingerprint: String::new(),
    }
}

fn remove(node: &str) -> Command {
    Command::RemoveNode {
        node: node.into(),
        at: 0,
    }
}

#[test]
fn joins_and_renewals_record_serials_and_forget_expired_ones() {
    let mut s = State::default();
    check(
        &mut s,
        vec![
            (10, record("n1", "a1", 100)),
            // Recorded again (a retried proposal): nothing changes.
            (11, record("n1", "a1", 100)),
            (50, renew("n1", "a1", "a2", 200)),
            (60, record("n2", "b1", 300)),
            // a1 has expired by now: the renewal forgets it.
            (150, renew("n1", "a2", "a3", 300)),
            // Renewing with a certificate that is not recorded is refused.
            (160, renew("n1", "a1", "a4", 400)),
            (161, renew("n3", "c0", "c1", 400)),
            (170, record("n1", "A5", 400)),
            (170, record("n1", "a5", 170)),
            (170, record("n/1", "a5", 400)),
        ],
        &[
            "done [certificates/n1]",
            "done []",
            "done [certificates/n1]",
            "done [certificates/n2]",
            "done [certificates/n1]",
            "certificate a1 of node n1 is not recorded: it was revoked or the node removed; join again with a token []",
            "certificate c0 of node n3 is not recorded: it was revoked or the node removed; join again with a token []",
            "serial: must be 1-40 lowercase hex digits []",
            "certificate a5 of node n1 expired at 1970-01-01T00:00:00.170Z, before it was recorded []",
            r#"node: "n/1" contains '/'; use letters, digits, '-' and '_' []"#,
        ],
    );
    assert_eq!(records(&s), ["n1: a2@200 a3@300", "n2: b1@300"]);
    assert!(s.certificate_recorded("n1", "a3"));
    assert!(!s.certificate_recorded("n1", "a1"));
    assert!(!s.certificate_recorded("n2", "a3"), "serials are per node");
}

#[test]
fn a_node_keeps_at_most_sixteen_certificates_the_latest_to_expire() {
    let mut s = State::default();
    for i in 0..20u64 {
        s.apply(record("n1", &format!("{i:02x}"), 1_000 + i));
    }
    let kept = &s.node_certificates("n1").expect("records").certificates;
    assert_eq!(kept.len(), berth_model::MAX_NODE_CERTIFICATES);
    assert_eq!(kept[0].serial, "04");
    assert_eq!(kept[15].serial, "13");
}

/// Node n1 (registered, with a certificate) running t1 and with t2 stopped; n2 running t3.
fn two_nodes() -> State {
    let mut s = State::default();
    let def = crate::tests::register_web(&mut s);
    for node in ["n1", "n2"] {
        s.apply(record(node, "0a", 1_000));
        s.apply(Command::RegisterNode {
            node: Node::new(node, "127.0.0.1:1", 1024, 1024),
            at: 1,
        });
    }
    let tasks = ["t1", "t2", "t3"]
        .map(|id| Task::pending(id.into(), "default", &def, 2))
        .to_vec();
    s.apply(Command::CreateTasks {
        tasks,
        client_token: None,
        at: 2,
    });
    let placements = [("t1", "n1"), ("t2", "n1"), ("t3", "n2")]
        .map(|(task_id, node)| Placement {
            task_id: task_id.into(),
            node: node.into(),
        })
        .to_vec();
    s.apply(Command::PlaceTasks {
        placements,
        unplaced: vec![],
        at: 3,
    });
    s.apply(Command::StopTask {
        namespace: "default".into(),
        task_id: "t2".into(),
        stop_code: StopCode::UserInitiated,
        reason: "stopped".into(),
        at: 4,
    });
    s.apply(Command::ReportTaskStatus {
        node: "n1".into(),
        updates: vec![berth_model::TaskStatusUpdate::status(
            "t2",
            TaskStatus::Stopped,
        )],
        at: 5,
    });
    s
}

fn task(s: &State, id: &str) -> String {
    let t = s.task("default", id).expect("task");
    format!(
        "{id} {} {:?} {:?}",
        t.last_status,
        t.stop_code,
        t.stopped_reason.as_deref().unwrap_or("")
    )
}

#[test]
fn removing_a_node_loses_its_tasks_and_forgets_it_and_its_certificates() {
    let mut s = two_nodes();
    check(
        &mut s,
        vec![
            (10, remove("n1")),
            (11, remove("n1")),
            (12, record("n3", "0c", 1_000)),
            // A node that joined but never registered can be removed too.
            (13, remove("n3")),
            // A removal racing with a renewal wins.
            (14, renew("n1", "0a", "0b", 1_000)),
        ],
        &[
            "done [task/t1 node/n1 certificates/n1]",
            "node n1 not found; `berth get nodes` lists them []",
            "done [certificates/n3]",
            "done [certificates/n3]",
            "certificate 0a of node n1 is not recorded: it was revoked or the node removed; join again with a token []",
        ],
    );
    assert_eq!(
        [task(&s, "t1"), task(&s, "t2"), task(&s, "t3")],
        [
            r#"t1 STOPPED Some(NodeLost) "node n1 was removed by an operator""#,
            r#"t2 STOPPED Some(UserInitiated) "stopped""#,
            r#"t3 PENDING None """#,
        ]
    );
    assert!(s.node("n1").is_none());
    assert_eq!(s.node("n2").map(|n| n.status), Some(NodeStatus::Active));
    assert_eq!(records(&s), ["n2: 0a@1000"]);
    assert_eq!(s.allocated_on("n1"), (0, 0));

    // The name is free again: a node joins under it with a new certificate.
    check(
        &mut s,
        vec![
            (20, record("n1", "0d", 2_000)),
            (
                21,
                Command::RegisterNode {
                    node: Node::new("n1", "127.0.0.1:2", 1024, 1024),
                    at: 0,
                },
            ),
        ],
        &["done [certificates/n1]", "done [node/n1]"],
    );
    let events: Vec<&str> = s
        .node("n1")
        .expect("n1")
        .events
        .iter()
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(events, ["agent registered"], "a new node, not the old one");
}

#[test]
fn certificate_records_and_the_new_commands_keep_their_json() {
    let mut s = State::default();
    s.apply(record("n1", "7f01", 1_800_000_060_000));
    let stored: Vec<String> = s.objects().map(|o| crate::tests::stored(&o)).collect();
    assert_eq!(
        stored,
        [
            r#"certificates/n1 {"kind":"certificates","object":{"node":"n1","certificates":[{"serial":"7f01","issuedAt":"1970-01-01T00:00:00.000Z","expiresAt":"2027-01-15T08:01:00.000Z"}]}}"#
        ]
    );
    let decoded: Vec<Object> = stored
        .iter()
        .map(|line| {
            let json = line.split_once(' ').expect("key and json").1;
            serde_json::from_str(json).expect("decodes")
        })
        .collect();
    assert_eq!(State::from_objects(decoded), s);

    for (command, json) in [
        (
            renew("n1", "7f01", "7f02", 5),
            r#"{"RecordCertificate":{"node":"n1","serial":"7f02","expires_at":5,"renewing":"7f01","at":0,"ca_fingerprint":""}}"#,
        ),
        (remove("n1"), r#"{"RemoveNode":{"node":"n1","at":0}}"#),
    ] {
        assert_eq!(serde_json::to_string(&command).expect("encode"), json);
        assert_eq!(
            serde_json::from_str::<Command>(json).expect("decode"),
            command
        );
    }
    assert!(!remove("n1").leader_only());
    assert!(!record("n1", "01", 5).leader_only());
    assert_eq!(remove("n1").subject(), "node n1");
    assert_eq!(record("n1", "01", 5).subject(), "certificate 01 of node n1");
}

fn rotation(generation: u64, from: char, to: char) -> Command {
    Command::StartCaRotation {
        rotation: Box::new(berth_model::CaRotation {
            generation,
            from_cert: format!("cert {from}"),
            from_fingerprint: from.to_string().repeat(64),
            cert: format!("cert {to}"),
            fingerprint: to.to_string().repeat(64),
            cross_cert: format!("{to} by {from}"),
            sealed_key: "v1:00".into(),
            started_at: 0,
            finished_at: None,
            servers_adopted: Default::default(),
        }),
        at: 0,
    }
}

fn adopt(server: u64, generation: u64) -> Command {
    Command::AdoptCaRotation {
        server,
        generation,
        at: 0,
    }
}

fn finish(generation: u64) -> Command {
    Command::FinishCaRotation { generation, at: 0 }
}

/// A record of a certificate signed by the CA whose fingerprint is `ca` 64 times.
fn record_from(node: &str, serial: &str, expires_at: u64, ca: char) -> Command {
    Command::RecordCertificate {
        node: node.into(),
        serial: serial.into(),
        expires_at,
        renewing: None,
        at: 0,
        ca_fingerprint: ca.to_string().repeat(64),
    }
}

#[test]
fn a_ca_rotation_starts_once_is_adopted_by_servers_and_finishing_forgets_old_certificates() {
    let mut s = State::default();
    for node in ["n1", "n2", "n3"] {
        s.apply(record(node, "0a", 1_000));
        s.apply(Command::RegisterNode {
            node: Node::new(node, "127.0.0.1:1", 1024, 1024),
            at: 1,
        });
    }
    s.apply(Command::MarkNodeDown {
        node: "n3".into(),
        reason: "gone".into(),
        at: 2,
    });
    assert_eq!(s.ca_generation(), 0);
    check(
        &mut s,
        vec![
            // Generation 2 cannot come before 1.
            (10, rotation(2, 'a', 'b')),
            (10, rotation(1, 'a', 'a')),
            (10, rotation(1, 'a', 'b')),
            (11, rotation(2, 'b', 'c')),
            (12, adopt(1, 1)),
            (12, adopt(1, 1)),
            (13, adopt(2, 2)),
            (14, record_from("n1", "0b", 2_000, 'b')),
            (15, finish(1)),
            (16, adopt(3, 1)),
            (17, finish(1)),
            // The next rotation must replace the current CA.
            (20, rotation(2, 'a', 'c')),
            (21, rotation(2, 'b', 'c')),
        ],
        &[
            "CA rotation 2 was asked for, but the next one is 1 []",
            "fingerprint: the new CA must differ from the one it replaces []",
            "CaRotation [ca/rotation]",
            "CA rotation 1 has been running since 1970-01-01T00:00:00.010Z; wait until it finishes (`berth cluster ca status` shows what it waits for) []",
            "done [ca/rotation]",
            "done []",
            "CA rotation 2 is not running []",
            "done [certificates/n1]",
            "done [ca/rotation certificates/n1 certificates/n2 certificates/n3]",
            "CA rotation 1 is not running []",
            "CA rotation 1 is not running []",
            "the CA to replace (aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa) is not the cluster's current CA (bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb) []",
            "CaRotation [ca/rotation]",
        ],
    );
    // Finishing rotation 1 kept only n1's certificate from the new CA.
    assert_eq!(records(&s), ["n1: 0b@2000", "n2: ", "n3: "]);
    assert_eq!(s.ca_generation(), 2);
    let r = s.ca_rotation().expect("rotation");
    assert!(!r.is_finished() && r.servers_adopted.is_empty());
    assert!(
        !format!("{r:?}").contains("v1:00"),
        "no sealed key in Debug"
    );
    // n3 is DOWN: it does not hold the rotation back; n2 does, until it renews and its agent
    // says it uses the new certificate.
    s.apply(record_from("n2", "0c", 2_000, 'c'));
    assert_eq!(s.nodes_without_ca(2), ["n1", "n2"]);
    let in_use = |node: &str, serial: &str| Command::CertificateInUse {
        node: node.into(),
        serial: serial.into(),
        at: 30,
    };
    check(
        &mut s,
        vec![
            (30, in_use("n2", "0d")),
            (30, in_use("n2", "0c")),
            (31, in_use("n2", "0c")),
        ],
        &[
            "certificate 0d of node n2 is not recorded []",
            "done [certificates/n2]",
            "done []",
        ],
    );
    assert_eq!(s.nodes_without_ca(2), ["n1"]);
    assert!(in_use("n2", "0c").leader_only());
}

#[test]
fn a_restored_backup_keeps_the_restoring_cluster_s_ca_rotation() {
    let mut backup = State::default();
    backup.apply(rotation(1, 'a', 'b'));
    let mut s = State::default();
    let (_, changed) = s.apply(Command::ReplaceState {
        objects: backup.objects().collect(),
        at: 5,
    });
    assert_eq!(
        s.ca_rotation(),
        None,
        "the backup's CA is not this cluster's"
    );
    assert!(!changed.contains(&Key::CaRotation));
    let mut with_records = State::default();
    with_records.apply(record("n1", "0a", 1_000));
    s.apply(Command::ReplaceState {
        objects: with_records.objects().collect(),
        at: 6,
    });
    assert_eq!(s.node_certificates("n1"), None, "nor are its certificates");
}
