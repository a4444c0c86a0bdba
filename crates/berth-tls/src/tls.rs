//! rustls configurations: a server's (its certificate and the CAs it trusts replaceable while
//! it runs, clients' certificates optional but verified against those CAs when given) and a
//! client's (the cluster CA as its only root, a [`TrustStore`], or a CA pinned by the
//! fingerprint of a join token).
//!
//! During a CA rotation a node trusts both roots and presents its certificate followed by the
//! cross-signed certificate and both roots: a peer that trusts only the old root (or pins it)
//! reaches it through the cross-signed certificate, one that trusts only the new root directly.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
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

/// This process's certificate, its chain and its key; replaced in place when the certificate is
/// renewed (or the CA rotated), so that open connections stay and new handshakes use the new
/// one.
///
/// `chain_pem` holds the certificates presented after the node's own: the CA normally (so that
/// joiners can pin it); during a CA rotation the cross-signed certificate and both roots.
#[derive(Debug)]
pub struct Credentials(RwLock<Arc<CertifiedKey>>);

impl Credentials {
    pub fn new(cert_pem: &str, key_pem: &str, chain_pem: &str) -> Result<Self, TlsError> {
        Ok(Self(RwLock::new(Arc::new(certified(
            cert_pem, key_pem, chain_pem,
        )?))))
    }

