//! Watching one node's desired task set: which of its tasks changed since the watcher last
//! looked, so an agent's stream rebuilds the assignments of those tasks only, not of every
//! task on the node at each change (at 10 tasks a node and a few changes a task, most of
//! the leader's work in a burst of placements went to rebuilding sets that had not changed).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::watch;

/// More task IDs than this waiting for a watcher count as a change of the whole set: one so
/// far behind rebuilds it whole, at no greater cost than the IDs it would look up.
const AT_MOST: usize = 4096;

/// What changed in a node's desired set since its watcher last took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChanges {
    /// Anything may have: the node itself changed, a task whose node is no longer known left
    /// the state, a snapshot replaced the state, or too many changes waited.
    Whole,
    /// These tasks of the node changed (placed on it, updated, stopped or removed), perhaps
    /// none.
    Tasks(BTreeSet<String>),
}

#[derive(Debug, Default)]
struct Pending {
    whole: bool,
    tasks: BTreeSet<String>,
}

impl Pending {
    fn task(&mut self, id: &str) {
        if self.whole {
            return;
        }
        if self.tasks.len() >= AT_MOST {
            self.whole();
        } else if !self.tasks.contains(id) {
            self.tasks.insert(id.to_owned());
        }
    }

    fn whole(&mut self) {
        self.whole = true;
        self.tasks = BTreeSet::new();
    }
}

/// One watcher of a node: woken whenever an applied entry touches the node or one of the
/// tasks placed on it, and told which.
#[derive(Debug)]
pub struct NodeWatch {
    woken: watch::Receiver<u64>,
    pending: Arc<Mutex<Pending>>,
}

impl NodeWatch {
    /// Waits for the next change after the last one seen; an error once the store is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.woken.changed().await
    }

    /// What changed since the last call (since the watch began, for the first), leaving
    /// nothing pending. A change is recorded after the state holds it: a read of the state
    /// after this call sees every change it names.
    pub fn take(&mut self) -> NodeChanges {
        self.woken.mark_unchanged();
        let mut pending = lock(&self.pending);
        let Pending { whole, tasks } = std::mem::take(&mut *pending);
        if whole {
            NodeChanges::Whole
        } else {
            NodeChanges::Tasks(tasks)
        }
    }
}

/// Every node's watchers, kept by the state machine.
#[derive(Debug, Default)]
pub(crate) struct NodeWatchers(Mutex<HashMap<String, Watchers>>);

#[derive(Debug)]
struct Watchers {
    woken: watch::Sender<u64>,
    /// Each live watcher's pending changes; the ones of watchers gone are dropped as found.
    pending: Vec<Weak<Mutex<Pending>>>,
}

impl Watchers {
    /// Records a change for every live watcher (`task`, or the whole set) and wakes them.
    fn change(&mut self, task: Option<&str>) {
        self.pending.retain(|p| match p.upgrade() {
            Some(p) => {
                let mut p = lock(&p);
                match task {
                    Some(id) => p.task(id),
                    None => p.whole(),
                }
                true
            }
            None => false,
        });
        self.woken.send_modify(|v| *v += 1);
    }
}

impl NodeWatchers {
    pub(crate) fn watch(&self, node: &str) -> NodeWatch {
        let mut nodes = lock(&self.0);
        let watchers = nodes.entry(node.to_owned()).or_insert_with(|| Watchers {
            woken: watch::channel(0).0,
            pending: Vec::new(),
        });
        let pending = Arc::new(Mutex::new(Pending::default()));
        watchers.pending.push(Arc::downgrade(&pending));
        NodeWatch {
            woken: watchers.woken.subscribe(),
            pending,
        }
    }

    /// Records that `task` of `node` changed (the node itself when `task` is `None`).
    pub(crate) fn node(&self, node: &str, task: Option<&str>) {
        if let Some(w) = lock(&self.0).get_mut(node) {
            w.change(task);
        }
    }

    /// Records a change of every node's whole set.
    pub(crate) fn all(&self) {
        lock(&self.0).values_mut().for_each(|w| w.change(None));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(ids: &[&str]) -> NodeChanges {
        NodeChanges::Tasks(ids.iter().map(|s| (*s).to_owned()).collect())
    }

    #[tokio::test]
    async fn a_watcher_is_told_which_of_its_nodes_tasks_changed_since_it_last_looked() {
        let watchers = NodeWatchers::default();
        let mut a = watchers.watch("a");
        let mut a2 = watchers.watch("a");
        let mut b = watchers.watch("b");
        assert_eq!(a.take(), tasks(&[]));

        watchers.node("a", Some("t1"));
        watchers.node("a", Some("t2"));
        watchers.node("a", Some("t1"));
        watchers.node("b", Some("t3"));
        watchers.node("c", Some("t4"));
        a.changed().await.expect("woken");
        assert_eq!(a.take(), tasks(&["t1", "t2"]));
        assert_eq!(a.take(), tasks(&[]), "taken once");
        // Every watcher of a node has its own.
        assert_eq!(a2.take(), tasks(&["t1", "t2"]));
        assert_eq!(b.take(), tasks(&["t3"]));

        // The node itself, or everything.
        watchers.node("a", Some("t5"));
        watchers.node("a", None);
        watchers.node("a", Some("t6"));
        assert_eq!(a.take(), NodeChanges::Whole);
        watchers.all();
        assert_eq!(a.take(), NodeChanges::Whole);
        assert_eq!(b.take(), NodeChanges::Whole);
        assert_eq!(b.take(), tasks(&[]));

        // Too many waiting: the whole set.
        for i in 0..=AT_MOST {
            watchers.node("b", Some(&format!("t{i}")));
        }
        assert_eq!(b.take(), NodeChanges::Whole);

        // A watcher gone is forgotten.
        drop(a2);
        watchers.node("a", Some("t7"));
        assert_eq!(lock(&watchers.0)["a"].pending.len(), 1);
        assert_eq!(a.take(), tasks(&["t7"]));
    }

    #[tokio::test]
    async fn a_change_wakes_a_watcher_that_already_waits() {
        let watchers = Arc::new(NodeWatchers::default());
        let mut a = watchers.watch("a");
        let waiting = tokio::spawn(async move {
            a.changed().await.expect("woken");
            a.take()
        });
        tokio::task::yield_now().await;
        watchers.node("a", Some("t1"));
        assert_eq!(waiting.await.expect("joined"), tasks(&["t1"]));
    }
}
