//! The stored form of the state: one object per key, written to disk and into snapshots.

use berth_model::{
    ApiTokenRecord, CaRotation, JoinTokenRecord, Ledger, LedgerBucket, Namespace, Node,
    NodeCertificates, RemovedTask, Secret, SecretKeys, Service, Task, TaskDefinition, TaskUsage,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use imbl::OrdMap;

use crate::{AppliedRequest, ClientToken, State};

/// The key of one stored object; the state machine persists exactly the keys a command touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    TaskDefinition {
        namespace: String,
        family: String,
        revision: u32,
    },
    Task(String),
    Node(String),
    ClientToken(String),
    Service {
        namespace: String,
        name: String,
    },
    /// An API token, by ID.
    ApiToken(String),
    /// A join token, by ID.
    JoinToken(String),
    /// A namespace, by name.
    Namespace(String),
    /// An agent node's certificate records, by node name.
    Certificates(String),
    /// The last rotation of the cluster CA (one at most).
    CaRotation,
    /// A secret (its values sealed).
    Secret {
        namespace: String,
        name: String,
    },
    /// Which keyring key seals new secret values (one record).
    SecretKeys,
    /// What is left of a task the retention removed, by task ID.
    RemovedTask(String),
    /// Where the metering ledger stands, with its running totals (one record).
    Ledger,
    /// A closed bucket of the ledger, by its start.
    LedgerBucket(Timestamp),
    /// What a task accrued in the closed buckets, by task ID.
    TaskUsage(String),
    /// The answer of a recent store request, by request ID.
    Request(String),
}

impl Key {
    /// The key as text, which sorts revisions numerically (what the object table of databases
    /// from before 2026-12 was keyed by; the state's tests compare objects by it).
    pub fn encode(&self) -> String {
        match self {
            Key::TaskDefinition {
                namespace,
                family,
                revision,
            } => {
                format!("taskdef/{namespace}/{family}/{revision:010}")
            }
            Key::Task(id) => format!("task/{id}"),
            Key::Node(name) => format!("node/{name}"),
            Key::ClientToken(token) => format!("token/{token}"),
            Key::Service { namespace, name } => format!("service/{namespace}/{name}"),
            Key::ApiToken(id) => format!("apitoken/{id}"),
            Key::JoinToken(id) => format!("jointoken/{id}"),
            Key::Namespace(name) => format!("namespace/{name}"),
            Key::Certificates(node) => format!("certificates/{node}"),
            Key::CaRotation => "ca/rotation".to_owned(),
            Key::Secret { namespace, name } => format!("secret/{namespace}/{name}"),
            Key::SecretKeys => "secret-keys".to_owned(),
            Key::RemovedTask(id) => format!("removed-task/{id}"),
            Key::Ledger => "ledger".to_owned(),
            Key::LedgerBucket(start) => format!("ledger-bucket/{start:020}"),
            Key::TaskUsage(id) => format!("task-usage/{id}"),
            Key::Request(id) => format!("request/{id}"),
        }
    }
}

/// One stored object, as it is written to disk and into snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "object")]
pub enum Object {
    TaskDefinition(TaskDefinition),
    Task(Task),
    Node(Node),
    ClientToken(ClientToken),
    Service(Service),
    ApiToken(ApiTokenRecord),
    JoinToken(JoinTokenRecord),
    Namespace(Namespace),
    Certificates(NodeCertificates),
    CaRotation(CaRotation),
    Secret(Secret),
    SecretKeys(SecretKeys),
    RemovedTask(RemovedTask),
    Ledger(Ledger),
    LedgerBucket(LedgerBucket),
    TaskUsage(TaskUsage),
    Request(AppliedRequest),
}

