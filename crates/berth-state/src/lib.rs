//! The replicated state of berth and the deterministic function that applies commands to it.
//!
//! Pure: no tokio, openraft, redb or tonic (a test reads this crate's `Cargo.toml` to keep it
//! so). berth-store wraps [`State`] as openraft's state machine (in memory; on disk, its
//! snapshots and the log), records the keys [`State::apply`] reports changed for watchers, and
//! publishes [`Credentials`] and [`TaskView`] for the reads that must not wait for it. Each
//! kind of object has its own module with the rules of the commands that change it; `apply`
//! only dispatches.

mod access;
mod ca;
mod certificates;
mod cluster;
mod command;
mod metering;
mod namespaces;
mod nodes;
mod objects;
mod published;
mod retention;
mod secrets;
mod services;
mod task_definitions;
mod tasks;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_access;
#[cfg(test)]
mod tests_certificates;
#[cfg(test)]
mod tests_metering;
#[cfg(test)]
mod tests_retention;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use berth_model::{
    ApiTokenRecord, JoinTokenRecord, Namespace, Node, NodeCertificates, RemovedTask, Service, Task,
    TaskDefinition, TaskDefinitionRef, TaskDefinitionStatus, TaskStatus, Timestamp,
};

pub use berth_model::StopOrder;
pub use cluster::{
    Answer, AppliedRequest, ClientToken, CLIENT_TOKEN_TTL_MS, REQUESTS_KEPT, REQUEST_TTL_MS,
};
pub use command::{
    Command, CommandResult, Placement, Reconciliation, Rejection, Retirement, RevisionKey,
    ScalingDecision, ServiceChange, Unplaced,
};
pub use metering::{billable_ms, service_of, Accrual, TaskUsed, UsageClose};
pub use objects::{Key, Object, ObjectRef, ObjectsCopy};
pub use published::{Credentials, TaskView};
pub use services::{initial_desired_count, service_update, ServiceUpdate};

/// A task's ID as the state's map and indexes hold it: one allocation shared by all of them
/// (each index held a copy of its own: about 400 bytes a task).
type TaskId = Arc<str>;

/// Live placed tasks by namespace, then placement group ([`Task::placement_group`]), then node.
type PlacedByGroup = HashMap<String, HashMap<String, HashMap<String, u64>>>;

