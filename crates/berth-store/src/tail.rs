//! The log's newest entries in memory, as appended.
//!
//! openraft reads every entry back from the log store after it appended it: the leader's
//! replication tasks once per follower, and every member's state machine worker to apply it.
//! From redb each read is a read transaction, a DEFLATE decompression and a JSON parse of
//! the whole entry (a batch of up to a thousand commands); a profile of the 64-client write
//! benchmark had a tenth of the leader's CPU there. The [`Tail`] keeps clones of the entries
//! appended last and answers the reads it can from them.
//!
//! Appends add their entries before they are on disk (the log's [`crate::writer`] writes them
//! while Raft goes on): until then the tail is the only place to read them from.
//!
//! Invariants: the tail holds a contiguous run of the log's entries that ends at the log's
//! last one, or nothing; every entry of the log before the tail's first is on disk.
//! Truncations and purges take out what they take from the log, and the oldest entries go
//! when the tail holds more than [`MAX_ENTRIES`] or [`MAX_BYTES`], but only once they are on
//! disk ([`Tail::flushed`]).

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::sync::Mutex;

use openraft::Entry;

use crate::TypeConfig;

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
    /// The entries up to this index are on disk.
    durable: u64,
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

    /// Lets the oldest entries go while the tail holds too much, as far as they are on disk.
    fn trim(&mut self) {
        while (self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES)
            && self.first().is_some_and(|first| first <= self.durable)
        {
            self.pop_front();
        }
    }
}

impl Tail {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records entries the log is appending (not yet on disk), in order, each with its JSON
    /// size. Entries that replace ones held (openraft truncates before it overwrites, but an
    /// append at an index held still replaces it and everything after) or that do not follow
    /// the last one held (after a restart, the tail is empty; after a snapshot install, the
    /// log jumps) start the tail again where they fit.
    pub(crate) fn appended(&self, entries: impl IntoIterator<Item = (Entry<TypeConfig>, usize)>) {
        let mut tail = self.lock();
        for (entry, size) in entries {
            let index = entry.log_id.index;
            tail.durable = tail.durable.min(index.saturating_sub(1));
            while tail.last().is_some_and(|last| last >= index) {
                tail.pop_back();
            }
            if tail.last().is_some_and(|last| last + 1 != index) {
                tail.clear();
            }
            tail.bytes += size;
            tail.entries.push_back((entry, size));
        }
        tail.trim();
    }

    /// Records that the entries up to `index` are on disk.
    pub(crate) fn flushed(&self, index: u64) {
        let mut tail = self.lock();
        tail.durable = tail.durable.max(index);
        tail.trim();
    }

    /// Takes out the entries from `index` on (the log truncated them).
    pub(crate) fn truncated(&self, index: u64) {
        let mut tail = self.lock();
        tail.durable = tail.durable.min(index.saturating_sub(1));
        while tail.last().is_some_and(|last| last >= index) {
            tail.pop_back();
        }
    }

    /// Takes out the entries up to `index`, inclusive (the log purged them).
    pub(crate) fn purged(&self, index: u64) {
        let mut tail = self.lock();
        while tail.first().is_some_and(|first| first <= index) {
            tail.pop_front();
        }
    }

