//! openraft's log storage and state machine, both on one redb database file.
//!
//! Tables: `log` (index -> entry), `meta` (vote, purged, snapshot meta; the commit index of
//! databases from before), `snapshot` (see below) and `objects` (what databases from before kept of
//! the state: emptied on start, see further below). Entries and snapshots are JSON compressed with
//! DEFLATE ([`encode_compressed`]), the rest plain JSON. The current snapshot's bytes are a file
//! beside the database, `snapshot-ID.json.deflate` (`.json` before compression), written and
//! fsynced before the meta naming it commits (a snapshot is one large value: inside redb, each new
//! one needed a free run of pages as long as itself while the old one was still live, and the file
//! grew in steps it never gave back); databases from before keep theirs in the `snapshot` table
//! until the next snapshot (and the simulation, which has no directory, keeps it there). Every
//! write is one redb transaction. Log appends, votes and snapshots are fsynced before openraft is
//! told they are durable. The log's newest entries are also kept decoded in memory
//! ([`crate::tail`]) for openraft's reads.
//!
//! The state machine's state on disk is the current snapshot and nothing else: applying an entry
//! writes nothing, and a start loads the snapshot and applies the log after it again, up to the
//! commit index that each append writes beside its entries before the store answers anything, the
//! rest once it hears the commit index from a quorum (openraft purges the log only up to a
//! snapshot). A snapshot's CRC-32 is kept beside its name: a start refuses a damaged one, and
//! so does sending it to a member that needs it (openraft then stops Raft here). Every
//! entry is durable in the log before it is applied, so the objects' own table (written about every
//! 100 ms until 2026-12) was a second copy of the log's changes: in a placement burst, encoding the
//! changed objects and committing them took a fifth of each server's CPU and most of what its disk
//! wrote, and each log append's fsync waited behind those pages. What a start costs instead is
//! applying the entries since the last snapshot, which [`StoreConfig::snapshot_log_bytes`] and
//! `snapshot_every` bound.
//!
//! [`StoreConfig::snapshot_log_bytes`]: crate::StoreConfig::snapshot_log_bytes

// openraft's traits dictate `StorageError` (224 bytes) as the error type; the helpers here
// return it too rather than convert twice.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::{Cursor, Write as _};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::tail::Tail;
use crate::{BerthNode, NodeId, TypeConfig};
use berth_state::CommandResult;
use berth_state::{Key, Object, State};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";
const APPLIED: &str = "sm_last_applied";
const MEMBERSHIP: &str = "sm_membership";
const SNAPSHOT_META: &str = "snapshot_meta";
/// The current snapshot's ID with the CRC-32 of its bytes: a start refuses a damaged file
/// rather than load a state it cannot trust (the snapshot is the state's only copy on disk).
const SNAPSHOT_CRC: &str = "snapshot_crc32";
const SNAPSHOT_DATA: &str = "data";

pub(crate) type SError = StorageError<NodeId>;

fn read_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::read(AnyError::new(&e)).into()
}

pub(crate) fn write_err(e: impl std::error::Error + 'static) -> SError {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, SError> {
    serde_json::to_vec(v).map_err(write_err)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SError> {
    serde_json::from_slice(bytes).map_err(read_err)
}

/// The first byte of a value stored compressed: DEFLATE of its JSON follows. JSON never
/// starts with it, so values from before (plain JSON) still read.
const DEFLATED: u8 = 0x01;

/// Log entries and snapshots: batches of hundreds of tasks in JSON repeat the same field
/// names and values, and DEFLATE at its fastest level stores them in a fraction of the bytes
/// (the soak's log of a gigabyte between snapshots was what filled redb's file).
/// Answers the bytes with the size of the JSON they compress.
fn encode_compressed<T: Serialize>(v: &T) -> Result<(Vec<u8>, usize), SError> {
    let json = serde_json::to_vec(v).map_err(write_err)?;
    let mut out = Vec::with_capacity(json.len() / 4 + 16);
    out.push(DEFLATED);
    let mut encoder = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
    encoder.write_all(&json).map_err(write_err)?;
    Ok((encoder.finish().map_err(write_err)?, json.len()))
}

/// Reads what [`encode_compressed`] wrote, or plain JSON.
fn decode_compressed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SError> {
    match bytes.split_first() {
        Some((&DEFLATED, deflated)) => {
            let mut json = Vec::with_capacity(deflated.len() * 4);
            std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(deflated), &mut json)
                .map_err(read_err)?;
            decode(&json)
        }
        _ => decode(bytes),
    }
}

/// Where snapshots' bytes are kept: files in a directory, or (the simulation) the `snapshot`
/// table.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles(Option<PathBuf>);

impl SnapshotFiles {
    pub(crate) fn in_dir(dir: PathBuf) -> Self {
        Self(Some(dir))
    }

    pub(crate) fn in_database() -> Self {
        Self(None)
    }

    fn path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("snapshot-{id}.json.deflate"))
    }

    /// Where a snapshot from before compression is (plain JSON).
    fn old_path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("snapshot-{id}.json"))
    }

    /// Writes `data` as snapshot `id` and makes it durable, before the meta names it.
    fn write(&self, id: &str, data: &[u8]) -> Result<(), SError> {
        let Some(dir) = &self.0 else {
            return Ok(());
        };
        let path = Self::path(dir, id);
        let tmp = path.with_extension("deflate.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
        file.write_all(data).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)
    }

    /// The bytes of snapshot `id`; none when there is no file for it.
    fn read(&self, id: &str) -> Result<Option<Vec<u8>>, SError> {
        let Some(dir) = &self.0 else {
            return Ok(None);
        };
        for path in [Self::path(dir, id), Self::old_path(dir, id)] {
            match std::fs::read(path) {
                Ok(data) => return Ok(Some(data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        Ok(None)
    }

    /// Removes snapshot `id`'s file (the one a newer snapshot replaced).
    fn remove(&self, id: &str) {
        let Some(dir) = &self.0 else {
            return;
        };
        for path in [Self::path(dir, id), Self::old_path(dir, id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("remove the old snapshot {}: {e}", path.display()),
            }
        }
    }

    /// Removes every snapshot file but `id`'s: on start, what a crash left behind (a file
    /// written whose meta never committed, one replaced but not yet removed).
    fn keep_only(&self, id: Option<&str>) {
        let Some(dir) = &self.0 else {
            return;
        };
        let keep = id.map(|id| [Self::path(dir, id), Self::old_path(dir, id)]);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snapshot-"));
            if ours && !keep.as_ref().is_some_and(|keep| keep.contains(&path)) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!("remove the old snapshot {}: {e}", path.display());
                }
            }
        }
    }

    /// Puts `data` where the snapshot is kept within the transaction that names it: into the
    /// `snapshot` table when there is no directory, else out of it (the file holds it).
    fn record(&self, txn: &redb::WriteTransaction, data: &[u8]) -> Result<(), SError> {
        let mut table = txn.open_table(SNAPSHOT).map_err(write_err)?;
        match &self.0 {
            None => {
                table.insert(SNAPSHOT_DATA, data).map_err(write_err)?;
            }
            Some(_) => {
                table.remove(SNAPSHOT_DATA).map_err(write_err)?;
            }
        }
        Ok(())
    }
}

/// Runs blocking redb work (commits, fsyncs) on tokio's blocking pool, off the async workers
/// that serve the API, agent streams and Raft messages. On a current-thread runtime (the
/// deterministic simulation) there are no other workers to keep free: it runs in place, so
/// the simulation's paused clock does not jump while a thread writes.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SError> + Send + 'static,
) -> Result<T, SError> {
    if in_place() {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(write_err(e)),
    }
}

