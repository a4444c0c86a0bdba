//! TLS on the wire for tonic: a listener whose connections are TLS streams tonic can serve
//! (handlers read the client's verified certificate with `Request::peer_certs`), and a dialer
//! whose channels speak TLS to `host:port` addresses.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint};

use crate::Identity;

/// A handshake that takes longer than this is dropped (a client that connects and says
/// nothing must not hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted TLS connection, as `serve_with_incoming` takes it.
pub type Accepted = std::io::Result<TlsStream<Socket>>;

/// The TLS connections accepted on `listener`, for `serve_with_incoming`. Handshakes run
/// concurrently, off the accept loop; failed ones are dropped (and logged at debug).
pub fn incoming(listener: TcpListener, config: Arc<ServerConfig>) -> ReceiverStream<Accepted> {
    let (all, _) = incoming_split(listener, config, |_| true, None);
    all
}

/// Like [`incoming`], in two streams: once its handshake is done, a connection goes to the
/// first if `first` says so of the identity its client's certificate names (verified by the
/// handshake; `None` without a certificate, or one that names none), to the second
/// otherwise. A server serves each on a runtime of its own, so that one kind of client cannot
/// make the other wait in its run queue; `second_runtime` is the second's, and its
/// connections move onto that runtime's I/O driver (a socket's readiness is otherwise told
/// by the driver of the runtime that accepted it, whose threads may all be busy).
/// Accepting stops once both streams are dropped.
pub fn incoming_split(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    first: impl Fn(Option<&Identity>) -> bool + Send + Sync + 'static,
    second_runtime: Option<Handle>,
) -> (ReceiverStream<Accepted>, ReceiverStream<Accepted>) {
    let (first_tx, first_rx) = tokio::sync::mpsc::channel(64);
    let (second_tx, second_rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let first = Arc::new(first);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Without it small answers wait ~40 ms for delayed ACKs.
            let _ = tcp.set_nodelay(true);
            if first_tx.is_closed() && second_tx.is_closed() {
                return;
            }
            let (acceptor, first) = (acceptor.clone(), first.clone());
            let (first_tx, second_tx) = (first_tx.clone(), second_tx.clone());
            let second_runtime = second_runtime.clone();
            tokio::spawn(async move {
                let handshake = acceptor.accept(Socket(Some(tcp)));
                let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(%peer, "tls handshake: {e}"),
                    Err(_) => return tracing::debug!(%peer, "tls handshake timed out"),
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| Identity::from_cert(certs.first()?.as_ref()));
                if first(identity.as_ref()) {
                    let _ = first_tx.send(Ok(tls)).await;
                    return;
                }
                if let Some(runtime) = &second_runtime {
                    if let Err(e) = tls.get_mut().0.move_to(runtime) {
                        return tracing::debug!(%peer, "move a connection to its runtime: {e}");
                    }
                }
                let _ = second_tx.send(Ok(tls)).await;
            });
        }
    });
    (
        ReceiverStream::new(first_rx),
        ReceiverStream::new(second_rx),
    )
}

/// An accepted TCP connection that can move to another runtime's I/O driver.
#[derive(Debug)]
pub struct Socket(Option<TcpStream>);

impl Socket {
    fn tcp(&self) -> &TcpStream {
        self.0
            .as_ref()
            .expect("a socket is whole outside `move_to`")
    }

    fn tcp_mut(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.0
                .as_mut()
                .expect("a socket is whole outside `move_to`"),
        )
    }

    /// Registers the socket with `runtime`'s I/O driver instead of the one it has (the
    /// kernel keeps what was sent to it meanwhile; a new registration reports it).
    fn move_to(&mut self, runtime: &Handle) -> std::io::Result<()> {
        let Some(tcp) = self.0.take() else {
            return Err(std::io::Error::other(
                "the socket was lost in an earlier move",
            ));
        };
        let std = tcp.into_std()?;
        let _inside = runtime.enter();
        self.0 = Some(TcpStream::from_std(std)?);
        Ok(())
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().tcp_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().tcp_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().tcp_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().tcp_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().tcp_mut().poll_shutdown(cx)
    }
}

impl Connected for Socket {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

/// Opens TLS channels to `host:port` addresses with one client configuration.
#[derive(Clone)]
pub struct Dialer {
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    keep_alive: Option<Duration>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").finish_non_exhaustive()
    }
}

