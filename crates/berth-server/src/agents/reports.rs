//! What an agent sends after registering: heartbeats (answered with acks), metrics samples
//! (kept in the leader's memory) and task status reports (proposed to the log).

use std::future::Future;
use std::pin::Pin;

use berth_model::{Node, NodeStatus, TaskStatusUpdate};
use berth_proto::v1::agent_message::Msg as AgentMsg;
use berth_proto::v1::server_message::Msg as ServerMsg;
use berth_proto::v1::{AgentMessage, ServerMessage};
use berth_state::Command;
use berth_store::{error_chain, Store};
use futures::FutureExt as _;
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use super::Liveness;
use crate::metrics::Metrics;
use crate::{now_ms, status, Usage};

/// The most status updates proposed as one write: reports that arrived together are joined
/// up to this.
const MAX_UPDATES: usize = 1_000;

/// Reads one agent's stream until it ends.
pub(super) struct Reader {
    pub store: Store,
    pub liveness: Liveness,
    pub usage: Usage,
    pub metrics: Metrics,
    /// The node as the agent registered it.
    pub node: Node,
    pub tx: super::Outbound,
}

/// What a stream gave: a message, its error, or its end.
type Next = Option<Result<AgentMessage, tonic::Status>>;

/// `updates` with those of the status reports `inbound` holds ready behind them (the parts of
/// a report an agent split, reports that queued while the last was proposed), up to
/// [`MAX_UPDATES`]: proposed as one write. The first thing ready that is not a status report
/// (another message, an error, the end) is left in `ahead`, for the reader to take next.
fn join_ready<S>(
    mut updates: Vec<berth_proto::v1::TaskStatusUpdate>,
    inbound: &mut S,
    ahead: &mut Option<Next>,
) -> Vec<berth_proto::v1::TaskStatusUpdate>
where
    S: futures::Stream<Item = Result<AgentMessage, tonic::Status>> + Unpin,
{
    while updates.len() < MAX_UPDATES {
        match inbound.next().now_or_never() {
            Some(Some(Ok(AgentMessage {
                msg: Some(AgentMsg::Status(more)),
            }))) => updates.extend(more.updates),
            Some(other) => {
                *ahead = Some(other);
                break;
            }
            None => break,
        }
    }
    updates
}

/// What the reader does with each message of an agent's stream ([`Reader`] with the store;
/// the tests' with fakes).
trait Handle {
    /// A message came: the agent is alive.
    fn seen(&self);
    /// Answers a heartbeat; `false` ends the stream.
    fn heartbeat(&self, serial: &str) -> impl Future<Output = bool> + Send;
    fn samples(&self, report: berth_proto::v1::MetricsReport);
    /// Writes status updates; `false` (a failed write) ends the stream.
    fn status(
        &self,
        updates: Vec<berth_proto::v1::TaskStatusUpdate>,
    ) -> impl Future<Output = bool> + Send;
}

/// The next message: the one read ahead, if any, else the stream's next.
async fn next_message<S>(ahead: &mut Option<Next>, inbound: &mut S) -> Next
where
    S: futures::Stream<Item = Result<AgentMessage, tonic::Status>> + Unpin,
{
    match ahead.take() {
        Some(next) => next,
        None => inbound.next().await,
    }
}

