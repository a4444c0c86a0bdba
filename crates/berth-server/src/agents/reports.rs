//! What an agent sends after registering: heartbeats (answered with acks), metrics samples
//! (kept in the leader's memory) and task status reports (proposed to the log).

use berth_model::{Node, NodeStatus, TaskStatusUpdate};
use berth_proto::v1::agent_message::Msg as AgentMsg;
use berth_proto::v1::server_message::Msg as ServerMsg;
use berth_proto::v1::{AgentMessage, ServerMessage, StatusReport};
use berth_state::Command;
use berth_store::{error_chain, Store};
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use super::Liveness;
use crate::metrics::Metrics;
use crate::{now_ms, status, Usage};

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

impl Reader {
    pub async fn run(self, mut inbound: Streaming<AgentMessage>) {
        self.metrics.agent_connected();
        loop {
            let msg = match inbound.next().await {
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
                Some(AgentMsg::Status(report)) => self.status(report).await,
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

    /// Proposes a status report; a failed proposal ends the stream (the agent reconnects and
    /// sends its reports again).
    async fn status(&self, report: StatusReport) -> bool {
        let updates: Result<Vec<TaskStatusUpdate>, _> =
            report.updates.into_iter().map(TryInto::try_into).collect();
        let updates = match updates {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("drop malformed status report: {}", error_chain(&e));
                return true;
            }
        };
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
