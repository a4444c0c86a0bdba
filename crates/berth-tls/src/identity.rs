//! Who a certificate names: a role and a name, as a `berth://ROLE/NAME` URI SAN.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A control node: Raft, the agent endpoint, the public API.
    Server,
    /// A node agent: its own node's stream only.
    Agent,
    /// An ingress proxy: reads routes.
    Ingress,
    /// An administrator's client certificate: every API call.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Ingress => "ingress",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Role::Server),
            "agent" => Ok(Role::Agent),
            "ingress" => Ok(Role::Ingress),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "role {other:?} is not one of server, agent, ingress, admin"
            )),
        }
    }
}

/// The holder of a certificate: its role and its name (a server's node ID, an agent's node
/// name, an administrator's user name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

const SCHEME: &str = "berth://";

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Self {
            role,
            name: name.into(),
        }
    }

    /// The URI SAN that carries it: `berth://agent/node-1`.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role, self.name)
    }

    /// Reads an identity from its URI SAN.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let (role, name) = uri.strip_prefix(SCHEME)?.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Self::new(role.parse().ok()?, name))
    }

    /// The identity a DER certificate names, if it names exactly one. The certificate's chain
    /// must have been verified against the cluster CA already (rustls does it during the
    /// handshake); this only reads it.
    pub fn from_cert(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(uri) => Self::from_uri(uri),
            _ => None,
        });
        let identity = found.next()?;
        found.next().is_none().then_some(identity)
    }
}

/// The serial number of a DER certificate in lowercase hex, as [`crate::Issued::serial`]
/// gives it (the number's bytes, without the zero byte DER puts before a serial whose first
/// bit is set). Like [`Identity::from_cert`], it only reads a certificate verified already.
pub fn serial(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let raw = cert.raw_serial();
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    let bytes = raw.get(start..).filter(|b| !b.is_empty())?;
    Some(crate::ca::hex(bytes))
}

/// When a certificate (PEM) stops being valid, seconds since the Unix epoch.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    validity(cert_pem).map(|(_, to)| to)
}

/// When a certificate (PEM) starts and stops being valid, seconds since the Unix epoch.
pub fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_read_from_a_certificate_is_the_one_the_ca_answered() {
        use rustls::pki_types::pem::PemObject as _;
        let ca = crate::ClusterCa::create("test").expect("ca");
        let key = crate::NodeKey::generate().expect("key");
        let agent = Identity::new(Role::Agent, "node-1");
        for _ in 0..8 {
            let issued = ca
                .issue(
                    &key.csr(&agent).expect("csr"),
                    &agent,
                    &[],
                    crate::DEFAULT_CERT_TTL,
                )
                .expect("issue");
            let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                .expect("pem");
            assert_eq!(serial(der.as_ref()), Some(issued.serial));
        }
        assert_eq!(serial(b"not a certificate"), None);
        assert_eq!(serial(&[]), None);
    }

    #[test]
    fn identities_round_trip_through_their_uri() {
        let id = Identity::new(Role::Agent, "node-1");
        assert_eq!(id.uri(), "berth://agent/node-1");
        assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        for bad in [
            "berth://agent/",
            "berth://pilot/x",
            "https://agent/x",
            "berth://agent/a/b",
            "berth://agent",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
    }
}