/// Reads an agent's stream until it ends. One status write is in flight at a time, and the
/// stream is read on meanwhile: a heartbeat behind a report is answered (and the agent counted
/// alive) while the report's write waits for its commit, which on a loaded leader takes
/// seconds, long enough before for the node to be declared lost and its agent to fence itself.
/// A write is started (polled) before the next message is handled, so whatever that message
/// proposes (a heartbeat's registration) comes after it. Updates read meanwhile wait, in order,
/// for the next write; once [`MAX_UPDATES`] wait, the stream is not read until the write ends
/// (the agent's sends then wait: back-pressure on the agents, not on Raft). When the stream
/// ends, the updates still waiting are dropped: an agent sends the last status of every task
/// as it connects again, and written after that (this server forwarding to a new leader)
/// they would overwrite newer ones.
async fn read_stream<H, S>(handler: &H, mut inbound: S)
where
    H: Handle + Sync,
    S: futures::Stream<Item = Result<AgentMessage, tonic::Status>> + Unpin + Send,
{
    // What the stream gave after a status report that was not one (read ahead below).
    let mut ahead = None;
    let mut writing: Option<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
    let mut waiting: Vec<berth_proto::v1::TaskStatusUpdate> = Vec::new();
    loop {
        tokio::select! {
            // First: a write just made is started before the next message is handled.
            biased;
            written = async { writing.as_mut().expect("a write in flight").await }, if writing.is_some() => {
                writing = None;
                if !written {
                    break;
                }
                if !waiting.is_empty() {
                    writing = Some(Box::pin(handler.status(std::mem::take(&mut waiting))));
                }
            }
            next = next_message(&mut ahead, &mut inbound), if waiting.len() < MAX_UPDATES => {
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::info!("agent stream ended: {}", error_chain(&e));
                        break;
                    }
                    None => break,
                };
                handler.seen();
                let go_on = match msg.msg {
                    Some(AgentMsg::Heartbeat(h)) => handler.heartbeat(&h.certificate_serial).await,
                    Some(AgentMsg::Metrics(report)) => {
                        handler.samples(report);
                        true
                    }
                    Some(AgentMsg::Status(report)) if writing.is_none() => {
                        let updates = join_ready(report.updates, &mut inbound, &mut ahead);
                        writing = Some(Box::pin(handler.status(updates)));
                        true
                    }
                    Some(AgentMsg::Status(report)) => {
                        waiting.extend(report.updates);
                        true
                    }
                    _ => true,
                };
                if !go_on {
                    break;
                }
            }
        }
    }
}

impl Handle for Reader {
    fn seen(&self) {
        self.liveness.seen(&self.node.name);
    }

    fn heartbeat(&self, serial: &str) -> impl Future<Output = bool> + Send {
        self.heartbeat(serial)
    }

    fn samples(&self, report: berth_proto::v1::MetricsReport) {
        self.samples(report);
    }

    fn status(
        &self,
        updates: Vec<berth_proto::v1::TaskStatusUpdate>,
    ) -> impl Future<Output = bool> + Send {
        self.status(updates)
    }
}

impl Reader {
    pub async fn run(self, inbound: Streaming<AgentMessage>) {
        self.metrics.agent_connected();
        read_stream(&self, inbound).await;
        self.metrics.agent_disconnected();
        tracing::info!("agent disconnected");
    }

    /// Keeps the samples of this node's own tasks, stamped on receipt (an agent's clock is not
    /// trusted); samples of other tasks are dropped.
    fn samples(&self, report: berth_proto::v1::MetricsReport) {
        let samples = berth_proto::task_samples(report);
        let now = crate::now_ms();
        let name = &self.node.name;
        let own: Vec<bool> = self.store.read_stale(|s| {
            samples
                .iter()
                .map(|(id, _)| {
                    s.task_by_id(id)
                        .is_some_and(|t| t.node.as_deref() == Some(name.as_str()))
                })
                .collect()
        });
        for ((task_id, mut metrics), own) in samples.into_iter().zip(own) {
            if own {
                metrics.sampled_at = now;
                self.usage.record(task_id, metrics);
            }
        }
    }

