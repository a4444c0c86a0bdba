//! A real TLS listener and dialer on loopback: a client with a certificate is seen by the
//! server as who it is, one without is anonymous, one that trusts another CA cannot connect.

use std::sync::{Arc, Mutex};

use berth_tls::net::{incoming, Dialer};
use berth_tls::tls::{client_config, server_config, Credentials, Trust, TrustStore};
use berth_tls::{ClusterCa, Identity, Role, DEFAULT_CERT_TTL};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn credentials(ca: &ClusterCa, identity: &Identity) -> Arc<Credentials> {
    let (issued, key) = ca
        .issue_new(identity, &["127.0.0.1".into()], DEFAULT_CERT_TTL)
        .expect("issue");
    Arc::new(Credentials::new(&issued.cert_pem, &key.pem(), ca.cert_pem()).expect("credentials"))
}

#[tokio::test]
async fn grpc_over_tls_knows_its_callers() {
    let ca = ClusterCa::create("net").expect("ca");
    let server = credentials(&ca, &Identity::new(Role::Server, "1"));
    let trust = TrustStore::new(ca.cert_pem()).expect("trust");
    let config = server_config(trust, server).expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();

    let seen: Arc<Mutex<Vec<Option<Identity>>>> = Arc::default();
    let record = seen.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            let who = req
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|c| Identity::from_cert(c.as_ref())));
            record.lock().expect("lock").push(who);
            Ok(req)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming(listener, Arc::new(config))),
    );

    let trust = Trust::Ca(ca.cert_pem().to_owned());
    let agent = Identity::new(Role::Agent, "node-1");
    for creds in [Some(credentials(&ca, &agent)), None] {
        let dialer = Dialer::new(client_config(&trust, creds).expect("client config"));
        let channel = dialer.connect(&addr).await.expect("connect");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health over tls");
    }
    assert_eq!(*seen.lock().expect("lock"), [Some(agent), None]);

    let other = ClusterCa::create("other").expect("ca");
    let dialer = Dialer::new(
        client_config(&Trust::Ca(other.cert_pem().to_owned()), None).expect("client config"),
    );
    let refused = match dialer.connect(&addr).await {
        Err(_) => true,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client that does not trust the cluster CA got through"
    );
}

/// Whether a health check over a dialer reaches the listener at `addr`.
async fn reaches(dialer: &Dialer, addr: &str) -> bool {
    match dialer.connect(addr).await {
        Err(_) => false,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok(),
    }
}

#[tokio::test]
async fn a_client_that_wants_a_server_refuses_an_agent_answering_at_its_address() {
    let ca = ClusterCa::create("net").expect("ca");
    // An agent's certificate, valid for 127.0.0.1 like every node's, serving TLS there.
    let agent = credentials(&ca, &Identity::new(Role::Agent, "node-1"));
    let config = server_config(TrustStore::new(ca.cert_pem()).expect("trust"), agent)
        .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming(listener, Arc::new(config))),
    );
    let trust = Trust::Ca(ca.cert_pem().to_owned());
    let any = Dialer::new(client_config(&trust, None).expect("client config"));
    assert!(
        reaches(&any, &addr).await,
        "any certificate of the cluster passes"
    );
    let servers_only = Dialer::new(
        berth_tls::tls::client_config_for(&trust, None, Role::Server).expect("client config"),
    );
    assert!(
        !reaches(&servers_only, &addr).await,
        "a client that wants a server reached an agent"
    );
}
