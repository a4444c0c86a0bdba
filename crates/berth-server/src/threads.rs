//! The API's own threads.
//!
//! One listener takes every connection, and a server's main runtime serves the streams of
//! every agent that reports to it: with a hundred agents reporting a burst of starts, or
//! thousands reconnecting after a leader change, its workers are busy with their work, and a
//! socket's readiness is told by the I/O driver of the runtime it is registered with. A
//! user's one-task read waited 10-44 ms before its request reached the API's service
//! (BENCHMARKS.md, round two, session 28). So the connections whose client certificate
//! names an agent are served on the main runtime, beside the controllers, and every other one
//! (the CLI, API clients, the console, `/metrics`, other servers' Raft calls, joins) on a
//! runtime of its own, onto whose I/O driver each such socket moves once its handshake says
//! what it is (`berth_tls::net::incoming_split`). What this does not cover: the accept loop
//! and every handshake still run on the main runtime (a new connection waits there first),
//! and the ECS endpoint (`--ecs-listen`) has its own listener there. The reads that still
//! wait are the ones that arrive while an entry is applied: they wait for the state's lock.

use tokio::runtime::{Handle, Runtime};

use berth_tls::{Identity, Role};

/// How many threads serve the API (a handler that encodes a thousand tasks must not hold up
/// the next call alone).
const WORKERS: usize = 2;

/// The runtime; its tasks are dropped, without a wait, when it is.
pub(crate) struct ApiThreads {
    runtime: Option<Runtime>,
}

impl ApiThreads {
    pub(crate) fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("berth-api")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime is there until dropped")
            .handle()
    }
}

impl Drop for ApiThreads {
    fn drop(&mut self) {
        // A runtime dropped the usual way waits for its blocking work, which an async
        // context (where the server stops) must not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether a connection's client certificate names a node's agent: those connections are
/// served on the main runtime, every other one on the API's threads.
pub(crate) fn from_an_agent(identity: Option<&Identity>) -> bool {
    identity.is_some_and(|identity| identity.role == Role::Agent)
}
