use std::time::{Duration, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Assigned by the Raft leader, never read from a clock inside
/// the state machine.
pub type Timestamp = u64;

/// Formats a timestamp as RFC 3339 with millisecond precision (`2026-11-26T22:17:59.123Z`).
pub fn format_timestamp(ts: Timestamp) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts)).to_string()
}

/// Serde helpers: timestamps are numbers in memory and RFC 3339 strings in JSON and YAML.
pub(crate) mod rfc3339_opt {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => s.serialize_str(&format_timestamp(*ts)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let t = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_millis();
        Ok(Some(u64::try_from(ms).map_err(serde::de::Error::custom)?))
    }
}

pub(crate) mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(*ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        super::rfc3339_opt::deserialize(d)?
            .ok_or_else(|| serde::de::Error::custom("missing timestamp"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        assert_eq!(
            super::format_timestamp(1_800_000_000_123),
            "2027-01-15T08:00:00.123Z"
        );
    }
}