    /// Acknowledges a heartbeat, noting when the agent uses a certificate of a running CA
    /// rotation's new CA (`serial`, the one its heartbeat names). A node declared DOWN whose
    /// agent is still here (a race with the node monitor, a blip longer than the TTL) is ACTIVE
    /// again; its lost tasks stay lost and the agent removes their containers. A removed node
    /// is not registered again: the stream ends.
    async fn heartbeat(&self, serial: &str) -> bool {
        let name = &self.node.name;
        // A running CA rotation counts the node as moved once its agent uses a certificate of
        // the new CA.
        if self
            .store
            .read_stale(|s| s.certificate_use_news(name, serial))
        {
            let in_use = Command::CertificateInUse {
                node: name.clone(),
                serial: serial.to_owned(),
                at: now_ms(),
            };
            match self.store.propose(in_use).await {
                Ok(_) => tracing::info!(serial, "the agent uses its certificate of the new CA"),
                Err(e) => tracing::warn!(
                    "record that the agent uses certificate {serial}: {}",
                    error_chain(&e)
                ),
            }
        }
        let Some(status) = self.store.read_stale(|s| s.node(name).map(|n| n.status)) else {
            let _ = self.tx.send(Err(super::removed(name))).await;
            return false;
        };
        if status == NodeStatus::Down {
            tracing::info!("a DOWN node's agent is still connected; registering it again");
            let again = Command::RegisterNode {
                node: self.node.clone(),
                at: now_ms(),
            };
            if let Err(e) = self.store.propose(again).await {
                tracing::warn!("register again: {}", error_chain(&e));
            }
            if super::removed_meanwhile(&self.store, name).await {
                let _ = self.tx.send(Err(super::removed(name))).await;
                return false;
            }
        }
        let ack = ServerMessage {
            msg: Some(ServerMsg::Ack(berth_proto::v1::Ack {})),
        };
        // Not waited for: with the channel full, the agent hears the messages ahead of it.
        !matches!(
            self.tx.try_send(Ok(Box::new(ack))),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
        )
    }

