//! What the Raft log carries. Every command is deterministic: it carries its own timestamp
//! (`at`, set by the leader — a leader re-stamps commands forwarded by followers) and IDs, so
//! every member applies it to the same result.

use berth_model::{
    ApiTokenRecord, CaRotation, JoinTokenRecord, Namespace, Node, NodeStatus, Quota, Service,
    ServiceSpec, StopCode, StopOrder, Task, TaskDefinition, TaskDefinitionSpec, TaskStatusUpdate,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::Object;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Commands that arrived together, applied in order as if proposed one by one (group commit:
    /// one Raft entry and one fsync for many writes). Answers [`CommandResult::Batch`].
    Batch(Vec<Command>),
    /// A write a store member proposes for a caller (an API call, a join), under an ID that
    /// every retry of it carries: applied once. A copy applied later (the member retried after
    /// the leader it had reached failed, and that leader's entry survived it) changes nothing
    /// and answers what the first copy answered. The ID is remembered for
    /// [`crate::REQUEST_TTL_MS`] after `at`, and the latest [`crate::REQUESTS_KEPT`] IDs
    /// whatever the clocks say. Answers the command's own answer.
    Request {
        id: String,
        at: Timestamp,
        command: Box<Command>,
    },
    /// Registers the next revision of `spec.family`; with `reuse_identical`, answers the latest
    /// ACTIVE revision instead when its content is identical.
    RegisterTaskDefinition {
        namespace: String,
        spec: TaskDefinitionSpec,
        reuse_identical: bool,
        at: Timestamp,
    },
    /// Creates fully built tasks (IDs, PENDING, no node); `createdAt` becomes `at`. A
    /// `client_token` seen before answers the tasks created then, so a client retrying after a
    /// leader change never creates tasks twice.
    CreateTasks {
        tasks: Vec<Task>,
        client_token: Option<String>,
        at: Timestamp,
    },
    /// `CreateTasks` of tasks of one definition revision, each made from it (as
    /// `Task::pending` makes it) with what the request adds: the entry carries the tasks' IDs,
    /// not the tasks (39 KB instead of 303 KB for a RunTask of a thousand, which every member
    /// writes, sends or reads). Rejected if the revision is gone by then.
    RunTasks {
        namespace: String,
        task_definition: berth_model::TaskDefinitionRef,
        task_ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        overrides: Vec<berth_model::ContainerOverride>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        labels: std::collections::BTreeMap<String, String>,
        client_token: Option<String>,
        at: Timestamp,
    },
    /// Sets a task's desired status to STOPPED.
    StopTask {
        namespace: String,
        task_id: String,
        stop_code: StopCode,
        reason: String,
        at: Timestamp,
    },
    /// The scheduler's decisions for one round: placements, and reasons for tasks that fit
    /// nowhere. Many in one entry.
    PlaceTasks {
        placements: Vec<Placement>,
        unplaced: Vec<Unplaced>,
        at: Timestamp,
    },
    /// Reports from one node about tasks it runs. Many updates in one entry.
    ReportTaskStatus {
        node: String,
        updates: Vec<TaskStatusUpdate>,
        at: Timestamp,
    },
    /// Registers a node or refreshes its address, resources and attributes.
    RegisterNode { node: Node, at: Timestamp },
    /// The leader stopped hearing from a node: it becomes DOWN and every task on it that has
    /// not stopped becomes STOPPED with stop code NodeLost.
    MarkNodeDown {
        node: String,
        reason: String,
        at: Timestamp,
    },
    /// An operator removes a node: every task on it that has not stopped becomes STOPPED with
    /// stop code NodeLost (as for [`Command::MarkNodeDown`]), and the node's record and its
    /// certificate records are forgotten, which revokes its certificates (its agent can neither
    /// attach nor renew). The name is free again: a node may join under it with a new token.
    /// Refused when neither a node nor certificates of that name are known.
    RemoveNode { node: String, at: Timestamp },
    /// Records a certificate the cluster CA issued to agent node `node` (a join or a renewal;
    /// the Join handler proposes it before answering), forgetting the node's expired ones.
    /// With `renewing`, the certificate the agent renewed with must still be recorded: a
    /// renewal racing with the node's removal is refused, so a removed node cannot renew its
    /// way back. Not leader-only: any server answers joins and forwards it.
    RecordCertificate {
        node: String,
        serial: String,
        expires_at: Timestamp,
        renewing: Option<String>,
        at: Timestamp,
        /// The SHA-256 of the certificate of the CA that signed it: the record keeps that CA's
        /// generation as the state knows it when this applies
        /// ([`berth_model::CaRotation::generation`]).
        #[serde(default)]
        ca_fingerprint: String,
    },
    /// Node `node`'s agent uses certificate `serial` (its heartbeat names it): the leader
    /// proposes it for a certificate of a running CA rotation's new CA, which counts the node
    /// as moved to it ([`berth_model::CertificateRecord::in_use`]). Refused when the
    /// certificate is not recorded for the node.
    CertificateInUse {
        node: String,
        serial: String,
        at: Timestamp,
    },
    /// Starts a rotation of the cluster CA (`berth cluster ca rotate`): the rotation's
    /// generation must follow the last one's, its old CA must be the last one's new CA, and no
    /// rotation may be running. Answers [`CommandResult::CaRotation`].
    StartCaRotation {
        rotation: Box<CaRotation>,
        at: Timestamp,
    },
    /// Server `server` signs with the new CA of rotation `generation`.
    AdoptCaRotation {
        server: u64,
        generation: u64,
        at: Timestamp,
    },
    /// The leader saw every server adopt the new CA and every node that is not DOWN use a
    /// certificate from it: only the new CA is trusted from now on, and certificate records of
    /// older CAs are forgotten (a DOWN node joins again with a token).
    FinishCaRotation { generation: u64, at: Timestamp },
    /// An operator drains a node (no new placements) or activates it again.
    SetNodeStatus {
        node: String,
        status: NodeStatus,
        at: Timestamp,
    },
    /// Creates a service or updates its spec; `spec.task_definition` names a revision. A new
    /// task definition starts a deployment with ID `deployment_id`.
    ApplyService {
        namespace: String,
        spec: Box<ServiceSpec>,
        deployment_id: String,
        at: Timestamp,
    },
    /// An operator's change to an existing service.
    UpdateService {
        namespace: String,
        name: String,
        change: ServiceChange,
        at: Timestamp,
    },
    /// The service reconciler's decisions for one service. Refused when the service changed
    /// in between (the reconciler then decides again).
    ReconcileService(Reconciliation),
    /// The autoscaler's decision for one service. Refused when the service changed in between.
    AutoScale(ScalingDecision),
    /// Replaces the whole state with the objects of a backup (`berth server --restore`).
    ReplaceState { objects: Vec<Object>, at: Timestamp },
    /// Stores a client's API token (its secret's hash only); `createdAt` becomes `at`, an
    /// admin's namespace `*`. Answers [`CommandResult::ApiToken`].
    CreateApiToken {
        record: ApiTokenRecord,
        at: Timestamp,
    },
    /// Forgets an API token: it authenticates nothing from then on. Answers the record removed.
    RevokeApiToken { id: String, at: Timestamp },
    /// Stores a join token (its secret's hash only). Answers [`CommandResult::JoinToken`].
    CreateJoinToken {
        record: JoinTokenRecord,
        at: Timestamp,
    },
    /// Forgets a join token. Answers the record removed.
    RevokeJoinToken { id: String, at: Timestamp },
    /// Creates a namespace with a quota. Answers [`CommandResult::Namespace`].
    CreateNamespace {
        name: String,
        quota: Quota,
        at: Timestamp,
    },
    /// Replaces a namespace's quota (`default` gets a record of its own the first time).
    /// Work already admitted keeps running when a quota shrinks below it.
    UpdateNamespace {
        name: String,
        quota: Quota,
        at: Timestamp,
    },
    /// Deletes a namespace, with the API tokens scoped to it; refused while it holds services
    /// or tasks that have not stopped.
    DeleteNamespace { name: String, at: Timestamp },
    /// Marks `revision` of a family (every revision when `None`) INACTIVE. Answers
    /// [`CommandResult::TaskDefinitions`]: the revisions it changed.
    DeregisterTaskDefinition {
        namespace: String,
        family: String,
        revision: Option<u32>,
        at: Timestamp,
    },
    /// Creates or replaces a secret, its values sealed with the active keyring key by the
    /// proposer; `expect`: it must exist (`Some(true)`) or must not (`Some(false)`). Answers
    /// [`CommandResult::Secret`].
    PutSecret {
        secret: Box<berth_model::Secret>,
        expect: Option<bool>,
        at: Timestamp,
    },
    /// Deletes a secret. Answers the secret removed.
    DeleteSecret {
        namespace: String,
        name: String,
        at: Timestamp,
    },
    /// Makes a keyring key (every server holds it, or fetches it from a peer) the one new
    /// secret values are sealed with.
    ActivateSecretKey { key_id: String, at: Timestamp },
    /// Secrets sealed again under the active key, each replacing the stored values if the
    /// secret has not changed since it was read. Answers [`CommandResult::Count`].
    ResealSecrets {
        secrets: Vec<berth_model::Secret>,
        at: Timestamp,
    },
    /// The sealed secrets of `--aws` API tokens, sealed again under the active key (by token
    /// ID); a token revoked meanwhile is skipped. Answers [`CommandResult::Count`].
    ResealApiTokens {
        secrets: Vec<(String, berth_model::SealedValue)>,
        at: Timestamp,
    },
    /// The retention's round: removes finished work kept long enough. Answers
    /// [`CommandResult::Count`], how many objects went.
    Retire(Retirement),
    /// The leader closes the ledger's next bucket (see [`crate::UsageClose`]); refused unless
    /// it starts where the ledger stands.
    CloseUsage(crate::UsageClose),
}

/// What the leader's retention round removes. The state machine checks each again: only
/// stopped tasks go, and only INACTIVE revisions no task or service uses that are not their
/// family's latest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    /// Stopped tasks to remove, with their events; the state remembers each as removed
    /// ([`berth_model::RemovedTask`]) until it appears in `forget`.
    pub tasks: Vec<String>,
    /// Removed tasks to forget.
    pub forget: Vec<String>,
    /// INACTIVE revisions to delete.
    pub revisions: Vec<RevisionKey>,
    /// Nodes DOWN for the node retention: each is removed as by [`Command::RemoveNode`] if
    /// it is still DOWN.
    pub nodes: Vec<String>,
    pub at: Timestamp,
}

