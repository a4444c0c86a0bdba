//! The HTTP reverse proxy: HTTP/1.1 and HTTP/2 from clients (plain or TLS), HTTP/1.1 to tasks.
//!
//! Each request goes to the route of its host and path, then to the task the [`Balancer`]
//! picks. A request that could not reach its task is tried again on another (when its body is
//! small enough to be kept); one that reached it is never sent twice. Upgrades (WebSocket) are
//! passed through and the two connections spliced.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{ErrorKind, Metrics};
use crate::routes::{Backend, Balancer, HttpRoute, InFlight, RouteTable, ServiceKey};
use crate::server::{accept_loop, text, Chain};
use crate::traffic::Arrival;

/// How long connecting to a task may take before another is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many tasks a request or connection tries before giving up.
pub const MAX_TRIES: usize = 3;

/// The largest request body kept so that the request can be tried again on another task.
pub const MAX_RETRY_BODY: usize = 64 * 1024;

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Request and response bodies as the proxy passes them on.
type Body = UnsyncBoxBody<Bytes, hyper::Error>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), besides
/// those the Connection header lists.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the HTTP and TCP servers share: the current routes, the balancer, the metrics, and a
/// pool of connections to tasks.
pub struct Proxy {
    pub(crate) routes: watch::Receiver<Arc<RouteTable>>,
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) metrics: Metrics,
    client: Client<HttpConnector, Body>,
    /// The table the balancer and the metrics were last pruned to.
    pruned: Mutex<Arc<RouteTable>>,
    /// Requests counted for the leader, and held while a service at zero wakes (an ingress
    /// of the cluster has it; a proxy without it answers 503 for a service without tasks).
    traffic: Option<Arc<crate::traffic::Traffic>>,
}

/// The header on responses that waited for their service to wake from zero: the wait, in
/// milliseconds.
pub const COLD_START_HEADER: &str = "x-berth-cold-start-ms";

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// The client end of a connection, as a request's handler sees it.
#[derive(Clone, Copy, Debug)]
struct ClientConn {
    addr: SocketAddr,
    https: bool,
}