/// An [`Object`] borrowed from the state; it serialises exactly as the object does.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "object")]
pub enum ObjectRef<'a> {
    TaskDefinition(&'a TaskDefinition),
    Task(&'a Task),
    Node(&'a Node),
    ClientToken(&'a ClientToken),
    Service(&'a Service),
    ApiToken(&'a ApiTokenRecord),
    JoinToken(&'a JoinTokenRecord),
    Namespace(&'a Namespace),
    Certificates(&'a NodeCertificates),
    CaRotation(&'a CaRotation),
    Secret(&'a Secret),
    SecretKeys(&'a SecretKeys),
    RemovedTask(&'a RemovedTask),
    Ledger(&'a Ledger),
    LedgerBucket(&'a LedgerBucket),
    TaskUsage(&'a TaskUsage),
    Request(&'a AppliedRequest),
}

impl ObjectRef<'_> {
    /// The object, copied.
    pub fn cloned(self) -> Object {
        match self {
            ObjectRef::TaskDefinition(d) => Object::TaskDefinition(d.clone()),
            ObjectRef::Task(t) => Object::Task(t.clone()),
            ObjectRef::Node(n) => Object::Node(n.clone()),
            ObjectRef::ClientToken(c) => Object::ClientToken(c.clone()),
            ObjectRef::Service(s) => Object::Service(s.clone()),
            ObjectRef::ApiToken(t) => Object::ApiToken(t.clone()),
            ObjectRef::JoinToken(t) => Object::JoinToken(t.clone()),
            ObjectRef::Namespace(n) => Object::Namespace(n.clone()),
            ObjectRef::Certificates(c) => Object::Certificates(c.clone()),
            ObjectRef::CaRotation(r) => Object::CaRotation(r.clone()),
            ObjectRef::Secret(s) => Object::Secret(s.clone()),
            ObjectRef::SecretKeys(k) => Object::SecretKeys(k.clone()),
            ObjectRef::RemovedTask(r) => Object::RemovedTask(r.clone()),
            ObjectRef::Ledger(l) => Object::Ledger(l.clone()),
            ObjectRef::LedgerBucket(b) => Object::LedgerBucket(b.clone()),
            ObjectRef::TaskUsage(u) => Object::TaskUsage(u.clone()),
            ObjectRef::Request(r) => Object::Request(r.clone()),
        }
    }
}

impl Object {
    pub fn key(&self) -> Key {
        match self {
            Object::TaskDefinition(d) => Key::TaskDefinition {
                namespace: d.namespace.clone(),
                family: d.family.clone(),
                revision: d.revision,
            },
            Object::Task(t) => Key::Task(t.task_id.clone()),
            Object::Node(n) => Key::Node(n.name.clone()),
            Object::ClientToken(c) => Key::ClientToken(c.token.clone()),
            Object::Service(s) => Key::Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            Object::ApiToken(t) => Key::ApiToken(t.id.clone()),
            Object::JoinToken(t) => Key::JoinToken(t.id.clone()),
            Object::Namespace(n) => Key::Namespace(n.name.clone()),
            Object::Certificates(c) => Key::Certificates(c.node.clone()),
            Object::CaRotation(_) => Key::CaRotation,
            Object::Secret(s) => Key::Secret {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            Object::SecretKeys(_) => Key::SecretKeys,
            Object::RemovedTask(r) => Key::RemovedTask(r.task_id.clone()),
            Object::Ledger(_) => Key::Ledger,
            Object::LedgerBucket(b) => Key::LedgerBucket(b.start),
            Object::TaskUsage(u) => Key::TaskUsage(u.task_id.clone()),
            Object::Request(r) => Key::Request(r.id.clone()),
        }
    }
}

/// Every stored object of a [`State`] as it was when [`State::objects_copy`] took it, without
/// the state's derived indices: what a snapshot is written from, outside the state's lock.
#[derive(Debug, Clone)]
pub struct ObjectsCopy(State);

impl ObjectsCopy {
    /// Every object of the copy, borrowed.
    pub fn object_refs(&self) -> impl Iterator<Item = ObjectRef<'_>> + '_ {
        self.0.object_refs()
    }
}

impl State {
    /// Every stored object, for snapshots.
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        self.object_refs().map(ObjectRef::cloned)
    }

    /// Every stored object, borrowed.
    pub fn object_refs(&self) -> impl Iterator<Item = ObjectRef<'_>> + '_ {
        let defs = self
            .task_definitions
            .values()
            .flat_map(|revs| revs.values())
            .map(ObjectRef::TaskDefinition);
        defs.chain(self.tasks().map(ObjectRef::Task))
            .chain(self.nodes.values().map(ObjectRef::Node))
            .chain(self.client_tokens.values().map(ObjectRef::ClientToken))
            .chain(self.services.values().map(ObjectRef::Service))
            .chain(self.api_tokens.values().map(ObjectRef::ApiToken))
            .chain(self.join_tokens.values().map(ObjectRef::JoinToken))
            .chain(self.namespaces.values().map(ObjectRef::Namespace))
            .chain(self.certificates.values().map(ObjectRef::Certificates))
            .chain(self.ca_rotation.as_ref().map(ObjectRef::CaRotation))
            .chain(self.secrets.values().map(ObjectRef::Secret))
            .chain(
                (self.secret_keys != SecretKeys::default())
                    .then_some(ObjectRef::SecretKeys(&self.secret_keys)),
            )
            .chain(self.removed.values().map(ObjectRef::RemovedTask))
            .chain(self.ledger.as_ref().map(ObjectRef::Ledger))
            .chain(self.buckets.values().map(ObjectRef::LedgerBucket))
            .chain(self.task_usage.values().map(ObjectRef::TaskUsage))
            .chain(self.requests.values().map(ObjectRef::Request))
    }

    /// How many objects of each kind the state holds (by the name its key is stored under),
    /// without reading them.
    pub fn object_counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            (
                "taskdef",
                self.task_definitions.values().map(OrdMap::len).sum(),
            ),
            ("task", self.tasks.len()),
            ("node", self.nodes.len()),
            ("token", self.client_tokens.len()),
            ("service", self.services.len()),
            ("apitoken", self.api_tokens.len()),
            ("jointoken", self.join_tokens.len()),
            ("namespace", self.namespaces.len()),
            ("certificates", self.certificates.len()),
            ("secret", self.secrets.len()),
            ("removed-task", self.removed.len()),
            ("ledger-bucket", self.buckets.len()),
            ("task-usage", self.task_usage.len()),
            ("request", self.requests.len()),
        ]
    }

    /// A copy of every stored object, cheap to take under the state's lock: the maps that grow
    /// with the work (task definitions, tasks, removed tasks, their usage, requests, client
    /// tokens, ledger buckets) and the API tokens are persistent maps, shared with `self`
    /// until either changes them (each change then copies only the path to what it changes);
    /// the others are a few objects per node, service, join token or namespace and copied.
    pub fn objects_copy(&self) -> ObjectsCopy {
        ObjectsCopy(State {
            task_definitions: self.task_definitions.clone(),
            tasks: self.tasks.clone(),
            nodes: self.nodes.clone(),
            client_tokens: self.client_tokens.clone(),
            services: self.services.clone(),
            api_tokens: self.api_tokens.clone(),
            join_tokens: self.join_tokens.clone(),
            namespaces: self.namespaces.clone(),
            certificates: self.certificates.clone(),
            ca_rotation: self.ca_rotation.clone(),
            secrets: self.secrets.clone(),
            secret_keys: self.secret_keys.clone(),
            removed: self.removed.clone(),
            ledger: self.ledger.clone(),
            buckets: self.buckets.clone(),
            task_usage: self.task_usage.clone(),
            requests: self.requests.clone(),
            ..State::default()
        })
    }

    /// The object stored under `key`, if any.
    pub fn object(&self, key: &Key) -> Option<Object> {
        self.object_ref(key).map(ObjectRef::cloned)
    }

    /// The object stored under `key`, borrowed: what is written to disk after each command,
    /// encoded without copying it first.
    pub fn object_ref(&self, key: &Key) -> Option<ObjectRef<'_>> {
        match key {
            Key::TaskDefinition {
                namespace,
                family,
                revision,
            } => self
                .task_definitions
                .get(&(namespace.clone(), family.clone()))
                .and_then(|revs| revs.get(revision))
                .map(ObjectRef::TaskDefinition),
            Key::Task(id) => self.task_by_id(id).map(ObjectRef::Task),
            Key::Node(name) => self.nodes.get(name).map(ObjectRef::Node),
            Key::ClientToken(token) => self.client_tokens.get(token).map(ObjectRef::ClientToken),
            Key::Service { namespace, name } => {
                self.service(namespace, name).map(ObjectRef::Service)
            }
            Key::ApiToken(id) => self.api_tokens.get(id).map(ObjectRef::ApiToken),
            Key::JoinToken(id) => self.join_tokens.get(id).map(ObjectRef::JoinToken),
            Key::Namespace(name) => self.namespaces.get(name).map(ObjectRef::Namespace),
            Key::Certificates(node) => self.certificates.get(node).map(ObjectRef::Certificates),
            Key::CaRotation => self.ca_rotation.as_ref().map(ObjectRef::CaRotation),
            Key::Secret { namespace, name } => self.secret(namespace, name).map(ObjectRef::Secret),
            Key::SecretKeys => (self.secret_keys != SecretKeys::default())
                .then_some(ObjectRef::SecretKeys(&self.secret_keys)),
            Key::RemovedTask(id) => self.removed.get(id).map(ObjectRef::RemovedTask),
            Key::Ledger => self.ledger.as_ref().map(ObjectRef::Ledger),
            Key::LedgerBucket(start) => self.buckets.get(start).map(ObjectRef::LedgerBucket),
            Key::TaskUsage(id) => self.task_usage.get(id).map(ObjectRef::TaskUsage),
            Key::Request(id) => self.requests.get(id).map(ObjectRef::Request),
        }
    }

    /// Rebuilds a state from stored objects (in any order).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut state = State::default();
        for object in objects {
            match object {
                Object::TaskDefinition(d) => {
                    state
                        .task_definitions
                        .entry((d.namespace.clone(), d.family.clone()))
                        .or_default()
                        .insert(d.revision, d);
                }
                Object::Task(t) => {
                    state.insert_task(t);
                }
                Object::Node(n) => {
                    state.nodes.insert(n.name.clone(), n);
                }
                Object::ClientToken(c) => {
                    state.token_ages.insert((c.at, c.token.clone()));
                    state.client_tokens.insert(c.token.clone(), c);
                }
                Object::Service(s) => {
                    state
                        .services
                        .insert((s.namespace.clone(), s.name.clone()), s);
                }
                Object::ApiToken(t) => {
                    state.api_tokens.insert(t.id.clone(), t);
                }
                Object::JoinToken(t) => {
                    state.join_tokens.insert(t.id.clone(), t);
                }
                Object::Namespace(n) => {
                    state.namespaces.insert(n.name.clone(), n);
                }
                Object::Certificates(c) => {
                    state.certificates.insert(c.node.clone(), c);
                }
                Object::CaRotation(r) => state.ca_rotation = Some(r),
                Object::Secret(s) => {
                    state
                        .secrets
                        .insert((s.namespace.clone(), s.name.clone()), s);
                }
                Object::SecretKeys(k) => state.secret_keys = k,
                Object::RemovedTask(r) => {
                    state.removed.insert(r.task_id.clone(), r);
                }
                Object::Ledger(l) => state.ledger = Some(l),
                Object::LedgerBucket(b) => {
                    state.buckets.insert(b.start, b);
                }
                Object::TaskUsage(u) => {
                    state.task_usage.insert(u.task_id.clone(), u);
                }
                Object::Request(r) => {
                    state.request_order.insert(r.seq, r.id.clone());
                    state.requests.insert(r.id.clone(), r);
                }
            }
        }
        state.rebuild_indexes();
        state
    }
}
