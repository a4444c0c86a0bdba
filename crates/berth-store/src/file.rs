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
}