/// Whether blocking work runs where it is called: outside a runtime, or on a current-thread
/// one (the deterministic simulation), see [`blocking`].
fn in_place() -> bool {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    matches!(
        flavor,
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) | Err(_)
    )
}

/// A write transaction that commits durably in two phases (its pages fsynced, then the header
/// switched to it and fsynced). In one phase, a commit whose pages are damaged afterwards is
/// replaced on open by the one before it, silently, and a Raft member must never forget log
/// entries it acknowledged or its vote; in two, redb reports the damage (and the server
/// refuses the file: `file::open_database`), while a commit a crash cut short never became
/// the current one. One fsync more per durable commit.
fn begin_durable(db: &Database) -> Result<redb::WriteTransaction, SError> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_two_phase_commit(true);
    Ok(txn)
}

/// Creates every table so that readers never meet a missing one.
pub(crate) fn init_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(META)?;
    txn.open_table(SNAPSHOT)?;
    txn.open_table(OBJECTS)?;
    txn.commit()?;
    Ok(())
}

/// The last purged log id, as `txn` sees it.
fn purged_in(txn: &redb::ReadTransaction) -> Result<Option<LogId<NodeId>>, SError> {
    let table = txn.open_table(META).map_err(read_err)?;
    match table.get(PURGED).map_err(read_err)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, SError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), SError> {
    let bytes = encode(value)?;
    let mut txn = begin_durable(db)?;
    txn.set_durability(durability).map_err(write_err)?;
    txn.open_table(META)
        .map_err(write_err)?
        .insert(key, bytes.as_slice())
        .map_err(write_err)?;
    txn.commit().map_err(write_err)
}

/// The Raft log, vote and commit index.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    committed: Arc<AtomicU64>,
    /// The commit index as openraft last saved it, written with the next append
    /// ([`LogStore::save_committed`]).
    committed_id: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
    /// What lease reads check outside Raft's core: the saved vote, membership appends.
    facts: Arc<crate::lease::Facts>,
    /// Bytes appended to the log, as stored, counted from what the log held at start (a
    /// start applies the log after the snapshot again, so that is counted too): what sizes snapshots
    /// (`StoreConfig::snapshot_log_bytes`).
    appended: Arc<AtomicU64>,
    stored: Arc<Stored>,
    /// Where purges send the index up to which entries go ([`purge_behind`]), once the first
    /// purge started it.
    purger: Arc<OnceLock<watch::Sender<u64>>>,
    /// The newest entries, decoded: what replication and the state machine read back.
    tail: Arc<Tail>,
    /// The applied index of the state the disk holds: the current snapshot's (shared with
    /// the state machine, which saves snapshots). The log is purged no further.
    on_disk: Arc<AtomicU64>,
}

/// Log entries deleted per transaction once a snapshot lets them go.
const PURGE_CHUNK: u64 = 256;

/// Records a purge up to `log_id` and answers whether it did: the state on disk (the current
/// snapshot, `on_disk` its applied index) must never be behind the log's start, or a start
/// would have to apply entries the log no longer holds. A purge past it records nothing:
/// openraft purges beside a snapshot install before the install's transaction (which names
/// the snapshot) commits, and a later fsynced commit (a vote) would make the purge durable
/// first; the install's transaction records it instead ([`StateMachine::save_snapshot`]).
/// Blocking.
fn record_purge(db: &Database, on_disk: &AtomicU64, log_id: LogId<NodeId>) -> Result<bool, SError> {
    let on_disk = on_disk.load(Ordering::Acquire);
    if on_disk < log_id.index {
        tracing::info!(
            upto = log_id.index,
            snapshot = on_disk,
            "a purge left to the next: the snapshot on disk is behind it"
        );
        return Ok(false);
    }
    put_meta(db, PURGED, &Some(log_id), Durability::None)?;
    Ok(true)
}

/// Deletes the oldest log entries up to `upto`, inclusive, at most [`PURGE_CHUNK`] of them,
/// in a transaction not fsynced on its own (the next append's is); answers whether more
/// remain.
fn delete_chunk(db: &Database, stored: &Stored, upto: u64) -> Result<bool, SError> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(Durability::None).map_err(write_err)?;
    let mut removed = (0, 0);
    let more = {
        let mut table = txn.open_table(LOG).map_err(write_err)?;
        let first = table
            .first()
            .map_err(write_err)?
            .map(|(index, _)| index.value());
        match first {
            Some(first) if first <= upto => {
                let end = upto.min(first + PURGE_CHUNK - 1);
                table
                    .retain_in(first..=end, |_, v| {
                        removed = (removed.0 + 1, removed.1 + len(v));
                        false
                    })
                    .map_err(write_err)?;
                Some(end < upto)
            }
            _ => None,
        }
    };
    let Some(more) = more else {
        txn.abort().map_err(write_err)?;
        return Ok(false);
    };
    txn.commit().map_err(write_err)?;
    stored.log_changed((0, 0), removed);
    Ok(more)
}

/// Deletes purged log entries, a chunk per transaction, whenever `wanted` names a later index;
/// ends with the store. Raft's core awaits `purge` before it appends, votes or answers
/// anything else, and the log a snapshot lets go is thousands of entries (16 MiB by default):
/// deleted in the purge's one transaction, it held up every write and linearizable read for
/// as long as that took. A chunk at a time, appends get the database between chunks.
async fn purge_behind(db: Weak<Database>, stored: Arc<Stored>, mut wanted: watch::Receiver<u64>) {
    while wanted.changed().await.is_ok() {
        let upto = *wanted.borrow_and_update();
        let (started, mut chunks) = (Instant::now(), 0u32);
        let before = stored.log_entries.load(Ordering::Relaxed);
        loop {
            // The store is going: leave the rest to the next start's first purge.
            if wanted.has_changed().is_err() {
                return;
            }
            let Some(db) = db.upgrade() else { return };
            let stored = stored.clone();
            chunks += 1;
            match blocking(move || delete_chunk(&db, &stored, upto)).await {
                // Let the appends that waited for this chunk go first.
                Ok(true) => tokio::time::sleep(Duration::from_millis(1)).await,
                Ok(false) => break,
                Err(e) => {
                    // The entries stay (readable, already in the snapshot); the next purge
                    // deletes them with its own.
                    tracing::warn!("deleting the log up to {upto} failed: {e}");
                    break;
                }
            }
        }
        tracing::info!(
            upto,
            entries = before.saturating_sub(stored.log_entries.load(Ordering::Relaxed)),
            chunks,
            ms = started.elapsed().as_millis() as u64,
            "purged the log behind the snapshot"
        );
    }
}

/// What the database holds, kept up to date as commits land (for `/metrics`: how large the
/// log and the state's snapshot are, beside the file that holds them).
#[derive(Debug, Default)]
pub struct Stored {
    /// Entries in the Raft log.
    pub log_entries: AtomicU64,
    /// The log's entries' bytes as stored (compressed).
    pub log_bytes: AtomicU64,
    /// The state's bytes on disk: the current snapshot's (compressed).
    pub object_bytes: AtomicU64,
}

impl Stored {
    /// Counts the log `db` holds: once, at start (the snapshot is counted as the state
    /// machine loads it, [`StateMachine::load`]).
    fn of(db: &Database) -> Result<Self, SError> {
        let stored = Self::default();
        let txn = db.begin_read().map_err(read_err)?;
        for item in txn
            .open_table(LOG)
            .map_err(read_err)?
            .iter()
            .map_err(read_err)?
        {
            let (_, v) = item.map_err(read_err)?;
            stored.log_entries.fetch_add(1, Ordering::Relaxed);
            stored
                .log_bytes
                .fetch_add(len(v.value()), Ordering::Relaxed);
        }
        Ok(stored)
    }

