//! Every decision berth's Raft leader makes, as pure plans over the replicated state and a
//! clock: scheduling rounds and dry-run previews, the service reconciler's round, autoscaling
//! plans and the room left in the cluster, node-loss detection, and each agent's desired set.
//!
//! A plan reads a [`berth_state::State`] and returns the commands to propose; the server's one
//! leader loop runs each plan with its read policy and proposes the result. The same plans run
//! in `tests/control_sim.rs`, a deterministic simulation of the leader with many agents (each
//! running the real agent engine's plan).
//!
//! Pure: no tokio, tonic, openraft or IO (a test reads this crate's `Cargo.toml` to keep it
//! so). Clocks, IDs and samples are passed in.

pub mod autoscaling;
pub mod ca;
pub mod desired;
pub mod endpoints;
pub mod metering;
pub mod nodes;
pub mod preview;
pub mod retention;
pub mod scheduling;
pub mod services;

pub use desired::{desired_task, desired_tasks};
pub use endpoints::endpoints;
#[cfg(test)]
mod tests;
