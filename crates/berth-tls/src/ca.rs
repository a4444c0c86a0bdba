//! The cluster's certificate authority and the key pairs of nodes.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::{Identity, TlsError};

/// How long node certificates live unless told otherwise; they are renewed well before.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a CA certificate lives: it is rotated explicitly, not renewed.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Clocks of nodes may disagree a little: certificates are valid from a bit before issue.
const BACKDATE: Duration = Duration::from_secs(300);

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Certificate { what, source }
}

/// The SHA-256 of a certificate's DER, in lowercase hex: what join tokens pin the CA by.
pub fn fingerprint(cert_pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| TlsError::Parse {
        what: "the CA certificate",
    })?;
    Ok(hex(&Sha256::digest(der.as_ref())))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    /// Its serial number in hex, to revoke it by.
    pub serial: String,
    /// When it expires, seconds since the Unix epoch.
    pub not_after: i64,
}

/// The cluster's certificate authority: its certificate and its private key (PEM).
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for the cluster named `cluster` (an ECDSA P-256 key, valid for ten years).
    pub fn create(cluster: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(cert_err("generate the CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA parameters"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("berth cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_TTL;
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("self-sign the CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA as stored: its certificate and key, both PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let ca = Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM: only for storing it (0600, in a server's data dir).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The SHA-256 of the CA certificate, hex: what join tokens pin.
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        fingerprint(&self.cert_pem)
    }

    /// A new key and a certificate for it naming `identity`: for a node whose key this process
    /// makes itself (a server's own, an in-process agent's, a test's).
    pub fn issue_new(
        &self,
        identity: &Identity,
        sans: &[String],
        ttl: Duration,
    ) -> Result<(Issued, NodeKey), TlsError> {
        let key = NodeKey::generate()?;
        let issued = self.issue(&key.csr(identity)?, identity, sans, ttl)?;
        Ok((issued, key))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(cert_err("read the CA key"))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(cert_err("read the CA certificate"))
    }

    /// Signs the public key of `csr_pem` (whose own signature must verify) into a certificate
    /// for `identity`, with `sans` (DNS names or IP addresses, for servers and agents that
    /// others dial) and a life of `ttl`. Only the key is taken from the request: the identity,
    /// names and usages are the CA's choice, and the request must ask for this identity.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &Identity,
        sans: &[String],
        ttl: Duration,
    ) -> Result<Issued, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_err("read the certificate signing request"))?;
        let asked: Vec<Identity> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Identity::from_uri(uri.as_str()),
                _ => None,
            })
            .collect();
        if asked.as_slice() != std::slice::from_ref(identity) {
            return Err(TlsError::WrongIdentity {
                expected: identity.to_string(),
                found: asked
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut params = naming(identity, sans)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial = random_serial()?;
        let serial_hex = hex(serial.as_ref());
        params.serial_number = Some(serial);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(cert_err("sign the certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex,
            not_after: params.not_after.unix_timestamp(),
        })
    }
}

/// Parameters naming `identity` (its URI SAN and common name) and `sans`.
fn naming(identity: &Identity, sans: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params =
        CertificateParams::new(sans.to_vec()).map_err(cert_err("certificate names"))?;
    params.subject_alt_names.push(SanType::URI(
        identity
            .uri()
            .try_into()
            .map_err(cert_err("the identity URI"))?,
    ));
    params
        .distinguished_name
        .push(DnType::CommonName, identity.to_string());
    Ok(params)
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = crate::token::random_bytes::<16>()?;
    // Positive and without a leading zero byte: serials are DER integers.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A node's own key pair (ECDSA P-256), kept in its data dir.
pub struct NodeKey(KeyPair);

impl NodeKey {
    pub fn generate() -> Result<Self, TlsError> {
        KeyPair::generate()
            .map(Self)
            .map_err(cert_err("generate a key"))
    }

    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        KeyPair::from_pem(pem)
            .map(Self)
            .map_err(cert_err("read the node's key"))
    }

    /// PEM, for the data dir (0600).
    pub fn pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// A signing request for a certificate naming `identity`.
    pub fn csr(&self, identity: &Identity) -> Result<String, TlsError> {
        naming(identity, &[])?
            .serialize_request(&self.0)
            .and_then(|csr| csr.pem())
            .map_err(cert_err("write the signing request"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn the_ca_issues_certificates_naming_the_identity_it_chose() {
        let ca = ClusterCa::create("test").expect("ca");
        let again = ClusterCa::load(ca.cert_pem(), ca.key_pem()).expect("load");
        assert_eq!(again.fingerprint().ok(), ca.fingerprint().ok());
        assert_eq!(ca.fingerprint().expect("hash").len(), 64);

        let key = NodeKey::generate().expect("key");
        let agent = Identity::new(Role::Agent, "node-1");
        let csr = key.csr(&agent).expect("csr");
        let issued = ca
            .issue(&csr, &agent, &["127.0.0.1".into()], DEFAULT_CERT_TTL)
            .expect("issue");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(Identity::from_cert(der.as_ref()), Some(agent.clone()));
        assert_eq!(issued.serial.len(), 32);
        let day = OffsetDateTime::now_utc().unix_timestamp() + 24 * 3600;
        assert!((issued.not_after - day).abs() < 60);
        assert_eq!(crate::not_after(&issued.cert_pem), Some(issued.not_after));

        // A request for another identity is refused.
        let server = Identity::new(Role::Server, "1");
        let err = ca
            .issue(&csr, &server, &[], DEFAULT_CERT_TTL)
            .expect_err("wrong identity");
        assert_eq!(
            err.to_string(),
            "the signing request names agent node-1, not server 1"
        );
        // So is a request that was tampered with.
        let tampered = csr.replacen('A', "B", 1);
        assert!(ca.issue(&tampered, &agent, &[], DEFAULT_CERT_TTL).is_err());
        // The key's PEM does not show in the CA's Debug.
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
