//! The agent stream: registration, heartbeats, status reports in; the node's desired task set
//! out, pushed again whenever it changes.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use berth_model::{EventLog, Node, NodeStatus, Resources, TaskStatusUpdate};
use berth_proto::v1::agent_message::Msg as AgentMsg;
use berth_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use berth_proto::v1::server_message::Msg as ServerMsg;
use berth_proto::v1::{AgentMessage, DesiredTasks, Registered, ServerMessage, TaskAssignment};
use berth_store::{Command, State, Store};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::{now_ms, status, Usage};

/// Heartbeats the leader takes per second across all agents, at most: larger clusters
/// heartbeat less often (as Nomad's `max_heartbeats_per_second`), within the node TTL.
const MAX_HEARTBEATS_PER_SEC: usize = 2_500;

/// Seconds between an agent's heartbeats in a cluster of `nodes`: 1 up to 2,500 nodes, then
/// one more per 2,500, but never more than a third of the TTL (so a node misses at least two
/// before it is declared lost). Any message from an agent counts, not only heartbeats.
pub fn heartbeat_interval_secs(nodes: usize, ttl: std::time::Duration) -> u32 {
    let wanted = nodes.div_ceil(MAX_HEARTBEATS_PER_SEC).max(1) as u64;
    let cap = (ttl.as_secs() / 3).max(1);
    u32::try_from(wanted.min(cap)).unwrap_or(1)
}

/// Liveness of connected agents, kept in the leader's memory only (never in the Raft log).
#[derive(Clone, Default)]
pub struct Liveness(Arc<Mutex<HashMap<String, Instant>>>);

impl Liveness {
    fn seen(&self, node: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node.to_owned(), Instant::now());
    }

    /// When the node was last heard from, if it ever was by this server.
    pub fn last_seen(&self, node: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .copied()
    }
}

pub struct AgentServiceImpl {
    store: Store,
    liveness: Liveness,
    usage: Usage,
    node_ttl: std::time::Duration,
    metrics: crate::metrics::Metrics,
}

impl AgentServiceImpl {
    pub fn new(
        store: Store,
        liveness: Liveness,
        usage: Usage,
        node_ttl: std::time::Duration,
        metrics: crate::metrics::Metrics,
    ) -> AgentServiceServer<Self> {
        AgentServiceServer::new(Self {
            store,
            liveness,
            usage,
            node_ttl,
            metrics,
        })
    }
}

/// Everything the node should run or stop, with the container definitions to do it.
pub fn desired_tasks(state: &State, node: &str) -> DesiredTasks {
    let tasks = state
        .tasks_on(node)
        .filter(|t| !t.is_stopped())
        .filter_map(|t| {
            let def = state.task_definition(&t.namespace, &t.task_definition)?;
            Some(TaskAssignment {
                task_id: t.task_id.clone(),
                namespace: t.namespace.clone(),
                task_definition: t.task_definition.to_string(),
                desired_status: berth_proto::v1::DesiredStatus::from(t.desired_status) as i32,
                cpu: t.cpu,
                memory: t.memory,
                containers: def.containers.iter().cloned().map(Into::into).collect(),
                last_status: berth_proto::v1::TaskStatus::from(t.last_status) as i32,
            })
        })
        .collect();
    DesiredTasks { tasks }
}

