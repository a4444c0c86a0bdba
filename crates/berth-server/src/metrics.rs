//! Prometheus metrics on HTTP `/metrics`, served on the same listen address as the gRPC
//! services: Raft progress, tasks by state, placements and scheduling latency, agent
//! connections, and API latency per method.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use berth_model::{NodeStatus, TaskStatus};
use berth_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabel {
    namespace: String,
    /// Empty for tasks run on their own.
    service: String,
}

/// A counter of seconds that may count fractions.
type Seconds = Counter<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// The server's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    raft_term: Gauge,
    raft_commit: Gauge,
    raft_applied: Gauge,
    raft_apply_lag: Gauge,
    raft_leader: Gauge,
    raft_failed_writes: Counter,
    tasks: Family<StateLabel, Gauge>,
    nodes: Family<StateLabel, Gauge>,
    objects: Family<KindLabel, Gauge>,
    store_log_entries: Gauge,
    store_log_bytes: Gauge,
    store_object_bytes: Gauge,
    store_file_bytes: Gauge,
    pub placements: Counter,
    pub scheduling_latency: Histogram,
    pub agent_connections: Gauge,
    api_latency: Family<MethodLabel, Histogram, fn() -> Histogram>,
    usage_vcpu: Family<UsageLabel, Seconds>,
    usage_gb: Family<UsageLabel, Seconds>,
    usage_used_vcpu: Family<UsageLabel, Seconds>,
}

fn latency_buckets() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// `metric`, registered in `registry` as `name` with `help`.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let r = &mut registry;
        let inner = Inner {
            raft_term: registered(r, "raft_term", "Current Raft term", Gauge::default()),
            raft_commit: registered(
                r,
                "raft_commit_index",
                "Last Raft log index known committed",
                Gauge::default(),
            ),
            raft_applied: registered(
                r,
                "raft_applied_index",
                "Last Raft log index applied to this server's state",
                Gauge::default(),
            ),
            raft_apply_lag: registered(
                r,
                "raft_apply_lag",
                "Committed entries this server has not applied yet",
                Gauge::default(),
            ),
            raft_leader: registered(
                r,
                "raft_is_leader",
                "1 when this server leads",
                Gauge::default(),
            ),
            raft_failed_writes: registered(
                r,
                "raft_failed_writes",
                "Writes begun on this server (API requests, agents' reports, controllers) that failed to commit: no leader, no quorum in time, leadership lost",
                Counter::default(),
            ),
            tasks: registered(r, "tasks", "Tasks by last status", Family::default()),
            nodes: registered(r, "nodes", "Nodes by status", Family::default()),
            objects: registered(
                r,
                "objects",
                "Objects in this server's state by kind (stopped tasks until the retention removes them, the retention's tombstones, kept answers)",
                Family::default(),
            ),
            store_log_entries: registered(
                r,
                "store_log_entries",
                "Entries in this server's Raft log (since the last purge)",
                Gauge::default(),
            ),
            store_log_bytes: registered(
                r,
                "store_log_bytes",
                "Bytes of this server's Raft log entries as stored (compressed)",
                Gauge::default(),
            ),
            store_object_bytes: registered(
                r,
                "store_object_bytes",
                "Bytes of the state on this server's disk: its current snapshot (compressed)",
                Gauge::default(),
            ),
            store_file_bytes: registered(
                r,
                "store_file_bytes",
                "Length of this server's database file (raft.redb; it grows in steps and is reused)",
                Gauge::default(),
            ),
            placements: registered(
                r,
                "placements",
                "Tasks placed on nodes by this server's scheduler",
                Counter::default(),
            ),
            scheduling_latency: registered(
                r,
                "scheduling_latency_seconds",
                "Time of one scheduling round, from reading the state to the committed placements",
                latency_buckets(),
            ),
            agent_connections: registered(
                r,
                "agent_connections",
                "Agents connected to this server",
                Gauge::default(),
            ),
            api_latency: registered(
                r,
                "api_request_duration_seconds",
                "gRPC request latency by method",
                Family::new_with_constructor(latency_buckets),
            ),
            usage_vcpu: registered(
                r,
                "usage_vcpu_seconds",
                "Requested vCPU-seconds in the metering ledger's closed buckets",
                Family::default(),
            ),
            usage_gb: registered(
                r,
                "usage_memory_gb_seconds",
                "Requested GB-seconds of memory in the metering ledger's closed buckets",
                Family::default(),
            ),
            usage_used_vcpu: registered(
                r,
                "usage_used_vcpu_seconds",
                "Used vCPU-seconds (from samples) in the metering ledger's closed buckets",
                Family::default(),
            ),
            registry,
        };
        Self(Arc::new(inner))
    }
}

impl Metrics {
    pub fn placed(&self, n: usize) {
        self.0.placements.inc_by(n as u64);
    }

    pub fn scheduling_round(&self, seconds: f64) {
        self.0.scheduling_latency.observe(seconds);
    }

    pub fn agent_connected(&self) {
        self.0.agent_connections.inc();
    }

    pub fn agent_disconnected(&self) {
        self.0.agent_connections.dec();
    }

