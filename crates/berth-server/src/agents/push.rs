//! Pushing a node's desired task set: now, and again whenever it changes, until the agent goes
//! away, this server stops leading (the agent is then sent to the new leader) or the node is
//! removed (the agent is told so, and cannot attach again: its certificate is revoked); and
//! asking the agent to renew its certificate when the cluster CA is rotated.

use std::hash::{BuildHasher as _, RandomState};
use std::time::Duration;

use berth_proto::v1::server_message::Msg as ServerMsg;
use std::collections::BTreeMap;

use berth_model::Assignment;
use berth_proto::v1::{Endpoints, RenewCertificate, ServerMessage};
use berth_store::{NodeChanges, Store};

use crate::status;

pub(super) async fn desired_sets(
    store: Store,
    secrets: crate::secrets::Secrets,
    node: String,
    tx: super::Outbound,
) {
    let mut changes = store.watch_node(&node);
    let mut leader = store.leadership();
    // What this stream has sent, by task ID: after the whole set, only changes are sent.
    let mut sent: Option<BTreeMap<String, Fingerprint>> = None;
    let fingerprints = Fingerprints::default();
    // Tasks held back while this server fetches a key of their secrets, since when.
    let mut held_since: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    loop {
        if !*leader.borrow_and_update() {
            // Send the agent to the new leader.
            let leader_addr = store.leader_addr().filter(|_| !store.is_leader());
            let _ = tx.send(Err(status::not_leader(leader_addr))).await;
            return;
        }
        // Taken before the state is read: the read sees every change named.
        let changed = match changes.take() {
            _ if sent.is_none() => NodeChanges::Whole,
            NodeChanges::Tasks(mut tasks) => {
                // Held tasks are tried again at every pass.
                tasks.extend(held_since.keys().cloned());
                NodeChanges::Tasks(tasks)
            }
            whole => whole,
        };
        let whole = sent.is_none();
        let read = store.read_stale(|s| {
            s.node(&node)?;
            // A whole set says which of the node's tasks the state still holds; after it,
            // the ones the retention removed since are named.
            let kept: Vec<String> = if whole {
                s.tasks_on(&node).map(|t| t.task_id.clone()).collect()
            } else {
                Vec::new()
            };
            // The whole set, or the changed tasks' assignments and those that left it; and
            // the tasks the retention removed: at a pass that reads the whole set (the
            // stream's first, or after the node itself changed), every one the state still
            // remembers; at the others, those among the changed tasks that left (the
            // retention's removal of a task names it in the node's change feed). Not every
            // tombstone of the node at every pass: that grew with the tombstones kept, 15% of
            // a loaded leader's samples.
            let (desired, gone, retired) = match &changed {
                NodeChanges::Whole => (
                    berth_control::desired_tasks(s, &node),
                    None,
                    s.removed_from(&node).map(str::to_owned).collect(),
                ),
                NodeChanges::Tasks(tasks) => {
                    let (mut desired, mut gone, mut retired) = (Vec::new(), Vec::new(), Vec::new());
                    for id in tasks {
                        match berth_control::desired_task(s, &node, id) {
                            Some(a) => desired.push(a),
                            None => {
                                if retired_from(s, &node, id) {
                                    retired.push(id.clone());
                                }
                                gone.push(id.clone());
                            }
                        }
                    }
                    (desired, Some(gone), retired)
                }
            };
            Some((desired, gone, kept, retired))
        });
        let Some((mut desired, gone, kept, retired)) = read else {
            tracing::info!("node removed; ending its agent's stream");
            let _ = tx.send(Err(super::removed(&node))).await;
            return;
        };
        // Only for this node's stream, only for its tasks that are to start.
        let now = tokio::time::Instant::now();
        let held = secrets.open_for(&mut desired, |task| {
            held_since
                .get(task)
                .is_some_and(|since| now.duration_since(*since) > HOLD_AT_MOST)
        });
        held_since.retain(|task, _| held.contains(task));
        for task in &held {
            held_since.entry(task.clone()).or_insert(now);
        }
        let desired: BTreeMap<String, Assignment> = desired
            .into_iter()
            .map(|a| (a.task_id.clone(), a))
            .collect();
        let update = match gone {
            None => Update::Whole(desired),
            Some(gone) => Update::Tasks { desired, gone },
        };
        let (reset, upserts, removed) = changes_since(&mut sent, update, &held, &fingerprints);
        if reset || !upserts.is_empty() || !removed.is_empty() || !retired.is_empty() {
            // A whole set names the tasks held back: the agent leaves them as they are (one
            // it runs already, or whose containers it found at its start, is not removed).
            let changes =
                berth_proto::desired_changes(reset, upserts, removed, retired, kept, held.clone());
            for changes in changes {
                let msg = ServerMessage {
                    msg: Some(ServerMsg::Changes(changes)),
                };
                if tx.send(Ok(Box::new(msg))).await.is_err() {
                    return;
                }
            }
        }
        let retry = async {
            if held.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RETRY_HELD).await;
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            () = retry => {}
        }
    }
}

