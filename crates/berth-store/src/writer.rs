//! The log's appends, written in order by one task while Raft goes on.
//!
//! openraft 0.9's core awaits `append` before it does anything else: before it sends the new
//! entries to the followers, answers a vote or sends a heartbeat. Written in place, every
//! append held the core for a redb transaction and its two fsyncs, and longer whenever redb's
//! one write transaction was taken by something else (the state machine's deferred writes, a
//! purge, a snapshot's record). Now `append` hands the encoded entries to the [`Writer`]'s task
//! and returns; the task writes everything queued in one transaction, then calls each
//! append's callback, which is when openraft counts the entries as on this member's disk: a
//! leader commits an entry once a majority has it on disk, counting its own disk only once
//! the callback came, so the leader's write and the followers' run side by side and no
//! acknowledged write is on fewer disks than before. Until they are written, the entries are
//! read from the tail ([`crate::tail::Tail`] lets no entry go before it is on disk).
//!
//! A write that fails stops the writer for good: its callbacks and every later append answer
//! the error, which stops Raft (and the server), as a failed append always did.

// openraft's `StorageError` is the error type throughout the storage code.
#![allow(clippy::result_large_err)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use openraft::storage::LogFlushed;
use redb::Database;
use tokio::sync::{mpsc, oneshot};

use crate::storage::{blocking, write_err, write_log, SError, Stored};
use crate::tail::Tail;
use crate::TypeConfig;

enum Op {
    /// Entries (index, stored bytes) to write, and whom to tell once they are on disk.
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// Answers once everything queued before it is written (or failed).
    Barrier(oneshot::Sender<()>),
}

/// The handle: appends go in order to its task.
pub(crate) struct Writer {
    /// `None` once stopped.
    ops: Mutex<Option<mpsc::UnboundedSender<Op>>>,
    /// The task, until stopped.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Why a write failed, once one did.
    failed: Arc<OnceLock<String>>,
    /// Set by [`Writer::stop`]: what is still queued is dropped.
    stopping: Arc<AtomicBool>,
}

impl Writer {
    /// A writer of `db`'s log, its task spawned on the current runtime.
    pub(crate) fn new(db: Arc<Database>, stored: Arc<Stored>, tail: Arc<Tail>) -> Self {
        let failed = Arc::new(OnceLock::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let (ops, rx) = mpsc::unbounded_channel();
        let task = Task {
            db,
            stored,
            tail,
            failed: failed.clone(),
            stopping: stopping.clone(),
        };
        let task = tokio::spawn(task.run(rx));
        Self {
            ops: Mutex::new(Some(ops)),
            task: Mutex::new(Some(task)),
            failed,
            stopping,
        }
    }

    fn failure(&self) -> Result<(), SError> {
        match self.failed.get() {
            Some(why) => Err(failed(why)),
            None => Ok(()),
        }
    }

    fn sender(&self) -> Option<mpsc::UnboundedSender<Op>> {
        lock(&self.ops).clone()
    }

    /// Queues `entries` (already in the tail) to be written; `callback` hears when they are on
    /// disk. Answers an earlier failure, or a stopped writer, as an error.
    pub(crate) fn append(
        &self,
        entries: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError> {
        self.failure()?;
        let ops = self.sender().ok_or_else(stopped)?;
        ops.send(Op::Append(entries, callback))
            .map_err(|_| stopped())
    }

    /// Waits until everything queued so far is written (or failed): before the log is
    /// truncated, so that no queued entry is written after the truncation.
    pub(crate) async fn barrier(&self) -> Result<(), SError> {
        if let Some(ops) = self.sender() {
            let (done, wait) = oneshot::channel();
            if ops.send(Op::Barrier(done)).is_ok() {
                let _ = wait.await;
            }
        }
        self.failure()
    }

    /// Stops once the write under way (if any) ended, dropping what is still queued, as a
    /// crash would (openraft never counted those entries as on this member's disk): nothing
    /// reaches the database after this returns, and the task no longer holds it (the
    /// simulation opens it again for the member's restart).
    pub(crate) async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        lock(&self.ops).take();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn failed(why: &str) -> SError {
    write_err(std::io::Error::other(format!(
        "an earlier write of the log failed: {why}"
    )))
}

fn stopped() -> SError {
    write_err(std::io::Error::other("the log's writer has stopped"))
}

struct Task {
    db: Arc<Database>,
    stored: Arc<Stored>,
    tail: Arc<Tail>,
    failed: Arc<OnceLock<String>>,
    stopping: Arc<AtomicBool>,
}

type Append = (Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>);

impl Task {
    /// Takes what is queued, writes its appends in one transaction, answers barriers after
    /// the appends queued before them; until every sender is gone.
    async fn run(self, mut ops: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = ops.recv().await {
            let mut appends = Vec::new();
            let mut next = Some(op);
            while let Some(op) = next.take().or_else(|| ops.try_recv().ok()) {
                match op {
                    Op::Append(entries, callback) => appends.push((entries, callback)),
                    Op::Barrier(done) => {
                        self.write(std::mem::take(&mut appends)).await;
                        let _ = done.send(());
                    }
                }
            }
            self.write(appends).await;
        }
    }

    /// Writes `appends` in one durable transaction, then tells each one's callback, in order.
    async fn write(&self, appends: Vec<Append>) {
        if appends.is_empty() || self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut entries = Vec::new();
        let mut callbacks = Vec::with_capacity(appends.len());
        for (batch, callback) in appends {
            entries.extend(batch);
            callbacks.push(callback);
        }
        let last = entries.last().map(|(index, _)| *index);
        let result = match self.failed.get() {
            Some(why) => Err(failed(why)),
            None => {
                let (db, stored) = (self.db.clone(), self.stored.clone());
                blocking(move || write_log(&db, &stored, &entries)).await
            }
        };
        match result {
            Ok(()) => {
                if let Some(last) = last {
                    self.tail.flushed(last);
                }
                for callback in callbacks {
                    callback.log_io_completed(Ok(()));
                }
            }
            Err(e) => {
                let _ = self.failed.set(e.to_string());
                tracing::error!("writing to the Raft log failed: {e}");
                for callback in callbacks {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    }
}