    fn api_request(&self, method: &str, seconds: f64) {
        self.0
            .api_latency
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    /// The text exposition, with scrape-time values refreshed from `store`.
    pub fn render(&self, store: &Store) -> String {
        let status = store.cluster_status();
        let i = &self.0;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        i.raft_term.set(as_i64(status.term));
        i.raft_commit.set(as_i64(status.commit_index));
        i.raft_applied.set(as_i64(status.applied_index));
        i.raft_apply_lag.set(as_i64(
            status.commit_index.saturating_sub(status.applied_index),
        ));
        i.raft_leader
            .set(i64::from(status.leader == Some(status.id)));
        // Counted by the store; only this sets it.
        i.raft_failed_writes
            .inner()
            .store(store.failed_writes(), std::sync::atomic::Ordering::Relaxed);
        let stored = store.stored();
        i.store_log_entries.set(as_i64(stored.log_entries));
        i.store_log_bytes.set(as_i64(stored.log_bytes));
        i.store_object_bytes.set(as_i64(stored.object_bytes));
        i.store_file_bytes
            .set(as_i64(stored.file_bytes.unwrap_or(0)));
        let (counts, nodes, totals, objects) = store.read_stale_queued(|s| {
            // Counted as tasks change, not read here.
            let mut counts: std::collections::HashMap<_, _> = s
                .live_counts()
                .map(|(st, n)| (st, i64::try_from(n).unwrap_or(i64::MAX)))
                .collect();
            let stopped = i64::try_from(s.stopped_count()).unwrap_or(i64::MAX);
            *counts.entry(TaskStatus::Stopped).or_insert(0) += stopped;
            let mut nodes = std::collections::HashMap::new();
            for n in s.nodes() {
                *nodes.entry(n.status).or_insert(0i64) += 1;
            }
            let totals = s.ledger().map(|l| l.totals.clone()).unwrap_or_default();
            (counts, nodes, totals, s.object_counts())
        });
        for (kind, count) in objects {
            i.objects
                .get_or_create(&KindLabel {
                    kind: kind.to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        // The ledger's running totals only grow: each counter catches up with its total.
        for total in totals {
            let label = UsageLabel {
                namespace: total.namespace,
                service: total.service.unwrap_or_default(),
            };
            let a = &total.accrued;
            for (family, value) in [
                (&i.usage_vcpu, a.vcpu_seconds()),
                (&i.usage_gb, a.gb_seconds()),
                (&i.usage_used_vcpu, a.used_vcpu_seconds()),
            ] {
                let counter = family.get_or_create(&label);
                let behind = value - counter.get();
                if behind > 0.0 {
                    counter.inc_by(behind);
                }
            }
        }
        for status in [NodeStatus::Active, NodeStatus::Draining, NodeStatus::Down] {
            i.nodes
                .get_or_create(&StateLabel {
                    state: status.to_string(),
                })
                .set(nodes.get(&status).copied().unwrap_or(0));
        }
        for state in TaskStatus::ALL {
            i.tasks
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(counts.get(state).copied().unwrap_or(0));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &i.registry);
        out
    }

    /// The HTTP routes to add next to the gRPC services.
    /// `/metrics` on the gRPC address. Unless `public`, a scrape needs a valid API token
    /// (`authorization: Bearer …`) or a client certificate of the cluster.
    pub fn router(&self, store: Store, public: bool) -> axum::Router {
        let metrics = self.clone();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |req: axum::extract::Request| {
                let (metrics, store) = (metrics.clone(), store.clone());
                async move {
                    if !public {
                        let (parts, _body) = req.into_parts();
                        let probe = tonic::Request::from_http(http::Request::from_parts(parts, ()));
                        if let Err(refused) =
                            crate::auth::authenticate(&store.credentials(), &probe)
                        {
                            return (
                                http::StatusCode::UNAUTHORIZED,
                                [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                                format!("{}\n", refused.message()),
                            );
                        }
                    }
                    (
                        http::StatusCode::OK,
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(&store),
                    )
                }
            }),
        );
        router
    }
}

/// The label of a request's path: the path of an RPC this server serves, `/metrics`, or
/// `other` (a path is not a label of its own: random paths would grow the metrics without
/// bound).
fn method_label(path: &str) -> &str {
    static KNOWN: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let mut known: std::collections::HashSet<String> =
            berth_proto::rpc_paths().into_iter().collect();
        known.extend(
            [
                "/metrics",
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ]
            .map(String::from),
        );
        known
    });
    if known.contains(path) {
        path
    } else {
        "other"
    }
}

/// A tower layer timing every request by its path (`/berth.v1.Berth/RunTask`).
#[derive(Clone)]
pub struct ApiLatencyLayer(pub Metrics);

impl<S> tower::Layer<S> for ApiLatencyLayer {
    type Service = ApiLatency<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiLatency {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiLatency<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> tower::Service<http::Request<B>> for ApiLatency<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path()).to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await;
            // Streams (logs, watch, agent sessions) count until their response starts.
            metrics.api_request(&method, started.elapsed().as_secs_f64());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn request_paths_are_labelled_by_known_rpc_or_other() {
        assert_eq!(
            method_label("/berth.v1.Berth/RunTask"),
            "/berth.v1.Berth/RunTask"
        );
        assert_eq!(method_label("/metrics"), "/metrics");
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        for random in ["/berth.v1.Berth/Nope", "/x7f3a", "/metrics/../etc", ""] {
            assert_eq!(method_label(random), "other", "{random}");
        }
    }
}
