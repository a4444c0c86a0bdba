//! What the ingress's servers share: the accept loop and its graceful shutdown, plain-text
//! answers, and error chains for logs.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use http::{header, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};

/// How long a server waits, once told to stop, for its open connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait after a failed accept (most likely out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections and hands each to `serve` with a [`Watcher`] until `shutdown`
/// resolves; then closes the listener and waits up to [`DRAIN_TIMEOUT`] for every watcher to
/// be dropped (a connection served through [`Watcher::watch`] is told to finish first).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut serve: impl FnMut(TcpStream, SocketAddr, Watcher),
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Proxied traffic is often small writes: do not delay them.
                    let _ = stream.set_nodelay(true);
                    serve(stream, peer, graceful.watcher());
                }
                Err(err) => {
                    tracing::warn!("accept a connection: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "stop serving with connections still open after {DRAIN_TIMEOUT:?} ({open} were open)"
        );
    }
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Displays an error with its causes: `outer: cause: root cause`.
pub(crate) struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
