//! berth's ingress: a reverse proxy for HTTP/1.1, HTTP/2 (plain or TLS) and TCP in front of
//! the tasks of services.
//!
//! A [`RouteTable`] says which service each host and path prefix, or each ingress TCP port,
//! goes to, and which tasks of the service may take it; whoever follows the cluster sends a new
//! table on a `tokio::sync::watch` channel whenever that changes. A [`Proxy`] reads the current
//! table for every request or connection and lets a shared [`Balancer`] pick the task: the one
//! with the fewest requests in flight, avoiding for a moment tasks that could not be reached.
//! [`serve_http`], [`serve_tcp`] and [`serve_metrics`] are the servers; each stops accepting
//! when its shutdown future resolves and lets open connections finish.
//!
//! Logs: one event per request or TCP connection with target `berth::access`.

pub mod cluster;
mod metrics;
mod proxy;
mod routes;
mod server;
mod tcp;
pub mod traffic;

pub use metrics::{serve_metrics, Metrics};
pub use proxy::{serve_http, Proxy, CONNECT_TIMEOUT, MAX_RETRY_BODY, MAX_TRIES};
pub use routes::{
    Backend, Balancer, HttpRoute, InFlight, RouteTable, ServiceKey, TcpRoute, FAILURE_COOLDOWN,
};
pub use server::DRAIN_TIMEOUT;
pub use tcp::serve_tcp;