    /// Replaces the certificate, key and chain (a renewal, a step of a CA rotation).
    pub fn replace(&self, cert_pem: &str, key_pem: &str, chain_pem: &str) -> Result<(), TlsError> {
        let next = Arc::new(certified(cert_pem, key_pem, chain_pem)?);
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

fn certified(cert_pem: &str, key_pem: &str, chain_pem: &str) -> Result<CertifiedKey, TlsError> {
    let mut chain = certs(cert_pem, "the node's certificate")?;
    chain.extend(certs(chain_pem, "the certificate chain")?);
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

/// The CAs a process trusts (PEM, one or more): replaced while it runs during a CA rotation, so
/// that new handshakes use the new roots while open connections stay. It verifies servers
/// (for clients, through [`Trust::Store`]) and clients (for [`server_config`]: a client
/// certificate is optional, and verified when presented).
pub struct TrustStore {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Verifiers>>,
}

/// Verifiers built once per set of roots.
struct Verifiers {
    pem: String,
    roots: usize,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
}

impl TrustStore {
    pub fn new(trust_pem: &str) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let current = RwLock::new(Arc::new(Self::verifiers(&provider, trust_pem)?));
        Ok(Arc::new(Self { provider, current }))
    }

    /// Trusts the CAs of `trust_pem` instead, from the next handshake on.
    pub fn replace(&self, trust_pem: &str) -> Result<(), TlsError> {
        let next = Arc::new(Self::verifiers(&self.provider, trust_pem)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// The CAs trusted now, as given.
    pub fn pem(&self) -> String {
        self.current().pem.clone()
    }

    fn current(&self) -> Arc<Verifiers> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn verifiers(provider: &Arc<CryptoProvider>, trust_pem: &str) -> Result<Verifiers, TlsError> {
        let roots = Arc::new(roots(trust_pem)?);
        Ok(Verifiers {
            pem: trust_pem.to_owned(),
            roots: roots.len(),
            server: WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()?,
            client: WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .allow_unauthenticated()
                .build()?,
        })
    }
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("roots", &self.current().roots)
            .finish()
    }
}

impl ServerCertVerifier for TrustStore {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

impl ClientCertVerifier for TrustStore {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: a client presents the certificate it has, and this verifies it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .client
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
    }
}

fn verify_tls12(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// Whether the first certificate of `leaf_pem` chains, now, to one of the CAs of `trust_pem`
/// through the certificates of `intermediates_pem` (which may be empty), as a client
/// certificate (berth's leaves are both). A node accepts a new CA only when the one it trusts
/// vouches for it: the leaf it was answered must verify against its current trust with the
/// answered chain, and against the new root alone.
pub fn verify_chain(
    leaf_pem: &str,
    intermediates_pem: &str,
    trust_pem: &str,
) -> Result<(), TlsError> {
    let leaf = certs(leaf_pem, "the certificate")?;
    let leaf = leaf.first().ok_or(TlsError::Parse {
        what: "the certificate",
    })?;
    let intermediates: Vec<_> = CertificateDer::pem_slice_iter(intermediates_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Parse {
            what: "the intermediate certificates",
        })?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(trust_pem)?), provider())
            .build()?;
    verifier
        .verify_client_cert(leaf, &intermediates, UnixTime::now())
        .map_err(TlsError::Untrusted)?;
    Ok(())
}

/// A server's configuration: it presents `credentials`; a client may present a certificate,
/// which must then chain to a CA of `trust` (callers decide from the verified certificate, or
/// from a token when there is none, what the client may do). ALPN offers HTTP/2 (gRPC) and
/// HTTP/1.1 (`/metrics`).
/// A TLS server that asks clients for no certificate (an ingress's public listener), with
/// `credentials` (a certificate with its chain, and its key, of any CA) and ALPN `h2` and
/// `http/1.1`.
pub fn public_server_config(credentials: Arc<Credentials>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

pub fn server_config(
    trust: Arc<TrustStore>,
    credentials: Arc<Credentials>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(trust)
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session resumption: a resumed session keeps the certificate of the session it
    // resumes, unverified, so a renewed, revoked or rotated-out certificate would live on in
    // it. berth's connections are long-lived; a full handshake each is cheap.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Whom a client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The cluster CA (PEM): the usual case.
    Ca(String),
    /// CAs that may change while the process runs (a CA rotation).
    Store(Arc<TrustStore>),
    /// A CA known only by its fingerprint (a join token's): the server must present it in its
    /// chain; see [`Pinned`].
    Pinned(Arc<Pinned>),
}

/// A client's configuration for gRPC (ALPN `h2`): it trusts `trust` and presents
/// `credentials` when it has them. Any certificate of the cluster passes: see
/// [`client_config_for`] to require a role.
pub fn client_config(
    trust: &Trust,
    credentials: Option<Arc<Credentials>>,
) -> Result<ClientConfig, TlsError> {
    client_config_with(trust, credentials, None)
}

/// [`client_config`] for a peer that must present a certificate of `role` (a server, for
/// everything that dials servers): a certificate the cluster issued to another role — an
/// agent's, which names addresses its holder chose — is refused, so that nothing meant for a
/// server (a secret's value, the Raft log, keys) reaches whoever else answers at its address.
pub fn client_config_for(
    trust: &Trust,
    credentials: Option<Arc<Credentials>>,
    role: crate::Role,
) -> Result<ClientConfig, TlsError> {
    client_config_with(trust, credentials, Some(role))
}

fn client_config_with(
    trust: &Trust,
    credentials: Option<Arc<Credentials>>,
    role: Option<crate::Role>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let inner: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Ca(pem) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(pem)?), provider.clone())
                .build()?
        }
        Trust::Store(store) => store.clone(),
        Trust::Pinned(pinned) => pinned.clone(),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match role {
        Some(role) => Arc::new(RoleVerifier { inner, role }),
        None => inner,
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match credentials {
        Some(c) => builder.with_client_cert_resolver(c),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Every connection presents the current certificate (see `server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A verifier that also requires the peer's certificate to name `role` (`berth://ROLE/…`).
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    role: crate::Role,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match crate::Identity::from_cert(end_entity.as_ref()) {
            Some(identity) if identity.role == self.role => Ok(verified),
            Some(identity) => Err(rustls::Error::General(format!(
                "the peer's certificate names {identity}, not a {}",
                self.role
            ))),
            None => Err(rustls::Error::General(format!(
                "the peer's certificate names no berth identity; expected a {}",
                self.role
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies a server against a CA known only by its SHA-256 (a join token's): the server's
/// chain must include a certificate with that fingerprint, and its own certificate must chain
/// to it, the pinned certificate as the only root and the others presented as intermediates
/// (during a CA rotation, a token pinning the old root verifies a leaf of the new one through
/// the cross-signed certificate). The CA found is kept, for the joiner to store.
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
        let others: Vec<_> = intermediates.iter().filter(|c| *c != ca).cloned().collect();
        let verified =
            verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)?;
        *self.found.lock().unwrap_or_else(PoisonError::into_inner) = Some(pem(ca));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
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
        presenting(n, ca.cert_pem())
    }

    fn presenting(n: &Node, chain_pem: &str) -> Arc<Credentials> {
        Arc::new(Credentials::new(&n.cert, &n.key, chain_pem).expect("credentials"))
    }

    fn store(trust_pem: &str) -> Arc<TrustStore> {
        TrustStore::new(trust_pem).expect("trust store")
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
                // Deliver what the server sends after the handshake (session tickets).
                let mut buf = Vec::new();
                s.write_tls(&mut buf).map_err(|e| e.to_string())?;
                c.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
                c.process_new_packets().map_err(|e| e.to_string())?;
                return Ok(s
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|c| Identity::from_cert(c.as_ref())));
            }
        }
        Err("handshake did not finish".into())
    }

    #[test]
    fn no_session_is_resumed_so_each_connection_presents_the_current_certificate() {
        let ca = ClusterCa::create("a").expect("ca");
        let server = credentials(&ca, &node(&ca, &Identity::new(Role::Server, "1")));
        let trust = TrustStore::new(ca.cert_pem()).expect("trust");
        let server = server_config(trust, server).expect("server");
        let agent = credentials(&ca, &node(&ca, &Identity::new(Role::Agent, "node-1")));
        let client =
            client_config(&Trust::Ca(ca.cert_pem().to_owned()), Some(agent.clone())).expect("c");
        let first = handshake(server.clone(), client.clone()).expect("first");
        assert_eq!(first, Some(Identity::new(Role::Agent, "node-1")));
        // A renewal (here: to another identity, to tell them apart) between two connections
        // of the same configurations: a resumed session would still show the first.
        let next = node(&ca, &Identity::new(Role::Agent, "node-2"));
        agent
            .replace(&next.cert, &next.key, ca.cert_pem())
            .expect("replace");
        let second = handshake(server, client).expect("second");
        assert_eq!(second, Some(Identity::new(Role::Agent, "node-2")));
    }

    #[test]
    fn servers_and_clients_authenticate_each_other_through_the_ca() {
        let ca = ClusterCa::create("a").expect("ca");
        let server_id = Identity::new(Role::Server, "1");
        let agent_id = Identity::new(Role::Agent, "node-1");
        let server = credentials(&ca, &node(&ca, &server_id));
        let agent = credentials(&ca, &node(&ca, &agent_id));
        let server_config = || server_config(store(ca.cert_pem()), server.clone()).expect("server");
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
        let server_config = || server_config(store(ca.cert_pem()), server.clone()).expect("server");

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
            server_config(store(ca.cert_pem()), server).expect("server"),
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

    /// The old CA, its successor, the cross-signed certificate, and what nodes present while
    /// the rotation runs: the cross-signed certificate and both roots.
    struct Rotation {
        old: ClusterCa,
        new: ClusterCa,
        cross: String,
        chain: String,
    }

    fn rotation() -> Rotation {
        let old = ClusterCa::create("a").expect("ca");
        let (new, cross) = old.successor("a").expect("successor");
        let chain = [cross.as_str(), new.cert_pem(), old.cert_pem()].concat();
        Rotation {
            old,
            new,
            cross,
            chain,
        }
    }

    fn client(trust: Trust) -> ClientConfig {
        client_config(&trust, None).expect("client")
    }

    #[test]
    fn during_a_ca_rotation_clients_of_either_root_verify_a_new_server_certificate() {
        let r = rotation();
        let leaf = node(&r.new, &Identity::new(Role::Server, "1"));
        let server = presenting(&leaf, &r.chain);
        let both = [r.old.cert_pem(), r.new.cert_pem()].concat();
        let server_config = || server_config(store(&both), server.clone()).expect("server");

        // Trusting the old root only (through the cross-signed certificate), the new only,
        // or both.
        for trust in [r.old.cert_pem(), r.new.cert_pem()] {
            let trust = Trust::Ca(trust.to_owned());
            assert_eq!(handshake(server_config(), client(trust)), Ok(None));
        }
        assert_eq!(
            handshake(server_config(), client(Trust::Store(store(&both)))),
            Ok(None)
        );
        // A join token pinning either root; the joiner learns the root it pinned.
        for ca in [&r.old, &r.new] {
            let pinned = Pinned::new(&ca.fingerprint().expect("fingerprint"));
            let trust = Trust::Pinned(pinned.clone());
            assert_eq!(handshake(server_config(), client(trust)), Ok(None));
            let learned = pinned.ca_pem().expect("the pinned CA");
            assert_eq!(crate::fingerprint(&learned).ok(), ca.fingerprint().ok());
        }

        // Once it is over, a server presents the new root alone: a client still trusting only
        // the old root is refused (why trust must move before the rotation ends), and one
        // pinning the old root no longer finds it.
        server
            .replace(&leaf.cert, &leaf.key, r.new.cert_pem())
            .expect("replace");
        let old_only = Trust::Ca(r.old.cert_pem().to_owned());
        assert!(handshake(server_config(), client(old_only)).is_err());
        let pinned = Pinned::new(&r.old.fingerprint().expect("fingerprint"));
        assert!(handshake(server_config(), client(Trust::Pinned(pinned.clone()))).is_err());
        assert!(pinned.saw_another_ca());
        let new_only = Trust::Ca(r.new.cert_pem().to_owned());
        assert_eq!(handshake(server_config(), client(new_only)), Ok(None));
    }

    #[test]
    fn a_server_s_trust_store_moves_from_the_old_ca_to_the_new() {
        let r = rotation();
        let server = presenting(&node(&r.new, &Identity::new(Role::Server, "1")), &r.chain);
        let both = [r.old.cert_pem(), r.new.cert_pem()].concat();
        let trust = store(&both);
        assert_eq!(trust.pem(), both);
        assert_eq!(format!("{trust:?}"), "TrustStore { roots: 2 }");
        let config = || server_config(trust.clone(), server.clone()).expect("server");
        let old_agent = Identity::new(Role::Agent, "old");
        let new_agent = Identity::new(Role::Agent, "new");
        // A client that has not moved yet: the old CA's certificate, trusting the old root.
        let old_client = || {
            let creds = credentials(&r.old, &node(&r.old, &old_agent));
            client_config(&Trust::Ca(r.old.cert_pem().to_owned()), Some(creds)).expect("client")
        };
        let new_client = || {
            let creds = presenting(&node(&r.new, &new_agent), &r.chain);
            client_config(&Trust::Store(store(&both)), Some(creds)).expect("client")
        };
        assert_eq!(
            handshake(config(), old_client()),
            Ok(Some(old_agent.clone()))
        );
        assert_eq!(
            handshake(config(), new_client()),
            Ok(Some(new_agent.clone()))
        );

        // The rotation ends: the next handshakes trust the new root alone.
        trust.replace(r.new.cert_pem()).expect("replace");
        assert_eq!(trust.pem(), r.new.cert_pem());
        assert!(handshake(config(), old_client()).is_err());
        assert_eq!(
            handshake(config(), new_client()),
            Ok(Some(new_agent.clone()))
        );
        // A bundle that is not one leaves the trust as it was.
        assert!(trust.replace("not a certificate").is_err());
        assert_eq!(trust.pem(), r.new.cert_pem());

        // A server that has not moved yet (trusting the old root only) still accepts a client
        // of the new CA through the cross-signed certificate it presents.
        let old_server = server_config(store(r.old.cert_pem()), server.clone()).expect("server");
        assert_eq!(
            handshake(old_server, new_client()),
            Ok(Some(Identity::new(Role::Agent, "new")))
        );
    }

    #[test]
    fn a_new_ca_is_accepted_only_when_the_trusted_one_vouches_for_it() {
        let r = rotation();
        let leaf = node(&r.new, &Identity::new(Role::Agent, "node-1")).cert;
        let (old, new) = (r.old.cert_pem(), r.new.cert_pem());
        assert!(verify_chain(&leaf, &r.cross, old).is_ok());
        assert!(verify_chain(&leaf, &r.chain, old).is_ok());
        assert!(verify_chain(&leaf, "", new).is_ok());
        assert!(verify_chain(&leaf, &r.chain, new).is_ok());
        let err = verify_chain(&leaf, "", old).expect_err("no cross-signed certificate");
        assert_eq!(
            err.to_string(),
            "the certificate does not chain to the trusted CA"
        );
        assert!(verify_chain(&leaf, new, old).is_err());

        // Another cluster's rotation vouches for nothing here.
        let c = ClusterCa::create("c").expect("ca");
        let (d, d_cross) = c.successor("c").expect("successor");
        let d_leaf = node(&d, &Identity::new(Role::Agent, "node-1")).cert;
        let d_chain = [d_cross.as_str(), d.cert_pem(), c.cert_pem()].concat();
        assert!(verify_chain(&d_leaf, &d_chain, c.cert_pem()).is_ok());
        assert!(matches!(
            verify_chain(&d_leaf, &d_chain, old),
            Err(TlsError::Untrusted(_))
        ));
        assert!(verify_chain(&d_leaf, &[d_chain.as_str(), &r.chain].concat(), old).is_err());
        assert!(matches!(
            verify_chain("", "", old),
            Err(TlsError::Parse { .. })
        ));
    }
}