/// Whether `id`, a changed task, is one of `node`'s that the retention removed (and not a
/// task of that ID created again since).
fn retired_from(s: &berth_state::State, node: &str, id: &str) -> bool {
    s.task_by_id(id).is_none()
        && s.removed_task_by_id(id)
            .is_some_and(|r| r.node.as_deref() == Some(node))
}

/// What a pass compares with what was sent: the whole desired set, or the assignments of the
/// tasks that changed and the IDs of those that left it.
enum Update {
    Whole(BTreeMap<String, Assignment>),
    Tasks {
        desired: BTreeMap<String, Assignment>,
        gone: Vec<String>,
    },
}

/// How long a task waits for this server to get a key of its secrets before it is sent with
/// the reason it cannot start.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);
/// How often a held task is tried again.
const RETRY_HELD: Duration = Duration::from_secs(2);

/// What identifies an assignment a stream sent: two keyed hashes of it, 128 bits. A stream
/// keeps these rather than the assignments themselves, which are about a kilobyte each (every
/// container's definition): 150 MiB of the leader's memory for 150,000 tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint(u64, u64);

impl Fingerprint {
    /// What a stream keeps of a task it named held in a whole set (the agent leaves the task
    /// as it is): no assignment's, so the task is sent once released, and taken away if it
    /// leaves the set first (the agent would leave it alone for good otherwise).
    const HELD: Fingerprint = Fingerprint(0, 0);
}

/// Two SipHash keys of std's `RandomState` (random per thread, then a new key per instance):
/// the two halves of a fingerprint are independent hashes, and what a stream sent cannot be
/// told from its fingerprints without the keys.
#[derive(Default)]
struct Fingerprints(RandomState, RandomState);

impl Fingerprints {
    /// What the agent acts on in `assignment`: all of it, except that of the task's last
    /// status only whether the task reached its node counts (all the agent reads of it). So a
    /// task's status moving on as its own agent reports it (ACTIVATING, RUNNING) does not send
    /// the task back to that agent: an agent that attaches again gets its whole set, with the
    /// statuses of the moment.
    fn of(&self, assignment: &Assignment) -> Fingerprint {
        // Every field named: one added to `Assignment` must be placed here.
        let Assignment {
            task_id,
            namespace,
            task_definition,
            desired_status,
            cpu,
            memory,
            containers,
            last_status,
            deregistration_delay,
            ephemeral_storage,
            secrets,
        } = assignment;
        let acted_on = (
            task_id,
            namespace,
            task_definition,
            desired_status,
            (cpu, memory),
            containers,
            last_status.reached_node(),
            deregistration_delay,
            ephemeral_storage,
            secrets,
        );
        Fingerprint(self.0.hash_one(acted_on), self.1.hash_one(acted_on))
    }
}