/// Everything the control plane knows. Readers get it behind a lock from the store (berth-store).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Revisions of each `(namespace, family)` by number. Deleted INACTIVE revisions leave
    /// gaps; a family's latest revision is never deleted, so numbers are never reused.
    task_definitions: OrdMap<(String, String), OrdMap<u32, TaskDefinition>>,
    /// Each task behind an `Arc`: the map's nodes hold 32-byte entries, so a node copied
    /// on write (after a clone of the state shares it) copies no task, and half-full nodes
    /// cost little (the tasks inline took twice their 424 bytes).
    tasks: OrdMap<TaskId, Arc<Task>>,
    /// Task IDs by the node they were placed on (derived from `tasks`; a task's node never
    /// changes once set), so a node's tasks are found without scanning every task.
    tasks_by_node: BTreeMap<String, BTreeSet<TaskId>>,
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<(String, String), Service>,
    /// Client tokens of recent `CreateTasks`, for deduplicating retries.
    client_tokens: OrdMap<String, ClientToken>,
    /// `(at, token)`, oldest first, to expire tokens.
    token_ages: BTreeSet<(Timestamp, String)>,
    /// The answers of recent [`Command::Request`]s by request ID, for deduplicating retries.
    requests: OrdMap<String, AppliedRequest>,
    /// Request IDs by `seq`, oldest first, to expire them.
    request_order: BTreeMap<u64, String>,
    /// Clients' API tokens by ID (persistent, as the tasks: [`Credentials`] shares it).
    api_tokens: OrdMap<String, ApiTokenRecord>,
    /// Join tokens by ID.
    join_tokens: BTreeMap<String, JoinTokenRecord>,
    /// Agent nodes' usable certificates by node name (a node that joined but has not
    /// registered yet has some; a removed node has none).
    certificates: BTreeMap<String, NodeCertificates>,
    /// Namespaces with a record (`default` may have none).
    namespaces: BTreeMap<String, Namespace>,
    /// Task IDs by namespace (derived from `tasks`, stopped ones included, as `tasks_by_node`),
    /// so a namespace's usage is found without scanning every task; persistent, as `tasks`,
    /// so the published tasks carry it at no cost (a list of one namespace's tasks).
    tasks_by_namespace: OrdMap<String, OrdSet<TaskId>>,
    /// The last rotation of the cluster CA, if the CA was ever rotated.
    ca_rotation: Option<berth_model::CaRotation>,
    /// Tasks waiting for a node (derived from `tasks`, refreshed after each command for the
    /// tasks it changed): the scheduler finds them without scanning every task.
    pending: BTreeSet<TaskId>,
    /// CPU units and MiB allocated to the tasks on each node that have not stopped (derived
    /// as `pending`; nodes without any are absent).
    allocated: HashMap<String, (u64, u64)>,
    /// Secrets by `(namespace, name)`, their values sealed.
    secrets: BTreeMap<(String, String), berth_model::Secret>,
    /// Which keyring key seals new secret values.
    secret_keys: berth_model::SecretKeys,
    /// Tasks that have not stopped, with the status they were counted under (derived, as
    /// `pending`): what the controllers look at, so their work follows live tasks, not history.
    live: BTreeMap<TaskId, TaskStatus>,
    /// How many live tasks are in each status (derived): what `/metrics` shows without
    /// looking at tasks.
    live_statuses: BTreeMap<TaskStatus, u64>,
    /// Live task IDs by namespace (derived): what a namespace's quota counts.
    live_by_namespace: BTreeMap<String, BTreeSet<TaskId>>,
    /// Live task IDs by the node they were placed on (derived).
    live_by_node: BTreeMap<String, BTreeSet<TaskId>>,
    /// Live task IDs by `(namespace, group)` (derived).
    live_groups: BTreeMap<(String, String), BTreeSet<TaskId>>,
    /// How many live tasks of each placement group run on each node (derived): what a
    /// scheduling round counts for spread and `distinctInstance` without looking at tasks.
    placed: PlacedByGroup,
    /// The fixed host ports the live tasks on each node publish, with how many tasks publish
    /// each (derived): what placement keeps apart, without looking at tasks.
    host_ports: HashMap<String, BTreeMap<(u16, berth_model::Protocol), u64>>,
    /// Stopped tasks by `(stopped at, ID)`, oldest first (derived): what the retention reads.
    stopped: BTreeSet<(Timestamp, TaskId)>,
    /// Stopped tasks of each `(namespace, group)` by `(stopped at, ID)` (derived).
    stopped_groups: BTreeMap<(String, String), BTreeSet<(Timestamp, TaskId)>>,
    /// How many tasks in the state use each revision (derived): an INACTIVE revision is
    /// deleted only when none does.
    revision_users: BTreeMap<RevisionKey, usize>,
    /// Tasks the retention removed, by ID, until the retention forgets them too.
    removed: OrdMap<String, RemovedTask>,
    /// `(removed at, ID)` of `removed`, oldest first (derived).
    removed_ages: BTreeSet<(Timestamp, String)>,
    /// IDs of `removed` by the node they ran on (derived): their logs there can go.
    removed_by_node: BTreeMap<String, BTreeSet<String>>,
    /// Where the metering ledger stands; none until its first bucket closes.
    ledger: Option<berth_model::Ledger>,
    /// The ledger's closed buckets by start, oldest first.
    buckets: OrdMap<Timestamp, berth_model::LedgerBucket>,
    /// What each task accrued in the closed buckets, by task ID (removed with the task).
    task_usage: OrdMap<String, berth_model::TaskUsage>,
}