    /// Proposes status updates; a failed proposal ends the stream (the agent reconnects and
    /// sends its reports again).
    async fn status(&self, updates: Vec<berth_proto::v1::TaskStatusUpdate>) -> bool {
        // Each update stands alone: one this server cannot read (an agent newer than it) is
        // dropped, not the reports joined with it.
        let updates: Vec<TaskStatusUpdate> = updates
            .into_iter()
            .filter_map(|u| {
                let task_id = u.task_id.clone();
                TaskStatusUpdate::try_from(u)
                    .map_err(|e| {
                        tracing::warn!(
                            task_id,
                            "drop a malformed status update: {}",
                            error_chain(&e)
                        );
                    })
                    .ok()
            })
            .collect();
        if updates.is_empty() {
            return true;
        }
        let command = Command::ReportTaskStatus {
            node: self.node.name.clone(),
            updates,
            at: now_ms(),
        };
        if let Err(e) = self.store.propose(command).await {
            tracing::warn!("record status report: {}", error_chain(&e));
            let _ = self.tx.send(Err(status::from_store(e))).await;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use berth_proto::v1::{Heartbeat, StatusReport, TaskStatusUpdate};

    use super::*;

    fn status(ids: &[&str]) -> Result<AgentMessage, tonic::Status> {
        let updates = ids
            .iter()
            .map(|id| TaskStatusUpdate {
                task_id: (*id).to_owned(),
                ..Default::default()
            })
            .collect();
        Ok(AgentMessage {
            msg: Some(AgentMsg::Status(StatusReport { updates })),
        })
    }

    fn ids(updates: &[TaskStatusUpdate]) -> Vec<&str> {
        updates.iter().map(|u| u.task_id.as_str()).collect()
    }

    fn first() -> Vec<TaskStatusUpdate> {
        vec![TaskStatusUpdate {
            task_id: "a".into(),
            ..Default::default()
        }]
    }

    #[test]
    fn reports_ready_behind_a_report_join_it_until_another_message() {
        let heartbeat = Ok(AgentMessage {
            msg: Some(AgentMsg::Heartbeat(Heartbeat::default())),
        });
        let mut inbound = futures::stream::iter(vec![
            status(&["b", "c"]),
            status(&["d"]),
            heartbeat,
            status(&["e"]),
        ]);
        let mut ahead = None;
        let updates = join_ready(first(), &mut inbound, &mut ahead);
        assert_eq!(ids(&updates), ["a", "b", "c", "d"]);
        // The heartbeat is kept for the reader, and the report after it is not taken.
        assert!(matches!(
            ahead,
            Some(Some(Ok(AgentMessage {
                msg: Some(AgentMsg::Heartbeat(_))
            })))
        ));
        assert!(inbound.next().now_or_never().flatten().is_some());
    }

    #[test]
    fn nothing_ready_leaves_the_report_alone_and_an_end_is_kept() {
        let mut ahead = None;
        let mut pending = futures::stream::pending();
        assert_eq!(ids(&join_ready(first(), &mut pending, &mut ahead)), ["a"]);
        assert!(ahead.is_none());
        let mut ended = futures::stream::iter(vec![status(&["b"])]);
        assert_eq!(
            ids(&join_ready(first(), &mut ended, &mut ahead)),
            ["a", "b"]
        );
        assert!(
            matches!(ahead, Some(None)),
            "the end is the reader's to see"
        );
        let mut failed = futures::stream::iter(vec![Err(tonic::Status::internal("x"))]);
        let mut ahead = None;
        join_ready(first(), &mut failed, &mut ahead);
        assert!(matches!(ahead, Some(Some(Err(_)))));
    }

    /// A handler that records what the reader does, whose status writes each wait for a
    /// permit the test gives.
    struct Fake {
        events: std::sync::Mutex<Vec<String>>,
        permits: tokio::sync::Semaphore,
        writes_fail: bool,
    }

    impl Fake {
        fn new(writes_fail: bool) -> Self {
            Self {
                events: std::sync::Mutex::default(),
                permits: tokio::sync::Semaphore::new(0),
                writes_fail,
            }
        }

        fn push(&self, event: String) {
            self.events.lock().expect("events").push(event);
        }

        fn events(&self) -> Vec<String> {
            self.events.lock().expect("events").clone()
        }

        /// Lets the reader run until `done` holds of the events (bounded).
        async fn until(&self, done: impl Fn(&[String]) -> bool) {
            for _ in 0..1_000 {
                if done(&self.events()) {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("the reader never got there: {:?}", self.events());
        }
    }

    impl Handle for Fake {
        fn seen(&self) {
            self.push("seen".into());
        }

        fn heartbeat(&self, _serial: &str) -> impl Future<Output = bool> + Send {
            self.push("heartbeat".into());
            async { true }
        }

        fn samples(&self, _report: berth_proto::v1::MetricsReport) {
            self.push("samples".into());
        }

        fn status(&self, updates: Vec<TaskStatusUpdate>) -> impl Future<Output = bool> + Send {
            let ids = ids(&updates).join(" ");
            // As the store's: nothing happens until the write is first polled.
            async move {
                self.push(format!("write {ids}"));
                self.permits.acquire().await.expect("permit").forget();
                self.push(format!("written {ids}"));
                !self.writes_fail
            }
        }
    }

    fn heartbeat() -> Result<AgentMessage, tonic::Status> {
        Ok(AgentMessage {
            msg: Some(AgentMsg::Heartbeat(Heartbeat::default())),
        })
    }

    type Inbound = tokio::sync::mpsc::Sender<Result<AgentMessage, tonic::Status>>;

    fn stream() -> (
        Inbound,
        tokio_stream::wrappers::ReceiverStream<Result<AgentMessage, tonic::Status>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn send(tx: &Inbound, msg: Result<AgentMessage, tonic::Status>) {
        tx.send(msg).await.expect("the reader reads");
    }

    /// Sends report `a`, then report `b` once `a`'s write has begun, and waits until `b` is
    /// read (the write of `a` still waiting for a permit).
    async fn a_then_b(fake: &Fake, tx: &Inbound) {
        send(tx, status(&["a"])).await;
        fake.until(|e| e.len() == 2).await;
        send(tx, status(&["b"])).await;
        fake.until(|e| e.len() == 3).await;
    }

    /// Runs the reader beside `drive` until both end; the reader must end within 5 s.
    async fn reader_ends(
        fake: &Fake,
        inbound: tokio_stream::wrappers::ReceiverStream<Result<AgentMessage, tonic::Status>>,
        drive: impl Future<Output = ()>,
    ) {
        tokio::time::timeout(
            Duration::from_secs(5),
            futures::future::join(read_stream(fake, inbound), drive),
        )
        .await
        .expect("the reader ends");
    }

    #[tokio::test]
    async fn a_heartbeat_behind_a_report_is_answered_while_its_write_waits() {
        let fake = Fake::new(false);
        let (tx, inbound) = stream();
        let drive = async {
            send(&tx, status(&["a"])).await;
            send(&tx, heartbeat()).await;
            fake.until(|e| e.iter().any(|e| e == "heartbeat")).await;
            assert_eq!(fake.events(), ["seen", "write a", "seen", "heartbeat"]);
            // Reports read while the write waits are the next write, joined, in order.
            send(&tx, status(&["b"])).await;
            send(&tx, status(&["c"])).await;
            fake.until(|e| e.len() == 6).await;
            fake.permits.add_permits(1);
            fake.until(|e| e.iter().any(|e| e == "write b c")).await;
            fake.permits.add_permits(1);
            fake.until(|e| e.iter().any(|e| e == "written b c")).await;
            drop(tx);
        };
        tokio::join!(read_stream(&fake, inbound), drive);
        assert_eq!(
            fake.events(),
            [
                "seen",
                "write a",
                "seen",
                "heartbeat",
                "seen",
                "seen",
                "written a",
                "write b c",
                "written b c"
            ]
        );
    }

    #[tokio::test]
    async fn what_waits_when_the_stream_ends_is_dropped_and_the_write_in_flight_is_not_waited_for()
    {
        let fake = Fake::new(false);
        let (tx, inbound) = stream();
        let drive = async {
            a_then_b(&fake, &tx).await;
            drop(tx);
        };
        // The reader ends with the stream, its write still waiting for a permit.
        reader_ends(&fake, inbound, drive).await;
        assert_eq!(fake.events(), ["seen", "write a", "seen"]);
    }

    #[tokio::test]
    async fn a_full_queue_behind_a_write_stops_the_reading_until_it_ends() {
        let fake = Fake::new(false);
        let (tx, inbound) = stream();
        let many: Vec<String> = (0..MAX_UPDATES).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let drive = async {
            send(&tx, status(&["a"])).await;
            fake.until(|e| e.len() == 2).await;
            send(&tx, status(&refs)).await;
            send(&tx, heartbeat()).await;
            fake.until(|e| e.len() == 3).await;
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert!(!fake.events().contains(&"heartbeat".to_owned()));
            fake.permits.add_permits(2);
            fake.until(|e| e.iter().any(|e| e == "heartbeat")).await;
            drop(tx);
        };
        tokio::join!(read_stream(&fake, inbound), drive);
        let events = fake.events();
        let at = |name: &str| events.iter().position(|e| e.starts_with(name));
        assert!(at("written a") < at("write m0") && at("write m0") < at("heartbeat"));
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_stream_and_drops_what_waited() {
        let fake = Fake::new(true);
        let (tx, inbound) = stream();
        let drive = async {
            a_then_b(&fake, &tx).await;
            fake.permits.add_permits(10);
        };
        // The stream stays open (`tx` lives on): the reader ends on its own.
        reader_ends(&fake, inbound, drive).await;
        assert_eq!(fake.events(), ["seen", "write a", "seen", "written a"]);
        drop(tx);
    }

    #[test]
    fn a_join_stops_at_its_bound() {
        let many: Vec<String> = (0..MAX_UPDATES).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut inbound = futures::stream::iter(vec![status(&refs), status(&["late"])]);
        let mut ahead = None;
        let updates = join_ready(first(), &mut inbound, &mut ahead);
        assert_eq!(updates.len(), MAX_UPDATES + 1);
        assert!(ahead.is_none());
        let rest: Vec<_> = inbound.collect::<Vec<_>>().now_or_never().expect("ready");
        assert_eq!(rest.len(), 1, "the next report stays for the next write");
    }
}
