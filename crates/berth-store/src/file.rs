//! The database file, allocated as it grows.
//!
//! redb grows its file with `set_len`, which leaves a sparse file: the pages are allocated on
//! disk only when first written. Free pages are reused, but the untouched ones are taken as
//! the free space fragments, so the disk the file uses crept up toward its length for weeks of
//! churn (the soak of issue #17: a step of 30 MiB after 2 million tasks, inside a file whose
//! length never changed). Allocating each growth at once (fallocate, as etcd preallocates its
//! WAL) makes the disk used equal the length from the start, and a full disk shows up when the
//! file grows rather than at some later page write.

use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use crate::StoreError;

/// redb's page cache, half of it at most for pages written and not yet flushed. The state
/// lives in memory and the database is read back only on start, so it stays small (redb's
/// default is 1 GiB): it is heap memory, and at 256 MiB it was about a fifth of a server's RSS
/// with 150,000 tasks (1,128 MiB against 884 MiB at 64 MiB), with the same time to restore.
const CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) the database file at `path`, checking every page's checksum first (a
/// read of the whole file), so a file damaged while the server was down is refused with
/// [`StoreError::Corrupted`] where a plain open trusts it and may panic. Damage to the newest
/// commit is refused too, because the store commits durably in two phases
/// (`storage::begin_durable`): in one, redb would open the commit before it instead, and the
/// member would silently forget log entries it acknowledged, or its vote.
pub(crate) fn open_database(path: &Path) -> Result<redb::Database, StoreError> {
    let corrupted = |detail: String| StoreError::Corrupted {
        path: path.to_owned(),
        detail,
    };
    let open_error = |e: redb::DatabaseError| match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => corrupted(detail),
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            corrupted(format!("it ends early: {e}"))
        }
        e => StoreError::Open {
            path: path.to_owned(),
            source: e.into(),
        },
    };
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .create_with_backend(Preallocated::open(path).map_err(open_error)?)
        .map_err(open_error)
}

#[derive(Debug)]
pub(crate) struct Preallocated {
    inner: FileBackend,
    /// The same open file, for fallocate.
    file: File,
}

impl Preallocated {
    pub(crate) fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let allocate = file.try_clone()?;
        Ok(Self {
            inner: FileBackend::new(file)?,
            file: allocate,
        })
    }
}

impl StorageBackend for Preallocated {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let before = self.inner.len()?;
        self.inner.set_len(len)?;
        if len > before {
            let flags = rustix::fs::FallocateFlags::empty();
            match rustix::fs::fallocate(&self.file, flags, before, len - before) {
                Ok(()) => {}
                // A filesystem without it: sparse, as redb leaves it.
                Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_database_file_uses_the_disk_its_length_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        let db = redb::Builder::new()
            .create_with_backend(Preallocated::open(&path).expect("open"))
            .expect("create");
        const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(T).expect("table");
            // A few MiB: the file grows several times.
            for i in 0..512u64 {
                table.insert(i, &[7u8; 8192][..]).expect("insert");
            }
        }
        txn.commit().expect("commit");
        let meta = std::fs::metadata(&path).expect("metadata");
        assert!(meta.len() > 4 << 20, "length {}", meta.len());
        // Allocated blocks cover the whole length (a sparse file would use less).
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "{} bytes allocated for a length of {}",
            meta.blocks() * 512,
            meta.len()
        );
    }

    const T: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("t");

    /// A durable commit, in two phases as the store's are, or in one.
    fn put(db: &redb::Database, key: &str, value: &[u8], two_phases: bool) {
        let mut txn = db.begin_write().expect("begin");
        txn.set_two_phase_commit(two_phases);
        txn.open_table(T)
            .expect("table")
            .insert(key, value)
            .expect("insert");
        txn.commit().expect("commit");
    }

    /// Writes two commits, the second alone holding a value of 64 KiB of 0xA5, stops as a
    /// kill -9 does (a clean close commits once more, in two phases), then damages that
    /// value's bytes in the file.
    /// Answers the damaged bytes (the file stays locked by the forgotten handle).
    fn damaged_newest_commit(path: &Path, two_phases: bool) -> Vec<u8> {
        let db = open_database(path).expect("create");
        put(&db, "old", b"kept", two_phases);
        put(&db, "new", &[0xA5; 65536], two_phases);
        std::mem::forget(db);
        let mut bytes = std::fs::read(path).expect("read");
        let at = bytes
            .windows(4096)
            .position(|w| w.iter().all(|b| *b == 0xA5))
            .expect("the new value in the file");
        bytes[at..at + 64].fill(0);
        bytes
    }

    #[test]
    fn a_damaged_newest_commit_is_refused_where_one_phase_would_open_the_one_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Committed in one phase: redb opens the older commit, the newer one silently gone.
        let bytes = damaged_newest_commit(&dir.path().join("one.redb"), false);
        let copy = dir.path().join("copy.redb");
        std::fs::write(&copy, &bytes).expect("write");
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            .create(&copy)
            .expect("redb falls back to the older commit");
        let txn = redb::ReadableDatabase::begin_read(&db).expect("read");
        let table = txn.open_table(T).expect("table");
        assert!(redb::ReadableTable::get(&table, "old")
            .expect("get")
            .is_some());
        assert!(redb::ReadableTable::get(&table, "new")
            .expect("get")
            .is_none());
        // Committed in two phases, as the store does: the file is refused, and named.
        let bytes = damaged_newest_commit(&dir.path().join("two.redb"), true);
        let path = dir.path().join("raft.redb");
        std::fs::write(&path, &bytes).expect("write");
        match open_database(&path) {
            Err(e @ StoreError::Corrupted { .. }) => {
                let message = e.to_string();
                assert!(message.contains("raft.redb"), "{message}");
                assert!(message.contains("is corrupted"), "{message}");
            }
            Err(e) => panic!("refused as not corrupted: {e}"),
            Ok(_) => panic!("opened a file whose newest commit is damaged"),
        }
    }

    #[test]
    fn a_file_cut_short_is_refused_as_corrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        {
            let db = open_database(&path).expect("create");
            put(&db, "a", &[1; 65536], true);
        }
        let len = std::fs::metadata(&path).expect("metadata").len();
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(len / 3).expect("cut");
        drop(file);
        match open_database(&path) {
            Err(StoreError::Corrupted { .. }) => {}
            Err(e) => panic!("refused as not corrupted: {e}"),
            Ok(_) => panic!("opened a file cut short"),
        }
    }
}