impl State {
    /// Every task the state holds, stopped ones included (until the retention removes them).
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(Arc::as_ref)
    }

    /// The tasks of `namespace`, stopped ones included, in task ID order.
    pub fn tasks_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task_by_id(id))
    }

    /// The tasks that have not stopped, in task ID order, without looking at stopped ones.
    pub fn live_tasks(&self) -> impl Iterator<Item = &Task> {
        self.live.keys().filter_map(|id| self.task_by_id(id))
    }

    /// The tasks of `group` (`service:NAME`, `family:FAMILY`) in `namespace` that have not
    /// stopped, in task ID order.
    pub fn live_tasks_of<'a>(
        &'a self,
        namespace: &str,
        group: &str,
    ) -> impl Iterator<Item = &'a Task> + 'a {
        self.live_groups
            .get(&(namespace.to_owned(), group.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.task_by_id(id))
    }

    /// How many live tasks of placement group `group` in `namespace` run on `node`.
    pub fn placed_on(&self, namespace: &str, group: &str, node: &str) -> u64 {
        self.placed
            .get(namespace)
            .and_then(|groups| groups.get(group))
            .and_then(|nodes| nodes.get(node))
            .copied()
            .unwrap_or(0)
    }

    /// The fixed host ports the live tasks on `node` publish.
    pub fn host_ports_on(
        &self,
        node: &str,
    ) -> impl Iterator<Item = (u16, berth_model::Protocol)> + '_ {
        self.host_ports
            .get(node)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .copied()
    }

    /// The nodes that run live tasks of placement group `group` in `namespace`, with how many,
    /// in name order (sorted here: the counts are looked up by node far more often).
    pub fn placed_of(&self, namespace: &str, group: &str) -> Vec<(&str, u64)> {
        let mut nodes: Vec<(&str, u64)> = self
            .placed
            .get(namespace)
            .and_then(|groups| groups.get(group))
            .into_iter()
            .flatten()
            .map(|(node, n)| (node.as_str(), *n))
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// How many tasks that have not stopped are in each status (statuses without any are
    /// absent).
    pub fn live_counts(&self) -> impl Iterator<Item = (TaskStatus, u64)> + '_ {
        self.live_statuses.iter().map(|(s, n)| (*s, *n))
    }

    /// How many tasks the state holds that have stopped.
    pub fn stopped_count(&self) -> usize {
        self.stopped.len()
    }

    /// The IDs of the tasks placed on `node` that the retention removed, while the state
    /// remembers them.
    pub fn removed_from<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.removed_by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// What is left of a task the retention removed, by ID alone (for the change feed).
    pub fn removed_task_by_id(&self, task_id: &str) -> Option<&RemovedTask> {
        self.removed.get(task_id)
    }

    /// What is left of a task the retention removed, while the state still remembers it.
    pub fn removed_task(&self, namespace: &str, task_id: &str) -> Option<&RemovedTask> {
        self.removed
            .get(task_id)
            .filter(|r| r.namespace == namespace)
    }

    /// The tasks placed on `node` (stopped ones included), without scanning every task.
    pub fn tasks_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task_by_id(id))
    }

    /// The tasks placed on `node` that have not stopped, in task ID order.
    pub fn live_tasks_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.live_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task_by_id(id))
    }

    /// Task `task_id` if it is placed on `node` and has not stopped: one of
    /// [`State::live_tasks_on`], looked up alone.
    pub fn live_task_on(&self, node: &str, task_id: &str) -> Option<&Task> {
        self.live_by_node
            .get(node)
            .filter(|ids| ids.contains(task_id))
            .and_then(|_| self.task_by_id(task_id))
    }

    /// The node whose desired task set a change of `key` may alter: `None` for keys of other
    /// kinds and unplaced tasks, `Some(None)` for a task no longer in the state (its node is
    /// not known any more).
    pub fn node_of<'a>(&'a self, key: &'a Key) -> Option<Option<&'a str>> {
        match key {
            Key::Task(id) => match self.task_by_id(id) {
                Some(t) => t.node.as_deref().map(Some),
                // Removed by the retention: its node is remembered.
                None => match self.removed.get(id) {
                    Some(r) => r.node.as_deref().map(Some),
                    None => Some(None),
                },
            },
            Key::Node(name) => Some(Some(name)),
            _ => None,
        }
    }

    /// A task by ID alone, for the leader's own rounds (API reads go through [`State::task`],
    /// which checks the namespace).
    pub fn task_by_id(&self, task_id: &str) -> Option<&Task> {
        self.tasks.get(task_id).map(Arc::as_ref)
    }

    /// The task with this ID, shared: the state copies it before it changes it again, so the
    /// holder keeps the task as it is now.
    pub fn shared_task(&self, task_id: &str) -> Option<Arc<Task>> {
        self.tasks.get(task_id).cloned()
    }

    pub fn task(&self, namespace: &str, task_id: &str) -> Option<&Task> {
        self.task_by_id(task_id)
            .filter(|t| t.namespace == namespace)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every revision of every family in `namespace`, by family then revision.
    pub fn task_definitions<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a TaskDefinition> + 'a {
        self.task_definitions
            .iter()
            .filter(move |((ns, _), _)| ns == namespace)
            .flat_map(|(_, revs)| revs.values())
    }

    /// Resolves `family` (latest ACTIVE revision) or `family:revision`.
    pub fn task_definition(
        &self,
        namespace: &str,
        reference: &TaskDefinitionRef,
    ) -> Option<&TaskDefinition> {
        let revs = self
            .task_definitions
            .get(&(namespace.to_owned(), reference.family.clone()))?;
        match reference.revision {
            Some(rev) => revs.get(&rev),
            None => revs
                .values()
                .rev()
                .find(|d| d.status == TaskDefinitionStatus::Active),
        }
    }

    /// The node with `allocated` filled in from the tasks placed on it that have not stopped.
    pub fn node_with_allocation(&self, node: &Node) -> Node {
        self.nodes_with_allocation()
            .into_iter()
            .find(|n| n.name == node.name)
            .unwrap_or_else(|| node.clone())
    }

    /// Every node with `allocated` filled in, in one pass over the tasks.
    pub fn nodes_with_allocation(&self) -> Vec<Node> {
        let used = self.allocations();
        self.nodes
            .values()
            .map(|n| {
                let mut n = n.clone();
                let (cpu, memory) = used.get(n.name.as_str()).copied().unwrap_or_default();
                n.cpu.allocated = cpu;
                n.memory.allocated = memory;
                n
            })
            .collect()
    }

    /// CPU units and MiB allocated on `node` to its tasks that are not stopped.
    pub fn allocated_on(&self, node: &str) -> (u64, u64) {
        self.allocated.get(node).copied().unwrap_or_default()
    }

    /// CPU units and MiB allocated to the tasks that are not stopped, by node name (nodes
    /// without any are absent).
    pub fn allocations(&self) -> HashMap<&str, (u64, u64)> {
        self.allocated
            .iter()
            .map(|(n, used)| (n.as_str(), *used))
            .collect()
    }

    /// Applies one command. Returns the answer for the proposer and the keys of every object
    /// the command changed (so the caller persists exactly those).
    pub fn apply(&mut self, command: Command) -> (CommandResult, Vec<Key>) {
        let mut changed = Vec::new();
        let result = self.dispatch(command, &mut changed);
        (result, changed)
    }

    /// Applies one command and refreshes the derived indexes for what it changed, before the
    /// next command of a batch sees them.
    fn dispatch(&mut self, command: Command, changed: &mut Vec<Key>) -> CommandResult {
        let from = changed.len();
        let replaces = matches!(command, Command::ReplaceState { .. });
        let result = self.dispatch_one(command, changed);
        if replaces {
            self.rebuild_indexes();
        } else {
            self.reindex(&changed[from..]);
        }
        result
    }

    fn dispatch_one(&mut self, command: Command, changed: &mut Vec<Key>) -> CommandResult {
        match command {
            Command::Request { id, at, command } => self.apply_request(id, at, *command, changed),
            Command::Batch(commands) => CommandResult::Batch(
                commands
                    .into_iter()
                    .map(|c| self.dispatch(c, changed))
                    .collect(),
            ),
            Command::RegisterTaskDefinition {
                namespace,
                spec,
                reuse_identical,
                at,
            } => self.register_task_definition(namespace, spec, reuse_identical, at, changed),
            Command::CreateTasks {
                tasks,
                client_token,
                at,
            } => self.create_tasks(tasks, client_token, at, changed),
            Command::RunTasks {
                namespace,
                task_definition,
                task_ids,
                overrides,
                started_by,
                group,
                labels,
                client_token,
                at,
            } => {
                let run = tasks::Run {
                    overrides,
                    started_by,
                    group,
                    labels,
                };
                self.run_tasks(
                    (namespace, task_definition),
                    task_ids,
                    run,
                    client_token,
                    at,
                    changed,
                )
            }
            Command::StopTask {
                namespace,
                task_id,
                stop_code,
                reason,
                at,
            } => self.stop_task(namespace, task_id, stop_code, reason, at, changed),
            Command::PlaceTasks {
                placements,
                unplaced,
                at,
            } => self.place_tasks(placements, unplaced, at, changed),
            Command::ReportTaskStatus { node, updates, at } => {
                self.report_task_status(node, updates, at, changed)
            }
            Command::RegisterNode { node, at } => self.register_node(node, at, changed),
            Command::MarkNodeDown { node, reason, at } => {
                self.mark_node_down(node, reason, at, changed)
            }
            Command::SetNodeStatus { node, status, at } => {
                self.set_node_status(node, status, at, changed)
            }
            Command::RemoveNode { node, at } => self.remove_node(&node, at, changed),
            Command::RecordCertificate {
                node,
                serial,
                expires_at,
                renewing,
                at,
                ca_fingerprint,
            } => {
                let record = berth_model::CertificateRecord {
                    serial,
                    issued_at: at,
                    expires_at,
                    ca_generation: self.ca_generation_of(&ca_fingerprint),
                    in_use: false,
                };
                self.record_certificate(node, record, renewing, at, changed)
            }
            Command::CertificateInUse {
                node,
                serial,
                at: _,
            } => self.certificate_in_use(&node, &serial, changed),
            Command::StartCaRotation { rotation, at } => {
                self.start_ca_rotation(rotation, at, changed)
            }
            Command::AdoptCaRotation {
                server,
                generation,
                at: _,
            } => self.adopt_ca_rotation(server, generation, changed),
            Command::FinishCaRotation { generation, at } => {
                self.finish_ca_rotation(generation, at, changed)
            }
            Command::ApplyService {
                namespace,
                spec,
                deployment_id,
                at,
            } => self.apply_service(namespace, *spec, deployment_id, at, changed),
            Command::UpdateService {
                namespace,
                name,
                change,
                at,
            } => self.update_service(&namespace, &name, change, at, changed),
            Command::ReconcileService(r) => self.reconcile_service(r, changed),
            Command::AutoScale(d) => self.autoscale(d, changed),
            Command::ReplaceState { objects, at: _ } => self.replace_state(objects, changed),
            Command::CreateApiToken { record, at } => self.create_api_token(record, at, changed),
            Command::RevokeApiToken { id, at } => self.revoke_api_token(&id, at, changed),
            Command::CreateJoinToken { record, at } => self.create_join_token(record, at, changed),
            Command::RevokeJoinToken { id, at } => self.revoke_join_token(&id, at, changed),
            Command::CreateNamespace { name, quota, at } => {
                self.create_namespace(name, quota, at, changed)
            }
            Command::UpdateNamespace { name, quota, at } => {
                self.update_namespace(name, quota, at, changed)
            }
            Command::DeleteNamespace { name, at } => self.delete_namespace(&name, at, changed),
            Command::DeregisterTaskDefinition {
                namespace,
                family,
                revision,
                at,
            } => self.deregister_task_definition(&namespace, &family, revision, at, changed),
            Command::Retire(r) => self.retire(r, changed),
            Command::CloseUsage(c) => self.close_usage(c, changed),
            Command::PutSecret { secret, expect, at } => {
                self.put_secret(*secret, expect, at, changed)
            }
            Command::DeleteSecret {
                namespace,
                name,
                at: _,
            } => self.delete_secret(&namespace, &name, changed),
            Command::ActivateSecretKey { key_id, at: _ } => {
                self.activate_secret_key(key_id, changed)
            }
            Command::ResealSecrets { secrets, at: _ } => self.reseal_secrets(secrets, changed),
            Command::ResealApiTokens { secrets, at: _ } => self.reseal_api_tokens(secrets, changed),
        }
    }
}
