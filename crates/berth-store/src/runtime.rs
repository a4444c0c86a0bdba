//! Raft's own threads.
//!
//! A server's main runtime serves the API and every agent's stream: with thousands of agents
//! on two cores its run queue is long, and a heartbeat or an AppendEntries answer that waits
//! in it for a few hundred milliseconds costs the leader its followers (they stand once they
//! have heard nothing for the lease). So a real member runs Raft's core, its replication to
//! each peer, the state machine, the log's and the state's disk writes and the election
//! watcher on a runtime of its own, whose threads ask the kernel for a higher priority than
//! the rest of the process. Calls from the API reach it over Raft's channels as before; a
//! follower's incoming AppendEntries is still decoded by the API's server on the main runtime
//! and handed to Raft's core over its channel.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::{Handle, Runtime};

/// How much higher than the process's own threads Raft's threads ask to run (nice values,
/// lower runs first): enough that the kernel runs them before the API and the agents' streams
/// when the CPU is short. Granted only to a process with `CAP_SYS_NICE` (root outside a
/// container; a container or a systemd unit has to grant it) or a raised `RLIMIT_NICE`.
const RAISE: i32 = 5;

/// How many threads run Raft's tasks (the blocking pool for disk writes comes on top).
const WORKERS: usize = 2;

/// How long [`RaftRuntime::stop`] waits for work still running on the blocking pool (a
/// snapshot being built, a write being flushed) before it leaves it behind.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// The runtime: stopped by [`RaftRuntime::stop`] (waiting for its disk work), or, if a store is
/// dropped without a shutdown, when the last handle goes (without waiting).
pub(crate) struct RaftRuntime {
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
}

impl RaftRuntime {
    pub(crate) async fn start() -> std::io::Result<Self> {
        // Linux keeps a nice value per thread and a new thread inherits its creator's: the
        // target is fixed here, from the opening thread's, so that the blocking pool's threads
        // (started by Raft's workers) ask for the same value, not for a step more each.
        let here = rustix::process::getpriority_process(None).unwrap_or(0);
        let target = (here - RAISE).max(-20);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("berth-raft")
            .on_thread_start(move || {
                let _ = rustix::process::setpriority_process(None, target);
            })
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        // Held as a `RaftRuntime` before the await below: dropped there (the open cancelled),
        // it goes without a wait rather than panicking in an async context.
        let raft = Self {
            runtime: Mutex::new(Some(runtime)),
            handle,
        };
        // Say once whether the kernel granted it: without it Raft still has threads of its
        // own, at the process's priority.
        let (tx, rx) = tokio::sync::oneshot::channel();
        raft.handle.spawn(async move {
            let _ = tx.send(rustix::process::getpriority_process(None));
        });
        match rx.await {
            Ok(Ok(nice)) if nice < here => {
                tracing::debug!(nice, "Raft's threads run at a higher priority")
            }
            _ => tracing::info!(
                "Raft's threads run at the process's priority: raising it needs CAP_SYS_NICE"
            ),
        }
        Ok(raft)
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the runtime and waits (up to [`STOP_WAIT`], saying so if that runs out) for the
    /// work on its blocking pool to end, so that none of Raft's tasks holds the database once
    /// the store has shut down. The wait happens on a thread of its own; call it from outside
    /// this runtime (from one of its tasks it would wait for itself and never answer).
    pub(crate) async fn stop(&self) {
        let Some(runtime) = self.runtime.lock().take() else {
            return;
        };
        // The runtime goes to the waiting thread once that thread exists, so that it stays
        // here to be let go without a wait if it cannot be started.
        let (give, take) = std::sync::mpsc::channel::<Runtime>();
        let (done, stopped) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("berth-raft-stop".into())
            .spawn(move || {
                if let Ok(runtime) = take.recv() {
                    let started = std::time::Instant::now();
                    runtime.shutdown_timeout(STOP_WAIT);
                    if started.elapsed() >= STOP_WAIT {
                        tracing::warn!(
                            "Raft's disk work (a snapshot being built or installed) still ran {}s after the stop: left to end on its own; the database stays open until it does",
                            STOP_WAIT.as_secs()
                        );
                    }
                }
                let _ = done.send(());
            });
        if let Err(e) = spawned {
            tracing::warn!("stopping Raft's threads without waiting for them: {e}");
            runtime.shutdown_background();
            return;
        }
        match give.send(runtime) {
            Ok(()) => {
                let _ = stopped.await;
            }
            Err(unsent) => unsent.0.shutdown_background(),
        }
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.get_mut().take() {
            runtime.shutdown_background();
        }
    }
}
