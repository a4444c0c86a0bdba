//! What the agent reads from its own certificate: whom it names, when it is valid, and the
//! hosts it covers.

use std::net::IpAddr;

use berth_tls::Identity;
use x509_parser::extensions::GeneralName;

/// A certificate that could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("not a PEM certificate")]
    Pem,
    #[error("not an X.509 certificate")]
    X509,
}

/// The parts of a certificate the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub(crate) identity: Option<Identity>,
    /// Seconds since the Unix epoch.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// Its serial number in lowercase hex, as the cluster records it.
    pub(crate) serial: String,
    /// IP addresses and DNS names (lowercase) it is valid for.
    ips: Vec<IpAddr>,
    dns: Vec<String>,
}

impl CertInfo {
    /// Reads the first certificate of `pem`.
    pub(crate) fn read(pem: &str) -> Result<Self, CertError> {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| CertError::Pem)?;
        let cert = pem.parse_x509().map_err(|_| CertError::X509)?;
        let mut ips = Vec::new();
        let mut dns = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            ips.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            ips.push(IpAddr::from(v6));
                        }
                    }
                    GeneralName::DNSName(name) => dns.push(name.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        Ok(Self {
            identity: Identity::from_cert(&pem.contents),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            serial: berth_tls::serial(&pem.contents).unwrap_or_default(),
            ips,
            dns,
        })
    }

    /// Whether a caller dialling `host` (an IP address or a DNS name) accepts it.
    pub(crate) fn names(&self, host: &str) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.ips.contains(&ip),
            Err(_) => self.dns.iter().any(|d| d.eq_ignore_ascii_case(host)),
        }
    }
}