impl Proxy {
    /// A proxy following the route tables sent on `routes`.
    pub fn new(
        routes: watch::Receiver<Arc<RouteTable>>,
        balancer: Arc<Balancer>,
        metrics: Metrics,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            routes,
            balancer,
            metrics,
            client,
            pruned: Mutex::default(),
            traffic: None,
        }
    }

    /// Counts requests in `traffic` and holds those for a service at zero while it wakes.
    pub fn with_traffic(mut self, traffic: Arc<crate::traffic::Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// Holds a request for the service of `route` (at zero) until a table routes
    /// `host`/`path` to a task, for at most its activation timeout; answers that table and
    /// how long the wait took.
    async fn wake(
        &self,
        arrival: Option<&mut Arrival>,
        route: &HttpRoute,
        host: &str,
        path: &str,
    ) -> Result<(Arc<RouteTable>, Duration), Response<Body>> {
        let started = Instant::now();
        let unavailable = |body: String, retry_after: u64| {
            let mut response = text(StatusCode::SERVICE_UNAVAILABLE, body).map(full);
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            response
        };
        let (Some(traffic), Some(arrival), Some(timeout)) =
            (&self.traffic, arrival, route.activation_timeout)
        else {
            return Err(unavailable(
                format!("no healthy task of service {}\n", route.service),
                1,
            ));
        };
        if traffic.hold(arrival).is_none() {
            return Err(unavailable(
                format!(
                    "service {} is waking up and {} requests already wait for it; retry shortly\n",
                    route.service,
                    crate::traffic::MAX_HELD
                ),
                1,
            ));
        }
        let mut routes = self.routes.clone();
        let ready = async {
            loop {
                let table = Arc::clone(&routes.borrow_and_update());
                let woken = table
                    .http_route(host, path)
                    .filter(|r| !r.backends.is_empty());
                if let Some(route) = woken {
                    // A task without a health check is routed once it runs, which may be a
                    // moment before its server listens: the held requests go once one accepts.
                    if accepts(&route.backends).await {
                        return Some(table);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                if routes.changed().await.is_err() {
                    return None;
                }
            }
        };
        let woke = tokio::time::timeout(timeout, ready).await;
        arrival.release();
        match woke {
            Ok(Some(table)) => Ok((table, started.elapsed())),
            _ => Err(unavailable(
                format!(
                    "service {} did not wake within {}s (its activation timeout); retry shortly\n",
                    route.service,
                    timeout.as_secs()
                ),
                timeout.as_secs().clamp(1, 30),
            )),
        }
    }

    /// The current route table. The first call that sees a new table drops the balancer's and
    /// the metrics' state of the tasks it no longer has (every request and connection calls it).
    pub fn routes(&self) -> Arc<RouteTable> {
        let table = Arc::clone(&self.routes.borrow());
        let mut pruned = self.pruned.lock().expect("pruned table lock poisoned");
        if !Arc::ptr_eq(&pruned, &table) {
            let live = table.task_ids();
            self.balancer.forget(&live);
            self.metrics.forget(&live);
            *pruned = Arc::clone(&table);
        }
        table
    }

    /// Answers one request, and logs it and counts it.
    async fn handle(&self, request: Request<Incoming>, conn: ClientConn) -> Response<Body> {
        let started = Instant::now();
        let host = request_host(&request).to_owned();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let table = self.routes();
        let route = table.http_route(&host, &path);
        // Counted until the response body ends (or the upgraded connection closes).
        let mut arrival = match (&self.traffic, route) {
            (Some(traffic), Some(route)) => Some(traffic.arrived(&route.service)),
            _ => None,
        };
        let (response, task) = match route {
            None => {
                self.metrics.error(None, ErrorKind::NoRoute);
                let body = format!("no route for host {host:?} and path {path}\n");
                (text(StatusCode::NOT_FOUND, body).map(full), None)
            }
            Some(route) if route.backends.is_empty() => {
                match self.wake(arrival.as_mut(), route, &host, &path).await {
                    Err(response) => {
                        self.metrics
                            .error(Some(&route.service), ErrorKind::NoBackend);
                        (response, None)
                    }
                    Ok((woken, waited)) => {
                        let route = woken
                            .http_route(&host, &path)
                            .expect("the table routes the request");
                        match self
                            .forward(route, request, &host, conn, arrival.take())
                            .await
                        {
                            Ok((mut response, task)) => {
                                let ms = waited.as_millis().to_string();
                                if let Ok(v) = HeaderValue::from_str(&ms) {
                                    response.headers_mut().insert(COLD_START_HEADER, v);
                                }
                                (response, Some(task))
                            }
                            Err(err) => {
                                tracing::warn!(service = %route.service, "proxy {method} {host}{path} after a wake: {}", Chain(&err));
                                let task = err.task().map(str::to_owned);
                                (text(err.status(), format!("{err}\n")).map(full), task)
                            }
                        }
                    }
                }
            }
            Some(route) => match self
                .forward(route, request, &host, conn, arrival.take())
                .await
            {
                Ok((response, task)) => (response, Some(task)),
                Err(err) => {
                    let message = format!("proxy {method} {host}{path}: {}", Chain(&err));
                    if err.status() == StatusCode::BAD_GATEWAY {
                        tracing::warn!(service = %route.service, "{message}");
                    } else {
                        // The client's doing (a body cut short, a bad target).
                        tracing::debug!(service = %route.service, "{message}");
                    }
                    if let ForwardError::Backend { .. } = err {
                        self.metrics.error(Some(&route.service), ErrorKind::Backend);
                    }
                    let task = err.task().map(str::to_owned);
                    (text(err.status(), format!("{err}\n")).map(full), task)
                }
            },
        };
        let took = started.elapsed();
        self.metrics
            .request(route.map(|r| &r.service), response.status(), took);
        tracing::info!(
            target: "berth::access",
            client = %conn.addr,
            %method,
            host,
            path,
            status = response.status().as_u16(),
            ms = took.as_secs_f64() * 1e3,
            service = %route.map_or_else(|| "-".to_owned(), |r| r.service.to_string()),
            task = task.as_deref().unwrap_or("-"),
            "request",
        );
        response
    }

    /// Sends a request to a task of `route`, trying others while the chosen one cannot be
    /// connected to (if the body was kept). The response and the task that gave it.
    async fn forward(
        &self,
        route: &HttpRoute,
        mut request: Request<Incoming>,
        host: &str,
        conn: ClientConn,
        mut arrival: Option<Arrival>,
    ) -> Result<(Response<Body>, String), ForwardError> {
        let upgrade = wants_upgrade(&request);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        set_forwarded(&mut parts.headers, host, conn);
        let mut body = RequestBody::read(body).await?;
        let mut tried: Vec<String> = Vec::new();
        while tried.len() < MAX_TRIES {
            let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
            let Some((backend, in_flight)) = self.balancer.pick(&route.backends, &exclude) else {
                break;
            };
            let Some(body) = body.take() else {
                // A streamed body went with the first try.
                break;
            };
            let outgoing = backend_request(&parts, &backend, body)?;
            match self.client.request(outgoing).await {
                Ok(response) => {
                    self.metrics.task(&route.service, &backend.task_id);
                    let counted = InFlightRequest {
                        _to_task: in_flight,
                        _arrival: arrival.take(),
                    };
                    let response = respond(response, client_upgrade, counted);
                    return Ok((response, backend.task_id));
                }
                Err(err) if err.is_connect() => {
                    tracing::warn!(
                        service = %route.service,
                        task = %backend.task_id,
                        "connect to {}: {}",
                        backend.addr,
                        Chain(&err),
                    );
                    self.balancer.failed(&backend.task_id);
                    self.metrics.error(Some(&route.service), ErrorKind::Connect);
                    tried.push(backend.task_id);
                }
                Err(source) => {
                    self.metrics.task(&route.service, &backend.task_id);
                    return Err(ForwardError::Backend {
                        task: backend.task_id,
                        source,
                    });
                }
            }
        }
        Err(ForwardError::Unreachable(route.service.clone()))
    }
}

/// Whether one of `backends` accepts a TCP connection now (closed at once).
async fn accepts(backends: &[Backend]) -> bool {
    for b in backends {
        let connect = tokio::net::TcpStream::connect(b.addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(250), connect).await {
            return true;
        }
    }
    false
}

/// Why a request was not forwarded; the ingress answers it itself.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("could not read the request body")]
    RequestBody(#[source] BoxError),
    #[error("bad request target")]
    Target(#[from] http::Error),
    #[error("no task of service {0} could be reached")]
    Unreachable(ServiceKey),
    #[error("task {task} failed to answer")]
    Backend {
        task: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

impl ForwardError {
    fn status(&self) -> StatusCode {
        match self {
            ForwardError::RequestBody(_) | ForwardError::Target(_) => StatusCode::BAD_REQUEST,
            ForwardError::Unreachable(_) | ForwardError::Backend { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn task(&self) -> Option<&str> {
        match self {
            ForwardError::Backend { task, .. } => Some(task),
            _ => None,
        }
    }
}

/// A request body as kept for tries: small ones whole, others streamed once.
enum RequestBody {
    Kept(Bytes),
    Streamed(Option<Incoming>),
}

impl RequestBody {
    /// Reads the body if it is empty or its length is known and at most [`MAX_RETRY_BODY`].
    async fn read(body: Incoming) -> Result<Self, ForwardError> {
        let small = body.is_end_stream()
            || body
                .size_hint()
                .exact()
                .is_some_and(|len| len <= MAX_RETRY_BODY as u64);
        if !small {
            return Ok(RequestBody::Streamed(Some(body)));
        }
        let collected = Limited::new(body, MAX_RETRY_BODY)
            .collect()
            .await
            .map_err(ForwardError::RequestBody)?;
        Ok(RequestBody::Kept(collected.to_bytes()))
    }

    /// The body for one try; `None` once a streamed body was taken.
    fn take(&mut self) -> Option<Body> {
        match self {
            RequestBody::Kept(bytes) => Some(full(Full::new(bytes.clone()))),
            RequestBody::Streamed(body) => body.take().map(BodyExt::boxed_unsync),
        }
    }
}

/// The request to send to `backend`: the client's, with its path and query, over HTTP/1.1.
fn backend_request(
    parts: &Parts,
    backend: &Backend,
    body: Body,
) -> Result<Request<Body>, http::Error> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://{}{path}", backend.addr))
        .version(Version::HTTP_11)
        .body(body)?;
    *request.headers_mut() = parts.headers.clone();
    Ok(request)
}

/// What counts a request in flight: to its task (the balancer) and to its service (the
/// traffic reported to the leader), until dropped.
struct InFlightRequest {
    _to_task: InFlight,
    _arrival: Option<Arrival>,
}

/// The task's response as the client gets it. For an upgrade the connections are spliced once
/// both sides have switched; `in_flight` lasts as long as the response body or the upgraded
/// connection.
fn respond(
    mut response: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    in_flight: InFlightRequest,
) -> Response<Body> {
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) =
        (response.status(), client_upgrade)
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(splice(client_upgrade, backend_upgrade, in_flight));
        strip_hop_by_hop(response.headers_mut(), true);
        return response.map(BodyExt::boxed_unsync);
    }
    strip_hop_by_hop(response.headers_mut(), false);
    response.map(|body| {
        Counted {
            body,
            _in_flight: in_flight,
        }
        .boxed_unsync()
    })
}

/// Copies bytes both ways between an upgraded client connection and task connection.
async fn splice(client: OnUpgrade, backend: OnUpgrade, _in_flight: InFlightRequest) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!("upgrade a connection: {}", Chain(&err));
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!("relay an upgraded connection: {err}");
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct Counted {
    body: Incoming,
    _in_flight: InFlightRequest,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn full(body: Full<Bytes>) -> Body {
    body.map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// The host a request is for: its URI's authority (HTTP/2, or an absolute-form HTTP/1.1
/// target), else its Host header; empty if neither.
fn request_host<B>(request: &Request<B>) -> &str {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            let host = request.headers().get(header::HOST)?;
            host.to_str().ok()
        })
        .unwrap_or("")
}

/// The tokens of the Connection headers.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket, for one).
fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && connection_tokens(request.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Removes the hop-by-hop headers; for an upgrade, keeps Upgrade with `Connection: upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<String> = connection_tokens(headers)
        .map(str::to_ascii_lowercase)
        .collect();
    for name in listed.iter().map(String::as_str).chain(HOP_BY_HOP) {
        if !(upgrade && (name == "connection" || name == "upgrade")) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sets X-Forwarded-For (the client appended), -Proto and -Host, and Host to the host the
/// request was routed by: its Host header's value, or its URI's authority where it has one
/// (HTTP/2, or an absolute-form target, which wins over Host).
fn set_forwarded(headers: &mut HeaderMap, host: &str, conn: ClientConn) {
    let client = conn.addr.ip().to_canonical().to_string();
    let earlier: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let chain = if earlier.is_empty() {
        client
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let proto = if conn.https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Ok(value) = HeaderValue::from_str(host) {
        if !host.is_empty() {
            headers.insert(X_FORWARDED_HOST, value.clone());
            headers.insert(header::HOST, value);
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 (with upgrades) on `listener` through `proxy` until `shutdown`
/// resolves, then lets open connections finish their requests (for up to
/// [`crate::DRAIN_TIMEOUT`]). With `tls`, connections are TLS; if the configuration names no
/// ALPN protocol, `h2` and `http/1.1` are offered.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(|config| TlsAcceptor::from(with_alpn(config)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer bounds how long HTTP/1 request headers may take (30 s).
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    accept_loop(listener, shutdown, |stream, addr, watcher| {
        let (proxy, builder, acceptor) = (proxy.clone(), builder.clone(), acceptor.clone());
        let conn = ClientConn {
            addr,
            https: acceptor.is_some(),
        };
        let service = hyper::service::service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, conn).await) }
        });
        tokio::spawn(async move {
            let served = match acceptor {
                None => {
                    let io = TokioIo::new(stream);
                    watcher
                        .watch(builder.serve_connection_with_upgrades(io, service))
                        .await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!("tls handshake with {addr}: {err}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("tls handshake with {addr}: timed out");
                            return;
                        }
                    };
                    let io = TokioIo::new(stream);
                    watcher
                        .watch(builder.serve_connection_with_upgrades(io, service))
                        .await
                }
            };
            if let Err(err) = served {
                tracing::debug!("serve a connection from {addr}: {}", Chain(&*err));
            }
        });
    })
    .await;
}

/// `config`, offering `h2` and `http/1.1` if it offers no protocol.
fn with_alpn(config: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    if !config.alpn_protocols.is_empty() {
        return config;
    }
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "basic x"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(names(&map), ["accept"]);
    }

    #[test]
    fn upgrades_keep_connection_and_upgrade() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        strip_hop_by_hop(&mut map, true);
        assert_eq!(names(&map), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(map[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let conn = ClientConn {
            addr: "[::ffff:10.1.2.3]:5000".parse().expect("address"),
            https: true,
        };
        let mut map = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
        ]);
        set_forwarded(&mut map, "a.test:8443", conn);
        assert_eq!(map[X_FORWARDED_FOR], "192.0.2.1, 192.0.2.2, 10.1.2.3");
        assert_eq!(map[X_FORWARDED_PROTO], "https");
        assert_eq!(map[X_FORWARDED_HOST], "a.test:8443");
        assert_eq!(map[header::HOST], "a.test:8443");

        let mut map = headers(&[("host", "b.test")]);
        set_forwarded(
            &mut map,
            "b.test",
            ClientConn {
                https: false,
                ..conn
            },
        );
        assert_eq!(map[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(map[X_FORWARDED_PROTO], "http");
        assert_eq!(map.get_all(header::HOST).iter().count(), 1);
    }

    #[test]
    fn the_host_comes_from_the_authority_then_the_host_header() {
        let request = |uri: &str, host: Option<&str>| {
            let mut builder = Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header(header::HOST, host);
            }
            builder.body(()).expect("request")
        };
        assert_eq!(
            request_host(&request("https://a.test/x", Some("b.test"))),
            "a.test"
        );
        assert_eq!(request_host(&request("/x", Some("b.test:80"))), "b.test:80");
        assert_eq!(request_host(&request("/x", None)), "");
    }
}
