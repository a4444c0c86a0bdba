//! Self-fencing: when no server has been heard from for longer than the lease, the servers will
//! soon declare this node DOWN and run its tasks elsewhere, so the agent stops them first — a
//! task never runs on two nodes at once. The stop requests say [`StopReason::Fenced`], so those
//! tasks report NodeLost and stop with a short grace.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::StopReason;
use crate::tasks::TaskTable;

/// When a server was last heard from, and how long the agent may go without.
pub(crate) struct Contact(Mutex<State>);

struct State {
    last: Instant,
    /// 80% of the servers' node TTL, once a server told it.
    fence_after: Option<Duration>,
    /// The agent has stopped its tasks for lack of contact, and not registered since.
    fenced: bool,
}

impl Contact {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(State {
            last: Instant::now(),
            fence_after: None,
            fenced: false,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A message from a server arrived.
    pub(crate) fn heard(&self) {
        self.lock().last = Instant::now();
    }

    /// A server accepted the registration, telling its node TTL (0: none told).
    pub(crate) fn registered(&self, node_ttl: Duration) {
        let mut state = self.lock();
        if !node_ttl.is_zero() {
            state.fence_after = Some(node_ttl * 4 / 5);
        }
        state.fenced = false;
    }

    /// How long to wait before looking again: 8 times per lease, at most an eighth of it late,
    /// well inside the fifth of the TTL between the lease and the servers declaring the node
    /// lost.
    fn check_interval(&self) -> Duration {
        self.lock().fence_after.map_or(Duration::from_secs(1), |l| {
            (l / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
        })
    }

    /// `Some((silence, lease))` when the lease ran out and the agent has not fenced yet; it is
    /// then marked fenced.
    fn expired(&self, has_tasks: impl FnOnce() -> bool) -> Option<(Duration, Duration)> {
        let mut state = self.lock();
        let lease = state.fence_after?;
        let silent = state.last.elapsed();
        if silent <= lease || state.fenced || !has_tasks() {
            return None;
        }
        state.fenced = true;
        Some((silent, lease))
    }
}

/// Watches `contact` forever and stops every task in `tasks` when the lease runs out.
pub(crate) async fn fence(contact: &Contact, tasks: &TaskTable) {
    loop {
        tokio::time::sleep(contact.check_interval()).await;
        let Some((silent, lease)) = contact.expired(|| !tasks.running().is_empty()) else {
            continue;
        };
        tracing::warn!(
            tasks = tasks.running().len(),
            "no server answered for {:.1}s (lease {lease:?}): stopping this node's tasks",
            silent.as_secs_f64()
        );
        tasks.stop_all(StopReason::Fenced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::LocalTask;

    #[tokio::test(start_paused = true)]
    async fn fences_once_per_registration_after_the_lease() {
        let contact = Contact::new();
        let has_tasks = || true;
        assert_eq!(contact.expired(has_tasks), None, "no lease told yet");
        contact.registered(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(contact.expired(has_tasks), None, "within the lease");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(contact.expired(|| false), None, "nothing to stop");
        assert_eq!(
            contact.expired(has_tasks),
            Some((Duration::from_secs(9), Duration::from_secs(8)))
        );
        assert_eq!(contact.expired(has_tasks), None, "fenced already");
        contact.registered(Duration::from_secs(10));
        contact.heard();
        assert_eq!(contact.expired(has_tasks), None, "heard again");
    }

    #[tokio::test(start_paused = true)]
    async fn fencing_asks_every_task_to_stop_as_fenced() {
        let contact = Contact::new();
        contact.registered(Duration::from_secs(1));
        let tasks = TaskTable::default();
        let (stop, rx) = tokio::sync::watch::channel(None);
        tasks.insert(
            "t1".into(),
            LocalTask {
                stop,
                done: Default::default(),
                containers: vec!["app".into()],
                deregistration_delay: Default::default(),
            },
        );
        tokio::select! {
            () = fence(&contact, &tasks) => unreachable!("fencing runs forever"),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        assert_eq!(*rx.borrow(), Some(StopReason::Fenced));
    }
}
