//! The cluster's certificate authority and the key pairs of nodes.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
    SerialNumber,
};
use ring::{aead, hkdf};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer as _, X509Certificate};

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

/// The fingerprints of every certificate of `pem` (a bundle), in order; unreadable ones are
/// left out.
pub fn fingerprints(pem: &str) -> Vec<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| hex(&Sha256::digest(der.as_ref())))
        .collect()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `hex` (lower or upper case), or `None` when it is not hex.
fn unhex(hex: &str) -> Option<Vec<u8>> {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => {
                Some(((*hi as char).to_digit(16)? * 16 + (*lo as char).to_digit(16)?) as u8)
            }
            _ => None,
        })
        .collect()
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

/// The cluster's certificate authority: its certificate and its private key (PEM), which
/// belong together (checked when it is made or loaded).
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    not_after: i64,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// Parameters of a CA certificate named `common_name`, valid for [`CA_TTL`] from now.
fn ca_params(common_name: String) -> Result<CertificateParams, TlsError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA parameters"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
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
    Ok(params)
}

/// Salt and info of the key sealing a successor's: a new version of the sealing gets new ones.
const SEAL_SALT: &[u8] = b"berth ca rotation v1";
const SEAL_INFO: &[u8] = b"seal the successor CA key";
const SEAL_VERSION: &str = "v1:";

impl ClusterCa {
    /// A new CA for the cluster named `cluster` (an ECDSA P-256 key, valid for ten years).
    pub fn create(cluster: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(cert_err("generate the CA key"))?;
        let params = ca_params(format!("berth cluster CA {cluster}"))?;
        Self::self_signed(&params, &key)
    }

    fn self_signed(params: &CertificateParams, key: &KeyPair) -> Result<Self, TlsError> {
        let cert = params
            .self_signed(key)
            .map_err(cert_err("self-sign the CA certificate"))?;
        Self::load(&cert.pem(), &key.serialize_pem())
    }

    /// The CA that replaces this one in a rotation, and the PEM of a cross-signed certificate:
    /// the new CA's subject and public key, signed by this CA. Whoever still trusts only this
    /// CA verifies the new CA's certificates through the cross-signed one.
    ///
    /// The new CA is like [`ClusterCa::create`]'s, its common name followed by a few random
    /// hex digits, so that the old and the new root never share a name (path building would
    /// then try both). The cross-signed certificate has the new root's subject (the same
    /// bytes), key, hence subject key identifier, and usages; its authority key identifier is
    /// this CA's. It is valid until the earlier of the two CAs' ends (this one's, in
    /// practice): no certificate outlives its issuer.
    pub fn successor(&self, cluster: &str) -> Result<(ClusterCa, String), TlsError> {
        let id = hex(&crate::token::random_bytes::<4>()?);
        let key = KeyPair::generate().map_err(cert_err("generate the CA key"))?;
        let mut params = ca_params(format!("berth cluster CA {cluster} {id}"))?;
        let next = Self::self_signed(&params, &key)?;
        let until =
            OffsetDateTime::from_unix_timestamp(self.not_after).map_err(|_| TlsError::Parse {
                what: "the CA certificate's end of validity",
            })?;
        params.not_after = params.not_after.min(until);
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cross = params
            .signed_by(&key, &self.issuer()?)
            .map_err(cert_err("cross-sign the new CA certificate"))?;
        Ok((next, cross.pem()))
    }