/// UNAVAILABLE with the leader's address in the `berth-leader` metadata, when known.
fn not_leader(store: &Store) -> Status {
    status::from_store(berth_store::StoreError::NotLeader {
        leader_id: None,
        leader_addr: store.leader_addr().filter(|_| !store.is_leader()),
    })
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    type AttachStream = OutStream;

    async fn attach(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("stream closed before registering"))??;
        let Some(AgentMsg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        berth_model::validate_name("nodeName", &reg.node_name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Agents keep their stream to the leader, which tracks their liveness in memory.
        if !self.store.is_leader() {
            return Err(not_leader(&self.store));
        }
        let node = Node {
            name: reg.node_name.clone(),
            address: reg.address,
            status: NodeStatus::Active,
            attributes: reg.attributes.into_iter().collect::<BTreeMap<_, _>>(),
            cpu: Resources {
                total: reg.cpu,
                allocated: 0,
            },
            memory: Resources {
                total: reg.memory,
                allocated: 0,
            },
            registered_at: now_ms(),
            events: EventLog::default(),
        };
        // Seen before it is ACTIVE again: otherwise the node monitor could find it ACTIVE with
        // a heartbeat older than the TTL and declare it lost once more.
        self.liveness.seen(&reg.node_name);
        self.store
            .propose(Command::RegisterNode {
                node: node.clone(),
                at: now_ms(),
            })
            .await
            .map_err(status::from_store)?;
        tracing::info!(node = %reg.node_name, "agent registered");

        let (tx, rx) = mpsc::channel::<Result<ServerMessage, Status>>(16);
        let registered = Registered {
            heartbeat_interval_secs: heartbeat_interval_secs(
                self.store.read_stale(|s| s.nodes().count()),
                self.node_ttl,
            ),
            node_ttl_ms: u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX),
        };
        let _ = tx
            .send(Ok(ServerMessage {
                msg: Some(ServerMsg::Registered(registered)),
            }))
            .await;

        // Push the desired set now and whenever it changes.
        let node_name = reg.node_name.clone();
        let store = self.store.clone();
        let push_tx = tx.clone();
        tokio::spawn(async move {
            let mut changes = store.watch_node(&node_name);
            let mut leader = store.leadership();
            let mut last_sent = None;
            loop {
                if !*leader.borrow_and_update() {
                    // Send the agent to the new leader.
                    let _ = push_tx.send(Err(not_leader(&store))).await;
                    return;
                }
                let desired = store.read_stale(|s| desired_tasks(s, &node_name));
                if last_sent.as_ref() != Some(&desired) {
                    let msg = ServerMessage {
                        msg: Some(ServerMsg::Desired(desired.clone())),
                    };
                    if push_tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last_sent = Some(desired);
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    changed = leader.changed() => if changed.is_err() { return },
                    () = push_tx.closed() => return,
                }
            }
        });

        // Read heartbeats and status reports until the agent goes away.
        let store = self.store.clone();
        let liveness = self.liveness.clone();
        let usage = self.usage.clone();
        let node_name = reg.node_name;
        let metrics = self.metrics.clone();
        metrics.agent_connected();
        tokio::spawn(async move {
            loop {
                let msg = match inbound.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::info!(node = %node_name, "agent stream ended: {e}");
                        break;
                    }
                    None => break,
                };
                liveness.seen(&node_name);
                let report = match msg.msg {
                    Some(AgentMsg::Status(report)) => report,
                    Some(AgentMsg::Heartbeat(_)) => {
                        // A node declared DOWN whose agent is still here (a race with the node
                        // monitor, a blip longer than the TTL) is ACTIVE again; its lost tasks
                        // stay lost and the agent removes their containers.
                        let down = store.read_stale(|s| {
                            s.node(&node_name)
                                .is_none_or(|n| n.status == NodeStatus::Down)
                        });
                        if down {
                            tracing::info!(node = %node_name, "a DOWN node's agent is still connected; registering it again");
                            let again = Command::RegisterNode {
                                node: node.clone(),
                                at: now_ms(),
                            };
                            if let Err(e) = store.propose(again).await {
                                tracing::warn!(node = %node_name, "register again: {e}");
                            }
                        }
                        let ack = ServerMessage {
                            msg: Some(ServerMsg::Ack(berth_proto::v1::Ack {})),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Some(AgentMsg::Metrics(metrics)) => {
                        for s in metrics.samples {
                            if let Some(m) = s.metrics {
                                let m = berth_model::TaskMetrics {
                                    cpu_units: m.cpu_units,
                                    memory_bytes: m.memory_bytes,
                                    sampled_at: m.sampled_at,
                                };
                                usage.record(s.task_id, m);
                            }
                        }
                        continue;
                    }
                    _ => continue,
                };
                let updates: Result<Vec<TaskStatusUpdate>, _> =
                    report.updates.into_iter().map(TryInto::try_into).collect();
                let updates = match updates {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(node = %node_name, "drop malformed status report: {e}");
                        continue;
                    }
                };
                let command = Command::ReportTaskStatus {
                    node: node_name.clone(),
                    updates,
                    at: now_ms(),
                };
                if let Err(e) = store.propose(command).await {
                    tracing::warn!(node = %node_name, "record status report: {e}");
                    let _ = tx.send(Err(status::from_store(e))).await;
                    break;
                }
            }
            metrics.agent_disconnected();
            tracing::info!(node = %node_name, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::heartbeat_interval_secs;

    #[test]
    fn large_clusters_heartbeat_less_often_within_the_ttl() {
        let ttl = Duration::from_secs(10);
        assert_eq!(heartbeat_interval_secs(0, ttl), 1);
        assert_eq!(heartbeat_interval_secs(2_500, ttl), 1);
        assert_eq!(heartbeat_interval_secs(2_501, ttl), 2);
        assert_eq!(
            heartbeat_interval_secs(10_000, ttl),
            3,
            "a third of the TTL at most"
        );
        assert_eq!(heartbeat_interval_secs(10_000, Duration::from_secs(60)), 4);
        assert_eq!(heartbeat_interval_secs(10_000, Duration::from_secs(2)), 1);
    }
}
