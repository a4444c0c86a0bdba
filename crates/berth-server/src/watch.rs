//! The `Watch` RPC: a server-side stream of object changes from this server's change feed,
//! resumable from a revision. A watcher too far behind (or new) first gets every current object.

use std::pin::Pin;

use berth_proto::v1 as pb;
use berth_state::ObjectRef;
use berth_store::changes::{Change, ObjectChange};
use berth_store::Store;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// Which objects a watcher wants.
#[derive(Debug, Clone)]
pub struct Filter {
    pub namespace: Option<String>,
    pub kinds: Vec<String>,
}

impl Filter {
    fn wants(&self, kind: &str, namespace: Option<&str>) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && match (&self.namespace, namespace) {
                (Some(want), Some(ns)) => want == ns,
                _ => true,
            }
    }
}

fn event(change: Change) -> pb::WatchEvent {
    match change.change {
        ObjectChange::Put(o) => {
            berth_proto::object_event(pb::watch_event::Type::Put, change.revision, *o)
        }
        ObjectChange::PutTask(t) => berth_proto::object_event(
            pb::watch_event::Type::Put,
            change.revision,
            berth_state::Object::Task(std::sync::Arc::unwrap_or_clone(t)),
        ),
        ObjectChange::Deleted { key, namespace } => {
            berth_proto::deleted_event(change.revision, key, namespace)
        }
    }
}

fn wanted(filter: &Filter, e: &pb::WatchEvent) -> bool {
    let ns = (!e.namespace.is_empty()).then_some(e.namespace.as_str());
    e.kind != "token" && filter.wants(&e.kind, ns)
}

/// Whether a listed object may interest the watcher (checked before it is copied; the event
/// is checked again as every event is).
fn wanted_object(filter: &Filter, object: &ObjectRef<'_>) -> bool {
    let namespace = match object {
        // The answers kept for retried writes are no watcher's business (nor in the change
        // feed).
        ObjectRef::Request(_) => return false,
        ObjectRef::Task(t) => Some(t.namespace.as_str()),
        ObjectRef::Service(s) => Some(s.namespace.as_str()),
        ObjectRef::TaskDefinition(d) => Some(d.namespace.as_str()),
        _ => None,
    };
    match (&filter.namespace, namespace) {
        (Some(want), Some(ns)) => want == ns,
        _ => true,
    }
}

/// Streams changes after `from` (0: everything first).
pub fn watch(store: Store, filter: Filter, from: u64) -> WatchStream {
    let (tx, rx) = mpsc::channel::<Result<pb::WatchEvent, Status>>(256);
    tokio::spawn(async move {
        let mut applied = store.watch();
        let mut last = from;
        let mut first = true;
        loop {
            let (changes, now) = if first && from == 0 {
                (None, 0)
            } else {
                store.changes_since(last)
            };
            first = false;
            let events: Vec<pb::WatchEvent> = match changes {
                Some(list) => {
                    if let Some(c) = list.last() {
                        last = last.max(c.revision);
                    }
                    last = last.max(now);
                    list.into_iter().map(event).collect()
                }
                None => {
                    // Too far behind: the current state, then changes from its revision on.
                    // The revision is read before the state, so no change is missed (some may
                    // come twice, which is harmless).
                    applied.borrow_and_update();
                    let (revision, objects) = store.listing();
                    last = revision;
                    let mut events: Vec<pb::WatchEvent> = objects
                        .object_refs()
                        .filter(|o| wanted_object(&filter, o))
                        .map(|o| {
                            berth_proto::object_event(
                                pb::watch_event::Type::Sync,
                                revision,
                                o.cloned(),
                            )
                        })
                        .collect();
                    events.push(berth_proto::synced_event(revision));
                    events
                }
            };
            for e in events {
                let synced = e.r#type == pb::watch_event::Type::Synced as i32;
                if (synced || wanted(&filter, &e)) && tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            // A shared listing may be older than what was applied since: catch up at once
            // rather than wait for the next write.
            if *applied.borrow() > last {
                continue;
            }
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