    /// Counts entries added to the log and entries it lost, `(entries, bytes)` each.
    fn log_changed(&self, added: (u64, u64), removed: (u64, u64)) {
        change(&self.log_entries, added.0, removed.0);
        change(&self.log_bytes, added.1, removed.1);
    }
}

fn len(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

/// Adds `added` to `counter` and takes `removed` from it, never below zero.
fn change(counter: &AtomicU64, added: u64, removed: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some((v + added).saturating_sub(removed))
    });
}

impl LogStore {
    /// The log store over `db`, counting what it holds first ([`Stored`]).
    pub(crate) fn new(
        db: Arc<Database>,
        committed: Arc<AtomicU64>,
        facts: Arc<crate::lease::Facts>,
    ) -> Result<Self, SError> {
        let stored = Arc::new(Stored::of(&db)?);
        // Any entry of the log may be a membership: lease reads wait for the state machine
        // to apply it all before they skip Raft's core.
        let last = {
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let last = table.last().map_err(read_err)?;
            last.map_or(0, |(k, _)| k.value())
        };
        facts.appended_membership(last);
        Ok(Self {
            on_disk: Arc::default(),
            db,
            committed,
            committed_id: Arc::default(),
            facts,
            appended: Arc::new(AtomicU64::new(stored.log_bytes.load(Ordering::Relaxed))),
            stored,
            purger: Arc::default(),
            tail: Arc::default(),
        })
    }

    /// The log's newest entries, decoded ([`Tail`]).
    pub(crate) fn tail(&self) -> Arc<Tail> {
        self.tail.clone()
    }

    pub(crate) fn appended(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    pub(crate) fn stored(&self) -> Arc<Stored> {
        self.stored.clone()
    }

    /// The applied index of the state on disk: the current snapshot's.
    pub(crate) fn on_disk(&self) -> Arc<AtomicU64> {
        self.on_disk.clone()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        if let Some(entries) = self.tail.get(&range) {
            return Ok(entries);
        }
        let start = match range.start_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(i) => Some(i + 1),
            Bound::Unbounded => None,
        };
        let txn = self.db.begin_read().map_err(read_err)?;
        // Entries up to the purged index may still be in the table, deleted behind the purge
        // (`purge_behind`): they are gone all the same, whatever the deletion's progress.
        let purged = purged_in(&txn)?.map(|p| p.index);
        if let (Some(start), Some(purged)) = (start, purged) {
            if start <= purged {
                return Ok(Vec::new());
            }
        }
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut entries: Vec<Entry<TypeConfig>> = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            let entry: Entry<TypeConfig> = decode_compressed(v.value())?;
            if purged.is_none_or(|p| entry.log_id.index > p) {
                entries.push(entry);
            }
        }
        // When the start of the range was purged (compacted into a snapshot) while a
        // replication task was about to read it, answer nothing rather than a later suffix:
        // openraft 0.9 would send that suffix after a `prev_log_id` it does not follow, which
        // followers reject with a panic (the deterministic simulation found this). An empty
        // answer is treated as a heartbeat, and the leader then sends a snapshot instead.
        if let (Some(start), Some(first)) = (start, entries.first()) {
            if first.log_id.index != start {
                return Ok(Vec::new());
            }
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let last_purged_log_id = purged_in(&txn)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => Some(decode_compressed::<Entry<TypeConfig>>(v.value())?.log_id),
            None => None,
        };
        // The last entry, or the purged one when none is later: a follower that installed a
        // snapshot ahead of its log purges past its last entry, which may stay a while
        // (`purge_behind`).
        let last_log_id = match (last, last_purged_log_id) {
            (Some(last), Some(purged)) if last.index <= purged.index => Some(purged),
            (last, purged) => last.or(purged),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        let (db, vote) = (self.db.clone(), *vote);
        blocking(move || put_meta(&db, VOTE, &vote, Durability::Immediate)).await?;
        // Before Raft's core acts on it (grants it, or leads under it).
        self.facts.saved_vote(vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        let vote: Option<Vote<NodeId>> = get_meta(&self.db, VOTE)?;
        if let Some(vote) = vote {
            self.facts.saved_vote(vote);
        }
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        // A hint written with the next append, in its transaction ([`LogStore::append`]): a
        // start applies the log up to it before it answers anything (openraft's
        // `get_initial_state`), so that what a member applied before a stop or a crash (a
        // token revoked, a node's certificate) is what its local reads see again at once,
        // less at most the entries of one round, and not the state of the last snapshot
        // until it hears the commit index again. A write of its own here took redb's one
        // write transaction inside Raft's core, which then waited for whichever append
        // held it, fsync included.
        *self
            .committed_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = committed;
        Ok(())
    }

    /// The commit index the last append wrote ([`LogStore::save_committed`]); openraft takes
    /// the snapshot's index when it is later.
    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        let committed: Option<Option<LogId<NodeId>>> = get_meta(&self.db, COMMITTED)?;
        let committed = committed.flatten();
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut decoded = Vec::new();
        let encoded: Result<Vec<(u64, Vec<u8>)>, SError> = entries
            .into_iter()
            .map(|entry| {
                let (bytes, size) = encode_compressed(&entry)?;
                let index = entry.log_id.index;
                if matches!(entry.payload, EntryPayload::Membership(_)) {
                    self.facts.appended_membership(index);
                }
                decoded.push((entry, size));
                Ok((index, bytes))
            })
            .collect();
        let db = self.db.clone();
        let tail = self.tail.clone();
        let committed = *self
            .committed_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let committed = committed.map(|c| encode(&Some(c))).transpose()?;
        let result = match encoded {
            Err(e) => Err(e),
            Ok(encoded) => {
                let bytes: u64 = encoded.iter().map(|(_, b)| len(b)).sum();
                self.appended.fetch_add(bytes, Ordering::Relaxed);
                let added = (encoded.len() as u64, bytes);
                let stored = self.stored.clone();
                blocking(move || {
                    let txn = begin_durable(&db)?;
                    let mut replaced = (0, 0);
                    {
                        let mut table = txn.open_table(LOG).map_err(write_err)?;
                        for (index, bytes) in &encoded {
                            if let Some(old) =
                                table.insert(index, bytes.as_slice()).map_err(write_err)?
                            {
                                replaced = (replaced.0 + 1, replaced.1 + len(old.value()));
                            }
                        }
                        if let Some(committed) = &committed {
                            txn.open_table(META)
                                .map_err(write_err)?
                                .insert(COMMITTED, committed.as_slice())
                                .map_err(write_err)?;
                        }
                    }
                    txn.commit().map_err(write_err)?;
                    stored.log_changed(added, replaced);
                    tail.appended(decoded);
                    Ok(())
                })
                .await
            }
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let (db, stored) = (self.db.clone(), self.stored.clone());
        // Out of the tail first: a reader between the two finds it on disk.
        self.tail.truncated(log_id.index);
        blocking(move || {
            let txn = begin_durable(&db)?;
            let mut removed = (0, 0);
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, v| {
                    removed = (removed.0 + 1, removed.1 + len(v));
                    false
                })
                .map_err(write_err)?;
            txn.commit().map_err(write_err)?;
            stored.log_changed((0, 0), removed);
            Ok(())
        })
        .await
    }

