//! What an agent sends after registering: heartbeats (answered with acks), metrics samples
//! (kept in the leader's memory) and task status reports (proposed to the log).

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

impl Reader {
    pub async fn run(self, mut inbound: Streaming<AgentMessage>) {
        self.metrics.agent_connected();
        // What the stream gave after a status report that was not one (read ahead below).
        let mut ahead = None;
        loop {
            let next = match ahead.take() {
                Some(next) => next,
                None => inbound.next().await,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::info!("agent stream ended: {}", error_chain(&e));
                    break;
                }
                None => break,
            };
            self.liveness.seen(&self.node.name);
            let go_on = match msg.msg {
                Some(AgentMsg::Heartbeat(h)) => self.heartbeat(&h.certificate_serial).await,
                Some(AgentMsg::Metrics(report)) => {
                    self.samples(report);
                    true
                }
                Some(AgentMsg::Status(report)) => {
                    let updates = join_ready(report.updates, &mut inbound, &mut ahead);
                    self.status(updates).await
                }
                _ => true,
            };
            if !go_on {
                break;
            }
        }
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
        self.tx.send(Ok(Box::new(ack))).await.is_ok()
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
