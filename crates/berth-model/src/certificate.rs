//! The certificates the cluster CA issued to an agent node that may still be used. An agent's
//! stream and its renewals are accepted only with a certificate recorded for its node, so
//! forgetting a node's records (removing the node) revokes its certificates. Only serial
//! numbers and expiry are kept; keys never leave the node.

use serde::{Deserialize, Serialize};

use crate::{validate_name, Timestamp, ValidationError};

/// Most certificates kept for one node. A node renews at two thirds of a certificate's life,
/// so it holds two in normal use; more means renewals in a loop, and the records that expire
/// soonest are forgotten first.
pub const MAX_NODE_CERTIFICATES: usize = 16;

/// Longest serial number, in hex digits: X.509 serials have at most 20 bytes.
const MAX_SERIAL_HEX: usize = 40;

/// One node's usable certificates, as the cluster stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCertificates {
    /// The agent node they name (`berth://agent/NODE`).
    pub node: String,
    /// Soonest to expire first.
    pub certificates: Vec<CertificateRecord>,
}

/// A certificate issued to a node, by serial number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRecord {
    /// The serial number in lowercase hex, without leading zero bytes (as berth-tls prints it).
    pub serial: String,
    #[serde(with = "crate::time::rfc3339")]
    pub issued_at: Timestamp,
    /// The certificate's `notAfter`: it is forgotten from then on.
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: Timestamp,
    /// The generation of the CA that signed it: 0 for the CA the cluster was created with, `n`
    /// for the CA of the `n`th rotation ([`CaRotation::generation`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ca_generation: u64,
    /// The node's agent said it uses this certificate (its heartbeats name the certificate it
    /// presents). Only recorded for certificates of a running rotation's new CA: the rotation
    /// counts a node as moved once it uses one, not once one was issued (the answer may never
    /// have reached the agent, which would then be cut off when the old CA stops being trusted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_use: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The last rotation of the cluster CA (`berth cluster ca rotate`), as Docker Swarm does it:
/// a new CA whose certificate the old CA cross-signs, so that a node still trusting only the
/// old CA accepts certificates of the new one. While it runs, every node trusts both; servers
/// sign with the new CA as soon as they adopt it, and agents renew onto it. It finishes when
/// every server has adopted the new CA and every node that is not DOWN holds a certificate
/// from it; from then on only the new CA is trusted. A finished rotation stays as the record
/// of the current CA.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaRotation {
    /// 1 for the cluster's first rotation, one more for each after it.
    pub generation: u64,
    /// The CA being replaced: its certificate (PEM) and SHA-256 fingerprint (hex).
    pub from_cert: String,
    pub from_fingerprint: String,
    /// The new CA's certificate (PEM) and fingerprint.
    pub cert: String,
    pub fingerprint: String,
    /// The new CA's subject and key, signed by the old CA (PEM).
    pub cross_cert: String,
    /// The new CA's private key, sealed under a key derived from the old CA's key: only a
    /// server holding the old CA can open it. Never the key in clear.
    pub sealed_key: String,
    #[serde(with = "crate::time::rfc3339")]
    pub started_at: Timestamp,
    #[serde(default, with = "crate::time::rfc3339_opt")]
    pub finished_at: Option<Timestamp>,
    /// The servers (node IDs) that sign with the new CA.
    #[serde(default)]
    pub servers_adopted: std::collections::BTreeSet<u64>,
}

impl std::fmt::Debug for CaRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Certificates are long; the sealed key is nobody's business in a log line.
        f.debug_struct("CaRotation")
            .field("generation", &self.generation)
            .field("from_fingerprint", &self.from_fingerprint)
            .field("fingerprint", &self.fingerprint)
            .field("started_at", &self.started_at)
            .field("finished_at", &self.finished_at)
            .field("servers_adopted", &self.servers_adopted)
            .finish_non_exhaustive()
    }
}

impl CaRotation {
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.generation == 0 {
            return Err(ValidationError::new("generation", "must be 1 or more"));
        }
        for (field, value) in [
            ("fromFingerprint", &self.from_fingerprint),
            ("fingerprint", &self.fingerprint),
        ] {
            if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ValidationError::new(
                    field,
                    "must be 64 hex digits (SHA-256)",
                ));
            }
        }
        if self.fingerprint == self.from_fingerprint {
            return Err(ValidationError::new(
                "fingerprint",
                "the new CA must differ from the one it replaces",
            ));
        }
        for (field, value) in [
            ("fromCert", &self.from_cert),
            ("cert", &self.cert),
            ("crossCert", &self.cross_cert),
            ("sealedKey", &self.sealed_key),
        ] {
            if value.is_empty() || value.len() > MAX_PEM {
                return Err(ValidationError::new(
                    field,
                    format!("must be 1-{MAX_PEM} characters"),
                ));
            }
        }
        Ok(())
    }
}

/// Longest certificate or sealed key stored with a rotation.
const MAX_PEM: usize = 16 * 1024;

impl CertificateRecord {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let valid = !self.serial.is_empty()
            && self.serial.len() <= MAX_SERIAL_HEX
            && self
                .serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(ValidationError::new(
                "serial",
                format!("must be 1-{MAX_SERIAL_HEX} lowercase hex digits"),
            ));
        }
        Ok(())
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

impl NodeCertificates {
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            certificates: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("node", &self.node)?;
        self.certificates
            .iter()
            .try_for_each(CertificateRecord::validate)
    }

    /// Whether the certificate with `serial` is recorded (expired or not: TLS refuses expired
    /// certificates already).
    pub fn contains(&self, serial: &str) -> bool {
        self.certificates.iter().any(|c| c.serial == serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_lowercase_hex_and_round_trip_through_json() {
        let record = CertificateRecord {
            serial: "7f01".into(),
            issued_at: 1_000,
            expires_at: 2_000,
            ca_generation: 0,
            in_use: false,
        };
        assert_eq!(record.validate(), Ok(()));
        assert!(!record.is_expired(1_999));
        assert!(record.is_expired(2_000));
        for bad in ["", "7F01", "xyz", &"a".repeat(41)] {
            let r = CertificateRecord {
                serial: bad.into(),
                ..record.clone()
            };
            assert!(r.validate().is_err(), "{bad:?}");
        }
        let certs = NodeCertificates {
            node: "node-1".into(),
            certificates: vec![record],
        };
        let json = serde_json::to_string(&certs).expect("json");
        assert_eq!(
            json,
            r#"{"node":"node-1","certificates":[{"serial":"7f01","issuedAt":"1970-01-01T00:00:01.000Z","expiresAt":"1970-01-01T00:00:02.000Z"}]}"#
        );
        assert_eq!(
            serde_json::from_str::<NodeCertificates>(&json).ok(),
            Some(certs.clone())
        );
        assert!(certs.contains("7f01") && !certs.contains("7f02"));
        assert_eq!(certs.validate(), Ok(()));
        assert!(NodeCertificates::new("a/b").validate().is_err());
    }
}