    /// Records the purge, then leaves the deletion to [`purge_behind`]. Entries at or below
    /// the purged index may stay a while (and after a crash, until the next purge): nothing
    /// reads them, and they are in the snapshot. Not fsynced on its own: the deletions come
    /// after it, so no crash keeps them without it. See [`record_purge`] for when it records
    /// nothing.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let (db, stored) = (self.db.clone(), self.stored.clone());
        let on_disk = self.on_disk.clone();
        let upto = log_id.index;
        self.tail.purged(upto);
        if in_place() {
            // The simulation: all at once, where the purge is awaited.
            return blocking(move || {
                if record_purge(&db, &on_disk, log_id)? {
                    while delete_chunk(&db, &stored, upto)? {}
                }
                Ok(())
            })
            .await;
        }
        if !blocking(move || record_purge(&db, &on_disk, log_id)).await? {
            return Ok(());
        }
        self.purger
            .get_or_init(|| {
                let (wanted, rx) = watch::channel(0);
                tokio::spawn(purge_behind(
                    Arc::downgrade(&self.db),
                    self.stored.clone(),
                    rx,
                ));
                wanted
            })
            .send_replace(upto);
        Ok(())
    }
}

/// How long after a read of one task the applier goes on publishing the tasks with every
/// entry ([`Readable::tasks`]). Each publication costs the entry after it a copy of the
/// paths to what it changes (`State::task_view`: 3-5% of a placement burst's throughput when
/// paid on every entry), so it is paid only while such reads come.
const TASK_VIEWS_FOR: Duration = Duration::from_secs(1);

/// Whether the applier publishes the tasks with an entry at `now_ms`, the last read of one
/// task asked for them at `asked_ms` (0: never).
fn task_views_wanted(asked_ms: u64, now_ms: u64) -> bool {
    asked_ms > 0 && now_ms <= asked_ms + TASK_VIEWS_FOR.as_millis() as u64
}

/// What readers may see of the applied state ([`Shared::readable`]), for the reads that must
/// never wait for the applier.
#[derive(Debug, Clone)]
pub struct Readable {
    /// The last applied index a reader may see the state at.
    pub index: u64,
    /// The API tokens at `index`: every request's authentication reads them.
    pub credentials: Arc<berth_state::Credentials>,
    /// The tasks at `index`, published while reads of one task come ([`TASK_VIEWS_FOR`]),
    /// or taken by the first such read after a quiet spell ([`Shared::task_view`]).
    pub tasks: Option<Arc<berth_state::TaskView>>,
}

/// The in-memory state shared with readers, and a signal bumped after every applied batch.
pub struct Shared {
    /// parking_lot's lock for two things std's lacks: a short read may pass a writer that
    /// waits behind a long read ([`Shared::read`]), and the applier turns its write lock into
    /// a read lock once the state changed, letting readers in while it records the changes.
    pub state: parking_lot::RwLock<State>,
    /// The last applied index once everything about it is done: its changes recorded for
    /// watchers (whose feed must hold every change up to it) and its nodes woken.
    pub applied: watch::Sender<u64>,
    /// The last applied index as readers can see its state, with the state published at it:
    /// moved under the applier's write lock (no reader sees a state ahead of it), before the
    /// changes are recorded for watchers, so that a linearizable read waits for the state and
    /// nothing else.
    pub readable: watch::Sender<Readable>,
    /// When a reader last asked for the tasks' view, in ms after `epoch` (0: never).
    task_view_asked: AtomicU64,
    epoch: Instant,
    pub committed: Arc<AtomicU64>,
    /// The latest object changes, for watchers.
    pub changes: std::sync::Mutex<crate::changes::ChangeLog>,
    /// Per node, its watchers, told whenever an applied entry touches one of its tasks or the
    /// node itself, and which: an agent's stream wakes for its own node only, not for every
    /// entry, and rebuilds the assignments of the tasks that changed.
    pub(crate) node_changes: crate::node_watch::NodeWatchers,
    /// The last listing of every object, shared by watchers that start while it is recent
    /// (`Store::listing`).
    pub listing: std::sync::Mutex<Option<(u64, std::sync::Weak<berth_state::ObjectsCopy>)>>,
    /// What the database holds.
    pub stored: Arc<Stored>,
    /// What lease reads check outside Raft's core (the applied membership's voters here).
    pub(crate) facts: Arc<crate::lease::Facts>,
}

impl Shared {
    /// Wakes the watchers of the nodes that `changed` keys belong to; every node's when a
    /// task left the state (whose node is no longer known).
    fn notify_nodes(&self, state: &State, changed: &[Key]) {
        for key in changed {
            match state.node_of(key) {
                Some(Some(node)) => {
                    let task = match key {
                        Key::Task(id) => Some(id.as_str()),
                        _ => None,
                    };
                    self.node_changes.node(node, task);
                }
                Some(None) => {
                    self.node_changes.all();
                    return;
                }
                None => {}
            }
        }
    }

    /// Makes `state`, applied up to `index`, readable: its index for readers of the state's
    /// lock, and what it publishes for the reads that must not wait for that lock. Under the
    /// applier's write lock. Answers what it replaced, for the caller to drop once it let
    /// the lock go (the last reference frees what the state no longer shares).
    #[must_use]
    fn make_readable(&self, index: u64, state: &State) -> Readable {
        let wanted = task_views_wanted(self.task_view_asked.load(Ordering::Relaxed), self.now_ms());
        self.readable.send_replace(Readable {
            index,
            credentials: Arc::new(state.credentials()),
            tasks: wanted.then(|| Arc::new(state.task_view())),
        })
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// The tasks as readable now: the view the applier published, or when it published none
    /// (no such read for a while) one taken under the state's lock, which waits for an entry
    /// being applied, and kept for the readers after it. From then on the applier publishes
    /// one with every entry, until such reads stop for [`TASK_VIEWS_FOR`].
    pub(crate) fn task_view(&self) -> Arc<berth_state::TaskView> {
        self.task_view_asked
            .fetch_max(self.now_ms(), Ordering::Relaxed);
        if let Some(view) = self.readable.borrow().tasks.clone() {
            return view;
        }
        let state = self.read();
        let view = Arc::new(state.task_view());
        // The lock held, `readable` is at this state's index, and only the applier moves it,
        // under the write lock. No reader waits for this: none is woken.
        self.readable.send_if_modified(|r| {
            r.tasks.get_or_insert_with(|| view.clone());
            false
        });
        view
    }

    /// Wakes every node's watchers (a snapshot replaced the whole state).
    fn notify_all_nodes(&self) {
        self.node_changes.all();
    }
}

impl Shared {
    /// A read that does not queue behind a waiting writer when others already read: an API
    /// read is short, and waited behind the applier, which waited behind a controller's
    /// round (milliseconds) under a read lock. For short reads only: a stream of long ones
    /// would keep the applier out.
    pub(crate) fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state
            .try_read_recursive()
            .unwrap_or_else(|| waiting(|| self.state.read_recursive()))
    }

    /// A read that lets a waiting writer go first: for long ones (a controller's round).
    pub(crate) fn read_queued(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state
            .try_read()
            .unwrap_or_else(|| waiting(|| self.state.read()))
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
        self.state.write()
    }
}

/// How many readers at once may wait for the state's lock in [`waiting`]'s way; the others
/// wait in place. Each one hands its worker's tasks to another thread, and the next reader
/// there may do the same: without a bound, the readers arriving during one long apply could
/// start a thread each.
const HANDED_OFF: usize = 4;

