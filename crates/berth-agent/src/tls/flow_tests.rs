//! Compiled only under #[cfg(test)] (see `mod flow_tests` in mod.rs): the join and renewal flows
//! over real TLS on loopback, against a fake `Join` service that issues certificates the way
//! the servers do (the token's secret for a join, the caller's certificate for a renewal).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::join_server::{Join, JoinServer};
use berth_proto::v1::{JoinRequest, JoinResponse, RenewRequest};
use berth_tls::net::incoming;
use berth_tls::tls::{server_config, Credentials};
use berth_tls::{ClusterCa, Identity, JoinToken, NodeKey, Role};
use tonic::{Request, Response, Status};

use super::*;
use crate::{AgentConfig, Metrics};

/// A server's `Join` service, reduced to what the agent relies on.
struct FakeJoin {
    ca: ClusterCa,
    token: JoinToken,
    ttl: Duration,
    joins: Arc<AtomicUsize>,
    renewals: Arc<AtomicUsize>,
}

fn hosts(addresses: &[String]) -> Vec<String> {
    addresses
        .iter()
        .filter_map(|a| {
            a.rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
        })
        .collect()
}

impl FakeJoin {
    fn issue(
        &self,
        csr: &str,
        identity: &Identity,
        addresses: &[String],
    ) -> Result<JoinResponse, Status> {
        let issued = self
            .ca
            .issue(csr, identity, &hosts(addresses), self.ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(JoinResponse {
            certificate: issued.cert_pem,
            ca: self.ca.cert_pem().to_owned(),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl Join for FakeJoin {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        self.joins.fetch_add(1, Ordering::SeqCst);
        let r = req.into_inner();
        if r.token_id != self.token.id || r.secret != self.token.secret || r.role != "agent" {
            return Err(Status::unauthenticated("unknown join token"));
        }
        let identity = Identity::new(Role::Agent, r.name);
        self.issue(&r.csr, &identity, &r.addresses)
            .map(Response::new)
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<JoinResponse>, Status> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        let caller = req
            .peer_certs()
            .and_then(|c| c.first().and_then(|c| Identity::from_cert(c.as_ref())))
            .ok_or_else(|| Status::unauthenticated("no certificate"))?;
        let r = req.into_inner();
        self.issue(&r.csr, &caller, &r.addresses).map(Response::new)
    }

    /// Servers only: agents never ask for the keyring.
    async fn exchange_keyring(
        &self,
        _: Request<berth_proto::v1::KeyringRequest>,
    ) -> Result<Response<berth_proto::v1::Keyring>, Status> {
        Err(Status::permission_denied("servers only"))
    }
}

struct Cluster {
    ca: ClusterCa,
    token: JoinToken,
    address: String,
    joins: Arc<AtomicUsize>,
    renewals: Arc<AtomicUsize>,
}

async fn cluster(ttl: Duration) -> Cluster {
    let ca = ClusterCa::create("flow").expect("ca");
    let token = JoinToken::generate(&ca.fingerprint().expect("fingerprint")).expect("token");
    let key = NodeKey::generate().expect("key");
    let server = Identity::new(Role::Server, "1");
    let cert = ca
        .issue(
            &key.csr(&server).expect("csr"),
            &server,
            &["127.0.0.1".into()],
            berth_tls::DEFAULT_CERT_TTL,
        )
        .expect("issue")
        .cert_pem;
    let credentials = Arc::new(Credentials::new(&cert, &key.pem(), ca.cert_pem()).expect("creds"));
    let trust = berth_tls::tls::TrustStore::new(ca.cert_pem()).expect("trust");
    let config = server_config(trust, credentials).expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let (joins, renewals) = (Arc::default(), Arc::default());
    let service = FakeJoin {
        ca: ca.clone(),
        token: token.clone(),
        ttl,
        joins: Arc::clone(&joins),
        renewals: Arc::clone(&renewals),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(JoinServer::new(service))
            .serve_with_incoming(incoming(listener, Arc::new(config))),
    );
    Cluster {
        ca,
        token,
        address,
        joins,
        renewals,
    }
}

fn config(
    dir: &std::path::Path,
    server: &str,
    token: Option<JoinToken>,
    advertise: &str,
) -> Member {
    let listen = "127.0.0.1:0".parse().expect("addr");
    AgentConfig {
        node_name: "node-1".into(),
        data_dir: dir.to_owned(),
        servers: vec![server.to_owned()],
        listen,
        advertise: Advertise::new(listen, Some(advertise)).expect("advertise"),
        join_token: token,
        join_timeout: Duration::from_secs(2),
        join_gate: None,
        metrics_public: false,
        cpu: 1024,
        memory: 1024,
        attributes: BTreeMap::new(),
        heartbeat_interval: Duration::from_secs(1),
        metrics_interval: Duration::from_secs(1),
        metrics: Metrics::new(),
        discovery: None,
    }
    .member()
}

#[tokio::test]
async fn an_agent_joins_once_with_its_token_then_restarts_and_renews_without_it() {
    let c = cluster(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let me = Identity::new(Role::Agent, "node-1");

    // No certificate and no token: told how to get one.
    let err = establish(
        &config(dir.path(), &c.address, None, "127.0.0.1"),
        "127.0.0.1:7401",
    )
    .await
    .err()
    .expect("refused");
    assert!(
        format!("{err:#}").contains("berth cluster token create --role agent"),
        "{err:#}"
    );

    // The first start joins with the token and keeps the material.
    let joining = config(dir.path(), &c.address, Some(c.token.clone()), "127.0.0.1");
    let (tls, held) = establish(&joining, "127.0.0.1:7401").await.expect("join");
    assert_eq!(c.joins.load(Ordering::SeqCst), 1);
    let info = CertInfo::read(&held.material.cert_pem).expect("cert");
    assert_eq!(info.identity, Some(me.clone()));
    assert!(info.names("127.0.0.1"));
    assert!(!held.renew_now);
    assert!(held.material.ca_key_pem.is_none());
    assert_eq!(tls.trust.pem(), c.ca.cert_pem());
    let stored = TlsDir::new(dir.path())
        .load()
        .expect("load")
        .expect("material");
    assert_eq!(stored, held.material);

    // A restart needs no token and makes no join.
    let restart = config(dir.path(), &c.address, None, "127.0.0.1");
    let (tls, held) = establish(&restart, "127.0.0.1:7401")
        .await
        .expect("restart");
    assert_eq!(c.joins.load(Ordering::SeqCst), 1);
    assert!(!held.renew_now);

    // A renewal: a new certificate for the same key, saved and in use.
    let renewed = renew::renew(
        &restart,
        &tls,
        &held,
        &me,
        "127.0.0.1:7401",
        &TlsDir::new(dir.path()),
    )
    .await
    .expect("renew");
    assert_eq!(c.renewals.load(Ordering::SeqCst), 1);
    assert_ne!(renewed.material.cert_pem, held.material.cert_pem);
    assert_eq!(renewed.material.key_pem, held.material.key_pem);
    assert_eq!(
        CertInfo::read(&renewed.material.cert_pem)
            .expect("cert")
            .identity,
        Some(me)
    );
    let stored = TlsDir::new(dir.path())
        .load()
        .expect("load")
        .expect("material");
    assert_eq!(stored, renewed.material);

    // Advertised elsewhere after a restart: the certificate does not name the new host, so
    // it is renewed at once.
    let moved = config(dir.path(), &c.address, None, "127.0.0.2");
    let (_, held) = establish(&moved, "127.0.0.2:7401").await.expect("restart");
    assert!(held.renew_now);

    // Another node name with this data dir is refused.
    let mut other = config(dir.path(), &c.address, None, "127.0.0.1");
    other.name = "node-2".into();
    let err = establish(&other, "127.0.0.1:7401")
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("holds a certificate of agent node-1, not of agent node-2"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_join_fails_with_advice_for_a_wrong_secret_and_sends_nothing_to_another_cluster() {
    let c = cluster(Duration::from_secs(3600)).await;

    // The right CA, a wrong secret: refused at once, with what to do.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wrong = c.token.clone();
    wrong.secret = "0".repeat(64);
    let err = establish(
        &config(dir.path(), &c.address, Some(wrong), "127.0.0.1"),
        "127.0.0.1:1",
    )
    .await
    .err()
    .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("unknown join token"), "{text}");
    assert!(
        text.contains("berth cluster token create --role agent"),
        "{text}"
    );
    assert_eq!(c.joins.load(Ordering::SeqCst), 1);

    // A token of another cluster: the handshake fails, the secret never leaves, and the join
    // ends at once (asking again would not change the server's CA).
    let other = ClusterCa::create("other").expect("ca");
    let foreign = JoinToken::generate(&other.fingerprint().expect("fingerprint")).expect("token");
    let err = establish(
        &config(dir.path(), &c.address, Some(foreign), "127.0.0.1"),
        "127.0.0.1:1",
    )
    .await
    .err()
    .expect("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "server {} presented a CA that does not match the join token's fingerprint",
            c.address
        )) && text.contains("the token is from another cluster"),
        "{text}"
    );
    assert_eq!(
        c.joins.load(Ordering::SeqCst),
        1,
        "nothing reached the server"
    );
    assert!(TlsDir::new(dir.path()).load().expect("load").is_none());
}
