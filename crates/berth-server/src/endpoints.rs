//! The endpoints of discoverable services (those that publish ports), recomputed when the
//! state changes — at most every [`SETTLE`] — and pushed to every attached agent, whose service
//! discovery answers from them.

use std::sync::Arc;
use std::time::Duration;

use berth_model::ServiceEndpoints;
use berth_store::Store;
use tokio::sync::watch;

/// Changes that come together are taken together.
const SETTLE: Duration = Duration::from_millis(50);

/// The latest endpoints; agents' streams send each new value.
pub(crate) type Published = watch::Receiver<Arc<Vec<ServiceEndpoints>>>;

/// A receiver of the endpoints, and the loop that keeps them current (spawn it).
pub(crate) fn publisher(store: Store) -> (Published, impl std::future::Future<Output = ()>) {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let follow = async move {
        let mut changes = store.watch();
        let leader = store.leadership();
        loop {
            // Agents stream to the leader: followers compute nothing.
            if !*leader.borrow() {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let now = store.read_stale_queued(berth_control::endpoints);
            tx.send_if_modified(|current| {
                let changed = **current != now;
                if changed {
                    *current = Arc::new(now);
                }
                changed
            });
            if changes.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(SETTLE).await;
        }
    };
    (rx, follow)
}
