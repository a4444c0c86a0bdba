//! The ingress end to end on loopback: small backends on 127.0.0.1:0, the proxy in front of
//! them, and clients speaking HTTP/1.1, HTTP/2, TLS, upgrades and raw TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_ingress::{
    serve_http, serve_metrics, serve_tcp, Backend, Balancer, HttpRoute, Metrics, Proxy, RouteTable,
    ServiceKey, TcpRoute,
};
use http::{header, HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The longest any step of a test may take.
const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

fn addr_of(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("listener address")
}

/// An HTTP/1.1 backend answering every request with `handler`.
async fn backend_with<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = listen().await;
    let addr = addr_of(&listener);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = hyper::service::service_fn(move |request| {
                let reply = handler(request);
                async move { Ok::<_, std::convert::Infallible>(reply.await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// The headers a backend reports seeing, one line each (`-` when absent).
const REPORTED: [&str; 6] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-secret",
    "connection",
];

/// A backend answering `NAME METHOD TARGET`, then `header: value` for [`REPORTED`], then
/// `body: BODY`.
async fn backend(name: &'static str) -> SocketAddr {
    backend_with(move |request: Request<Incoming>| async move {
        let mut lines = vec![format!("{name} {} {}", request.method(), request.uri())];
        for header in REPORTED {
            let values: Vec<&str> = request
                .headers()
                .get_all(header)
                .iter()
                .map(|v| v.to_str().unwrap_or("?"))
                .collect();
            let shown = if values.is_empty() {
                "-".to_owned()
            } else {
                values.join(" | ")
            };
            lines.push(format!("{header}: {shown}"));
        }
        let body = request.into_body().collect().await.map(|b| b.to_bytes());
        let body = body.map_or("?".to_owned(), |b| String::from_utf8_lossy(&b).into_owned());
        lines.push(format!("body: {body}"));
        Response::new(Full::from(lines.join("\n")))
    })
    .await
}

/// An address nothing listens on: bound, then closed.
async fn refused_addr() -> SocketAddr {
    addr_of(&listen().await)
}

fn service(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: "ns".into(),
        name: name.into(),
    }
}

fn to(task: &str, addr: SocketAddr) -> Backend {
    Backend {
        task_id: task.into(),
        addr,
    }
}

fn http_route(name: &str, host: &str, prefix: &str, backends: Vec<Backend>) -> HttpRoute {
    HttpRoute {
        service: service(name),
        host: host.into(),
        path_prefix: prefix.into(),
        backends,
        activation_timeout: None,
    }
}

/// A running ingress.
struct Ingress {
    addr: SocketAddr,
    routes: watch::Sender<Arc<RouteTable>>,
    proxy: Arc<Proxy>,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Ingress {
    async fn start(table: RouteTable, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let (routes, receiver) = watch::channel(Arc::new(table));
        let metrics = Metrics::new();
        let proxy = Arc::new(Proxy::new(
            receiver,
            Arc::new(Balancer::default()),
            metrics.clone(),
        ));
        let listener = listen().await;
        let addr = addr_of(&listener);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, tls, proxy.clone(), async {
            let _ = stopped.await;
        }));
        Ingress {
            addr,
            routes,
            proxy,
            metrics,
            stop: Some(stop),
            server,
        }
    }

    /// Stops the server and waits for it to return.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("stop the ingress", &mut self.server)
            .await
            .expect("the server task ends cleanly");
    }
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The status, headers and body of a response.
async fn read(response: Response<Incoming>) -> (StatusCode, HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let body = within("read a body", body.collect())
        .await
        .expect("a response body")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Sends `request` (its URI a path) to the ingress as HTTP/1.1.
async fn send(
    ingress: SocketAddr,
    host: &str,
    request: http::request::Builder,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, String) {
    let path = request
        .uri_ref()
        .map_or("/".to_owned(), ToString::to_string);
    let request = request
        .uri(format!("http://{ingress}{path}"))
        .header(header::HOST, host)
        .body(Full::new(body.into()))
        .expect("a request");
    let response = within("send a request", client().request(request))
        .await
        .expect("a response");
    read(response).await
}

async fn get(ingress: SocketAddr, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
    send(ingress, host, Request::get(path), "").await
}

/// The value of one series in a metrics exposition, if present.
fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

#[tokio::test]
async fn routes_by_host_and_path_prefix() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let table = RouteTable::new(
        vec![
            http_route("a", "a.test", "/", vec![to("a-1", a)]),
            http_route("b", "a.test", "/api", vec![to("b-1", b)]),
            http_route("c", "*", "/", vec![to("c-1", c)]),
        ],
        vec![],
    );
    let ingress = Ingress::start(table, None).await;
    for (host, path, expected) in [
        ("a.test", "/", "a GET /"),
        ("A.Test:8080", "/api/x?q=1", "b GET /api/x?q=1"),
        ("a.test", "/api", "b GET /api"),
        ("a.test", "/apix", "a GET /apix"),
        ("other.test", "/api", "c GET /api"),
    ] {
        let (status, _, body) = get(ingress.addr, host, path).await;
        assert_eq!(status, StatusCode::OK, "{host}{path}");
        assert_eq!(body.lines().next(), Some(expected), "{host}{path}");
    }
    ingress.stop().await;
}

#[tokio::test]
async fn answers_404_without_a_route_and_503_without_a_task() {
    let table = RouteTable::new(vec![http_route("down", "down.test", "/", vec![])], vec![]);
    let ingress = Ingress::start(table, None).await;

    let (status, _, body) = get(ingress.addr, "nowhere.test", "/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "no route for host \"nowhere.test\" and path /x\n");

    let (status, headers, body) = get(ingress.addr, "down.test", "/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(body, "no healthy task of service ns/down\n");
    ingress.stop().await;
}

#[tokio::test]
async fn a_task_that_refuses_connections_is_skipped() {
    let good = backend("good").await;
    // The dead task comes first, so the first request tries it first.
    let backends = vec![to("dead", refused_addr().await), to("good", good)];
    let table = RouteTable::new(vec![http_route("web", "*", "/", backends)], vec![]);
    let ingress = Ingress::start(table, None).await;

    // The kept body is sent again on the second try.
    let (status, _, body) = send(ingress.addr, "web.test", Request::post("/submit"), "hello").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("good POST /submit\n"), "{body}");
    assert!(body.ends_with("\nbody: hello"), "{body}");
    for _ in 0..3 {
        let (status, _, body) = get(ingress.addr, "web.test", "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("good GET /\n"), "{body}");
    }
    let exposition = ingress.metrics.render();
    let connect_errors =
        r#"berth_ingress_errors_total{namespace="ns",service="web",kind="connect"}"#;
    assert!(
        metric(&exposition, connect_errors).is_some_and(|n| n >= 1.0),
        "{exposition}"
    );

    // With every task dead, the client gets a 502 after the tries.
    let dead = vec![
        to("dead", refused_addr().await),
        to("dead-2", refused_addr().await),
    ];
    let _ = ingress.routes.send(Arc::new(RouteTable::new(
        vec![http_route("web", "*", "/", dead)],
        vec![],
    )));
    let (status, _, body) = get(ingress.addr, "web.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "no task of service ns/web could be reached\n");
    ingress.stop().await;
}

#[tokio::test]
async fn a_large_body_is_sent_once() {
    let good = backend("good").await;
    let backends = vec![to("dead", refused_addr().await), to("good", good)];
    let table = RouteTable::new(vec![http_route("web", "*", "/", backends)], vec![]);
    let ingress = Ingress::start(table, None).await;
    let large = "x".repeat(berth_ingress::MAX_RETRY_BODY + 1);

    // Too large to keep: it went with the first try, to the dead task.
    let (status, _, body) = send(ingress.addr, "web.test", Request::post("/"), large.clone()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "no task of service ns/web could be reached\n");

    // The dead task is avoided now, and the body streams through.
    let (status, _, body) = send(ingress.addr, "web.test", Request::post("/"), large.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.ends_with(&format!("\nbody: {large}")),
        "{} bytes",
        body.len()
    );
    ingress.stop().await;
}

/// A backend that reads a request and closes the connection without answering.
async fn hang_up_backend() -> SocketAddr {
    let listener = listen().await;
    let addr = addr_of(&listener);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_task_that_fails_after_the_request_was_sent_is_not_retried() {
    let (hang_up, good) = (hang_up_backend().await, backend("good").await);
    let backends = vec![to("hang-up", hang_up), to("good", good)];
    let table = RouteTable::new(vec![http_route("web", "*", "/", backends)], vec![]);
    let ingress = Ingress::start(table, None).await;

    let (status, _, body) = send(ingress.addr, "web.test", Request::post("/pay"), "once").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "task hang-up failed to answer\n");
    let exposition = ingress.metrics.render();
    for (series, expected) in [
        (
            r#"berth_ingress_errors_total{namespace="ns",service="web",kind="backend"}"#,
            Some(1.0),
        ),
        (
            r#"berth_ingress_requests_total{namespace="ns",service="web",code="502"}"#,
            Some(1.0),
        ),
        (
            r#"berth_ingress_task_requests_total{namespace="ns",service="web",task="good"}"#,
            None,
        ),
    ] {
        assert_eq!(
            metric(&exposition, series),
            expected,
            "{series} in\n{exposition}"
        );
    }
    ingress.stop().await;
}

#[tokio::test]
async fn forwards_the_client_and_the_host_and_drops_hop_by_hop_headers() {
    let a = backend("a").await;
    let table = RouteTable::new(
        vec![http_route("a", "a.test", "/", vec![to("a-1", a)])],
        vec![],
    );
    let ingress = Ingress::start(table, None).await;
    let request = Request::get("/")
        .header("x-forwarded-for", "192.0.2.1")
        .header(header::CONNECTION, "x-secret")
        .header("x-secret", "1");
    let (status, _, body) = send(ingress.addr, "a.test:8080", request, "").await;
    assert_eq!(status, StatusCode::OK);
    let expected = "a GET /
host: a.test:8080
x-forwarded-for: 192.0.2.1, 127.0.0.1
x-forwarded-proto: http
x-forwarded-host: a.test:8080
x-secret: -
connection: -
body: ";
    assert_eq!(body, expected);
    ingress.stop().await;
}

/// A backend that switches protocols on its first connection, greets, then echoes.
async fn upgrade_backend() -> SocketAddr {
    let listener = listen().await;
    let addr = addr_of(&listener);
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let mut stream = BufReader::new(stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if stream.read_line(&mut head).await.unwrap_or(0) == 0 {
                return;
            }
        }
        if !head.to_ascii_lowercase().contains("upgrade: websocket") {
            return;
        }
        let switch = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nhello from the task\n";
        if stream.get_mut().write_all(switch.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            if stream.get_mut().write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    addr
}

#[tokio::test]
async fn an_upgrade_splices_the_connections() {
    let ws = upgrade_backend().await;
    let table = RouteTable::new(
        vec![http_route("ws", "*", "/", vec![to("ws-1", ws)])],
        vec![],
    );
    let ingress = Ingress::start(table, None).await;

    let stream = within("connect", TcpStream::connect(ingress.addr))
        .await
        .expect("connect");
    let mut stream = BufReader::new(stream);
    let request =
        "GET /chat HTTP/1.1\r\nhost: ws.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("write");
    let mut status = String::new();
    within("read the status", stream.read_line(&mut status))
        .await
        .expect("read");
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols\r\n");
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        within("read the headers", stream.read_line(&mut line))
            .await
            .expect("read");
        assert!(!line.is_empty(), "the connection closed in the headers");
    }
    let mut greeting = String::new();
    within("read the greeting", stream.read_line(&mut greeting))
        .await
        .expect("read");
    assert_eq!(greeting, "hello from the task\n");
    for message in ["ping\n", "a longer message\n"] {
        stream
            .get_mut()
            .write_all(message.as_bytes())
            .await
            .expect("write");
        let mut echoed = String::new();
        within("read the echo", stream.read_line(&mut echoed))
            .await
            .expect("read");
        assert_eq!(echoed, message);
    }
    ingress.stop().await;
}

/// Service `a` on `a.test/` and `b` on `a.test/api`, one task each.
async fn two_backends() -> RouteTable {
    let (a, b) = (backend("a").await, backend("b").await);
    RouteTable::new(
        vec![
            http_route("a", "a.test", "/", vec![to("a-1", a)]),
            http_route("b", "a.test", "/api", vec![to("b-1", b)]),
        ],
        vec![],
    )
}

/// Sends `GET uri` on an HTTP/2 connection made over `io`.
async fn get_h2<T>(io: T, uri: &str) -> (Version, StatusCode, String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = within(
        "http/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
    )
    .await
    .expect("an http/2 connection");
    tokio::spawn(conn);
    let request = Request::get(uri)
        .body(Full::<Bytes>::default())
        .expect("a request");
    let response = within("send over http/2", sender.send_request(request))
        .await
        .expect("a response");
    let version = response.version();
    let (status, _, body) = read(response).await;
    (version, status, body)
}

#[tokio::test]
async fn serves_http2_with_prior_knowledge() {
    let ingress = Ingress::start(two_backends().await, None).await;
    let stream = within("connect", TcpStream::connect(ingress.addr))
        .await
        .expect("connect");
    let (version, status, body) = get_h2(stream, "http://a.test/api/x").await;
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    let lines: Vec<&str> = body.lines().take(4).collect();
    assert_eq!(
        lines,
        [
            "b GET /api/x",
            "host: a.test",
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http"
        ]
    );
    ingress.stop().await;
}

/// A server configuration with a self-signed certificate for localhost and 127.0.0.1, and the
/// certificate to trust.
fn self_signed() -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("a self-signed certificate");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("a server configuration");
    (Arc::new(config), cert)
}

/// A TLS connection to `addr` trusting `cert`, offering `alpn`.
async fn connect_tls(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("a root certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("a server name");
    let tls = within("tls handshake", connector.connect(name, stream))
        .await
        .expect("a tls connection");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

#[tokio::test]
async fn terminates_tls_for_http2_and_http1() {
    let (config, cert) = self_signed();
    let ingress = Ingress::start(two_backends().await, Some(config)).await;

    let tls = connect_tls(ingress.addr, &cert, b"h2").await;
    let (version, status, body) = get_h2(tls, "https://a.test/api/x").await;
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    assert!(body.starts_with("b GET /api/x\n"), "{body}");
    assert!(body.contains("\nx-forwarded-proto: https\n"), "{body}");

    let tls = connect_tls(ingress.addr, &cert, b"http/1.1").await;
    let (mut sender, conn) = within(
        "http/1.1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(tls)),
    )
    .await
    .expect("an http/1.1 connection");
    tokio::spawn(conn);
    let request = Request::get("/page")
        .header(header::HOST, "a.test")
        .body(Full::<Bytes>::default())
        .expect("a request");
    let response = within("send over http/1.1", sender.send_request(request))
        .await
        .expect("a response");
    assert_eq!(response.version(), Version::HTTP_11);
    let (status, _, body) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("a GET /page\n"), "{body}");
    assert!(body.contains("\nx-forwarded-proto: https\n"), "{body}");
    ingress.stop().await;
}

/// A TCP backend that echoes every connection.
async fn echo_backend() -> SocketAddr {
    let listener = listen().await;
    let addr = addr_of(&listener);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_connections_reach_a_task() {
    let echo = echo_backend().await;
    let listener = listen().await;
    let port = addr_of(&listener).port();
    let unrouted = listen().await;
    let unrouted_addr = addr_of(&unrouted);
    let route = TcpRoute {
        service: service("db"),
        port,
        backends: vec![to("dead", refused_addr().await), to("echo", echo)],
    };
    let (_routes, receiver) = watch::channel(Arc::new(RouteTable::new(vec![], vec![route])));
    let metrics = Metrics::new();
    let proxy = Arc::new(Proxy::new(receiver, Arc::default(), metrics.clone()));
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let (stop_unrouted, unrouted_stopped) = oneshot::channel::<()>();
    let unrouted_stopped = async {
        let _ = unrouted_stopped.await;
    };
    let server = tokio::spawn(serve_tcp(listener, port, proxy.clone(), stopped));
    let unrouted_server = tokio::spawn(serve_tcp(unrouted, 0, proxy, unrouted_stopped));

    // Twice: the first connection tries the dead task first.
    for message in [&b"first connection"[..], b"second connection"] {
        let mut stream = within("connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect");
        stream.write_all(message).await.expect("write");
        let mut echoed = vec![0; message.len()];
        within("read the echo", stream.read_exact(&mut echoed))
            .await
            .expect("read");
        assert_eq!(echoed, message);
    }

    // A port without a route (0 has none) closes connections.
    let mut stream = within("connect", TcpStream::connect(unrouted_addr))
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = within("read until closed", stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let exposition = metrics.render();
    for (series, expected) in [
        (
            r#"berth_ingress_tcp_connections_total{namespace="ns",service="db"}"#,
            2.0,
        ),
        (
            r#"berth_ingress_task_requests_total{namespace="ns",service="db",task="echo"}"#,
            2.0,
        ),
        (
            r#"berth_ingress_errors_total{namespace="",service="",kind="no_route"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            metric(&exposition, series),
            Some(expected),
            "{series} in\n{exposition}"
        );
    }
    let _ = (stop.send(()), stop_unrouted.send(()));
    within("stop", server).await.expect("the server task ends");
    within("stop", unrouted_server)
        .await
        .expect("the server task ends");
}

#[tokio::test]
async fn metrics_count_requests_and_forget_gone_tasks() {
    let a = backend("a").await;
    let table = RouteTable::new(
        vec![http_route("a", "a.test", "/", vec![to("a-1", a)])],
        vec![],
    );
    let ingress = Ingress::start(table, None).await;
    for _ in 0..2 {
        assert_eq!(get(ingress.addr, "a.test", "/").await.0, StatusCode::OK);
    }
    assert_eq!(
        get(ingress.addr, "b.test", "/").await.0,
        StatusCode::NOT_FOUND
    );

    let listener = listen().await;
    let metrics_addr = addr_of(&listener);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_metrics(listener, ingress.metrics.clone(), async {
        let _ = stopped.await;
    }));
    let scrape = move || async move {
        let (status, headers, body) = get(metrics_addr, "metrics", "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")));
        body
    };
    let exposition = scrape().await;
    let task_a1 = r#"berth_ingress_task_requests_total{namespace="ns",service="a",task="a-1"}"#;
    for (series, expected) in [
        (
            r#"berth_ingress_requests_total{namespace="ns",service="a",code="200"}"#,
            2.0,
        ),
        (
            r#"berth_ingress_requests_total{namespace="",service="",code="404"}"#,
            1.0,
        ),
        (
            r#"berth_ingress_request_duration_seconds_count{namespace="ns",service="a"}"#,
            2.0,
        ),
        (task_a1, 2.0),
        (
            r#"berth_ingress_errors_total{namespace="",service="",kind="no_route"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            metric(&exposition, series),
            Some(expected),
            "{series} in\n{exposition}"
        );
    }
    assert_eq!(
        get(metrics_addr, "metrics", "/other").await.0,
        StatusCode::NOT_FOUND
    );

    // Task a-1 is replaced by a-2: its series goes with the next request.
    let table = RouteTable::new(
        vec![http_route("a", "a.test", "/", vec![to("a-2", a)])],
        vec![],
    );
    ingress
        .routes
        .send(Arc::new(table))
        .expect("the proxy follows the routes");
    assert_eq!(get(ingress.addr, "a.test", "/").await.0, StatusCode::OK);
    let exposition = scrape().await;
    assert_eq!(metric(&exposition, task_a1), None, "{exposition}");
    let task_a2 = r#"berth_ingress_task_requests_total{namespace="ns",service="a",task="a-2"}"#;
    assert_eq!(metric(&exposition, task_a2), Some(1.0), "{exposition}");
    assert_eq!(ingress.proxy.routes().task_ids().len(), 1);

    let _ = stop.send(());
    within("stop the metrics server", server)
        .await
        .expect("the server task ends");
    ingress.stop().await;
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let (arrived_tx, mut arrived) = mpsc::channel::<()>(1);
    let (release, released) = watch::channel(false);
    let slow = backend_with(move |_request| {
        let (arrived_tx, mut released) = (arrived_tx.clone(), released.clone());
        async move {
            let _ = arrived_tx.send(()).await;
            let _ = released.wait_for(|&go| go).await;
            Response::new(Full::from("slow answer"))
        }
    })
    .await;
    let table = RouteTable::new(
        vec![http_route("slow", "*", "/", vec![to("s-1", slow)])],
        vec![],
    );
    let ingress = Ingress::start(table, None).await;
    let addr = ingress.addr;
    let request = tokio::spawn(async move { get(addr, "slow.test", "/").await });
    within("the request reaches the task", arrived.recv()).await;

    let stopping = tokio::spawn(ingress.stop());
    // The listener closes at once; the open connection waits for its answer.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener stays open"
        );
        tokio::task::yield_now().await;
    }
    assert!(!stopping.is_finished());
    release.send(true).expect("the task waits");
    let (status, _, body) = within("the answer", request)
        .await
        .expect("the request task");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow answer"));
    within("the server stops", stopping)
        .await
        .expect("the stop task");
}