/// Readers waiting in [`waiting`]'s way now.
static HANDING_OFF: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `wait` (a wait for the state's lock, which the applier holds for a whole entry) so
/// that it does not hold up the async tasks of the thread it runs on: on a worker of a
/// multi-threaded runtime, the worker's other tasks move to another thread meanwhile (tokio's
/// `block_in_place`), for up to [`HANDED_OFF`] readers at once. An API server has two
/// workers, and two requests waiting for one apply held up every other request. Elsewhere (a
/// current-thread runtime, a plain thread, past the bound) it just waits. The state is only
/// read from async tasks, blocking-pool threads and plain threads; a read inside a
/// current-thread runtime's `block_on` with a multi-threaded runtime's handle entered would
/// make `block_in_place` panic, and none is made.
fn waiting<T>(wait: impl FnOnce() -> T) -> T {
    use std::sync::atomic::Ordering;
    let multi_threaded = matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread)
    );
    if !multi_threaded || HANDING_OFF.fetch_add(1, Ordering::AcqRel) >= HANDED_OFF {
        if multi_threaded {
            HANDING_OFF.fetch_sub(1, Ordering::AcqRel);
        }
        return wait();
    }
    // Counted down however `wait` ends.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            HANDING_OFF.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
    let _done = Done;
    tokio::task::block_in_place(wait)
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    pub(crate) objects: Vec<Object>,
}

/// The state machine: [`State`] in memory; on disk, the current snapshot (the log after it is
/// applied again on start).
pub struct StateMachine {
    db: Arc<Database>,
    /// The applied index of the snapshot on disk, shared with the log ([`record_purge`]).
    on_disk: Arc<AtomicU64>,
    snapshots: SnapshotFiles,
    shared: Arc<Shared>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BerthNode>,
    snapshot_seq: u64,
}

