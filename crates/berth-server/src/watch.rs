//! The `Watch` RPC: a server-side stream of object changes from this server's change feed,
//! resumable from a revision. A watcher too far behind (or new) first gets every current object.

use std::pin::Pin;

use berth_proto::v1 as pb;
use berth_state::Object;
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
        ObjectChange::Deleted { key, namespace } => {
            berth_proto::deleted_event(change.revision, key, namespace)
        }
    }
}

fn wanted(filter: &Filter, e: &pb::WatchEvent) -> bool {
    let ns = (!e.namespace.is_empty()).then_some(e.namespace.as_str());
    e.kind != "token" && filter.wants(&e.kind, ns)
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
                    let revision = *applied.borrow_and_update();
                    let objects: Vec<Object> = store.read_stale(|s| s.objects().collect());
                    last = revision;
                    let mut events: Vec<pb::WatchEvent> = objects
                        .into_iter()
                        .map(|o| {
                            berth_proto::object_event(pb::watch_event::Type::Sync, revision, o)
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
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
