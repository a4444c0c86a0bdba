//! The agent's Prometheus metrics, on HTTP `/metrics` at its API address: image pulls (how
//! long, and how they ended) and the tasks it runs.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// One agent's metrics. Cloning shares them. Each agent has its own (hollow agents share one
/// process), made by whoever starts it and passed in through [`crate::AgentConfig`].
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    pull_duration: Histogram,
    pulls: Family<ResultLabel, Counter>,
    tasks_running: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_agent");
        // 10 ms .. ~5 min
        let pull_duration = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        let pulls = Family::<ResultLabel, Counter>::default();
        let tasks_running = Gauge::default();
        registry.register(
            "image_pull_duration_seconds",
            "Time to pull and unpack an image that was not present",
            pull_duration.clone(),
        );
        registry.register(
            "image_pulls",
            "Image requests by result: pulled, cached (already present), failed",
            pulls.clone(),
        );
        registry.register(
            "tasks_running",
            "Tasks this agent runs",
            tasks_running.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            pull_duration,
            pulls,
            tasks_running,
        }))
    }

    /// Records one image request: `pulled` with its duration, `cached`, or `failed`.
    pub fn image(&self, result: &str, took: Option<Duration>) {
        self.0
            .pulls
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
        if let Some(d) = took {
            self.0.pull_duration.observe(d.as_secs_f64());
        }
    }

    /// The text exposition, with `running` tasks.
    pub fn render(&self, running: usize) -> String {
        self.0
            .tasks_running
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

/// `/metrics` for the agent's API server. Unless `public`, only callers with a client
/// certificate of the cluster (verified during the TLS handshake) may read it: a Prometheus
/// scraping agents is given one.
pub fn routes(metrics: Metrics, tasks: crate::TaskTable, public: bool) -> tonic::service::Routes {
    use axum::response::IntoResponse as _;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |request: axum::extract::Request| {
            let (metrics, tasks) = (metrics.clone(), tasks.clone());
            async move {
                if !public && !has_client_certificate(request.extensions()) {
                    return (
                        http::StatusCode::UNAUTHORIZED,
                        "the agent's /metrics needs a client certificate of the cluster (or start the agent with --metrics-public)\n",
                    )
                        .into_response();
                }
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(tasks.running().len()),
                )
                    .into_response()
            }
        }),
    );
    tonic::service::Routes::from(router)
}

/// Whether the connection's client presented a certificate (rustls has verified it against the
/// cluster CA by then).
fn has_client_certificate(extensions: &http::Extensions) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .is_some_and(|certs| !certs.is_empty())
}
