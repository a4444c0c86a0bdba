use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// How many events an object keeps; older ones are dropped first.
pub const MAX_EVENTS: usize = 32;

/// Something that happened to an object, in words a human can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(with = "crate::time::rfc3339")]
    pub at: Timestamp,
    pub message: String,
}

/// A bounded ring of events, oldest first.
///
/// Held without spare room (each push grows it by one, a read shrinks it to fit): every task
/// in the state has one, and the spare room a doubling vector and formatted messages keep was
/// a third of their size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventLog(#[serde(deserialize_with = "exact")] Vec<Event>);

/// Reads a list of events into a vector without spare room.
fn exact<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
    let mut events = Vec::<Event>::deserialize(d)?;
    events.shrink_to_fit();
    Ok(events)
}

impl EventLog {
    pub fn push(&mut self, at: Timestamp, message: impl Into<String>) {
        if self.0.len() == MAX_EVENTS {
            self.0.remove(0);
        }
        let mut message = message.into();
        message.shrink_to_fit();
        self.0.reserve_exact(1);
        self.0.push(Event { at, message });
    }

    /// The most recent event, if any.
    pub fn last(&self) -> Option<&Event> {
        self.0.last()
    }

    /// Rewrites the newest event that says `message`: it says `with` instead, or goes when
    /// `with` is `None`. Answers whether there was one. For a decision that is corrected as it
    /// is applied (a start the namespace's quota held back).
    pub fn rewrite_latest(&mut self, message: &str, with: Option<String>) -> bool {
        let Some(i) = self.0.iter().rposition(|e| e.message == message) else {
            return false;
        };
        match with {
            Some(mut text) => {
                text.shrink_to_fit();
                self.0[i].message = text;
            }
            None => {
                self.0.remove(i);
            }
        }
        true
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Event> for EventLog {
    fn from_iter<I: IntoIterator<Item = Event>>(iter: I) -> Self {
        let mut log = EventLog::default();
        for e in iter {
            log.push(e.at, e.message);
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_keeps_newest() {
        let mut log = EventLog::default();
        for i in 0..(MAX_EVENTS as u64 + 5) {
            log.push(i, format!("e{i}"));
            assert_eq!(log.0.capacity(), log.0.len(), "no spare room");
        }
        assert_eq!(log.iter().count(), MAX_EVENTS);
        assert_eq!(log.iter().next().map(|e| e.at), Some(5));
        assert_eq!(log.last().map(|e| e.message.as_str()), Some("e36"));
    }

    #[test]
    fn a_read_log_has_no_spare_room_and_reads_as_it_was_written() {
        let mut log = EventLog::default();
        for i in 0..5 {
            log.push(i, format!("event {i}"));
        }
        let json = serde_json::to_string(&log).expect("encode");
        assert!(json.starts_with("[{"), "a plain list, as before: {json}");
        let read: EventLog = serde_json::from_str(&json).expect("decode");
        assert_eq!(read, log);
        assert_eq!(read.0.capacity(), 5);
    }

    #[test]
    fn rewriting_the_latest_event_of_a_message() {
        let mut log: EventLog = ["a", "b", "a", "c"]
            .into_iter()
            .enumerate()
            .map(|(i, m)| Event {
                at: i as u64,
                message: m.into(),
            })
            .collect();
        assert!(log.rewrite_latest("a", Some("A".into())));
        assert!(log.rewrite_latest("b", None));
        assert!(!log.rewrite_latest("z", None));
        let shown: Vec<(u64, &str)> = log.iter().map(|e| (e.at, e.message.as_str())).collect();
        assert_eq!(shown, [(0, "a"), (2, "A"), (3, "c")]);
    }
}