impl Dialer {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config: Arc::new(config),
            connect_timeout: Duration::from_secs(5),
            keep_alive: None,
        }
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 pings every `every` while a call is open; a connection whose ping is not
    /// answered within `every` fails its calls.
    pub fn with_keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = Some(every);
        self
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        Ok(match self.keep_alive {
            Some(every) => endpoint
                .http2_keep_alive_interval(every)
                .keep_alive_timeout(every),
            None => endpoint,
        })
    }

    fn connector(
        &self,
    ) -> impl tower::Service<
        Uri,
        Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Error = std::io::Error,
        Future = impl Send,
    > + Send
           + Clone
           + 'static {
        let connector = TlsConnector::from(self.config.clone());
        tower::service_fn(move |uri: Uri| {
            let connector = connector.clone();
            async move {
                let host = uri
                    .host()
                    .ok_or_else(|| std::io::Error::other(format!("{uri} has no host")))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
                let tls = connector.connect(name, tcp).await?;
                Ok(TokioIo::new(tls))
            }
        })
    }

    /// A channel to `addr` that connects on first use (and again after failures).
    pub fn lazy(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        Ok(self
            .endpoint(addr)?
            .connect_with_connector_lazy(self.connector()))
    }

    /// A channel to `addr`, connected now.
    pub async fn connect(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.endpoint(addr)?
            .connect_with_connector(self.connector())
            .await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    use super::*;
    use crate::tls::{client_config, server_config, Credentials, Trust, TrustStore};
    use crate::{ClusterCa, Role, DEFAULT_CERT_TTL};

    fn credentials(ca: &ClusterCa, identity: &Identity) -> Arc<Credentials> {
        let (issued, key) = ca
            .issue_new(identity, &["127.0.0.1".into()], DEFAULT_CERT_TTL)
            .expect("issue");
        Arc::new(Credentials::new(&issued.cert_pem, &key.pem(), ca.cert_pem()).expect("creds"))
    }

    /// The next connection a stream hands out, with the identity the server saw on it.
    async fn next_connection(
        stream: &mut ReceiverStream<Accepted>,
    ) -> (TlsStream<Socket>, Option<Identity>) {
        let tls = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a connection within 10 s")
            .expect("stream open")
            .expect("accepted");
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| Identity::from_cert(c.first()?.as_ref()));
        (tls, identity)
    }

    #[tokio::test]
    async fn split_connections_go_where_the_predicate_sends_them() {
        let ca = ClusterCa::create("a").expect("ca");
        let trust = TrustStore::new(ca.cert_pem()).expect("trust");
        let server = credentials(&ca, &Identity::new(Role::Server, "1"));
        let config = Arc::new(server_config(trust, server).expect("server config"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let elsewhere = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (mut agents, mut others) = incoming_split(
            listener,
            config,
            |identity| identity.is_some_and(|id| id.role == Role::Agent),
            Some(elsewhere.handle().clone()),
        );
        let connect = |identity: Identity| {
            let client = client_config(
                &Trust::Ca(ca.cert_pem().to_owned()),
                Some(credentials(&ca, &identity)),
            )
            .expect("client config");
            async move {
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let name = ServerName::try_from("127.0.0.1").expect("name");
                TlsConnector::from(Arc::new(client))
                    .connect(name, tcp)
                    .await
                    .expect("handshake")
            }
        };
        let mut admin = connect(Identity::new(Role::Admin, "alice")).await;
        let (mut moved, identity) = next_connection(&mut others).await;
        assert_eq!(identity, Some(Identity::new(Role::Admin, "alice")));
        // The connection moved to the other runtime's driver still carries bytes both ways,
        // served from there.
        let echo = elsewhere.spawn(async move {
            let mut buf = [0u8; 5];
            moved
                .read_exact(&mut buf)
                .await
                .expect("read on the moved socket");
            moved
                .write_all(&buf)
                .await
                .expect("write on the moved socket");
            moved.flush().await.expect("flush");
            moved
        });
        admin.write_all(b"hello").await.expect("write");
        admin.flush().await.expect("flush");
        let mut back = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), admin.read_exact(&mut back))
            .await
            .expect("an echo within 10 s")
            .expect("read the echo");
        assert_eq!(&back, b"hello");
        let _moved = echo.await.expect("echo task");
        let _agent = connect(Identity::new(Role::Agent, "node-1")).await;
        let (_agent_side, identity) = next_connection(&mut agents).await;
        assert_eq!(identity, Some(Identity::new(Role::Agent, "node-1")));
        // Nothing crossed over: each stream got its one connection only.
        let pending = tokio::time::timeout(Duration::from_millis(200), others.next()).await;
        assert!(
            pending.is_err(),
            "the agent's connection also reached the other stream"
        );
        elsewhere.shutdown_background();
    }
}
