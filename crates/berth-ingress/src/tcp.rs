//! The TCP proxy: each connection to an ingress port is spliced to a task of the port's route.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::metrics::ErrorKind;
use crate::proxy::{Proxy, CONNECT_TIMEOUT, MAX_TRIES};
use crate::routes::{Backend, InFlight, TcpRoute};
use crate::server::accept_loop;

/// Serves the TCP route of `port` on `listener` until `shutdown` resolves, then waits for open
/// connections to end (for up to [`crate::DRAIN_TIMEOUT`]). A connection that finds no route or
/// no reachable task is closed.
pub async fn serve_tcp(
    listener: TcpListener,
    port: u16,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    accept_loop(listener, shutdown, |stream, addr, watcher| {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            relay(&proxy, stream, addr, port).await;
            drop(watcher);
        });
    })
    .await;
}

/// Splices one client connection to a task, and logs it.
async fn relay(proxy: &Proxy, mut client: TcpStream, addr: SocketAddr, port: u16) {
    let started = Instant::now();
    let table = proxy.routes();
    let Some(route) = table.tcp_route(port) else {
        proxy.metrics.error(None, ErrorKind::NoRoute);
        tracing::debug!("no route for port {port}: close the connection from {addr}");
        return;
    };
    proxy.metrics.tcp_connection(&route.service);
    if route.backends.is_empty() {
        proxy
            .metrics
            .error(Some(&route.service), ErrorKind::NoBackend);
        let service = &route.service;
        tracing::debug!(%service, "no healthy task: close the connection from {addr}");
        return;
    }
    let Some((backend, mut upstream, _in_flight)) = connect(proxy, route).await else {
        return;
    };
    let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    let (sent, received) = copied.as_ref().map_or((0, 0), |&counts| counts);
    tracing::info!(
        target: "berth::access",
        client = %addr,
        port,
        service = %route.service,
        task = %backend.task_id,
        sent,
        received,
        ms = started.elapsed().as_secs_f64() * 1e3,
        error = copied.err().map(tracing::field::display),
        "connection",
    );
}

/// Connects to a task of `route`, trying others while one cannot be reached.
async fn connect(proxy: &Proxy, route: &TcpRoute) -> Option<(Backend, TcpStream, InFlight)> {
    let mut tried: Vec<String> = Vec::new();
    while tried.len() < MAX_TRIES {
        let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
        let (backend, in_flight) = proxy.balancer.pick(&route.backends, &exclude)?;
        let connecting = TcpStream::connect(backend.addr);
        let err = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                proxy.metrics.task(&route.service, &backend.task_id);
                return Some((backend, stream, in_flight));
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("timed out after {CONNECT_TIMEOUT:?}"),
        };
        let (service, task) = (&route.service, &backend.task_id);
        tracing::warn!(%service, %task, "connect to {}: {err}", backend.addr);
        proxy.balancer.failed(&backend.task_id);
        proxy
            .metrics
            .error(Some(&route.service), ErrorKind::Connect);
        tried.push(backend.task_id);
    }
    None
}