/// What changed from `sent` to what `update` says, `sent` brought up to date: whether the whole
/// set must be sent (nothing was yet: `update` is then whole), the assignments that are new or
/// differ, and the task IDs that left. A `held` task waits: one sent before keeps what it was
/// sent (it is neither sent again nor removed), one never sent is not sent yet.
fn changes_since(
    sent: &mut Option<BTreeMap<String, Fingerprint>>,
    update: Update,
    held: &[String],
    fingerprints: &Fingerprints,
) -> (bool, Vec<Assignment>, Vec<String>) {
    let (mut desired, gone, complete) = match update {
        Update::Whole(desired) => (desired, Vec::new(), true),
        Update::Tasks { desired, gone } => (desired, gone, false),
    };
    for task in held {
        desired.remove(task);
    }
    let Some(sent) = sent else {
        let mut now: BTreeMap<String, Fingerprint> = desired
            .iter()
            .map(|(id, a)| (id.clone(), fingerprints.of(a)))
            .collect();
        now.extend(held.iter().map(|id| (id.clone(), Fingerprint::HELD)));
        *sent = Some(now);
        return (true, desired.into_values().collect(), Vec::new());
    };
    let mut removed: Vec<String> = if complete {
        sent.keys()
            .filter(|id| !desired.contains_key(*id) && !held.contains(id))
            .cloned()
            .collect()
    } else {
        gone.into_iter()
            .filter(|id| sent.contains_key(id) && !held.contains(id))
            .collect()
    };
    for id in &removed {
        sent.remove(id);
    }
    removed.sort();
    let upserts = desired
        .into_values()
        .filter(|a| {
            let now = fingerprints.of(a);
            sent.insert(a.task_id.clone(), now) != Some(now)
        })
        .collect();
    (false, upserts, removed)
}

/// Tells the agent to renew its certificate whenever this server's CA changes (a rotation
/// started or finished), at once when it attaches behind, and again every [`RENEW_AGAIN`]
/// while it is behind: a rotation runs and the node uses no certificate from the new CA (a
/// renewal answered by a server that had not seen the rotation yet got one of the old CA; an
/// answer was lost), or the last rotation finished after the node's newest certificate was
/// issued (the agent was away when it finished, and still trusts the old CA too).
pub(super) async fn renewals(
    store: Store,
    node: String,
    mut changes: tokio::sync::watch::Receiver<u64>,
    tx: super::Outbound,
) {
    changes.mark_unchanged();
    let behind = || store.read_stale(|s| s.node_behind_ca(&node));
    let mut again = tokio::time::interval(RENEW_AGAIN);
    again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let renew = tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() { return }
                true
            }
            _ = again.tick() => behind(),
            () = tx.closed() => return,
        };
        if renew {
            let msg = ServerMessage {
                msg: Some(ServerMsg::Renew(RenewCertificate {
                    reason: "the cluster CA is being rotated".into(),
                })),
            };
            if tx.send(Ok(Box::new(msg))).await.is_err() {
                return;
            }
        }
    }
}