    /// What the tail holds of `range`: the index it starts at (the range's start, or the
    /// tail's first entry when the range starts before it) and clones of its entries from
    /// there to the range's end. `None` when it holds none of the range. The range's entries
    /// before that index are on disk; none exist after the tail's last.
    pub(crate) fn held<RB: RangeBounds<u64>>(
        &self,
        range: &RB,
    ) -> Option<(u64, Vec<Entry<TypeConfig>>)> {
        let tail = self.lock();
        let (first, last) = (tail.first()?, tail.last()?);
        let from = match range.start_bound() {
            Bound::Included(i) => (*i).max(first),
            Bound::Excluded(i) => i.checked_add(1)?.max(first),
            Bound::Unbounded => first,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => (*i).min(last),
            Bound::Excluded(i) => i.checked_sub(1)?.min(last),
            Bound::Unbounded => last,
        };
        if end < first {
            return None;
        }
        if end < from {
            return Some((from, Vec::new()));
        }
        let entries = tail
            .entries
            .range((from - first) as usize..=(end - first) as usize)
            .map(|(e, _)| e.clone())
            .collect();
        Some((from, entries))
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

    /// What `held` answers, as the index it starts at and its entries' indices.
    fn held<RB: RangeBounds<u64>>(tail: &Tail, range: RB) -> Option<(u64, Vec<u64>)> {
        tail.held(&range)
            .map(|(from, es)| (from, es.iter().map(|e| e.log_id.index).collect()))
    }

    /// A tail holding `range`, all of it on disk.
    fn on_disk(range: std::ops::RangeInclusive<u64>) -> Tail {
        let tail = Tail::default();
        let last = *range.end();
        tail.appended(range.map(entry));
        tail.flushed(last);
        tail
    }

    #[test]
    fn answers_the_part_of_a_range_it_holds_and_where_that_part_starts() {
        let tail = on_disk(5..=9);
        assert_eq!(held(&tail, 6..8), Some((6, vec![6, 7])));
        assert_eq!(held(&tail, 5..), Some((5, vec![5, 6, 7, 8, 9])));
        assert_eq!(held(&tail, 7..=9), Some((7, vec![7, 8, 9])));
        assert_eq!(
            held(&tail, 8..=12),
            Some((8, vec![8, 9])),
            "none after the log's last"
        );
        assert_eq!(
            held(&tail, 2..8),
            Some((5, vec![5, 6, 7])),
            "2..5 are on disk"
        );
        assert_eq!(held(&tail, ..7), Some((5, vec![5, 6])));
        assert_eq!(held(&tail, 8..8), Some((8, vec![])));
        assert_eq!(held(&tail, 12..), Some((12, vec![])), "past the log's end");
        assert_eq!(held(&tail, 1..5), None, "all before the tail");
        assert_eq!(held(&Tail::default(), 1..), None, "empty tail");
    }

    #[test]
    fn follows_truncations_purges_and_overwrites() {
        let tail = on_disk(1..=10);
        tail.truncated(8);
        assert_eq!(held(&tail, 1..), Some((1, (1..=7).collect())));
        tail.purged(3);
        assert_eq!(held(&tail, 4..), Some((4, (4..=7).collect())));
        assert_eq!(held(&tail, 3..), Some((4, (4..=7).collect())));
        // An append at an index held replaces it and what follows.
        tail.appended([entry(6)]);
        assert_eq!(held(&tail, 4..), Some((4, vec![4, 5, 6])));
        // One that does not follow on (a snapshot moved the log on) starts again.
        tail.appended([entry(20), entry(21)]);
        assert_eq!(held(&tail, 20..), Some((20, vec![20, 21])));
        assert_eq!(held(&tail, 6..), Some((20, vec![20, 21])));
    }

    #[test]
    fn lets_the_oldest_entries_go_past_its_bounds_once_on_disk() {
        let over = MAX_ENTRIES as u64 + 10;
        let tail = Tail::default();
        tail.appended((1..=over).map(entry));
        assert_eq!(held(&tail, 1..=1), Some((1, vec![1])), "none on disk yet");
        tail.flushed(5);
        assert_eq!(held(&tail, 1..=6), Some((6, vec![6])), "1..=5 went");
        tail.flushed(over);
        assert_eq!(held(&tail, 10..12), Some((11, vec![11])));
        let big = |index| (entry(index).0, MAX_BYTES / 2 + 1);
        tail.appended([big(over + 1), big(over + 2)]);
        // Too many bytes: every entry on disk went, the two new ones stay.
        assert_eq!(
            held(&tail, over..),
            Some((over + 1, vec![over + 1, over + 2]))
        );
        tail.flushed(over + 2);
        assert_eq!(held(&tail, over..), Some((over + 2, vec![over + 2])));
    }

    #[test]
    fn an_entry_replaced_or_truncated_is_not_on_disk_until_flushed_again() {
        let tail = on_disk(1..=MAX_ENTRIES as u64);
        tail.truncated(3);
        tail.appended((3..=MAX_ENTRIES as u64 + 5).map(entry));
        // Over the bound, but only 1 and 2 may go.
        assert_eq!(
            held(&tail, 1..),
            Some((3, (3..=MAX_ENTRIES as u64 + 5).collect()))
        );
    }
}
