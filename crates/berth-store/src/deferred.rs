//! The state machine's writes to disk, gathered and written together.
//!
//! Every entry applied is already durable in the Raft log, so the objects table is a cache of
//! the log that saves replaying it on start; it need not follow every apply. Written after
//! each one (the way it was), it cost a redb transaction per Raft round on every member:
//! B-tree pages copied and written, and redb's single write transaction held while the next
//! log append waited for it. Now each apply adds its changed objects to a [`Deferred`] set
//! (a later change of a key replaces an earlier one), and the set goes to disk in one
//! transaction at most every [`WRITE_EVERY`], or at once when it holds [`MAX_BYTES`].
//!
//! A crash loses what was not yet written: the database's applied index is then behind, and
//! openraft applies the entries after it again from the log (objects and the applied index
//! are written in one transaction, so they always agree). That needs the entries still in
//! the log: a purge writes the set out first ([`Deferred::write_out`]) and is recorded only
//! up to the applied index the disk then holds ([`Deferred::written`]; the purge openraft
//! issues beside a snapshot install comes before the install's transaction, and is left to
//! the next one). Installing a snapshot replaces the objects: what is pending from before it
//! is dropped ([`Deferred::discard_then`]).
//!
//! A write that fails stops the set for good (a later one would record an applied index past
//! changes it never wrote): the next apply or purge answers the error, which stops Raft and
//! the server with it, as a failed write always did.

// openraft's `StorageError` is the error type throughout the storage code.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use redb::Database;

use crate::storage::{blocking, persist, write_err, SError, Stored};

/// The longest a change waits in memory before it is written (a timer wakes every this long).
pub(crate) const WRITE_EVERY: Duration = Duration::from_millis(100);

/// The most bytes of encoded objects held before they are written at once.
const MAX_BYTES: usize = 16 << 20;

/// Changes applied but not yet written.
#[derive(Default)]
struct Changes {
    /// Each changed object's encoded key with its bytes, `None` when it was deleted.
    objects: BTreeMap<String, Option<Vec<u8>>>,
    /// The applied log id and the membership as of the last change, encoded.
    applied: Option<(Vec<u8>, Vec<u8>)>,
    /// The applied log index as of the last change.
    index: u64,
    bytes: usize,
}

pub(crate) struct Deferred {
    db: Arc<Database>,
    stored: Arc<Stored>,
    pending: Mutex<Changes>,
    /// Held from taking a set to its commit, so that sets reach the disk in the order they
    /// were taken; and by a snapshot install while it replaces the objects.
    writing: Mutex<()>,
    /// Why a write failed, once one did.
    failed: OnceLock<String>,
    /// The applied log index the database holds (written, installed or loaded).
    written: AtomicU64,
    /// The timer's, once the first change started it.
    timer: OnceLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Deferred {
    pub(crate) fn new(db: Arc<Database>, stored: Arc<Stored>) -> Arc<Self> {
        Arc::new(Self {
            db,
            stored,
            pending: Mutex::default(),
            writing: Mutex::default(),
            failed: OnceLock::new(),
            written: AtomicU64::new(0),
            timer: OnceLock::new(),
        })
    }

    fn failure(&self) -> Result<(), SError> {
        match self.failed.get() {
            Some(why) => Err(write_err(std::io::Error::other(format!(
                "an earlier write of the state machine failed: {why}"
            )))),
            None => Ok(()),
        }
    }

    /// Adds what one apply changed: `objects` and the applied index and membership after it.
    /// Answers whether the set is due to be written now (it holds too much), and an earlier
    /// failure as an error. Starts the timer that writes the set out.
    pub(crate) fn add(
        self: &Arc<Self>,
        objects: Vec<(String, Option<Vec<u8>>)>,
        index: u64,
        applied: Vec<u8>,
        membership: Vec<u8>,
    ) -> Result<bool, SError> {
        self.failure()?;
        self.timer.get_or_init(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(write_behind(Arc::downgrade(self)));
            }
        });
        let mut pending = lock(&self.pending);
        for (key, bytes) in objects {
            let (key_len, size) = (key.len(), key.len() + bytes.as_ref().map_or(0, Vec::len));
            pending.bytes += size;
            if let Some(old) = pending.objects.insert(key, bytes) {
                pending.bytes -= key_len + old.map_or(0, |o| o.len());
            }
        }
        pending.applied = Some((applied, membership));
        pending.index = index;
        Ok(pending.bytes >= MAX_BYTES)
    }

    /// Writes what is pending, if anything, in one transaction. Blocking.
    pub(crate) fn write_out(&self) -> Result<(), SError> {
        let _writing = lock(&self.writing);
        self.failure()?;
        let changes = std::mem::take(&mut *lock(&self.pending));
        let Some((applied, membership)) = &changes.applied else {
            return Ok(());
        };
        let result = persist(
            &self.db,
            &changes.objects,
            applied,
            membership,
            &self.stored,
        );
        match &result {
            Ok(()) => {
                self.written.fetch_max(changes.index, Ordering::AcqRel);
            }
            Err(e) => {
                let _ = self.failed.set(e.to_string());
            }
        }
        result
    }

    /// The applied log index the database holds.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Records the applied index the database was loaded at.
    pub(crate) fn loaded(&self, index: u64) {
        self.written.fetch_max(index, Ordering::AcqRel);
    }

    /// [`Deferred::write_out`] on the blocking pool.
    pub(crate) async fn write_out_off_workers(self: Arc<Self>) -> Result<(), SError> {
        blocking(move || self.write_out()).await
    }

    /// Drops what is pending and runs `replace` (which replaces every object on disk, and
    /// the applied index with `index`) with no write in between. Blocking.
    pub(crate) fn discard_then<T>(
        &self,
        index: u64,
        replace: impl FnOnce() -> Result<T, SError>,
    ) -> Result<T, SError> {
        let _writing = lock(&self.writing);
        *lock(&self.pending) = Changes::default();
        let replaced = replace()?;
        self.written.store(index, Ordering::Release);
        Ok(replaced)
    }
}