/// One task definition revision, as a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RevisionKey {
    pub namespace: String,
    pub family: String,
    pub revision: u32,
}

impl Command {
    /// Commands only the leader itself proposes (its controllers, its agent streams, a
    /// restore): never accepted when forwarded by another server, so that nothing from outside
    /// the leader can place tasks, change nodes, reconcile or replace the state.
    pub fn leader_only(&self) -> bool {
        match self {
            Command::Batch(commands) => commands.iter().any(Command::leader_only),
            Command::Request { command, .. } => command.leader_only(),
            Command::PlaceTasks { .. }
            | Command::ReportTaskStatus { .. }
            | Command::RegisterNode { .. }
            | Command::MarkNodeDown { .. }
            | Command::ReconcileService(_)
            | Command::AutoScale(_)
            | Command::CertificateInUse { .. }
            | Command::FinishCaRotation { .. }
            | Command::Retire(_)
            | Command::CloseUsage(_)
            | Command::ReplaceState { .. } => true,
            _ => false,
        }
    }

    /// The namespace the command acts in, for the audit log: none for cluster-wide commands
    /// (nodes, tokens, the CA); a namespace command's own name.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Command::Request { command, .. } => command.namespace(),
            Command::RegisterTaskDefinition { namespace, .. }
            | Command::StopTask { namespace, .. }
            | Command::ApplyService { namespace, .. }
            | Command::UpdateService { namespace, .. }
            | Command::ReconcileService(Reconciliation { namespace, .. })
            | Command::AutoScale(ScalingDecision { namespace, .. }) => Some(namespace),
            Command::CreateTasks { tasks, .. } => tasks.first().map(|t| t.namespace.as_str()),
            Command::RunTasks { namespace, .. } => Some(namespace),
            Command::CreateNamespace { name, .. }
            | Command::UpdateNamespace { name, .. }
            | Command::DeleteNamespace { name, .. } => Some(name),
            Command::PutSecret { secret, .. } => Some(&secret.namespace),
            Command::DeregisterTaskDefinition { namespace, .. } => Some(namespace),
            Command::DeleteSecret { namespace, .. } => Some(namespace),
            Command::CreateApiToken { record, .. } => Some(&record.namespace),
            _ => None,
        }
    }

    /// What the command is about, for log lines: `service NS/NAME`, `node NAME`, `task ID`…
    pub fn subject(&self) -> String {
        match self {
            Command::Batch(commands) => format!("a batch of {}", commands.len()),
            Command::Request { command, .. } => command.subject(),
            Command::RegisterTaskDefinition {
                namespace, spec, ..
            } => format!("task definition {namespace}/{}", spec.family),
            Command::CreateTasks { tasks, .. } => format!("{} new tasks", tasks.len()),
            Command::RunTasks { task_ids, .. } => format!("{} new tasks", task_ids.len()),
            Command::StopTask { task_id, .. } => format!("task {task_id}"),
            Command::PlaceTasks { placements, .. } => {
                format!("{} placements", placements.len())
            }
            Command::ReportTaskStatus { node, .. } => format!("reports of node {node}"),
            Command::RegisterNode { node, .. } => format!("node {}", node.name),
            Command::MarkNodeDown { node, .. }
            | Command::SetNodeStatus { node, .. }
            | Command::RemoveNode { node, .. } => format!("node {node}"),
            Command::RecordCertificate { node, serial, .. }
            | Command::CertificateInUse { node, serial, .. } => {
                format!("certificate {serial} of node {node}")
            }
            Command::StartCaRotation { rotation, .. } => {
                format!("CA rotation {}", rotation.generation)
            }
            Command::AdoptCaRotation {
                server, generation, ..
            } => format!("CA rotation {generation} on server {server}"),
            Command::FinishCaRotation { generation, .. } => format!("CA rotation {generation}"),
            Command::ApplyService {
                namespace, spec, ..
            } => format!("service {namespace}/{}", spec.name),
            Command::UpdateService {
                namespace, name, ..
            }
            | Command::ReconcileService(Reconciliation {
                namespace, name, ..
            })
            | Command::AutoScale(ScalingDecision {
                namespace, name, ..
            }) => format!("service {namespace}/{name}"),
            Command::ReplaceState { objects, .. } => {
                format!("the whole state ({} objects)", objects.len())
            }
            Command::CreateApiToken { record, .. } => format!("API token {}", record.id),
            Command::RevokeApiToken { id, .. } => format!("API token {id}"),
            Command::CreateJoinToken { record, .. } => format!("join token {}", record.id),
            Command::RevokeJoinToken { id, .. } => format!("join token {id}"),
            Command::CreateNamespace { name, .. }
            | Command::UpdateNamespace { name, .. }
            | Command::DeleteNamespace { name, .. } => format!("namespace {name}"),
            Command::PutSecret { secret, .. } => {
                format!("secret {}/{}", secret.namespace, secret.name)
            }
            Command::DeregisterTaskDefinition {
                namespace, family, ..
            } => format!("task definition {namespace}/{family}"),
            Command::DeleteSecret {
                namespace, name, ..
            } => format!("secret {namespace}/{name}"),
            Command::ActivateSecretKey { key_id, .. } => format!("secret key {key_id}"),
            Command::ResealSecrets { secrets, .. } => format!("{} secrets", secrets.len()),
            Command::ResealApiTokens { secrets, .. } => {
                format!("the secrets of {} API tokens", secrets.len())
            }
            Command::Retire(r) => format!(
                "retention of {} tasks and {} revisions",
                r.tasks.len(),
                r.revisions.len()
            ),
            Command::CloseUsage(c) => format!("the ledger's bucket at {}", c.start),
        }
    }

    /// Stamps the command (each command of a batch) with `now`: the leader re-stamps commands
    /// forwarded by followers.
    pub fn stamp(&mut self, now: Timestamp) {
        let at = match self {
            Command::Batch(commands) => {
                commands.iter_mut().for_each(|c| c.stamp(now));
                return;
            }
            Command::Request { at, command, .. } => {
                command.stamp(now);
                at
            }
            Command::RegisterTaskDefinition { at, .. }
            | Command::CreateTasks { at, .. }
            | Command::RunTasks { at, .. }
            | Command::StopTask { at, .. }
            | Command::PlaceTasks { at, .. }
            | Command::ReportTaskStatus { at, .. }
            | Command::RegisterNode { at, .. }
            | Command::MarkNodeDown { at, .. }
            | Command::SetNodeStatus { at, .. }
            | Command::RemoveNode { at, .. }
            | Command::RecordCertificate { at, .. }
            | Command::CertificateInUse { at, .. }
            | Command::StartCaRotation { at, .. }
            | Command::AdoptCaRotation { at, .. }
            | Command::FinishCaRotation { at, .. }
            | Command::ApplyService { at, .. }
            | Command::UpdateService { at, .. }
            | Command::ReconcileService(Reconciliation { at, .. })
            | Command::AutoScale(ScalingDecision { at, .. })
            | Command::ReplaceState { at, .. }
            | Command::CreateApiToken { at, .. }
            | Command::RevokeApiToken { at, .. }
            | Command::CreateJoinToken { at, .. }
            | Command::RevokeJoinToken { at, .. }
            | Command::CreateNamespace { at, .. }
            | Command::UpdateNamespace { at, .. }
            | Command::DeleteNamespace { at, .. }
            | Command::PutSecret { at, .. }
            | Command::DeregisterTaskDefinition { at, .. }
            | Command::DeleteSecret { at, .. }
            | Command::ActivateSecretKey { at, .. }
            | Command::ResealSecrets { at, .. }
            | Command::ResealApiTokens { at, .. }
            | Command::Retire(Retirement { at, .. })
            | Command::CloseUsage(crate::UsageClose { at, .. }) => at,
        };
        *at = now;
    }
}

