//! The change feed: stored objects (and deletions of their keys) as `Watch` events.

use berth_state::{Key, Object};

use crate::v1;

/// A stored object as a watch event (`Put`, or `Listed` for a watcher's first listing).
pub fn object_event(
    kind_type: v1::watch_event::Type,
    revision: u64,
    object: Object,
) -> v1::WatchEvent {
    let (kind, name, namespace, object) = match object {
        Object::Task(t) => (
            "task",
            t.task_id.clone(),
            t.namespace.clone(),
            Some(v1::watch_event::Object::Task(t.into())),
        ),
        Object::Service(s) => (
            "service",
            s.name.clone(),
            s.namespace.clone(),
            Some(v1::watch_event::Object::Service(s.into())),
        ),
        Object::Node(n) => (
            "node",
            n.name.clone(),
            String::new(),
            Some(v1::watch_event::Object::Node(n.into())),
        ),
        Object::TaskDefinition(d) => (
            "taskdefinition",
            format!("{}:{}", d.family, d.revision),
            d.namespace.clone(),
            Some(v1::watch_event::Object::TaskDefinition(d.into())),
        ),
        // Tokens, certificate records, the CA rotation, the ledger and request answers: never
        // shown to watchers (the watch drops `token`).
        Object::ClientToken(_)
        | Object::ApiToken(_)
        | Object::JoinToken(_)
        | Object::Certificates(_)
        | Object::CaRotation(_)
        | Object::Secret(_)
        | Object::SecretKeys(_)
        | Object::RemovedTask(_)
        | Object::Ledger(_)
        | Object::LedgerBucket(_)
        | Object::TaskUsage(_)
        | Object::Request(_) => ("token", String::new(), String::new(), None),
        Object::Namespace(n) => ("namespace", n.name.clone(), String::new(), None),
    };
    v1::WatchEvent {
        r#type: kind_type as i32,
        revision,
        kind: kind.into(),
        name,
        namespace,
        object,
    }
}

/// The deletion of the object stored under `key`, as a watch event; `namespace` is the
/// object's when its key does not name it (a task's).
pub fn deleted_event(revision: u64, key: Key, namespace: Option<String>) -> v1::WatchEvent {
    let (kind, name, namespace) = match key {
        Key::Task(id) => ("task", id, namespace.unwrap_or_default()),
        Key::Service { namespace, name } => ("service", name, namespace),
        Key::Node(name) => ("node", name, String::new()),
        Key::TaskDefinition {
            namespace,
            family,
            revision,
        } => ("taskdefinition", format!("{family}:{revision}"), namespace),
        Key::ClientToken(_)
        | Key::ApiToken(_)
        | Key::JoinToken(_)
        | Key::Certificates(_)
        | Key::CaRotation
        | Key::Secret { .. }
        | Key::SecretKeys
        | Key::RemovedTask(_)
        | Key::Ledger
        | Key::LedgerBucket(_)
        | Key::TaskUsage(_)
        | Key::Request(_) => ("token", String::new(), String::new()),
        Key::Namespace(name) => ("namespace", name, String::new()),
    };
    v1::WatchEvent {
        r#type: v1::watch_event::Type::Deleted as i32,
        revision,
        kind: kind.into(),
        name,
        namespace,
        object: None,
    }
}

/// The end of a watcher's first listing: what follows are changes.
pub fn synced_event(revision: u64) -> v1::WatchEvent {
    v1::WatchEvent {
        r#type: v1::watch_event::Type::Synced as i32,
        revision,
        ..Default::default()
    }
}