/// Writes the pending set out every [`WRITE_EVERY`] until the state machine is gone.
async fn write_behind(deferred: Weak<Deferred>) {
    loop {
        tokio::time::sleep(WRITE_EVERY).await;
        let Some(deferred) = deferred.upgrade() else {
            return;
        };
        if lock(&deferred.pending).applied.is_none() {
            continue;
        }
        if let Err(e) = deferred.write_out_off_workers().await {
            tracing::error!("writing the state machine's changes failed: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{init_tables, read_applied_and_objects};

    fn database() -> Arc<Database> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("db");
        init_tables(&db).expect("tables");
        Arc::new(db)
    }

    fn add(d: &Arc<Deferred>, changes: &[(&str, Option<&str>)], applied: &str) {
        let objects = changes
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
            .collect();
        let index = applied.parse().expect("an index");
        let due = d
            .add(objects, index, applied.as_bytes().to_vec(), b"m".to_vec())
            .expect("add");
        assert!(!due);
    }

    #[test]
    fn a_set_reaches_the_disk_only_when_written_out_with_its_last_value_per_key() {
        let db = database();
        let d = Deferred::new(db.clone(), Arc::default());
        add(&d, &[("a", Some("1")), ("b", Some("1"))], "5");
        add(&d, &[("a", Some("2")), ("c", Some("1"))], "6");
        add(&d, &[("c", None)], "7");
        assert_eq!(read_applied_and_objects(&db), (None, vec![]));
        assert_eq!(d.written(), 0);
        d.write_out().expect("write");
        assert_eq!(d.written(), 7);
        assert_eq!(
            read_applied_and_objects(&db),
            (
                Some("7".into()),
                vec![("a".into(), "2".into()), ("b".into(), "1".into())]
            )
        );
        // Nothing pending: nothing written.
        d.write_out().expect("write");
    }

    #[test]
    fn a_discarded_set_is_never_written() {
        let db = database();
        let d = Deferred::new(db.clone(), Arc::default());
        add(&d, &[("a", Some("1"))], "5");
        let ran = d.discard_then(9, || Ok(true)).expect("replace");
        assert!(ran);
        assert_eq!(d.written(), 9, "the install's index");
        d.write_out().expect("write");
        assert_eq!(read_applied_and_objects(&db), (None, vec![]));
    }

    #[test]
    fn a_large_set_is_due_at_once() {
        let d = Deferred::new(database(), Arc::default());
        let big = vec![b'x'; MAX_BYTES];
        let due = d
            .add(
                vec![("a".into(), Some(big))],
                1,
                b"1".to_vec(),
                b"m".to_vec(),
            )
            .expect("add");
        assert!(due);
    }
}