/// The service reconciler's decisions for one service, made for `version` of it: the service's
/// new deployment state, tasks to create (fully built) and tasks to stop. (A struct of its own
/// so the state machine takes it whole; it serialises as the variant's fields did.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub service: Box<Service>,
    pub start: Vec<Task>,
    pub stop: Vec<StopOrder>,
    /// Remove the service (it was deleted and its tasks have stopped).
    pub remove: bool,
    pub at: Timestamp,
}

/// The autoscaler's decision for one service, made for `version` of it: the new desired count
/// (unchanged when capacity is short) and the event that quotes the metric values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingDecision {
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub desired_count: u32,
    pub scale_out: bool,
    pub reason: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub task_id: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceChange {
    /// A new desired count.
    Scale(u32),
    /// Scale to zero, then remove the service once its tasks have stopped.
    Delete,
    /// Let a canary deployment's remaining tasks follow now.
    Promote,
    /// Replace every task with a new one of the same revision, in a new deployment (after a
    /// secret its tasks read changed, say).
    Redeploy { deployment_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub task_id: String,
    pub reason: String,
}

/// The state machine's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries, and commands that answer nothing.
    Done,
    TaskDefinition {
        task_definition: TaskDefinition,
        created: bool,
    },
    Tasks(Vec<Task>),
    Task(Box<Task>),
    Service {
        service: Box<Service>,
        created: bool,
        changed: bool,
        deployment_started: bool,
    },
    /// How many placements of a `PlaceTasks` were applied (the others were refused).
    Placed(usize),
    /// The API token created or revoked.
    ApiToken(Box<ApiTokenRecord>),
    /// The join token created or revoked.
    JoinToken(Box<JoinTokenRecord>),
    /// The namespace created, updated or deleted.
    Namespace(Box<Namespace>),
    /// The CA rotation started.
    CaRotation(Box<CaRotation>),
    /// The task definition revisions a command changed.
    TaskDefinitions(Vec<TaskDefinition>),
    /// The secret created, replaced or deleted.
    Secret(Box<berth_model::Secret>),
    /// How many objects a command changed.
    Count(u32),
    Rejected(Rejection),
    /// The answers to a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
}

