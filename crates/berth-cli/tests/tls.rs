//! The CLI's client over a real TLS listener: it trusts only the CA of its credentials and sends
//! its token as `authorization: Bearer …` on every call.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use berth_cli::{Access, Client};
use berth_proto::v1 as pb;
use berth_tls::{tls, ClusterCa, Identity, NodeKey, Role, DEFAULT_CERT_TTL};
use tonic::body::Body;
use tonic::codegen::http;

const TOKEN: &str = "berth_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef";

/// Answers every call of the Berth service without a message: PERMISSION_DENIED "token seen"
/// when the request carries the bearer token, UNAUTHENTICATED otherwise.
#[derive(Clone)]
struct Gate;

impl tonic::server::NamedService for Gate {
    const NAME: &'static str = "berth.v1.Berth";
}

impl tonic::codegen::Service<http::Request<Body>> for Gate {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let bearer = format!("Bearer {TOKEN}");
        let seen = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == bearer.as_bytes());
        let (code, message) = if seen {
            ("7", "token seen")
        } else {
            ("16", "no token")
        };
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
            .header("grpc-message", message)
            .body(Body::empty())
            .expect("a valid response");
        Box::pin(async move { Ok(response) })
    }
}

/// A TLS server of `ca` on a free loopback port; answers its address.
async fn serve(ca: &ClusterCa) -> String {
    let identity = Identity::new(Role::Server, "1");
    let key = NodeKey::generate().expect("key");
    let issued = ca
        .issue(
            &key.csr(&identity).expect("csr"),
            &identity,
            &["127.0.0.1".into()],
            DEFAULT_CERT_TTL,
        )
        .expect("issue");
    let credentials = Arc::new(
        tls::Credentials::new(&issued.cert_pem, &key.pem(), ca.cert_pem()).expect("credentials"),
    );
    let trust = tls::TrustStore::new(ca.cert_pem()).expect("trust");
    let config = tls::server_config(trust, credentials).expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let incoming = berth_tls::net::incoming(listener, Arc::new(config));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Gate)
            .serve_with_incoming(incoming),
    );
    address
}

async fn cluster_status(access: &Access) -> anyhow::Result<pb::ClusterStatusResponse> {
    Client::with_access(access)?
        .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await
}

#[tokio::test]
async fn calls_go_over_tls_with_the_token() {
    let ca = ClusterCa::create("test").expect("ca");
    let address = serve(&ca).await;
    let access = Access {
        servers: vec![address.clone()],
        ca: ca.cert_pem().to_owned(),
        token: TOKEN.to_owned(),
        file: None,
    };
    let err = cluster_status(&access).await.unwrap_err();
    assert_eq!(format!("{err:#}"), "token seen");

    // A server whose certificate is not from the credentials' CA is never talked to.
    let other = ClusterCa::create("other").expect("ca");
    let access = Access {
        ca: other.cert_pem().to_owned(),
        ..access
    };
    let err = format!("{:#}", cluster_status(&access).await.unwrap_err());
    assert!(err.starts_with("cannot reach any berth server"), "{err}");
    assert!(err.contains("certificate"), "{err}");
}
