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
//!   the CA) and clients (the CA as the only root, or pinned by the hash a join token carries),
//!   with certificates that can be replaced while connections stay up.
//!
//! Cryptography is `ring`'s (through rcgen and rustls): nothing here pulls in `aws-lc-sys`.

mod ca;
pub mod dir;
mod identity;
pub mod net;
pub mod tls;
mod token;

pub use ca::{fingerprint, ClusterCa, Issued, NodeKey, DEFAULT_CERT_TTL};
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
    #[error("the system's random number generator failed")]
    Random,
}
