//! rustls configurations: a server's (its certificate replaceable while it runs, clients'
//! certificates optional but verified against the cluster CA when given) and a client's (the
//! cluster CA as its only root, or a CA pinned by the fingerprint of a join token).

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest as _, Sha256};

use crate::ca::hex;
use crate::TlsError;

/// The one crypto provider berth uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Parse { what })?;
    if certs.is_empty() {
        return Err(TlsError::Parse { what });
    }
    Ok(certs)
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "the CA certificate")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// This process's certificate (with the CA after it, so that joiners can pin the CA) and
/// key; replaced in place when the certificate is renewed, so that open connections stay and
/// new handshakes use the new one.
#[derive(Debug)]
pub struct Credentials(RwLock<Arc<CertifiedKey>>);

impl Credentials {
    pub fn new(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, TlsError> {
        Ok(Self(RwLock::new(Arc::new(certified(
            cert_pem, key_pem, ca_pem,
        )?))))
    }

    /// Replaces the certificate and key (a renewal).
    pub fn replace(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<(), TlsError> {
        let next = Arc::new(certified(cert_pem, key_pem, ca_pem)?);
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn certified(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<CertifiedKey, TlsError> {
    let mut chain = certs(cert_pem, "the node's certificate")?;
    chain.extend(certs(ca_pem, "the CA certificate")?);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::Parse {
        what: "the node's key",
    })?;
    let key = ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, key))
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server's configuration: it presents `credentials`; a client may present a certificate,
/// which must then chain to the CA (callers decide from the verified certificate, or from a
/// token when there is none, what the client may do). ALPN offers HTTP/2 (gRPC) and HTTP/1.1
/// (`/metrics`).
pub fn server_config(
    ca_pem: &str,
    credentials: Arc<Credentials>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Whom a client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The cluster CA (PEM): the usual case.
    Ca(String),
    /// A CA known only by its fingerprint (a join token's): the server must present it in its
    /// chain; see [`Pinned`].
    Pinned(Arc<Pinned>),
}

/// A client's configuration for gRPC (ALPN `h2`): it trusts `trust` and presents
/// `credentials` when it has them.
pub fn client_config(
    trust: &Trust,
    credentials: Option<Arc<Credentials>>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Ca(pem) => builder.with_root_certificates(roots(pem)?),
        Trust::Pinned(pinned) => builder
            .dangerous()
            .with_custom_certificate_verifier(pinned.clone()),
    };
    let mut config = match credentials {
        Some(c) => builder.with_client_cert_resolver(c),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies a server against a CA known only by its SHA-256 (a join token's): the server's
/// chain must include a certificate with that fingerprint, and its own certificate must be
/// valid under it. The CA found is kept, for the joiner to store.
#[derive(Debug)]
pub struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    found: Mutex<Option<String>>,
    /// A server presented a chain without the pinned CA: the token is from another cluster,
    /// and trying again will not help.
    other_ca: std::sync::atomic::AtomicBool,
}

impl Pinned {
    pub fn new(fingerprint: &str) -> Arc<Self> {
        Arc::new(Self {
            fingerprint: fingerprint.to_owned(),
            provider: provider(),
            found: Mutex::new(None),
            other_ca: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether a server presented another CA than the pinned one (a token of another cluster).
    pub fn saw_another_ca(&self) -> bool {
        self.other_ca.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The CA certificate (PEM) of the last server that passed.
    pub fn ca_pem(&self) -> Option<String> {
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex(&Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                self.other_ca
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                rustls::Error::General(
                    "the server's CA does not match the join token's fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.found.lock().unwrap_or_else(PoisonError::into_inner) = Some(pem(ca));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterCa, Identity, Role, DEFAULT_CERT_TTL};

    struct Node {
        cert: String,
        key: String,
    }

    fn node(ca: &ClusterCa, identity: &Identity) -> Node {
        let (issued, key) = ca
            .issue_new(identity, &["127.0.0.1".into()], DEFAULT_CERT_TTL)
            .expect("issue");
        Node {
            cert: issued.cert_pem,
            key: key.pem(),
        }
    }

    fn credentials(ca: &ClusterCa, n: &Node) -> Arc<Credentials> {
        Arc::new(Credentials::new(&n.cert, &n.key, ca.cert_pem()).expect("credentials"))
    }

    /// Runs a handshake in memory; answers the client certificate's identity as the server
    /// saw it, or the first error.
    fn handshake(server: ServerConfig, client: ClientConfig) -> Result<Option<Identity>, String> {
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut c =
            rustls::ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
        let mut s = rustls::ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            s.process_new_packets().map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
            c.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            c.process_new_packets().map_err(|e| e.to_string())?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|c| Identity::from_cert(c.as_ref())));
            }
        }
        Err("handshake did not finish".into())
    }

    #[test]
    fn servers_and_clients_authenticate_each_other_through_the_ca() {
        let ca = ClusterCa::create("a").expect("ca");
        let server_id = Identity::new(Role::Server, "1");
        let agent_id = Identity::new(Role::Agent, "node-1");
        let server = credentials(&ca, &node(&ca, &server_id));
        let agent = credentials(&ca, &node(&ca, &agent_id));
        let server_config = || server_config(ca.cert_pem(), server.clone()).expect("server");
        let trust = Trust::Ca(ca.cert_pem().to_owned());

        // An agent with its certificate: the server sees who it is.
        let client = client_config(&trust, Some(agent.clone())).expect("client");
        assert_eq!(handshake(server_config(), client), Ok(Some(agent_id)));
        // A client without a certificate (a token user) is let in, anonymous.
        let client = client_config(&trust, None).expect("client");
        assert_eq!(handshake(server_config(), client), Ok(None));

        // A certificate from another CA is refused.
        let other = ClusterCa::create("b").expect("ca");
        let stranger = credentials(&other, &node(&other, &Identity::new(Role::Agent, "x")));
        let client = client_config(&trust, Some(stranger)).expect("client");
        assert!(handshake(server_config(), client).is_err());
        // So is a server whose CA the client does not trust.
        let client = client_config(&Trust::Ca(other.cert_pem().to_owned()), None).expect("client");
        assert!(handshake(server_config(), client).is_err());
    }

    #[test]
    fn a_joiner_trusts_only_the_ca_its_token_pins_and_learns_it() {
        let ca = ClusterCa::create("a").expect("ca");
        let server = credentials(&ca, &node(&ca, &Identity::new(Role::Server, "1")));
        let server_config = || server_config(ca.cert_pem(), server.clone()).expect("server");

        let pinned = Pinned::new(&ca.fingerprint().expect("fingerprint"));
        let client = client_config(&Trust::Pinned(pinned.clone()), None).expect("client");
        assert_eq!(handshake(server_config(), client), Ok(None));
        let learned = pinned.ca_pem().expect("the CA");
        assert_eq!(crate::fingerprint(&learned).ok(), ca.fingerprint().ok());

        let other = ClusterCa::create("b").expect("ca");
        let wrong = Pinned::new(&other.fingerprint().expect("fingerprint"));
        let client = client_config(&Trust::Pinned(wrong.clone()), None).expect("client");
        let err = handshake(server_config(), client).expect_err("refused");
        assert!(err.contains("does not match the join token"), "{err}");
        assert_eq!(wrong.ca_pem(), None);
        assert!(wrong.saw_another_ca() && !pinned.saw_another_ca());
    }

    #[test]
    fn renewed_credentials_are_used_by_the_next_handshake() {
        let ca = ClusterCa::create("a").expect("ca");
        let server = credentials(&ca, &node(&ca, &Identity::new(Role::Server, "1")));
        let first = node(&ca, &Identity::new(Role::Agent, "node-1"));
        let agent = credentials(&ca, &first);
        let trust = Trust::Ca(ca.cert_pem().to_owned());
        let second = node(&ca, &Identity::new(Role::Agent, "node-1"));
        agent
            .replace(&second.cert, &second.key, ca.cert_pem())
            .expect("replace");
        let client = client_config(&trust, Some(agent.clone())).expect("client");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(
            server_config(ca.cert_pem(), server).expect("server"),
        ))
        .expect("server");
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("write");
            s.read_tls(&mut buf.as_slice()).expect("read");
            s.process_new_packets().expect("process");
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("write");
            c.read_tls(&mut buf.as_slice()).expect("read");
            c.process_new_packets().expect("process");
        }
        let seen = s
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .expect("cert");
        let second_der = CertificateDer::from_pem_slice(second.cert.as_bytes()).expect("pem");
        assert_eq!(seen, second_der);
    }
}