/// Sends the agent the endpoints of discoverable services now and whenever they change.
pub(super) async fn endpoints(mut endpoints: crate::endpoints::Published, tx: super::Outbound) {
    loop {
        // Always once at first, empty too: an agent back after the last discoverable service
        // went must drop what it served.
        let now = endpoints.borrow_and_update().clone();
        let msg = ServerMessage {
            msg: Some(ServerMsg::Endpoints(Endpoints {
                services: now.iter().cloned().map(Into::into).collect(),
            })),
        };
        if tx.send(Ok(Box::new(msg))).await.is_err() {
            return;
        }
        tokio::select! {
            changed = endpoints.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// How often an agent that has not moved to a rotation's new CA is asked again.
const RENEW_AGAIN: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{DesiredStatus, TaskStatus};

    fn assignment(id: &str, desired_status: DesiredStatus) -> Assignment {
        Assignment {
            task_id: id.into(),
            namespace: "default".into(),
            task_definition: "web:3".parse().expect("a valid reference"),
            desired_status,
            cpu: 256,
            memory: 64,
            containers: vec![berth_model::ContainerDefinition::new("app", "busybox")],
            last_status: TaskStatus::Pending,
            deregistration_delay: 0,
            ephemeral_storage: berth_model::EphemeralStorage::default(),
            secrets: berth_model::TaskSecrets::default(),
        }
    }

    fn set(assignments: &[Assignment]) -> BTreeMap<String, Assignment> {
        assignments
            .iter()
            .map(|a| (a.task_id.clone(), a.clone()))
            .collect()
    }

    fn ids(assignments: &[Assignment]) -> Vec<&str> {
        assignments.iter().map(|a| a.task_id.as_str()).collect()
    }

    fn whole(assignments: &[Assignment]) -> Update {
        Update::Whole(set(assignments))
    }

    fn tasks(assignments: &[Assignment], gone: &[&str]) -> Update {
        Update::Tasks {
            desired: set(assignments),
            gone: gone.iter().map(|id| (*id).to_owned()).collect(),
        }
    }

    #[test]
    fn only_what_differs_from_what_was_sent_is_sent_again() {
        let fp = Fingerprints::default();
        let mut sent = None;
        let (a, b) = (
            assignment("a", DesiredStatus::Running),
            assignment("b", DesiredStatus::Running),
        );
        let (reset, upserts, removed) =
            changes_since(&mut sent, whole(&[a.clone(), b.clone()]), &[], &fp);
        assert!(reset);
        assert_eq!(ids(&upserts), ["a", "b"]);
        assert!(removed.is_empty());

        // The same set, whole or task by task: nothing to send.
        for update in [whole(&[a.clone(), b]), tasks(std::slice::from_ref(&a), &[])] {
            let (reset, upserts, removed) = changes_since(&mut sent, update, &[], &fp);
            assert!(!reset && upserts.is_empty() && removed.is_empty());
        }

        // b is to stop (a field deep inside changes too: a's image), c is new.
        let mut a2 = a;
        a2.containers[0].image = "busybox:2".into();
        let c = assignment("c", DesiredStatus::Running);
        let (reset, upserts, removed) = changes_since(
            &mut sent,
            whole(&[
                a2.clone(),
                assignment("b", DesiredStatus::Stopped),
                c.clone(),
            ]),
            &[],
            &fp,
        );
        assert!(!reset);
        assert_eq!(ids(&upserts), ["a", "b", "c"]);
        assert_eq!(upserts[0].containers[0].image, "busybox:2");
        assert!(removed.is_empty());

        // b left the node's set.
        let (_, upserts, removed) = changes_since(&mut sent, whole(&[a2, c.clone()]), &[], &fp);
        assert!(upserts.is_empty());
        assert_eq!(removed, ["b"]);
        assert_eq!(sent.as_ref().map(BTreeMap::len), Some(2));
    }

    #[test]
    fn a_change_of_some_tasks_sends_those_and_leaves_the_others_as_sent() {
        let fp = Fingerprints::default();
        let mut sent = None;
        let (a, b, c) = (
            assignment("a", DesiredStatus::Running),
            assignment("b", DesiredStatus::Running),
            assignment("c", DesiredStatus::Running),
        );
        changes_since(&mut sent, whole(&[a.clone(), b.clone()]), &[], &fp);
        // c is new, a is to stop, b left the set; a task never sent that left is no news.
        let mut a2 = a.clone();
        a2.desired_status = DesiredStatus::Stopped;
        let (reset, upserts, removed) = changes_since(
            &mut sent,
            tasks(&[a2.clone(), c.clone()], &["b", "x"]),
            &[],
            &fp,
        );
        assert!(!reset);
        assert_eq!(ids(&upserts), ["a", "c"]);
        assert_eq!(upserts[0].desired_status, DesiredStatus::Stopped);
        assert_eq!(removed, ["b"]);
        // What the stream holds is what a whole pass would have left: nothing more to send.
        let (_, upserts, removed) = changes_since(&mut sent, whole(&[a2, c]), &[], &fp);
        assert!(
            upserts.is_empty() && removed.is_empty(),
            "{upserts:?} {removed:?}"
        );
        // Tasks not named keep what was sent.
        let (_, upserts, removed) = changes_since(&mut sent, tasks(&[], &[]), &[], &fp);
        assert!(upserts.is_empty() && removed.is_empty());
        assert_eq!(sent.as_ref().map(BTreeMap::len), Some(2));
    }

    /// Of a task's status, only whether it reached its node is sent again: the agent that
    /// reports a task RUNNING is not sent it back.
    #[test]
    fn a_task_is_sent_again_when_it_reaches_its_node_and_not_as_it_moves_on() {
        let fp = Fingerprints::default();
        let mut sent = None;
        let mut a = assignment("a", DesiredStatus::Running);
        changes_since(&mut sent, whole(std::slice::from_ref(&a)), &[], &fp);
        a.last_status = TaskStatus::Provisioning;
        let (_, upserts, _) = changes_since(&mut sent, tasks(&[a.clone()], &[]), &[], &fp);
        assert!(upserts.is_empty(), "PENDING -> PROVISIONING sent again");
        a.last_status = TaskStatus::Activating;
        let (_, upserts, _) = changes_since(&mut sent, tasks(&[a.clone()], &[]), &[], &fp);
        assert_eq!(ids(&upserts), ["a"], "reaching the node is sent");
        assert_eq!(upserts[0].last_status, TaskStatus::Activating);
        for status in [TaskStatus::Running, TaskStatus::Stopping] {
            a.last_status = status;
            let (_, upserts, _) = changes_since(&mut sent, tasks(&[a.clone()], &[]), &[], &fp);
            assert!(upserts.is_empty(), "ACTIVATING -> {status:?} sent again");
        }
    }

    #[test]
    fn a_held_task_keeps_what_it_was_sent_and_one_never_sent_waits() {
        let fp = Fingerprints::default();
        for partial in [false, true] {
            let mut sent = None;
            let a = assignment("a", DesiredStatus::Running);
            changes_since(&mut sent, whole(std::slice::from_ref(&a)), &[], &fp);
            // a changes while held (its secrets are being fetched), b is new and held.
            let mut a2 = a.clone();
            a2.desired_status = DesiredStatus::Stopped;
            let b = assignment("b", DesiredStatus::Running);
            let held = ["a".to_owned(), "b".to_owned()];
            let both = [a2.clone(), b.clone()];
            let update = if partial {
                tasks(&both, &[])
            } else {
                whole(&both)
            };
            let (_, upserts, removed) = changes_since(&mut sent, update, &held, &fp);
            assert!(upserts.is_empty(), "sent while held: {:?}", ids(&upserts));
            assert!(
                removed.is_empty(),
                "a held task is not taken away: {removed:?}"
            );
            let now = sent.as_ref().expect("sent");
            assert_eq!(now.get("a"), Some(&fp.of(&a)));
            assert!(!now.contains_key("b"));
            // No longer held: both go.
            let update = if partial {
                tasks(&both, &[])
            } else {
                whole(&both)
            };
            let (_, upserts, _) = changes_since(&mut sent, update, &[], &fp);
            assert_eq!(ids(&upserts), ["a", "b"]);
        }
    }

    /// A whole set names its held tasks, which the agent then leaves alone: one that leaves
    /// the set before it is sent is taken away, one released is sent.
    #[test]
    fn a_task_named_held_in_a_whole_set_is_sent_or_taken_away_later() {
        let fp = Fingerprints::default();
        let a = assignment("a", DesiredStatus::Running);
        let b = assignment("b", DesiredStatus::Running);
        for partial in [false, true] {
            let mut sent = None;
            let held = ["a".to_owned(), "b".to_owned()];
            let (reset, upserts, _) =
                changes_since(&mut sent, whole(&[a.clone(), b.clone()]), &held, &fp);
            assert!(reset && upserts.is_empty());
            // a is released, b stopped (it left the node's live set) while held.
            let update = if partial {
                tasks(std::slice::from_ref(&a), &["b"])
            } else {
                whole(std::slice::from_ref(&a))
            };
            let (_, upserts, removed) = changes_since(&mut sent, update, &[], &fp);
            assert_eq!(ids(&upserts), ["a"]);
            assert_eq!(removed, ["b"]);
        }
    }
}