/// The bytes of the snapshot `meta` names: its file, or for a database from before snapshot
/// files (and the simulation's), the `snapshot` table. Blocking.
fn snapshot_bytes(
    db: &Database,
    snapshots: &SnapshotFiles,
    meta: &SnapshotMeta<NodeId, BerthNode>,
) -> Result<Option<Vec<u8>>, SError> {
    if let Some(data) = snapshots.read(&meta.snapshot_id)? {
        return Ok(Some(data));
    }
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(read_err)?;
    let data = table.get(SNAPSHOT_DATA).map_err(read_err)?;
    Ok(data.map(|d| d.value().to_vec()))
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// Refuses the bytes of snapshot `id` when they are not what was written (its CRC-32, when
/// the database recorded one: snapshots from before did not), saying what to do.
fn check_snapshot(db: &Database, id: &str, data: &[u8]) -> Result<(), SError> {
    let Some((written_id, written)) = get_meta::<(String, u32)>(db, SNAPSHOT_CRC)? else {
        return Ok(());
    };
    let found = crc32(data);
    if written_id != id || found == written {
        return Ok(());
    }
    Err(read_err(std::io::Error::other(format!(
        "the snapshot {id} beside the database is damaged (CRC-32 {found:08x} of {} bytes, \
         {written:08x} written); this server can neither start from it nor send it to \
         another. Remove it from the cluster \
         (`berth cluster remove ID` on another server), move its data dir aside, and start it \
         again with an empty data dir, --join and a new server join token: it takes a fresh \
         copy of the state from the others",
        data.len()
    ))))
}

/// Empties what databases from before kept of the state beside its snapshot (every object, the
/// applied index and membership they were written at): a start loads the snapshot, and the
/// log after it holds the rest. Not fsynced on its own; a crash before the next durable commit
/// leaves them to the next start.
fn forget_objects(db: &Database) -> Result<(), SError> {
    let txn = db.begin_read().map_err(read_err)?;
    let held = !txn
        .open_table(OBJECTS)
        .map_err(read_err)?
        .is_empty()
        .map_err(read_err)?
        || txn
            .open_table(META)
            .map_err(read_err)?
            .get(APPLIED)
            .map_err(read_err)?
            .is_some();
    drop(txn);
    if !held {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(Durability::None).map_err(write_err)?;
    {
        let mut objects = txn.open_table(OBJECTS).map_err(write_err)?;
        objects.retain(|_, _| false).map_err(write_err)?;
        let mut meta = txn.open_table(META).map_err(write_err)?;
        meta.remove(APPLIED).map_err(write_err)?;
        meta.remove(MEMBERSHIP).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)
}

impl StateMachine {
    /// Loads the state machine from disk: the current snapshot's state, applied up to its
    /// last log id (openraft applies the committed entries after it again).
    pub(crate) fn load(
        db: Arc<Database>,
        on_disk: Arc<AtomicU64>,
        snapshots: SnapshotFiles,
        committed: Arc<AtomicU64>,
        stored: Arc<Stored>,
        facts: Arc<crate::lease::Facts>,
    ) -> Result<(Self, Arc<Shared>), SError> {
        let current: Option<SnapshotMeta<NodeId, BerthNode>> = get_meta(&db, SNAPSHOT_META)?;
        snapshots.keep_only(current.as_ref().map(|m| m.snapshot_id.as_str()));
        let data = match &current {
            Some(meta) => snapshot_bytes(&db, &snapshots, meta)?,
            None => None,
        };
        let (objects, last_applied, membership) = match (current, data) {
            (Some(meta), Some(data)) => {
                check_snapshot(&db, &meta.snapshot_id, &data)?;
                stored.object_bytes.store(len(&data), Ordering::Relaxed);
                let parsed: SnapshotData = decode_compressed(&data)?;
                (parsed.objects, meta.last_log_id, meta.last_membership)
            }
            (Some(meta), None) => {
                return Err(read_err(std::io::Error::other(format!(
                    "the snapshot {} the database names is missing",
                    meta.snapshot_id
                ))))
            }
            (None, _) => (Vec::new(), None, StoredMembership::default()),
        };
        forget_objects(&db)?;
        facts.applied_membership(membership.membership());
        on_disk.store(last_applied.map_or(0, |l| l.index), Ordering::Release);
        let (applied, _) = watch::channel(last_applied.map_or(0, |l| l.index));
        let state = State::from_objects(objects);
        let (readable, _) = watch::channel(Readable {
            index: last_applied.map_or(0, |l| l.index),
            credentials: Arc::new(state.credentials()),
            tasks: None,
        });
        let shared = Arc::new(Shared {
            state: parking_lot::RwLock::new(state),
            applied,
            readable,
            task_view_asked: AtomicU64::new(0),
            epoch: Instant::now(),
            committed,
            changes: std::sync::Mutex::new(crate::changes::ChangeLog::new(
                last_applied.map_or(0, |l| l.index),
            )),
            node_changes: crate::node_watch::NodeWatchers::default(),
            listing: std::sync::Mutex::default(),
            stored,
            facts,
        });
        let sm = Self {
            db,
            on_disk,
            snapshots,
            shared: shared.clone(),
            last_applied,
            membership,
            snapshot_seq: 0,
        };
        Ok((sm, shared))
    }
}

impl StateMachine {
    /// Applies `entries` to the in-memory state under its write lock, then (the lock turned
    /// into a read lock) records the changes for watchers and wakes the nodes concerned;
    /// answers the results. Nothing is written: the entries are durable in the log, and the
    /// next snapshot holds what they changed.
    fn apply_in_memory(
        &mut self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Vec<CommandResult> {
        let mut results = Vec::new();
        let mut changed = Vec::new();
        let shared = self.shared.clone();
        let mut replaced = Vec::new();
        let mut state = shared.write();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(CommandResult::Done),
                EntryPayload::Membership(m) => {
                    self.shared.facts.applied_membership(&m);
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    results.push(CommandResult::Done);
                }
                EntryPayload::Normal(command) => {
                    let (result, keys) = state.apply(command);
                    changed.extend(keys);
                    results.push(result);
                }
            }
            // Readable at this entry before any reader can see it (the write lock still
            // held): a reader never sees a state ahead of `readable`, which a read index may
            // be (`lease::Facts::read_index`). Then readers waiting go first, between two
            // entries (each one applied whole): a batch of entries of a thousand tasks each
            // would keep them out for its sum.
            replaced.push(self.shared.make_readable(entry.log_id.index, &state));
            parking_lot::RwLockWriteGuard::bump(&mut state);
        }
        changed.sort();
        changed.dedup();
        // Readers may come in from here on: the state is as it stays.
        let state = parking_lot::RwLockWriteGuard::downgrade(state);
        if let Some(applied) = self.last_applied {
            self.shared
                .changes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(applied.index, &state, &changed);
        }
        self.shared.notify_nodes(&state, &changed);
        // Bumped with the state still locked for reading: a reader that sees index N sees the
        // state after N (one that came in since the downgrade may see the state ahead of
        // the index, which every reader allows for).
        if let Some(applied) = self.last_applied {
            self.shared.applied.send_replace(applied.index);
        }
        drop(state);
        drop(replaced);
        results
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let Some(meta) = get_meta::<SnapshotMeta<NodeId, BerthNode>>(&self.db, SNAPSHOT_META)?
        else {
            return Ok(None);
        };
        let Some(data) = snapshot_bytes(&self.db, &self.snapshots, &meta)? else {
            return Ok(None);
        };
        // DEFLATE has no checksum of its own: damaged bytes may still decode, into a state
        // that was never applied, on the member that installs them.
        check_snapshot(&self.db, &meta.snapshot_id, &data)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }

    /// Writes snapshot `meta` with its `data` and names it the current one (answers whether
    /// it did), counting its bytes and its applied index as the state on disk. An
    /// `installed` one (from the leader) also records the purge of the log up to it. Blocking.
    fn save_snapshot(
        db: &Database,
        snapshots: &SnapshotFiles,
        on_disk: &AtomicU64,
        stored: &Stored,
        meta: &SnapshotMeta<NodeId, BerthNode>,
        data: &[u8],
        installed: bool,
    ) -> Result<bool, SError> {
        snapshots.write(&meta.snapshot_id, data)?;
        let crc = encode(&(meta.snapshot_id.as_str(), crc32(data)))?;
        let txn = begin_durable(db)?;
        let replaced: Option<SnapshotMeta<NodeId, BerthNode>>;
        {
            let mut meta_table = txn.open_table(META).map_err(write_err)?;
            replaced = match meta_table.get(SNAPSHOT_META).map_err(read_err)? {
                Some(v) => decode(v.value()).ok(),
                None => None,
            };
            // A snapshot built while a newer one was installed (the build runs beside the
            // state machine) must not replace it: the log before the newer one is gone.
            let newer = replaced
                .as_ref()
                .is_some_and(|r: &SnapshotMeta<NodeId, BerthNode>| {
                    r.last_log_id > meta.last_log_id
                });
            if !installed && newer {
                drop(meta_table);
                txn.abort().map_err(write_err)?;
                snapshots.remove(&meta.snapshot_id);
                return Ok(false);
            }
            meta_table
                .insert(SNAPSHOT_META, encode(meta)?.as_slice())
                .map_err(write_err)?;
            meta_table
                .insert(SNAPSHOT_CRC, crc.as_slice())
                .map_err(write_err)?;
            snapshots.record(&txn, data)?;
            if installed {
                // openraft purges the log up to an installed snapshot, in a purge that came
                // before this transaction and recorded nothing ([`record_purge`]): recorded
                // here, with the snapshot that makes it safe. The log's entries up to it
                // (and the gap up to it, when the log was behind) read as gone; the next
                // purge deletes them.
                meta_table
                    .insert(PURGED, encode(&meta.last_log_id)?.as_slice())
                    .map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)?;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        if installed {
            on_disk.store(index, Ordering::Release);
        } else {
            on_disk.fetch_max(index, Ordering::AcqRel);
        }
        stored.object_bytes.store(len(data), Ordering::Relaxed);
        if let Some(old) = replaced.filter(|old| old.snapshot_id != meta.snapshot_id) {
            snapshots.remove(&old.snapshot_id);
        }
        Ok(true)
    }
}

/// Builds snapshots from a copy of the state's objects taken when the builder was made
/// ([`State::objects_copy`]: persistent maps, so taking it under the state's lock costs
/// about nothing, and appliers and readers never wait for the build). Neither a deep copy
/// (which held up applying and linearizable reads for as long as it took) nor a redb read
/// transaction (while one lives, redb cannot reuse the pages later commits free: the soak's
/// database file doubled under the churn of a build).
pub struct SnapshotBuilder {
    /// Taken by the build (openraft builds once per builder).
    objects: Option<berth_state::ObjectsCopy>,
    meta: SnapshotMeta<NodeId, BerthNode>,
    db: Arc<Database>,
    on_disk: Arc<AtomicU64>,
    stored: Arc<Stored>,
    snapshots: SnapshotFiles,
}

/// A snapshot's bytes: the JSON of [`SnapshotData`] holding `objects`, compressed as
/// [`encode_compressed`] does. Blocking.
fn snapshot_of(objects: &berth_state::ObjectsCopy) -> Result<Vec<u8>, SError> {
    let encoder = flate2::write::DeflateEncoder::new(vec![DEFLATED], flate2::Compression::fast());
    // serde_json writes a few bytes at a time, and each write into the encoder is a call into
    // the compressor: it gets 64 KiB at a time instead.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, encoder);
    out.write_all(b"{\"objects\":[").map_err(write_err)?;
    for (i, object) in objects.object_refs().enumerate() {
        if i > 0 {
            out.write_all(b",").map_err(write_err)?;
        }
        serde_json::to_writer(&mut out, &object).map_err(write_err)?;
    }
    out.write_all(b"]}").map_err(write_err)?;
    let encoder = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    encoder.finish().map_err(write_err)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Encodes the copy and writes it, off the async workers.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let (db, meta) = (self.db.clone(), self.meta.clone());
        let (snapshots, on_disk) = (self.snapshots.clone(), self.on_disk.clone());
        let stored = self.stored.clone();
        let objects = self.objects.take();
        let data = blocking(move || {
            let objects =
                objects.ok_or_else(|| read_err(std::io::Error::other("a snapshot built twice")))?;
            let started = Instant::now();
            let data = snapshot_of(&objects)?;
            drop(objects);
            let encoded = started.elapsed();
            StateMachine::save_snapshot(&db, &snapshots, &on_disk, &stored, &meta, &data, false)?;
            tracing::info!(
                id = %meta.snapshot_id,
                bytes = data.len(),
                encode_ms = encoded.as_millis() as u64,
                write_ms = (started.elapsed() - encoded).as_millis() as u64,
                "snapshot built"
            );
            Ok(data)
        })
        .await?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BerthNode>), SError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        Ok(self.apply_in_memory(entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let objects = Some(self.shared.read().objects_copy());
        let last = self.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            objects,
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            db: self.db.clone(),
            on_disk: self.on_disk.clone(),
            stored: self.shared.stored.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BerthNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let data = snapshot.into_inner();
        let (db, snapshot_meta) = (self.db.clone(), meta.clone());
        let (snapshots, stored) = (self.snapshots.clone(), self.shared.stored.clone());
        let on_disk = self.on_disk.clone();
        let state = blocking(move || {
            let started = Instant::now();
            let parsed: SnapshotData = decode_compressed(&data)?;
            let state = State::from_objects(parsed.objects);
            Self::save_snapshot(
                &db,
                &snapshots,
                &on_disk,
                &stored,
                &snapshot_meta,
                &data,
                true,
            )?;
            tracing::info!(
                id = %snapshot_meta.snapshot_id,
                bytes = data.len(),
                ms = started.elapsed().as_millis() as u64,
                "installed a snapshot from the leader"
            );
            Ok(state)
        })
        .await?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // The voters before the index that makes them readable, as an applied entry's.
        self.shared
            .facts
            .applied_membership(self.membership.membership());
        let replaced = {
            let mut current = self.shared.write();
            *current = state;
            // openraft installs no snapshot without a last log id: one would keep the index.
            let applied = match meta.last_log_id {
                Some(applied) => applied.index,
                None => self.shared.readable.borrow().index,
            };
            self.shared.make_readable(applied, &current)
        };
        drop(replaced);
        *self
            .shared
            .listing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        // Watchers from before the snapshot must list everything again.
        self.shared
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reset(meta.last_log_id.map_or(0, |l| l.index));
        self.shared.notify_all_nodes();
        if let Some(applied) = self.last_applied {
            self.shared.applied.send_replace(applied.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        self.current_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Task {
        id: String,
        family: String,
        cpu: u32,
    }

    fn batch() -> Vec<Task> {
        (0..1000)
            .map(|i| Task {
                id: format!("task-{i:06}"),
                family: "web".into(),
                cpu: 256,
            })
            .collect()
    }

    #[test]
    fn compressed_values_round_trip_and_are_smaller_than_their_json() {
        let stored = encode_compressed(&batch()).expect("encode").0;
        let json = encode(&batch()).expect("encode");
        assert_eq!(stored[0], DEFLATED);
        assert!(
            stored.len() * 4 < json.len(),
            "{} bytes stored for {} of JSON",
            stored.len(),
            json.len()
        );
        assert_eq!(
            decode_compressed::<Vec<Task>>(&stored).expect("decode"),
            batch()
        );
    }

    #[test]
    fn values_stored_as_plain_json_before_compression_still_read() {
        let json = encode(&batch()).expect("encode");
        assert_eq!(
            decode_compressed::<Vec<Task>>(&json).expect("decode"),
            batch()
        );
    }

    /// An empty database in memory, its tables created.
    fn memory_database() -> Arc<Database> {
        let db = Arc::new(
            redb::Builder::new()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .expect("database"),
        );
        init_tables(&db).expect("tables");
        db
    }

    /// The state machine as a start loads it from `db` (its snapshot in the database),
    /// counting the state on disk into `on_disk` and `stored`.
    fn load(
        db: &Arc<Database>,
        on_disk: Arc<AtomicU64>,
        stored: Arc<Stored>,
    ) -> Result<(StateMachine, Arc<Shared>), SError> {
        StateMachine::load(
            db.clone(),
            on_disk,
            SnapshotFiles::in_database(),
            Arc::default(),
            stored,
            Arc::default(),
        )
    }

    #[test]
    fn a_snapshot_holds_every_object_as_of_its_copy_and_is_the_state_a_start_loads() {
        let db = memory_database();
        let mut state = State::default();
        for n in 0..3 {
            let node = berth_model::Node::new(format!("n{n}"), "127.0.0.1:1", 1024, 1024);
            state.apply(berth_state::Command::RegisterNode { node, at: n });
        }
        state.apply(berth_state::Command::CreateApiToken {
            record: berth_model::ApiTokenRecord::new(
                "t1",
                "0".repeat(64),
                "",
                berth_model::AccessRole::Admin,
                1,
                None,
            ),
            at: 1,
        });
        let copy = state.objects_copy();
        // A change after the copy is not in its snapshot.
        let before = state.clone();
        let node = berth_model::Node::new("late", "127.0.0.1:1", 1024, 1024);
        state.apply(berth_state::Command::RegisterNode { node, at: 9 });
        let data = snapshot_of(&copy).expect("snapshot");
        assert_eq!(data[0], DEFLATED);
        let read: SnapshotData = decode_compressed(&data).expect("decode");
        assert_eq!(read.objects.len(), 4);
        assert_eq!(State::from_objects(read.objects), before);

        // Saved, it is what a start loads, at its applied index and membership, counted by
        // its size.
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-7-1".into(),
        };
        let (on_disk, stored) = (AtomicU64::new(0), Stored::default());
        let files = SnapshotFiles::in_database();
        let saved =
            StateMachine::save_snapshot(&db, &files, &on_disk, &stored, &meta, &data, false);
        assert!(saved.expect("save"));
        assert_eq!(on_disk.load(Ordering::Relaxed), 7);
        assert_eq!(stored.object_bytes.load(Ordering::Relaxed), len(&data));
        let (counted, on_disk) = (Arc::new(Stored::of(&db).expect("count")), Arc::default());
        let (sm, shared) = load(&db, Arc::clone(&on_disk), counted.clone())
            .map_err(|e| e.to_string())
            .expect("load");
        assert_eq!(*shared.read(), before);
        // Readable at once, with what it publishes.
        let readable = shared.readable.borrow().clone();
        assert_eq!(readable.index, 7);
        assert!(readable.credentials.api_token("t1").is_some());
        assert_eq!(sm.last_applied, Some(log_id(7)));
        assert_eq!(on_disk.load(Ordering::Relaxed), 7);
        assert_eq!(counted.object_bytes.load(Ordering::Relaxed), len(&data));
        // An older one built later does not replace it.
        let older = SnapshotMeta {
            last_log_id: Some(log_id(5)),
            snapshot_id: "1-5-2".into(),
            ..meta.clone()
        };
        let saved =
            StateMachine::save_snapshot(&db, &files, &on_disk, &counted, &older, b"x", false);
        assert!(!saved.expect("save"));
        assert_eq!(on_disk.load(Ordering::Relaxed), 7);

        // Its bytes damaged, a start refuses it and says what to do.
        let mut damaged = data.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        let txn = db.begin_write().expect("write");
        txn.open_table(SNAPSHOT)
            .expect("table")
            .insert(SNAPSHOT_DATA, damaged.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        let refused = load(&db, Arc::default(), Arc::default())
            .map(|_| ())
            .expect_err("a damaged snapshot loaded");
        let refused = format!("{:?}", refused);
        assert!(
            refused.contains("1-7-1") && refused.contains("damaged"),
            "{refused}"
        );
        assert!(refused.contains("--join"), "{refused}");
        // Nor is it sent to a member that needs it (openraft stops this member's Raft on the
        // error: it cannot start again from the file either).
        let refused = sm
            .current_snapshot()
            .map(|_| ())
            .expect_err("a damaged snapshot sent");
        assert!(refused.to_string().contains("damaged"), "{refused}");
    }

    /// A normal entry at `index` carrying `command`.
    fn entry(index: u64, command: berth_state::Command) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(command),
        }
    }

    #[test]
    fn the_tasks_are_published_with_every_entry_while_reads_of_one_task_come() {
        use berth_state::Command;
        let (mut sm, shared) = load(&memory_database(), Arc::default(), Arc::default())
            .map_err(|e| e.to_string())
            .expect("load");
        let spec = berth_model::TaskDefinitionSpec::new(
            "web",
            256,
            64,
            vec![berth_model::ContainerDefinition::new("app", "busybox")],
        );
        sm.apply_in_memory([entry(
            1,
            Command::RegisterTaskDefinition {
                namespace: "default".into(),
                spec,
                reuse_identical: false,
                at: 1,
            },
        )]);
        let def = shared
            .read()
            .task_definition("default", &"web:1".parse().expect("ref"))
            .cloned()
            .expect("registered");
        let create = |id: &str| Command::CreateTasks {
            tasks: vec![berth_model::Task::pending(id.into(), "default", &def, 2)],
            client_token: None,
            at: 2,
        };
        let published = |shared: &Shared| shared.readable.borrow().tasks.clone();
        // No read of one task yet: the tasks are not published (the credentials always are).
        sm.apply_in_memory([entry(2, create("t1"))]);
        assert!(published(&shared).is_none());
        // The first read takes them under the state's lock, at the readable index, and keeps
        // them for the reads after it.
        let first = shared.task_view();
        assert!(first.task("default", "t1").is_some());
        assert!(published(&shared).is_some_and(|p| Arc::ptr_eq(&p, &first)));
        // From then on each entry publishes them as it left them (the read as if it came
        // now, whatever the time the test took).
        shared
            .task_view_asked
            .store(u64::MAX / 2, Ordering::Relaxed);
        sm.apply_in_memory([entry(3, create("t2")), entry(4, create("t3"))]);
        let next = published(&shared).expect("published");
        assert_eq!(shared.readable.borrow().index, 4);
        assert!(next.task("default", "t3").is_some());
        assert!(
            first.task("default", "t2").is_none(),
            "a view stays as it was"
        );
        // Until the reads stop (here: as if none had come).
        shared.task_view_asked.store(0, Ordering::Relaxed);
        sm.apply_in_memory([entry(5, create("t4"))]);
        assert!(published(&shared).is_none());
        assert!(shared.task_view().task("default", "t4").is_some());
    }

    #[test]
    fn the_tasks_are_published_for_a_while_after_a_read_of_one_task() {
        let window = TASK_VIEWS_FOR.as_millis() as u64;
        assert!(!task_views_wanted(0, 5), "never asked");
        assert!(task_views_wanted(7, 7));
        assert!(task_views_wanted(7, 7 + window));
        assert!(!task_views_wanted(7, 8 + window));
    }

    #[test]
    fn a_start_forgets_the_objects_databases_from_before_kept_beside_the_snapshot() {
        let db = memory_database();
        let txn = db.begin_write().expect("write");
        {
            let mut objects = txn.open_table(OBJECTS).expect("objects");
            objects.insert("node/n0", b"{}".as_slice()).expect("insert");
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(APPLIED, b"null".as_slice()).expect("insert");
            meta.insert(MEMBERSHIP, b"{}".as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        let (sm, shared) = load(&db, Arc::default(), Arc::default())
            .map_err(|e| e.to_string())
            .expect("load");
        // No snapshot: an empty state, and the whole log to apply.
        assert_eq!(*shared.read(), State::default());
        assert_eq!(sm.last_applied, None);
        let txn = db.begin_read().expect("read");
        assert!(txn
            .open_table(OBJECTS)
            .expect("objects")
            .is_empty()
            .expect("empty"));
        let meta = txn.open_table(META).expect("meta");
        assert!(meta.get(APPLIED).expect("get").is_none());
        assert!(meta.get(MEMBERSHIP).expect("get").is_none());
    }

    /// `count` blank entries from index 1, as appends store them.
    fn log_of(count: u64) -> Arc<Database> {
        let db = memory_database();
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(LOG).expect("table");
            for index in 1..=count {
                let entry = Entry::<TypeConfig> {
                    log_id: log_id(index),
                    payload: EntryPayload::Blank,
                };
                let bytes = encode_compressed(&entry).expect("encode").0;
                table.insert(index, bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        db
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    /// Waits until `log` holds `entries`, by its count.
    async fn holds(log: &LogStore, entries: u64) {
        let started = Instant::now();
        while log.stored.log_entries.load(Ordering::Relaxed) != entries {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the log still holds {} entries, not {entries}",
                log.stored.log_entries.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_is_recorded_at_once_and_its_entries_deleted_behind_it_chunk_by_chunk() {
        let db = log_of(2_000);
        let mut log = LogStore::new(db.clone(), Arc::default(), Arc::default()).expect("log");
        assert_eq!(log.stored.log_entries.load(Ordering::Relaxed), 2_000);
        // The snapshot on disk holds everything.
        log.on_disk().fetch_max(2_000, Ordering::Release);
        log.purge(log_id(1_500)).await.expect("purge");
        // Recorded before it returns; the entries go behind it.
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1_500)));
        assert_eq!(state.last_log_id, Some(log_id(2_000)));
        holds(&log, 500).await;
        let entries = log.try_get_log_entries(1_501..).await.expect("read");
        assert_eq!(entries.len(), 500);
        assert_eq!(entries[0].log_id, log_id(1_501));
        // A range that starts in what was purged answers nothing (never a later suffix).
        assert!(log
            .try_get_log_entries(1_400..)
            .await
            .expect("read")
            .is_empty());

        // A crash after a purge was recorded but before its entries went: they are counted
        // and kept (nothing reads them), and the next purge deletes them with its own.
        put_meta(&db, PURGED, &Some(log_id(1_800)), Durability::None).expect("purged");
        drop(log);
        let mut log = LogStore::new(db, Arc::default(), Arc::default()).expect("log");
        log.on_disk().fetch_max(2_000, Ordering::Release);
        assert_eq!(log.stored.log_entries.load(Ordering::Relaxed), 500);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1_800)));
        assert_eq!(state.last_log_id, Some(log_id(2_000)));
        // Until then, a read from before the purge answers nothing, even where entries stay.
        assert!(log
            .try_get_log_entries(1_700..)
            .await
            .expect("read")
            .is_empty());
        log.purge(log_id(1_900)).await.expect("purge");
        holds(&log, 100).await;
        let entries = log.try_get_log_entries(1_901..).await.expect("read");
        assert_eq!(entries.len(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_purged_past_its_last_entry_ends_at_the_purge() {
        // A follower that installs a snapshot ahead of its log (here at 1,000, its log ending
        // at 500) purges past its last entry.
        let mut log = LogStore::new(log_of(500), Arc::default(), Arc::default()).expect("log");
        // The install's transaction named a snapshot at 1,000.
        log.on_disk().fetch_max(1_000, Ordering::Release);
        log.purge(log_id(1_000)).await.expect("purge");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1_000)));
        assert_eq!(state.last_log_id, Some(log_id(1_000)));
        holds(&log, 0).await;
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1_000)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_past_the_snapshot_on_disk_records_nothing() {
        // openraft purges beside a snapshot install before the install's transaction commits:
        // recorded, a crash could leave the snapshot on disk behind the log's first entry.
        let mut log = LogStore::new(log_of(500), Arc::default(), Arc::default()).expect("log");
        log.on_disk().fetch_max(200, Ordering::Release);
        log.purge(log_id(400)).await.expect("purge");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, None);
        holds(&log, 500).await;
        assert_eq!(
            log.try_get_log_entries(201..=400)
                .await
                .expect("read")
                .len(),
            200
        );
        // Once the disk holds a snapshot at 450, the next purge takes them all.
        log.on_disk().fetch_max(450, Ordering::Release);
        log.purge(log_id(450)).await.expect("purge");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(450)));
        holds(&log, 50).await;
    }

    #[test]
    fn a_damaged_compressed_value_is_an_error_not_a_panic() {
        let mut stored = encode_compressed(&batch()).expect("encode").0;
        stored.truncate(stored.len() / 2);
        assert!(decode_compressed::<Vec<Task>>(&stored).is_err());
    }
}
