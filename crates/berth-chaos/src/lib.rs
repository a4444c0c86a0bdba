//! berth's Jepsen-style suite: what clients saw under faults, and whether it could have
//! happened.
//!
//! - [`check`]: a linearizability checker for recorded histories (the search of Wing and Gong
//!   with Lowe's memoisation, as Porcupine runs it, one partition at a time).
//! - [`model`]: the sequential specifications berth's API must behave as: a register (a
//!   service's desired count), a family's revisions, a set of tasks run with client tokens.
//! - [`history`]: one run's operations for every model, saved with the run and checked.
//!
//! Pure: no processes, no clocks, no IO. The harness that runs real servers and injects the
//! faults records [`check::Operation`]s and hands them here.

pub mod check;
pub mod history;
pub mod model;