    /// `next`'s private key (PEM), sealed under a key derived from this CA's private key
    /// (HKDF-SHA256, then ChaCha20-Poly1305 with a random nonce and `next`'s certificate's
    /// fingerprint as associated data): `v1:` and the hex of the nonce and the ciphertext.
    /// It is stored in the replicated log during a rotation; only holders of this CA's key
    /// (the servers) can open it, with [`ClusterCa::open_successor`].
    pub fn seal_successor(&self, next: &ClusterCa) -> Result<String, TlsError> {
        let key = self.sealing_key()?;
        let nonce = crate::token::random_bytes::<{ aead::NONCE_LEN }>()?;
        let mut sealed = next.key_pem.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(next.fingerprint()?.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| TlsError::Sealed("too long to seal"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEAL_VERSION}{}", hex(&out)))
    }

    /// The CA whose certificate is `next_cert_pem` and whose key [`ClusterCa::seal_successor`]
    /// sealed into `sealed` with this CA's key. Fails, naming no key material, when the key is
    /// not this CA's, `sealed` was altered or is not one, or it was sealed for another
    /// certificate.
    pub fn open_successor(&self, next_cert_pem: &str, sealed: &str) -> Result<ClusterCa, TlsError> {
        let bytes = sealed
            .trim()
            .strip_prefix(SEAL_VERSION)
            .and_then(unhex)
            .filter(|b| b.len() > aead::NONCE_LEN + aead::CHACHA20_POLY1305.tag_len())
            .ok_or(TlsError::Sealed("not in the v1 format"))?;
        let (nonce, ciphertext) = bytes.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| TlsError::Sealed("not in the v1 format"))?;
        let aad = fingerprint(next_cert_pem)?;
        let mut buf = ciphertext.to_vec();
        let key_pem = self
            .sealing_key()?
            .open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| {
                TlsError::Sealed(
                    "does not open with this CA's key for this certificate (another CA's key, \
                     another certificate, or altered)",
                )
            })?;
        let key_pem =
            std::str::from_utf8(key_pem).map_err(|_| TlsError::Sealed("not a PEM key"))?;
        Self::load(next_cert_pem, key_pem)
    }

    /// The ChaCha20-Poly1305 key that seals a successor's key: HKDF-SHA256 of this CA's
    /// private key (its PKCS#8 DER).
    fn sealing_key(&self) -> Result<aead::LessSafeKey, TlsError> {
        let der = KeyPair::from_pem(&self.key_pem)
            .map_err(cert_err("read the CA key"))?
            .serialize_der();
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SEAL_SALT).extract(&der);
        let okm = prk
            .expand(&[SEAL_INFO], &aead::CHACHA20_POLY1305)
            .map_err(|_| TlsError::Sealed("no sealing key could be derived"))?;
        Ok(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
    }

    /// The CA as stored: its certificate and key, both PEM. The key must be the certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let what = "the CA certificate";
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| TlsError::Parse { what })?;
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|_| TlsError::Parse { what })?;
        let key = KeyPair::from_pem(key_pem).map_err(cert_err("read the CA key"))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(TlsError::KeyMismatch);
        }
        let ca = Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_after: cert.validity().not_after.timestamp(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    /// When the CA certificate stops being valid, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after
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

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }

    #[test]
    fn a_successor_is_cross_signed_with_the_new_root_s_name_and_key() {
        let old = ClusterCa::create("test").expect("ca");
        let (next, cross) = old.successor("test").expect("successor");
        let ders = [old.cert_pem(), next.cert_pem(), &cross].map(der);
        let [old_x, next_x, cross_x] = ders
            .each_ref()
            .map(|d| X509Certificate::from_der(d.as_ref()).expect("x509").1);

        // The new root's name (byte for byte) and key, issued by the old root.
        assert_eq!(cross_x.subject().as_raw(), next_x.subject().as_raw());
        assert_eq!(cross_x.public_key().raw, next_x.public_key().raw);
        assert_eq!(cross_x.issuer().as_raw(), old_x.subject().as_raw());
        assert!(cross_x.verify_signature(Some(old_x.public_key())).is_ok());
        assert_ne!(old_x.subject().as_raw(), next_x.subject().as_raw());
        let ski = |c: &X509Certificate<'_>| {
            c.iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                        Some(id.0.to_vec())
                    }
                    _ => None,
                })
                .expect("subject key identifier")
        };
        assert_eq!(ski(&cross_x), ski(&next_x));
        let aki = cross_x
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            });
        assert_eq!(aki, Some(ski(&old_x)));
        // A CA like the roots, with its own serial, that does not outlive its issuer.
        assert!(cross_x.is_ca());
        assert_eq!(cross_x.key_usage().ok(), next_x.key_usage().ok());
        assert_ne!(cross_x.raw_serial(), next_x.raw_serial());
        assert_eq!(crate::not_after(&cross), Some(old.not_after()));
        assert!(next.not_after() >= old.not_after());
    }

    #[test]
    fn a_ca_key_must_belong_to_its_certificate() {
        let a = ClusterCa::create("a").expect("ca");
        let b = ClusterCa::create("b").expect("ca");
        let err = ClusterCa::load(a.cert_pem(), b.key_pem()).expect_err("mismatch");
        assert!(matches!(err, TlsError::KeyMismatch), "{err}");
    }

    #[test]
    fn a_sealed_successor_key_opens_only_with_the_old_key_for_its_certificate() {
        let old = ClusterCa::create("test").expect("ca");
        let (next, _) = old.successor("test").expect("successor");
        let sealed = old.seal_successor(&next).expect("seal");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("PRIVATE") && !sealed.contains(next.key_pem()));
        assert_ne!(
            sealed,
            old.seal_successor(&next).expect("seal"),
            "a fresh nonce"
        );

        let opened = old.open_successor(next.cert_pem(), &sealed).expect("open");
        assert_eq!(opened.key_pem(), next.key_pem());
        assert_eq!(opened.cert_pem(), next.cert_pem());

        let sealed_err = |r: Result<ClusterCa, TlsError>| match r {
            Err(TlsError::Sealed(why)) => why,
            Err(other) => panic!("not a sealing error: {other}"),
            Ok(_) => panic!("opened"),
        };
        // Another CA's key (even the successor's) does not open it.
        let other = ClusterCa::create("test").expect("ca");
        sealed_err(other.open_successor(next.cert_pem(), &sealed));
        sealed_err(next.open_successor(next.cert_pem(), &sealed));
        // Nor does it open for another certificate.
        let (third, _) = old.successor("test").expect("successor");
        sealed_err(old.open_successor(third.cert_pem(), &sealed));
        // An altered byte, a cut, or not the format at all.
        let at = sealed.len() / 2;
        let flipped = if &sealed[at..=at] == "0" { "1" } else { "0" };
        let tampered = format!("{}{flipped}{}", &sealed[..at], &sealed[at + 1..]);
        sealed_err(old.open_successor(next.cert_pem(), &tampered));
        sealed_err(old.open_successor(next.cert_pem(), &sealed[..sealed.len() - 2]));
        for bad in ["", "v1:", "v1:zz", "v2:00", next.key_pem()] {
            let why = sealed_err(old.open_successor(next.cert_pem(), bad));
            assert_eq!(why, "not in the v1 format", "{bad:?}");
        }
        let err = old
            .open_successor(next.cert_pem(), &tampered)
            .expect_err("tampered")
            .to_string();
        assert!(!err.contains("PRIVATE"), "{err}");
    }
}
