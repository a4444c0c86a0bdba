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
}

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
