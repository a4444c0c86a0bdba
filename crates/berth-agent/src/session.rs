//! The agent's session with the servers: one `Attach` stream to the leader (a follower answers
//! with the leader's address and the agent goes there), registration, heartbeats, status
//! reports (the last state of every known task is re-sent on each new stream) and a metrics
//! report every `metrics_interval`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_model::{TaskMetrics, TaskStatusUpdate};
use berth_proto::v1::agent_message::Msg as AgentMsg;
use berth_proto::v1::agent_service_client::AgentServiceClient;
use berth_proto::v1::server_message::Msg as ServerMsg;
use berth_proto::v1::{AgentMessage, Heartbeat, MetricsReport, Register, StatusReport};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

use crate::{supervisor, Agent};

/// The last CPU counter of each container and when it was read.
type CpuCounters = HashMap<String, (u64, Instant)>;

/// What outlives one stream: the last report of each task, and the CPU counters.
#[derive(Default)]
pub(crate) struct Reports {
    /// The last update of every known task, re-sent on each new stream.
    pub(crate) latest: HashMap<String, TaskStatusUpdate>,
    counters: CpuCounters,
}

impl Agent {
    /// Connects to the servers in turn, forever, with a capped back-off between failures.
    pub(crate) async fn sessions(
        self: Arc<Self>,
        address: String,
        mut updates: mpsc::UnboundedReceiver<TaskStatusUpdate>,
    ) {
        let mut reports = Reports::default();
        let mut backoff = Duration::from_millis(100);
        let servers = self.config.servers.clone();
        let mut next = 0;
        let mut redirect: Option<String> = None;
        loop {
            let server = redirect.take().unwrap_or_else(|| {
                next += 1;
                servers[(next - 1) % servers.len()].clone()
            });
            let session = self.session(&server, &address, &mut updates, &mut reports);
            match session.await {
                Ok(()) => {
                    tracing::info!(%server, "server closed the stream");
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    // A follower answers with the leader's address: go there at once.
                    let hint = e
                        .downcast_ref::<tonic::Status>()
                        .and_then(|s| s.metadata().get(berth_proto::LEADER_HINT))
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Some(leader) = hint.filter(|l| *l != server) {
                        tracing::info!(%server, %leader, "redirected to the leader");
                        redirect = Some(leader);
                        continue;
                    }
                    tracing::warn!(%server, "session with server: {e:#}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One stream with `server`, until it ends.
    async fn session(
        &self,
        server: &str,
        address: &str,
        updates: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>,
        reports: &mut Reports,
    ) -> anyhow::Result<()> {
        let channel = self
            .tls
            .dialer
            .connect(server)
            .await
            .with_context(|| format!("connect to {server}"))?;
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        let register = Register {
            node_name: self.config.node_name.clone(),
            address: address.to_owned(),
            cpu: self.config.cpu,
            memory: self.config.memory,
            attributes: self.config.attributes.clone(),
        };
        // The stream opens with the registration and the last report of every known task, in
        // as many parts as they take (ahead of the channel: its room does not bound them).
        let resend = reports
            .latest
            .values()
            .cloned()
            .map(|mut u| {
                u.event = None;
                u.into()
            })
            .collect();
        let first: Vec<AgentMessage> = std::iter::once(AgentMsg::Register(register))
            .chain(status_reports(resend))
            .map(|msg| AgentMessage { msg: Some(msg) })
            .collect();
        let outbound = tokio_stream::iter(first).chain(ReceiverStream::new(rx));
        let mut inbound = client.attach(outbound).await?.into_inner();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        let mut metrics = tokio::time::interval(self.config.metrics_interval);
        // A renewed certificate is reported at once (a CA rotation waits for it).
        let mut serial = self.tls.serial.subscribe();
        // The desired set as this stream's changes built it.
        let mut desired = DesiredSet::default();
        // While a whole set arrives in parts: the tasks whose logs stay.
        let mut kept: Option<std::collections::BTreeSet<String>> = None;
        let mut outbox = Outbox::default();
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    self.contact.heard();
                    match msg.msg {
                        Some(ServerMsg::Registered(r)) => {
                            tracing::info!(%server, "registered");
                            self.contact.registered(Duration::from_millis(r.node_ttl_ms));
                            if r.heartbeat_interval_secs > 0 {
                                let every = Duration::from_secs(u64::from(r.heartbeat_interval_secs));
                                heartbeat = tokio::time::interval(every);
                            }
                        }
                        Some(ServerMsg::Desired(d)) => self.reconcile(d, &mut reports.latest),
                        Some(ServerMsg::Changes(mut c)) => {
                            let retired = std::mem::take(&mut c.retired);
                            if c.reset {
                                kept = c.lists_kept.then(std::collections::BTreeSet::new);
                            }
                            if let Some(kept) = kept.as_mut() {
                                kept.extend(std::mem::take(&mut c.kept));
                            }
                            if let Some(whole) = desired.apply(c) {
                                self.reconcile(whole, &mut reports.latest);
                                if let Some(kept) = kept.take() {
                                    self.keep_logs_of(kept);
                                }
                            }
                            if !retired.is_empty() {
                                self.remove_logs_of(retired);
                            }
                        }
                        Some(ServerMsg::Renew(r)) => {
                            tracing::info!(reason = %r.reason, "renew the certificate now");
                            self.tls.renew_now.notify_one();
                        }
                        Some(ServerMsg::Endpoints(e)) => self.endpoints(e),
                        Some(ServerMsg::Ack(_)) | None => {}
                    }
                }
                Some(update) = updates.recv() => {
                    let mut batch = vec![update];
                    while let Ok(more) = updates.try_recv() {
                        batch.push(more);
                    }
                    for u in &batch {
                        reports.latest.insert(u.task_id.clone(), u.clone());
                    }
                    outbox.status(batch.into_iter().map(Into::into).collect());
                }
                _ = metrics.tick() => {
                    let samples = self.sample(&mut reports.counters).await;
                    outbox.metrics(samples.into_iter().map(Into::into).collect());
                }
                _ = heartbeat.tick() => outbox.beat(serial.borrow_and_update().clone()),
                Ok(()) = serial.changed() => outbox.beat(serial.borrow_and_update().clone()),
                permit = tx.reserve(), if !outbox.is_empty() => {
                    let permit = permit.context("send to the server's stream")?;
                    if let Some(msg) = outbox.next() {
                        permit.send(AgentMessage { msg: Some(msg) });
                    }
                }
            }
        }
    }

    /// Samples the resource usage of every running task. CPU is a rate, so a container's first
    /// sample only records its counter.
    async fn sample(&self, counters: &mut CpuCounters) -> Vec<(String, TaskMetrics)> {
        let now = Instant::now();
        let sampled_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut samples = Vec::new();
        let mut seen = HashSet::new();
        for (task_id, containers) in self.tasks.running() {
            let (mut cpu_units, mut memory_bytes, mut rated) = (0.0, 0, false);
            for name in containers {
                let id = supervisor::container_id(&task_id, &name);
                let Ok(stats) = self.runtime.stats(&id).await else {
                    continue;
                };
                memory_bytes += stats.memory_bytes;
                if let Some((cpu_ns, at)) = counters.get(&id) {
                    let wall = now.duration_since(*at).as_nanos() as f64;
                    if wall > 0.0 {
                        let used = stats.cpu_ns.saturating_sub(*cpu_ns) as f64;
                        cpu_units += used / wall * f64::from(berth_model::CPU_UNITS_PER_VCPU);
                        rated = true;
                    }
                }
                counters.insert(id.clone(), (stats.cpu_ns, now));
                seen.insert(id);
            }
            if rated {
                let metrics = TaskMetrics {
                    cpu_units,
                    memory_bytes,
                    sampled_at,
                };
                samples.push((task_id, metrics));
            }
        }
        counters.retain(|id, _| seen.contains(id));
        samples
    }
}

/// What waits for room in the stream's channel. The session never waits to send: while the
/// server reads slowly (a leader slow to commit holds an agent's reports back), the agent goes on
/// reading what the server sends, and hearing it, instead of fencing itself for a silence of its
/// own making. Waiting messages go heartbeat first, then status reports in order, then metrics.
#[derive(Debug, Default)]
struct Outbox {
    /// A heartbeat is due, naming the certificate serial: one, however many ticks passed.
    beat: Option<String>,
    /// Status reports of at most `berth_proto::REPORT_BYTES` each, in order.
    status: VecDeque<Vec<berth_proto::v1::TaskStatusUpdate>>,
    /// The reports of the latest metrics sample: one not sent yet is out of date.
    metrics: VecDeque<Vec<berth_proto::v1::TaskSample>>,
}

impl Outbox {
    fn beat(&mut self, serial: String) {
        self.beat = Some(serial);
    }

    /// Updates join the last report waiting while it has room: with the server reading
    /// slowly, updates that come one by one still go in full reports.
    fn status(&mut self, updates: Vec<berth_proto::v1::TaskStatusUpdate>) {
        let mut waiting = self.status.pop_back().unwrap_or_default();
        waiting.extend(updates);
        self.status.extend(berth_proto::report_parts(waiting));
    }

    fn metrics(&mut self, samples: Vec<berth_proto::v1::TaskSample>) {
        self.metrics = berth_proto::report_parts(samples).into();
    }

    fn is_empty(&self) -> bool {
        self.beat.is_none() && self.status.is_empty() && self.metrics.is_empty()
    }

    /// The message to send next, if any.
    fn next(&mut self) -> Option<AgentMsg> {
        if let Some(certificate_serial) = self.beat.take() {
            return Some(AgentMsg::Heartbeat(Heartbeat { certificate_serial }));
        }
        if let Some(updates) = self.status.pop_front() {
            return Some(AgentMsg::Status(StatusReport { updates }));
        }
        let samples = self.metrics.pop_front()?;
        Some(AgentMsg::Metrics(MetricsReport { samples }))
    }
}

/// Status updates as reports of at most `berth_proto::REPORT_BYTES` each.
fn status_reports(
    updates: Vec<berth_proto::v1::TaskStatusUpdate>,
) -> impl Iterator<Item = AgentMsg> {
    berth_proto::report_parts(updates)
        .into_iter()
        .map(|updates| AgentMsg::Status(StatusReport { updates }))
}

/// The desired set a stream's changes built so far.
#[derive(Debug, Default)]
struct DesiredSet {
    /// By task ID; none until the stream's first whole set (`reset`): a partial set must never
    /// be reconciled (it would stop every task it lacks).
    tasks: Option<std::collections::BTreeMap<String, berth_proto::v1::TaskAssignment>>,
    /// Tasks the server holds back, left as they are until a change names them.
    held: std::collections::BTreeSet<String>,
}

impl DesiredSet {
    /// Applies one `DesiredChanges`; answers the whole set when it is complete (a set sent in
    /// parts is reconciled only once its last part arrived).
    fn apply(
        &mut self,
        changes: berth_proto::v1::DesiredChanges,
    ) -> Option<berth_proto::v1::DesiredTasks> {
        if changes.reset {
            self.tasks = Some(std::collections::BTreeMap::new());
            self.held.clear();
        }
        let Some(tasks) = self.tasks.as_mut() else {
            tracing::warn!("desired-set changes before the whole set; ignored");
            return None;
        };
        for id in &changes.removed {
            tasks.remove(id);
            self.held.remove(id);
        }
        for a in changes.upserts {
            self.held.remove(&a.task_id);
            tasks.insert(a.task_id.clone(), a);
        }
        self.held.extend(changes.held);
        changes.complete.then(|| berth_proto::v1::DesiredTasks {
            tasks: tasks.values().cloned().collect(),
            held: self.held.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod changes_tests {
    use berth_proto::v1::{DesiredChanges, TaskAssignment};

    use super::DesiredSet;

    fn task(id: &str, memory: u32) -> TaskAssignment {
        TaskAssignment {
            task_id: id.into(),
            memory,
            ..Default::default()
        }
    }

    fn ids(set: &berth_proto::v1::DesiredTasks) -> Vec<(String, u32)> {
        set.tasks
            .iter()
            .map(|t| (t.task_id.clone(), t.memory))
            .collect()
    }

    #[test]
    fn changes_build_the_set_and_a_set_in_parts_is_whole_only_at_its_end() {
        let mut set = DesiredSet::default();
        // Changes before a stream's whole set are not a set: nothing to reconcile.
        let early = DesiredChanges {
            upserts: vec![task("x", 1)],
            complete: true,
            ..Default::default()
        };
        assert!(set.apply(early).is_none());
        // A stream's first set, in two parts: nothing to reconcile after the first.
        let first = DesiredChanges {
            reset: true,
            upserts: vec![task("a", 1), task("b", 1)],
            ..Default::default()
        };
        assert!(set.apply(first).is_none());
        let rest = DesiredChanges {
            upserts: vec![task("c", 1)],
            complete: true,
            ..Default::default()
        };
        let whole = set.apply(rest).expect("complete");
        assert_eq!(
            ids(&whole),
            [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
        );
        // Then changes only: one task changed, one left.
        let change = DesiredChanges {
            upserts: vec![task("b", 2)],
            removed: vec!["a".into()],
            complete: true,
            ..Default::default()
        };
        let whole = set.apply(change).expect("complete");
        assert_eq!(ids(&whole), [("b".into(), 2), ("c".into(), 1)]);
        // A new stream starts over.
        let again = DesiredChanges {
            reset: true,
            upserts: vec![task("d", 1)],
            complete: true,
            ..Default::default()
        };
        let whole = set.apply(again).expect("complete");
        assert_eq!(ids(&whole), [("d".into(), 1)]);
    }

    #[test]
    fn a_held_task_stays_held_until_a_change_names_it() {
        let mut set = DesiredSet::default();
        let first = DesiredChanges {
            reset: true,
            upserts: vec![task("a", 1)],
            held: vec!["h1".into(), "h2".into(), "h3".into()],
            complete: true,
            ..Default::default()
        };
        assert_eq!(set.apply(first).expect("complete").held, ["h1", "h2", "h3"]);
        // Another task's change leaves them held; h1 is sent, h2 leaves the set.
        let change = DesiredChanges {
            upserts: vec![task("a", 2), task("h1", 1)],
            removed: vec!["h2".into()],
            complete: true,
            ..Default::default()
        };
        let whole = set.apply(change).expect("complete");
        assert_eq!(whole.held, ["h3"]);
        assert_eq!(ids(&whole), [("a".into(), 2), ("h1".into(), 1)]);
        // A new whole set says anew.
        let again = DesiredChanges {
            reset: true,
            complete: true,
            ..Default::default()
        };
        assert!(set.apply(again).expect("complete").held.is_empty());
    }
}

#[cfg(test)]
mod outbox_tests {
    use berth_proto::v1::agent_message::Msg;
    use berth_proto::v1::{TaskSample, TaskStatusUpdate};

    use super::Outbox;

    fn update(id: &str) -> TaskStatusUpdate {
        TaskStatusUpdate {
            task_id: id.into(),
            ..Default::default()
        }
    }

    fn sample(id: &str) -> TaskSample {
        TaskSample {
            task_id: id.into(),
            ..Default::default()
        }
    }

    /// What the outbox sends, in order, as short strings.
    fn drain(outbox: &mut Outbox) -> Vec<String> {
        let mut sent = Vec::new();
        while let Some(msg) = outbox.next() {
            sent.push(match msg {
                Msg::Heartbeat(h) => format!("beat {}", h.certificate_serial),
                Msg::Status(r) => {
                    let ids: Vec<_> = r.updates.iter().map(|u| u.task_id.as_str()).collect();
                    format!("status {}", ids.join(","))
                }
                Msg::Metrics(r) => {
                    let ids: Vec<_> = r.samples.iter().map(|s| s.task_id.as_str()).collect();
                    format!("metrics {}", ids.join(","))
                }
                other => format!("{other:?}"),
            });
        }
        assert!(outbox.is_empty());
        sent
    }

    #[test]
    fn waiting_messages_go_beat_first_then_reports_in_order_then_the_latest_metrics() {
        let mut outbox = Outbox::default();
        assert!(outbox.is_empty() && outbox.next().is_none());
        outbox.metrics(vec![sample("old")]);
        outbox.status(vec![update("a"), update("b")]);
        outbox.beat("s1".into());
        outbox.status(vec![update("c")]);
        // Ticks while the channel was full: one heartbeat, with the newest serial; the newest
        // sample only.
        outbox.beat("s2".into());
        outbox.metrics(vec![sample("new")]);
        assert!(!outbox.is_empty());
        assert_eq!(
            drain(&mut outbox),
            ["beat s2", "status a,b,c", "metrics new"]
        );
        // A sample of nothing replaces one waiting, and sends nothing.
        outbox.metrics(vec![sample("stale")]);
        outbox.metrics(Vec::new());
        assert!(outbox.is_empty());
    }

    #[test]
    fn updates_go_in_parts_in_order_and_join_the_last_part_waiting() {
        let mut outbox = Outbox::default();
        let ids: Vec<String> = (0..500).map(|i| format!("task-{i:04}")).collect();
        outbox.status(ids.iter().map(|id| update(id)).collect());
        // More, one by one: they join the last part while it has room.
        let more: Vec<String> = (500..520).map(|i| format!("task-{i:04}")).collect();
        for id in &more {
            outbox.status(vec![update(id)]);
        }
        let ids: Vec<String> = ids.into_iter().chain(more).collect();
        let mut seen = Vec::new();
        let mut parts = 0;
        while let Some(Msg::Status(r)) = outbox.next() {
            parts += 1;
            seen.extend(r.updates.into_iter().map(|u| u.task_id));
        }
        // 520 updates of about 15 bytes, in parts of at most 3 KiB: three, not one for each
        // update that came alone.
        assert_eq!(parts, 3, "520 updates in {parts} parts");
        assert_eq!(seen, ids);
    }
}
