//! The ECS endpoint's transport (`berth server --ecs-listen ADDR`): HTTP/1.1 and HTTP/2, in
//! plain text on a loopback address and over TLS with the server's certificate otherwise. Each
//! request's body is read up to [`MAX_BODY`] and handed, with its headers, to the API's ECS
//! calls (`api::ecs`), which authenticate and answer it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_ecs::protocol::{EcsError, ErrorType, CONTENT_TYPE};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

use crate::api::{BerthService, EcsCall};

/// The largest request body taken (ECS's largest requests, task definitions, are 64 KiB).
pub const MAX_BODY: usize = 1 << 20;

/// How long a connection may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The ECS endpoint: where it listens, and the account ID its ARNs carry.
pub struct Endpoint {
    pub listener: TcpListener,
    pub account: String,
}

fn answer(status: u16, body: String, error: Option<&str>) -> http::Response<Full<Bytes>> {
    let mut builder = http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
        .header("x-amzn-RequestId", uuid::Uuid::new_v4().to_string());
    if let Some(kind) = error {
        builder = builder.header("x-amzn-ErrorType", kind);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

fn error(e: &EcsError) -> http::Response<Full<Bytes>> {
    answer(e.kind.http_status(), e.body(), Some(e.kind.name()))
}

async fn handle(
    api: Arc<BerthService>,
    account: Arc<str>,
    request: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                let message = if e.is::<http_body_util::LengthLimitError>() {
                    format!("the request body is larger than {MAX_BODY} bytes")
                } else {
                    format!("reading the request body failed: {e}")
                };
                return error(&EcsError::new(ErrorType::Client, message));
            }
            Err(_) => {
                return error(&EcsError::new(
                    ErrorType::Client,
                    "the request body did not arrive within 30 s",
                ))
            }
        };
    let mut headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    // HTTP/2 carries the host in `:authority`; SigV4 signs it as `host`.
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    if !headers.iter().any(|(n, _)| *n == "host") {
        if let Some(a) = &authority {
            headers.push(("host", a));
        }
    }
    let call = EcsCall {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &headers,
        body: &body,
    };
    match api.ecs(call, &account).await {
        Ok(value) => answer(200, value.to_string(), None),
        Err(e) => error(&e),
    }
}

/// Serves the ECS API on `endpoint` until the task is dropped: TLS with `tls` unless the
/// address is a loopback one.
pub async fn serve(
    endpoint: Endpoint,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<BerthService>,
) -> anyhow::Result<()> {
    let address: SocketAddr = endpoint.listener.local_addr()?;
    let plain = address.ip().is_loopback();
    let account: Arc<str> = endpoint.account.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let service = move || {
        let (api, account) = (api.clone(), account.clone());
        hyper::service::service_fn(move |request| {
            let (api, account) = (api.clone(), account.clone());
            async move { Ok::<_, Infallible>(handle(api, account, request).await) }
        })
    };
    tracing::info!(%address, tls = !plain, "ECS endpoint listening");
    if plain {
        loop {
            let (stream, peer) = match endpoint.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("ECS endpoint: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (builder, service) = (builder.clone(), service());
            tokio::spawn(async move {
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, "ECS endpoint connection: {e}");
                }
            });
        }
    }
    let mut incoming = berth_tls::net::incoming(endpoint.listener, tls);
    while let Some(stream) = incoming.next().await {
        let Ok(stream) = stream else { continue };
        let (builder, service) = (builder.clone(), service());
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("ECS endpoint connection: {e}");
            }
        });
    }
    Ok(())
}
