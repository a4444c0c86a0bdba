//! Raft's own threads.
//!
//! A server's main runtime serves the API and every agent's stream: with thousands of agents
//! on two cores its run queue is long, and a heartbeat or an AppendEntries answer that waits
//! in it for a few hundred milliseconds costs the leader its followers (they stand once they
//! have heard nothing for the lease). So a real member runs Raft's core, its replication to
//! each peer, the state machine, the log's and the state's disk writes and the election
//! watcher on a runtime of its own, whose threads ask the kernel for a higher priority than
//! the rest of the process. Calls from the API reach it over Raft's channels as before.

use tokio::runtime::{Handle, Runtime};

/// The nice value Raft's threads ask for: enough that the kernel runs them before the
/// process's other threads and other processes at the default priority when the CPU is
/// short, as the `berth server` process is allowed to (root, or `CAP_SYS_NICE`).
const NICE: i32 = -5;

/// How many threads run Raft's tasks (the blocking pool for disk writes comes on top).
const WORKERS: usize = 2;

/// The runtime: shut down (without waiting for its tasks) when the last store handle goes.
pub(crate) struct RaftRuntime(Option<Runtime>);

impl RaftRuntime {
    pub(crate) async fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("berth-raft")
            .on_thread_start(raise_priority)
            .enable_all()
            .build()?;
        // Say once whether the kernel granted it: without it Raft still has threads of its
        // own, at the process's priority.
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let _ = tx.send(rustix::process::getpriority_process(None));
        });
        if let Ok(Ok(NICE)) = rx.await {
            tracing::debug!(nice = NICE, "Raft's threads run at a higher priority");
        } else {
            tracing::info!(
                "Raft's threads run at the process's priority: raising it needs root or CAP_SYS_NICE"
            );
        }
        Ok(Self(Some(runtime)))
    }

    pub(crate) fn handle(&self) -> &Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Asks for [`NICE`] for the calling thread (Linux keeps a nice value per thread).
fn raise_priority() {
    let _ = rustix::process::setpriority_process(None, NICE);
}
