//! The log's newest entries in memory, as appended.
//!
//! openraft reads every entry back from the log store after it appended it: the leader's
//! replication tasks once per follower, and every member's state machine worker to apply it.
//! From redb each read is a read transaction, a DEFLATE decompression and a JSON parse of
//! the whole entry (a batch of up to a thousand commands); a profile of the 64-client write
//! benchmark had a tenth of the leader's CPU there. The [`Tail`] keeps clones of the entries
//! appended last and answers the reads it can from them.
//!
//! Invariant: the tail holds a contiguous run of the log's entries that ends at the log's
//! last one, or nothing. Appends add after the log committed them, truncations and purges
//! take out what they take from the log, and the oldest entries go when the tail holds more
//! than [`MAX_ENTRIES`] or [`MAX_BYTES`].

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::Entry;
use tokio::sync::watch;

use crate::{BerthNode, NodeId, TypeConfig};

/// The most entries the tail holds: followers that fall further behind read from disk.
const MAX_ENTRIES: usize = 4096;

/// The most bytes the tail holds, counting each entry's JSON size: entries are batches of up
/// to a thousand commands, so the count alone does not bound the memory.
const MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
pub(crate) struct Tail(Mutex<Entries>);

#[derive(Default)]
struct Entries {
    /// Each entry with its JSON size, in index order, contiguous.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Entries {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl Tail {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records entries the log just appended, in order, each with its JSON size. Entries that
    /// replace ones held (openraft truncates before it overwrites, but an append at an index
    /// held still replaces it and everything after) or that do not follow the last one held
    /// (after a restart, the tail is empty; after a snapshot install, the log jumps) start
    /// the tail again where they fit.
    pub(crate) fn appended(&self, entries: impl IntoIterator<Item = (Entry<TypeConfig>, usize)>) {
        let mut tail = self.lock();
        for (entry, size) in entries {
            let index = entry.log_id.index;
            while tail.last().is_some_and(|last| last >= index) {
                tail.pop_back();
            }
            if tail.last().is_some_and(|last| last + 1 != index) {
                tail.clear();
            }
            tail.bytes += size;
            tail.entries.push_back((entry, size));
        }
        while tail.entries.len() > MAX_ENTRIES || tail.bytes > MAX_BYTES {
            tail.pop_front();
        }
    }

    /// Takes out the entries from `index` on (the log truncated them).
    pub(crate) fn truncated(&self, index: u64) {
        let mut tail = self.lock();
        while tail.last().is_some_and(|last| last >= index) {
            tail.pop_back();
        }
    }

    /// How many entries it holds, and their JSON size.
    pub(crate) fn held(&self) -> (usize, usize) {
        let tail = self.lock();
        (tail.entries.len(), tail.bytes)
    }

    /// Takes out the entries up to `index`, inclusive, that no reader needs any more (applied
    /// here and held by every follower): the log still has them.
    pub(crate) fn released(&self, index: u64) {
        self.purged(index);
    }

    /// Takes out the entries up to `index`, inclusive (the log purged them).
    pub(crate) fn purged(&self, index: u64) {
        let mut tail = self.lock();
        while tail.first().is_some_and(|first| first <= index) {
            tail.pop_front();
        }
    }

    /// Clones of the entries in `range` when the tail holds all of them, none otherwise (the
    /// caller reads the log). An unbounded end means up to the last entry, which the tail
    /// holds whenever it holds anything.
    pub(crate) fn get<RB: RangeBounds<u64>>(&self, range: &RB) -> Option<Vec<Entry<TypeConfig>>> {
        let tail = self.lock();
        let (first, last) = (tail.first()?, tail.last()?);
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.checked_sub(1)?,
            Bound::Unbounded => last,
        };
        if end < start {
            return Some(Vec::new());
        }
        if start < first || end > last {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            tail.entries
                .range(from..=to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// Lets the tail drop the entries no reader of it needs any more: those this member applied
/// and, on a leader, every follower holds. The tail then holds what is in flight (nothing, on
/// a lone server that applied everything), and up to its bounds only while a follower lags.
pub(crate) async fn release(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BerthNode>>,
    tail: Arc<Tail>,
) {
    loop {
        let released = {
            let m = metrics.borrow_and_update();
            // `replication` is the leader's (learners included, itself too); `None` on a
            // follower. A follower that holds nothing yet holds back everything.
            let followers = m.replication.as_ref().map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != m.id)
                    .map(|(_, matched)| matched.map(|l| l.index))
                    .min()
            });
            match (m.last_applied.map(|l| l.index), followers) {
                (None, _) | (_, Some(Some(None))) => None,
                // A leader: what every follower holds too.
                (Some(applied), Some(Some(Some(held)))) => Some(applied.min(held)),
                // A leader without followers, or a follower: what it applied.
                (Some(applied), Some(None) | None) => Some(applied),
            }
        };
        if let Some(index) = released {
            tail.released(index);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64) -> (Entry<TypeConfig>, usize) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        (entry, 10)
    }

    fn indices(entries: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        entries.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_ranges_it_holds_whole_and_no_other() {
        let tail = Tail::default();
        tail.appended((5..=9).map(entry));
        assert_eq!(indices(tail.get(&(6..8))), Some(vec![6, 7]));
        assert_eq!(indices(tail.get(&(5..))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indices(tail.get(&(7..=9))), Some(vec![7, 8, 9]));
        assert_eq!(indices(tail.get(&(4..8))), None, "starts before the tail");
        assert_eq!(indices(tail.get(&(8..=10))), None, "ends after the log");
        assert_eq!(indices(tail.get(&(..8))), None, "unbounded start");
        assert_eq!(indices(tail.get(&(8..8))), Some(vec![]));
        assert_eq!(indices(Tail::default().get(&(1..))), None, "empty tail");
    }

    #[test]
    fn follows_truncations_purges_and_overwrites() {
        let tail = Tail::default();
        tail.appended((1..=10).map(entry));
        tail.truncated(8);
        assert_eq!(indices(tail.get(&(1..))), Some((1..=7).collect()));
        tail.purged(3);
        assert_eq!(indices(tail.get(&(4..))), Some((4..=7).collect()));
        assert_eq!(indices(tail.get(&(3..))), None);
        // An append at an index held replaces it and what follows.
        tail.appended([entry(6)]);
        assert_eq!(indices(tail.get(&(4..))), Some(vec![4, 5, 6]));
        // One that does not follow on (a snapshot moved the log on) starts again.
        tail.appended([entry(20), entry(21)]);
        assert_eq!(indices(tail.get(&(20..))), Some(vec![20, 21]));
        assert_eq!(indices(tail.get(&(6..))), None);
    }

    #[test]
    fn lets_the_oldest_entries_go_past_its_bounds() {
        let tail = Tail::default();
        tail.appended((1..=(MAX_ENTRIES as u64 + 10)).map(entry));
        assert_eq!(indices(tail.get(&(10..12))), None);
        assert_eq!(indices(tail.get(&(11..12))), Some(vec![11]));
        let big = |index| (entry(index).0, MAX_BYTES / 2 + 1);
        tail.appended([big(MAX_ENTRIES as u64 + 11), big(MAX_ENTRIES as u64 + 12)]);
        let last = MAX_ENTRIES as u64 + 12;
        assert_eq!(indices(tail.get(&(last - 1..))), None);
        assert_eq!(indices(tail.get(&(last..))), Some(vec![last]));
    }
}
