//! The ingress's Prometheus metrics, and the HTTP server of `/metrics`.
//!
//! Requests without a route count under empty `namespace` and `service` labels.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::routes::ServiceKey;
use crate::server::{accept_loop, text, Chain};

/// Request durations' bucket bounds, in seconds: 0.5 ms to 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the ingress could not serve a request or connection (the `kind` label of
/// `berth_ingress_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// No route for the host and path, or the port.
    NoRoute,
    /// A route whose service has no healthy task.
    NoBackend,
    /// A task could not be connected to (each failed try counts).
    Connect,
    /// A task failed after the request was sent.
    Backend,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::NoBackend => "no_backend",
            ErrorKind::Connect => "connect",
            ErrorKind::Backend => "backend",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    namespace: String,
    service: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    namespace: String,
    service: String,
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    namespace: String,
    service: String,
    kind: String,
}

/// The ingress's metrics. Cloning shares them.
///
/// - `berth_ingress_requests_total{namespace,service,code}`: HTTP responses by exact status
///   code (`200`, `404`…), including the ingress's own 404, 502 and 503.
/// - `berth_ingress_request_duration_seconds{namespace,service}`: from the request to the
///   response's headers (a streamed body is not waited for).
/// - `berth_ingress_task_requests_total{namespace,service,task}`: HTTP requests and TCP
///   connections handed to each task; label sets of tasks gone from the route table are removed.
/// - `berth_ingress_tcp_connections_total{namespace,service}`: TCP connections accepted.
/// - `berth_ingress_errors_total{namespace,service,kind}`: `kind` is `no_route`, `no_backend`,
///   `connect` (each failed try) or `backend` (failed after the request was sent).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<ServiceLabels, Histogram>,
    task_requests: Family<TaskLabels, Counter>,
    tcp_connections: Family<ServiceLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    /// The label sets of `task_requests`, which [`Family`] cannot list.
    task_labels: Mutex<HashSet<TaskLabels>>,
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
    /// New metrics, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_ingress");
        let requests = Family::default();
        let durations = Family::<ServiceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS)
        });
        let task_requests = Family::default();
        let tcp_connections = Family::default();
        let errors = Family::default();
        registry.register(
            "requests",
            "HTTP responses by service and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from an HTTP request to its response's headers",
            durations.clone(),
        );
        registry.register(
            "task_requests",
            "HTTP requests and TCP connections handed to each task",
            task_requests.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP connections accepted, by service",
            tcp_connections.clone(),
        );
        registry.register(
            "errors",
            "Requests and connections the ingress could not serve, by kind",
            errors.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            requests,
            durations,
            task_requests,
            tcp_connections,
            errors,
            task_labels: Mutex::default(),
        }))
    }

    /// The text exposition (OpenMetrics).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }

    pub(crate) fn request(&self, service: Option<&ServiceKey>, code: StatusCode, took: Duration) {
        let labels = service_labels(service);
        self.0
            .requests
            .get_or_create(&RequestLabels {
                namespace: labels.namespace.clone(),
                service: labels.service.clone(),
                code: code.as_str().to_owned(),
            })
            .inc();
        self.0
            .durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn task(&self, service: &ServiceKey, task: &str) {
        let labels = TaskLabels {
            namespace: service.namespace.clone(),
            service: service.name.clone(),
            task: task.to_owned(),
        };
        // Under the lock, so that `forget` cannot remove the series between the two.
        let mut known = self.0.task_labels.lock().expect("metrics lock poisoned");
        self.0.task_requests.get_or_create(&labels).inc();
        known.insert(labels);
    }

    pub(crate) fn tcp_connection(&self, service: &ServiceKey) {
        self.0
            .tcp_connections
            .get_or_create(&service_labels(Some(service)))
            .inc();
    }

    pub(crate) fn error(&self, service: Option<&ServiceKey>, kind: ErrorKind) {
        let ServiceLabels { namespace, service } = service_labels(service);
        self.0
            .errors
            .get_or_create(&ErrorLabels {
                namespace,
                service,
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    /// Removes the per-task series of tasks not in `live`.
    pub(crate) fn forget(&self, live: &HashSet<String>) {
        let mut known = self.0.task_labels.lock().expect("metrics lock poisoned");
        known.retain(|labels| {
            let keep = live.contains(&labels.task);
            if !keep {
                self.0.task_requests.remove(labels);
            }
            keep
        });
    }
}

fn service_labels(service: Option<&ServiceKey>) -> ServiceLabels {
    ServiceLabels {
        namespace: service.map_or_else(String::new, |s| s.namespace.clone()),
        service: service.map_or_else(String::new, |s| s.name.clone()),
    }
}

/// Serves `GET /metrics` over plain HTTP/1.1 until `shutdown` resolves, then lets the requests
/// being answered finish.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = answer(&metrics, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    accept_loop(listener, shutdown, move |stream, _peer, watcher| {
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service.clone());
        tokio::spawn(async move {
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!("serve a metrics request: {}", Chain(&err));
            }
        });
    })
    .await;
}

fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    let mut response = Response::new(Full::from(metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