impl CommandResult {
    /// The answer's variant, for messages about unexpected answers.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandResult::Done => "Done",
            CommandResult::TaskDefinition { .. } => "TaskDefinition",
            CommandResult::Tasks(_) => "Tasks",
            CommandResult::Task(_) => "Task",
            CommandResult::Service { .. } => "Service",
            CommandResult::Placed(_) => "Placed",
            CommandResult::ApiToken(_) => "ApiToken",
            CommandResult::JoinToken(_) => "JoinToken",
            CommandResult::Namespace(_) => "Namespace",
            CommandResult::CaRotation(_) => "CaRotation",
            CommandResult::Secret(_) => "Secret",
            CommandResult::TaskDefinitions(_) => "TaskDefinitions",
            CommandResult::Count(_) => "Count",
            CommandResult::Rejected(_) => "Rejected",
            CommandResult::Batch(_) => "Batch",
        }
    }
}

/// A command the state machine refused, deterministically, on every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The object changed since the proposer looked at it, or one with the same ID or name
    /// exists already.
    #[error("{0}")]
    Conflict(String),
    /// The work does not fit its namespace's quota; the sentence names the quota, its limit
    /// and its use (RESOURCE_EXHAUSTED at the API).
    #[error("{0}")]
    QuotaExceeded(String),
}
