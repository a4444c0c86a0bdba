//! Join tokens and API tokens: an ID to find the stored record by, and a secret of which only
//! the SHA-256 is stored. Join tokens also pin the CA by its fingerprint.

use sha2::{Digest as _, Sha256};

use crate::ca::hex;
use crate::TlsError;

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], TlsError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TlsError::Random)?;
    Ok(bytes)
}

/// 32 random bytes, hex: a token's secret.
pub fn random_secret() -> Result<String, TlsError> {
    random_bytes::<32>().map(|b| hex(&b))
}

/// What is stored of a secret: its SHA-256, hex (secrets are random, so no salt or stretching
/// is needed).
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn id() -> Result<String, TlsError> {
    random_bytes::<8>().map(|b| hex(&b))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A token that joins a node to the cluster: `BERTHJ1-<CA fingerprint>-<id>-<secret>`. The
/// joiner trusts the server only if it presents a CA with this fingerprint, then sends the
/// secret with its signing request.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

const JOIN_PREFIX: &str = "BERTHJ1";

impl JoinToken {
    pub fn generate(ca_fingerprint: &str) -> Result<Self, TlsError> {
        Ok(Self {
            ca_fingerprint: ca_fingerprint.to_owned(),
            id: id()?,
            secret: random_secret()?,
        })
    }

    pub fn parse(text: &str) -> Result<Self, TlsError> {
        let bad = || {
            TlsError::Token(
                "not a join token: expected BERTHJ1-<CA hash>-<id>-<secret>, as `berth cluster token create` prints it"
                    .into(),
            )
        };
        let mut parts = text.trim().split('-');
        let (Some(JOIN_PREFIX), Some(ca), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if !(is_hex(ca, 64) && is_hex(id, 16) && is_hex(secret, 64)) {
            return Err(bad());
        }
        Ok(Self {
            ca_fingerprint: ca.into(),
            id: id.into(),
            secret: secret.into(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{JOIN_PREFIX}-{}-{}-{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

/// A client's bearer token: `berth_<id>_<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

const API_PREFIX: &str = "berth";

impl ApiToken {
    pub fn generate() -> Result<Self, TlsError> {
        Ok(Self {
            id: id()?,
            secret: random_secret()?,
        })
    }

    pub fn parse(text: &str) -> Result<Self, TlsError> {
        let bad = || {
            TlsError::Token(
                "not an API token: expected berth_<id>_<secret>, as `berth token create` prints it"
                    .into(),
            )
        };
        let mut parts = text.trim().split('_');
        let (Some(API_PREFIX), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if !(is_hex(id, 16) && is_hex(secret, 64)) {
            return Err(bad());
        }
        Ok(Self {
            id: id.into(),
            secret: secret.into(),
        })
    }
}

impl std::fmt::Display for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{API_PREFIX}_{}_{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_show_their_secret_in_debug() {
        let join = JoinToken::generate(&"ab".repeat(32)).expect("join");
        assert_eq!(JoinToken::parse(&join.to_string()).ok(), Some(join.clone()));
        assert!(!format!("{join:?}").contains(&join.secret));
        let api = ApiToken::generate().expect("api");
        assert_eq!(
            ApiToken::parse(&format!(" {api}\n")).ok(),
            Some(api.clone())
        );
        assert!(!format!("{api:?}").contains(&api.secret));
        assert_ne!(hash_secret(&api.secret), api.secret);
        assert_eq!(hash_secret("x").len(), 64);
        for bad in [
            "",
            "berth_x_y",
            "BERTHJ1-aa-bb-cc",
            &api.to_string().to_uppercase(),
        ] {
            assert!(ApiToken::parse(bad).is_err(), "{bad}");
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
        assert!(ApiToken::parse(&join.to_string()).is_err());
        assert!(JoinToken::parse(&api.to_string()).is_err());
    }
}
