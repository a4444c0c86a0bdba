//! berth's public key infrastructure.
//!
//! - [`ClusterCa`]: the cluster's certificate authority, created by the bootstrap server. It
//!   signs short-lived certificates for servers, agents and ingresses.
//! - [`Identity`]: who a certificate names — a [`Role`] and a name (a server's node ID, an
//!   agent's node name) — carried as a `berth://ROLE/NAME` URI subject alternative name.
//! - [`NodeKey`]: a node's own key pair and the signing requests it sends to join.
//! - [`JoinToken`] and [`ApiToken`]: secrets that join a node to the cluster or authenticate a
//!   client; only their hashes are stored.
//! - [`tls`]: rustls configurations for servers (client certificates optional, verified against
//!   the trusted CAs) and clients (the CA as the only root, a replaceable [`tls::TrustStore`], or
//!   pinned by the hash a join token carries), with certificates and trust that can be replaced
//!   while connections stay up.
//!
//! A CA rotation (`berth cluster ca rotate`) works by cross-signing, as Docker Swarm does:
//! [`ClusterCa::successor`] makes the new CA and a certificate of it signed by the old one;
//! [`ClusterCa::seal_successor`] seals the new key so that only holders of the old one (the
//! servers) can open it from the replicated log. While it runs, nodes trust both roots and
//! present `[leaf, cross-signed, new root, old root]`, so that whoever still trusts only the old
//! root, or pins either root, verifies leaves of the new one; [`tls::verify_chain`] lets a node
//! accept the new root only when the one it trusts vouches for it.
//!
//! Cryptography is `ring`'s (through rcgen and rustls): nothing here pulls in `aws-lc-sys`.

mod ca;
pub mod dir;
mod identity;
pub mod net;
pub mod tls;
mod token;

pub use ca::{fingerprint, fingerprints, ClusterCa, Issued, NodeKey, DEFAULT_CERT_TTL};
pub use identity::{not_after, serial, validity, Identity, Role};
pub use token::{hash_secret, random_secret, ApiToken, JoinToken};

/// What can go wrong with certificates, keys and tokens.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}: not a valid PEM or DER certificate")]
    Parse { what: &'static str },
    #[error("the signing request names {found}, not {expected}")]
    WrongIdentity { expected: String, found: String },
    #[error("{0}")]
    Token(String),
    #[error("tls configuration")]
    Rustls(#[from] rustls::Error),
    #[error("build a certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the certificate does not chain to the trusted CA")]
    Untrusted(#[source] rustls::Error),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("sealed CA key: {0}")]
    Sealed(&'static str),
    #[error("the system's random number generator failed")]
    Random,
}
