//! The replicated state and the deterministic function that applies commands to it.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{
    Deployment, DeploymentStatus, DesiredStatus, Node, NodeStatus, RolloutState, Service,
    ServiceSpec, ServiceStatus, StopCode, Task, TaskDefinition, TaskDefinitionRef,
    TaskDefinitionStatus, TaskStatus, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::command::{
    Command, CommandResult, Placement, Rejection, ServiceChange, StopOrder, Unplaced,
};

/// Everything the control plane knows. Readers get it behind a lock from [`crate::Store`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Revisions of each `(namespace, family)`, revision `i + 1` at index `i`.
    task_definitions: BTreeMap<(String, String), Vec<TaskDefinition>>,
    tasks: BTreeMap<String, Task>,
    /// Task IDs by the node they were placed on (derived from `tasks`; a task's node never
    /// changes once set), so a node's tasks are found without scanning every task.
    tasks_by_node: BTreeMap<String, BTreeSet<String>>,
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<(String, String), Service>,
    /// Client tokens of recent `CreateTasks`, for deduplicating retries.
    client_tokens: BTreeMap<String, ClientToken>,
    /// `(at, token)`, oldest first, to expire tokens.
    token_ages: BTreeSet<(Timestamp, String)>,
}

/// How long a client token is remembered (as ECS's `clientToken`, for an hour).
pub const CLIENT_TOKEN_TTL_MS: u64 = 3_600_000;

/// The tasks one `CreateTasks` with a client token created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientToken {
    pub token: String,
    pub at: Timestamp,
    pub task_ids: Vec<String>,
}

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
}

impl Key {
    /// The key's bytes in the on-disk object table; sorts revisions numerically.
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
        }
    }
}

impl State {
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// Records a task that arrives already placed in the by-node index.
    fn index(&mut self, task: &Task) {
        if let Some(n) = &task.node {
            self.tasks_by_node
                .entry(n.clone())
                .or_default()
                .insert(task.task_id.clone());
        }
    }

    /// The tasks placed on `node` (stopped ones included), without scanning every task.
    pub fn tasks_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    /// The node whose desired task set a change of `key` may alter: `None` for keys of other
    /// kinds and unplaced tasks, `Some(None)` for a task no longer in the state (its node is
    /// not known any more).
    pub(crate) fn node_of<'a>(&'a self, key: &'a Key) -> Option<Option<&'a str>> {
        match key {
            Key::Task(id) => match self.tasks.get(id) {
                Some(t) => t.node.as_deref().map(Some),
                None => Some(None),
            },
            Key::Node(name) => Some(Some(name)),
            _ => None,
        }
    }

    /// Every task, in ID order starting after `after` and wrapping around to the first.
    pub fn tasks_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Task> + 'a {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        self.tasks
            .range::<str, _>((Excluded(after), Unbounded))
            .chain(self.tasks.range::<str, _>((Unbounded, Included(after))))
            .map(|(_, t)| t)
    }

    pub fn task(&self, namespace: &str, task_id: &str) -> Option<&Task> {
        self.tasks.get(task_id).filter(|t| t.namespace == namespace)
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
            .flat_map(|(_, revs)| revs.iter())
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
            Some(rev) => revs.get(usize::try_from(rev).ok()?.checked_sub(1)?),
            None => revs
                .iter()
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

    /// CPU units and MiB allocated to the tasks that are not stopped, by node name (nodes
    /// without such tasks are absent).
    pub fn allocations(&self) -> std::collections::HashMap<&str, (u64, u64)> {
        let mut used: std::collections::HashMap<&str, (u64, u64)> =
            std::collections::HashMap::new();
        for t in self.tasks.values().filter(|t| !t.is_stopped()) {
            if let Some(n) = t.node.as_deref() {
                let e = used.entry(n).or_default();
                e.0 += u64::from(t.cpu);
                e.1 += u64::from(t.memory);
            }
        }
        used
    }

    /// Every stored object, for snapshots.
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        let defs = self
            .task_definitions
            .values()
            .flatten()
            .cloned()
            .map(Object::TaskDefinition);
        let tasks = self.tasks.values().cloned().map(Object::Task);
        let nodes = self.nodes.values().cloned().map(Object::Node);
        let tokens = self
            .client_tokens
            .values()
            .cloned()
            .map(Object::ClientToken);
        let services = self.services.values().cloned().map(Object::Service);
        defs.chain(tasks).chain(nodes).chain(tokens).chain(services)
    }

    /// The object stored under `key`, if any.
    pub fn object(&self, key: &Key) -> Option<Object> {
        match key {
            Key::TaskDefinition {
                namespace,
                family,
                revision,
            } => self
                .task_definition(
                    namespace,
                    &TaskDefinitionRef {
                        family: family.clone(),
                        revision: Some(*revision),
                    },
                )
                .cloned()
                .map(Object::TaskDefinition),
            Key::Task(id) => self.tasks.get(id).cloned().map(Object::Task),
            Key::Node(name) => self.nodes.get(name).cloned().map(Object::Node),
            Key::ClientToken(token) => self
                .client_tokens
                .get(token)
                .cloned()
                .map(Object::ClientToken),
            Key::Service { namespace, name } => {
                self.service(namespace, name).cloned().map(Object::Service)
            }
        }
    }

    /// Rebuilds a state from stored objects (in any order).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut state = State::default();
        for object in objects {
            match object {
                Object::TaskDefinition(d) => state
                    .task_definitions
                    .entry((d.namespace.clone(), d.family.clone()))
                    .or_default()
                    .push(d),
                Object::Task(t) => {
                    state.index(&t);
                    state.tasks.insert(t.task_id.clone(), t);
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
            }
        }
        for revs in state.task_definitions.values_mut() {
            revs.sort_by_key(|d| d.revision);
        }
        state
    }

    /// Applies one command. Returns the answer for the proposer and the keys of every object
    /// the command changed (so the caller persists exactly those).
    pub fn apply(&mut self, command: Command) -> (CommandResult, Vec<Key>) {
        let mut changed = Vec::new();
        let result = match command {
            Command::Batch(commands) => CommandResult::Batch(
                commands
                    .into_iter()
                    .map(|c| {
                        let (result, keys) = self.apply(c);
                        changed.extend(keys);
                        result
                    })
                    .collect(),
            ),
            Command::RegisterTaskDefinition {
                namespace,
                spec,
                reuse_identical,
                at,
            } => self.register_task_definition(namespace, spec, reuse_identical, at, &mut changed),
            Command::CreateTasks {
                tasks,
                client_token,
                at,
            } => self.create_tasks(tasks, client_token, at, &mut changed),
            Command::StopTask {
                namespace,
                task_id,
                stop_code,
                reason,
                at,
            } => {
                match self
                    .tasks
                    .get_mut(&task_id)
                    .filter(|t| t.namespace == namespace)
                {
                    None => CommandResult::Rejected(Rejection::NotFound(format!(
                        "task {task_id} not found in namespace {namespace}"
                    ))),
                    Some(task) => {
                        if task.desired_status == DesiredStatus::Running {
                            task.desired_status = DesiredStatus::Stopped;
                            task.stop_code = Some(stop_code);
                            task.stopped_reason = Some(reason.clone());
                            task.events.push(at, format!("stop requested: {reason}"));
                            if task.node.is_none() {
                                task.last_status = TaskStatus::Stopped;
                                task.stopped_at = Some(at);
                            }
                            changed.push(Key::Task(task_id));
                        }
                        CommandResult::Task(Box::new(task.clone()))
                    }
                }
            }
            Command::PlaceTasks {
                placements,
                unplaced,
                at,
            } => {
                self.place_tasks(placements, unplaced, at, &mut changed);
                CommandResult::Done
            }
            Command::ReportTaskStatus { node, updates, at } => {
                for update in updates {
                    let Some(task) = self.tasks.get_mut(&update.task_id) else {
                        continue;
                    };
                    // Reports from a node that no longer owns the task, or about a task that
                    // already stopped, are stale.
                    if task.node.as_deref() != Some(node.as_str()) || task.is_stopped() {
                        continue;
                    }
                    if update.last_status < task.last_status {
                        continue;
                    }
                    let mut touched = update.last_status != task.last_status;
                    task.last_status = update.last_status;
                    if !update.containers.is_empty() {
                        let mut containers = update.containers;
                        // A re-adopting agent no longer knows image digests: keep the known ones.
                        for c in &mut containers {
                            if c.image_digest.is_none() {
                                c.image_digest = task
                                    .containers
                                    .iter()
                                    .find(|old| old.name == c.name)
                                    .and_then(|old| old.image_digest.clone());
                            }
                        }
                        if containers != task.containers {
                            task.containers = containers;
                            touched = true;
                        }
                    }
                    // A task that goes straight to STOPPED never started.
                    let ran = TaskStatus::Running..TaskStatus::Stopped;
                    if ran.contains(&task.last_status) && task.started_at.is_none() {
                        task.started_at = Some(at);
                    }
                    if task.last_status == TaskStatus::Stopped {
                        task.stopped_at = Some(at);
                        task.desired_status = DesiredStatus::Stopped;
                        task.stop_code = task.stop_code.or(update.stop_code);
                        if task.stopped_reason.is_none() {
                            task.stopped_reason = update.stopped_reason;
                        }
                        if let Some(key) = record_service_failure(&mut self.services, task, at) {
                            changed.push(key);
                        }
                    }
                    if let Some(event) = update.event {
                        task.events.push(at, event);
                        touched = true;
                    }
                    if touched {
                        changed.push(Key::Task(update.task_id));
                    }
                }
                CommandResult::Done
            }
            Command::RegisterNode { node, at } => {
                let name = node.name.clone();
                match self.nodes.get_mut(&name) {
                    Some(existing) => {
                        existing.address = node.address;
                        existing.attributes = node.attributes;
                        existing.cpu.total = node.cpu.total;
                        existing.memory.total = node.memory.total;
                        existing.status = NodeStatus::Active;
                        existing.events.push(at, "agent registered again");
                    }
                    None => {
                        let mut node = node;
                        node.registered_at = at;
                        node.events.push(at, "agent registered");
                        self.nodes.insert(name.clone(), node);
                    }
                }
                changed.push(Key::Node(name));
                CommandResult::Done
            }
            Command::MarkNodeDown { node, reason, at } => {
                match self.nodes.get_mut(&node) {
                    Some(n) if n.status != NodeStatus::Down => {
                        n.status = NodeStatus::Down;
                        n.events.push(at, format!("node is DOWN: {reason}"));
                        changed.push(Key::Node(node.clone()));
                        let on_node: Vec<String> = self
                            .tasks_by_node
                            .get(&node)
                            .map(|ids| ids.iter().cloned().collect())
                            .unwrap_or_default();
                        for id in on_node {
                            let Some(task) = self.tasks.get_mut(&id) else {
                                continue;
                            };
                            if task.is_stopped() {
                                continue;
                            }
                            task.last_status = TaskStatus::Stopped;
                            task.desired_status = DesiredStatus::Stopped;
                            task.stop_code = Some(StopCode::NodeLost);
                            task.stopped_reason = Some(format!("node {node} was lost: {reason}"));
                            task.stopped_at = Some(at);
                            task.events.push(at, format!("node {node} was lost"));
                            changed.push(Key::Task(task.task_id.clone()));
                        }
                        CommandResult::Done
                    }
                    Some(_) => CommandResult::Done,
                    None => CommandResult::Rejected(Rejection::NotFound(format!("node {node} not found"))),
                }
            }
            Command::SetNodeStatus { node, status, at } => match self.nodes.get_mut(&node) {
                None => CommandResult::Rejected(Rejection::NotFound(format!(
                    "node {node} not found; `berth get nodes` lists them"
                ))),
                Some(n) if n.status == NodeStatus::Down || status == NodeStatus::Down => {
                    CommandResult::Rejected(Rejection::Invalid(format!(
                        "node {node} is {}; a node becomes DOWN when its agent stops answering and ACTIVE when it registers again",
                        n.status
                    )))
                }
                Some(n) => {
                    if n.status != status {
                        n.status = status;
                        n.events.push(at, format!("node set to {status} by an operator"));
                        changed.push(Key::Node(node));
                    }
                    CommandResult::Done
                }
            },
            Command::ApplyService {
                namespace,
                spec,
                deployment_id,
                at,
            } => self.apply_service(namespace, *spec, deployment_id, at, &mut changed),
            Command::UpdateService {
                namespace,
                name,
                change,
                at,
            } => self.update_service(&namespace, &name, change, at, &mut changed),
            Command::ReconcileService {
                namespace,
                name,
                version,
                service,
                start,
                stop,
                remove,
                at,
            } => self.reconcile_service(
                (namespace, name),
                version,
                *service,
                start,
                stop,
                remove,
                at,
                &mut changed,
            ),
            Command::AutoScale {
                namespace,
                name,
                version,
                desired_count,
                scale_out,
                reason,
                at,
            } => {
                let key = (namespace.clone(), name.clone());
                match self.services.get_mut(&key) {
                    None => CommandResult::Rejected(Rejection::NotFound(format!(
                        "service {name} not found"
                    ))),
                    Some(svc) if svc.version != version => {
                        CommandResult::Rejected(Rejection::Conflict(format!(
                            "service {name} changed (version {version} -> {})",
                            svc.version
                        )))
                    }
                    Some(svc) if svc.status != ServiceStatus::Active => CommandResult::Done,
                    Some(svc) => {
                        svc.desired_count = desired_count;
                        if scale_out {
                            svc.last_scale_out_at = at;
                        } else {
                            svc.last_scale_in_at = at;
                        }
                        svc.events.push(at, reason);
                        svc.version += 1;
                        changed.push(Key::Service { namespace, name });
                        CommandResult::Done
                    }
                }
            }
            Command::ReplaceState { objects, at: _ } => {
                changed.extend(self.objects().map(|o| o.key()));
                *self = State::from_objects(objects);
                changed.extend(self.objects().map(|o| o.key()));
                CommandResult::Done
            }
        };
        (result, changed)
    }

    fn apply_service(
        &mut self,
        namespace: String,
        spec: ServiceSpec,
        deployment_id: String,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if let Err(e) = spec.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        if spec.task_definition.revision.is_none()
            || self
                .task_definition(&namespace, &spec.task_definition)
                .is_none()
        {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "task definition {} not found in namespace {namespace}",
                spec.task_definition
            )));
        }
        let key = (namespace.clone(), spec.name.clone());
        let store_key = Key::Service {
            namespace: namespace.clone(),
            name: spec.name.clone(),
        };
        let Some(svc) = self.services.get_mut(&key) else {
            let desired_count = spec
                .autoscaling
                .as_ref()
                .map_or(spec.desired_count, |a| a.clamp(spec.desired_count));
            let mut svc = Service {
                namespace,
                name: spec.name,
                task_definition: spec.task_definition.clone(),
                desired_count,
                deployment_configuration: spec.deployment_configuration,
                placement: spec.placement,
                meta: spec.meta,
                status: ServiceStatus::Active,
                running_count: 0,
                pending_count: 0,
                deployments: vec![Deployment::new(deployment_id, spec.task_definition, at)],
                version: 1,
                created_at: at,
                last_completed: None,
                backoff: Default::default(),
                autoscaling: spec.autoscaling,
                last_scale_out_at: 0,
                last_scale_in_at: 0,
                metrics: Vec::new(),
                events: Default::default(),
            };
            svc.events.push(
                at,
                format!(
                    "created with {} and desired count {}",
                    svc.task_definition, svc.desired_count
                ),
            );
            changed.push(store_key);
            self.services.insert(key, svc.clone());
            return CommandResult::Service {
                service: Box::new(svc),
                created: true,
                changed: true,
                deployment_started: true,
            };
        };
        if svc.status == ServiceStatus::Draining {
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "service {} is being deleted; apply it again once `berth get services` no longer lists it",
                svc.name
            )));
        }
        let new_revision =
            svc.deployments.first().map(|d| &d.task_definition) != Some(&spec.task_definition);
        let mut messages = Vec::new();
        if svc.autoscaling != spec.autoscaling {
            messages.push(if spec.autoscaling.is_some() {
                "autoscaling policy set".to_owned()
            } else {
                "autoscaling removed".to_owned()
            });
            svc.autoscaling = spec.autoscaling;
        }
        // With autoscaling the autoscaler owns the count: a manifest's desiredCount only
        // matters when it creates the service.
        let desired = match &svc.autoscaling {
            Some(a) => a.clamp(svc.desired_count),
            None => spec.desired_count,
        };
        if svc.desired_count != desired {
            messages.push(format!("desired count {} -> {desired}", svc.desired_count));
            svc.desired_count = desired;
        }
        if svc.deployment_configuration != spec.deployment_configuration {
            messages.push("deployment configuration changed".to_owned());
            svc.deployment_configuration = spec.deployment_configuration;
        }
        if svc.placement != spec.placement {
            messages.push("placement changed".to_owned());
            svc.placement = spec.placement;
        }
        if svc.meta != spec.meta {
            messages.push("labels or annotations changed".to_owned());
            svc.meta = spec.meta;
        }
        if new_revision {
            for d in &mut svc.deployments {
                d.status = DeploymentStatus::Active;
            }
            messages.push(format!(
                "deployment {deployment_id} started: {} -> {}",
                svc.task_definition, spec.task_definition
            ));
            let mut next = Deployment::new(deployment_id, spec.task_definition.clone(), at);
            next.rollback_to = rollback_target(svc, &spec.task_definition);
            svc.deployments.insert(0, next);
            svc.task_definition = spec.task_definition;
            // A new revision starts without the old one's launch back-off.
            svc.backoff = Default::default();
        }
        let was_changed = !messages.is_empty();
        if was_changed {
            svc.version += 1;
            svc.events.push(at, messages.join("; "));
            changed.push(store_key);
        }
        CommandResult::Service {
            service: Box::new(svc.clone()),
            created: false,
            changed: was_changed,
            deployment_started: new_revision,
        }
    }

    fn update_service(
        &mut self,
        namespace: &str,
        name: &str,
        change: ServiceChange,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let Some(svc) = self
            .services
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "service {name} not found in namespace {namespace}; `berth get services` lists them"
            )));
        };
        if svc.status == ServiceStatus::Draining {
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "service {name} is being deleted"
            )));
        }
        match change {
            ServiceChange::Scale(n) => {
                if n > berth_model::MAX_DESIRED_COUNT {
                    return CommandResult::Rejected(Rejection::Invalid(format!(
                        "desired count {n} is too many; use at most {}",
                        berth_model::MAX_DESIRED_COUNT
                    )));
                }
                if svc.desired_count == n {
                    return CommandResult::Service {
                        service: Box::new(svc.clone()),
                        created: false,
                        changed: false,
                        deployment_started: false,
                    };
                }
                svc.events.push(
                    at,
                    format!("scaled: desired count {} -> {n}", svc.desired_count),
                );
                svc.desired_count = n;
            }
            ServiceChange::Delete => {
                svc.status = ServiceStatus::Draining;
                svc.desired_count = 0;
                svc.events
                    .push(at, "deleted: stopping its tasks, then removing it");
            }
            ServiceChange::Promote => {
                let canary = svc.deployment_configuration.strategy
                    == berth_model::DeploymentStrategy::Canary;
                match svc.deployments.first_mut() {
                    Some(d)
                        if canary && d.rollout_state == RolloutState::InProgress && !d.promoted =>
                    {
                        d.promoted = true;
                        d.updated_at = at;
                        let message = format!("deployment {} promoted by an operator", d.id);
                        svc.events.push(at, message);
                    }
                    _ => {
                        return CommandResult::Rejected(Rejection::Invalid(format!(
                            "service {name} has no canary deployment waiting to be promoted"
                        )))
                    }
                }
            }
        }
        svc.version += 1;
        changed.push(Key::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        CommandResult::Service {
            service: Box::new(svc.clone()),
            created: false,
            changed: true,
            deployment_started: false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reconcile_service(
        &mut self,
        key: (String, String),
        version: u64,
        service: Service,
        start: Vec<Task>,
        stop: Vec<StopOrder>,
        remove: bool,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let store_key = Key::Service {
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        match self.services.get(&key) {
            None => {
                return CommandResult::Rejected(Rejection::NotFound(format!(
                    "service {} not found",
                    key.1
                )))
            }
            Some(s) if s.version != version => {
                return CommandResult::Rejected(Rejection::Conflict(format!(
                    "service {} changed (version {} -> {})",
                    key.1, version, s.version
                )))
            }
            Some(_) => {}
        }
        for order in stop {
            let Some(task) = self.tasks.get_mut(&order.task_id) else {
                continue;
            };
            if task.desired_status != DesiredStatus::Running || task.is_stopped() {
                continue;
            }
            task.desired_status = DesiredStatus::Stopped;
            task.stop_code = Some(StopCode::ServiceSchedulerInitiated);
            task.stopped_reason = Some(order.reason.clone());
            task.events.push(
                at,
                format!("stopped by the service scheduler: {}", order.reason),
            );
            if task.node.is_none() {
                task.last_status = TaskStatus::Stopped;
                task.stopped_at = Some(at);
            }
            changed.push(Key::Task(order.task_id));
        }
        for mut task in start {
            if self.tasks.contains_key(&task.task_id) {
                continue;
            }
            task.created_at = at;
            task.events.push(at, "created by the service scheduler");
            changed.push(Key::Task(task.task_id.clone()));
            self.index(&task);
            self.tasks.insert(task.task_id.clone(), task);
        }
        if remove {
            self.services.remove(&key);
        } else {
            let mut service = service;
            service.version = version;
            self.services.insert(key, service);
        }
        changed.push(store_key);
        CommandResult::Done
    }

    fn register_task_definition(
        &mut self,
        namespace: String,
        spec: berth_model::TaskDefinitionSpec,
        reuse_identical: bool,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if let Err(e) = spec.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        let revs = self
            .task_definitions
            .entry((namespace.clone(), spec.family.clone()))
            .or_default();
        if reuse_identical {
            if let Some(latest) = revs
                .iter()
                .rev()
                .find(|d| d.status == TaskDefinitionStatus::Active)
            {
                if latest.matches(&spec) {
                    return CommandResult::TaskDefinition {
                        task_definition: latest.clone(),
                        created: false,
                    };
                }
            }
        }
        let revision = u32::try_from(revs.len() + 1).unwrap_or(u32::MAX);
        let def = TaskDefinition {
            namespace: namespace.clone(),
            family: spec.family.clone(),
            revision,
            status: TaskDefinitionStatus::Active,
            cpu: spec.cpu,
            memory: spec.memory,
            containers: spec.containers,
            placement: spec.placement,
            meta: spec.meta,
            registered_at: at,
        };
        revs.push(def.clone());
        changed.push(Key::TaskDefinition {
            namespace,
            family: spec.family,
            revision,
        });
        CommandResult::TaskDefinition {
            task_definition: def,
            created: true,
        }
    }

    fn create_tasks(
        &mut self,
        mut tasks: Vec<Task>,
        client_token: Option<String>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        self.expire_client_tokens(at, changed);
        if let Some(seen) = client_token
            .as_ref()
            .and_then(|t| self.client_tokens.get(t))
        {
            let tasks = seen
                .task_ids
                .iter()
                .filter_map(|id| self.tasks.get(id))
                .cloned()
                .collect();
            return CommandResult::Tasks(tasks);
        }
        for task in &tasks {
            if task.task_definition.revision.is_none()
                || self
                    .task_definition(&task.namespace, &task.task_definition)
                    .is_none()
            {
                return CommandResult::Rejected(Rejection::NotFound(format!(
                    "task definition {} not found in namespace {}",
                    task.task_definition, task.namespace
                )));
            }
            if self.tasks.contains_key(&task.task_id) {
                return CommandResult::Rejected(Rejection::Invalid(format!(
                    "task {} already exists",
                    task.task_id
                )));
            }
        }
        for task in &mut tasks {
            task.created_at = at;
            task.events.push(at, "created");
            changed.push(Key::Task(task.task_id.clone()));
            self.index(task);
            self.tasks.insert(task.task_id.clone(), task.clone());
        }
        if let Some(token) = client_token {
            let record = ClientToken {
                token: token.clone(),
                at,
                task_ids: tasks.iter().map(|t| t.task_id.clone()).collect(),
            };
            self.token_ages.insert((at, token.clone()));
            self.client_tokens.insert(token.clone(), record);
            changed.push(Key::ClientToken(token));
        }
        CommandResult::Tasks(tasks)
    }

    /// Forgets client tokens older than [`CLIENT_TOKEN_TTL_MS`] at `now` (the command's time).
    fn expire_client_tokens(&mut self, now: Timestamp, changed: &mut Vec<Key>) {
        let cutoff = now.saturating_sub(CLIENT_TOKEN_TTL_MS);
        while let Some((at, token)) = self.token_ages.first().cloned() {
            if at >= cutoff {
                break;
            }
            self.token_ages.remove(&(at, token.clone()));
            self.client_tokens.remove(&token);
            changed.push(Key::ClientToken(token));
        }
    }

    fn place_tasks(
        &mut self,
        placements: Vec<Placement>,
        unplaced: Vec<Unplaced>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) {
        for Placement { task_id, node } in placements {
            let node_ok = self
                .nodes
                .get(&node)
                .is_some_and(|n| n.status == NodeStatus::Active);
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            if !node_ok
                || task.node.is_some()
                || task.desired_status != DesiredStatus::Running
                || task.last_status != TaskStatus::Pending
            {
                continue;
            }
            task.events.push(at, format!("placed on node {node}"));
            self.tasks_by_node
                .entry(node.clone())
                .or_default()
                .insert(task_id.clone());
            task.node = Some(node);
            changed.push(Key::Task(task_id));
        }
        for Unplaced { task_id, reason } in unplaced {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            if task.node.is_some() || task.is_stopped() {
                continue;
            }
            let message = format!("unable to place: {reason}");
            if task.events.last().map(|e| e.message.as_str()) != Some(message.as_str()) {
                task.events.push(at, message);
                changed.push(Key::Task(task_id));
            }
        }
    }
}

/// What a new deployment of `next` rolls back to: the last revision that completed; else the
/// current primary's when some of its tasks are healthy; else what the current primary would
/// have rolled back to; else the current primary's (the revision the user had asked for
/// before). So a bad deploy on top of an unfinished one still has somewhere to go back to.
fn rollback_target(svc: &Service, next: &TaskDefinitionRef) -> Option<TaskDefinitionRef> {
    let primary = svc
        .deployments
        .first()
        .filter(|d| d.rollout_state != RolloutState::Failed);
    svc.last_completed
        .clone()
        .or_else(|| {
            primary
                .filter(|d| d.healthy_count > 0)
                .map(|d| d.task_definition.clone())
        })
        .or_else(|| svc.deployments.first().and_then(|d| d.rollback_to.clone()))
        .or_else(|| primary.map(|d| d.task_definition.clone()))
        .filter(|td| td != next)
}

/// When a stopped service task failed on its own (not stopped by a user, the scheduler or a
/// lost node), records it on its service. Returns the service's key when it changed.
fn record_service_failure(
    services: &mut BTreeMap<(String, String), Service>,
    task: &Task,
    at: Timestamp,
) -> Option<Key> {
    let name = task.group.as_deref()?.strip_prefix("service:")?;
    let deployment = task.started_by.as_deref()?;
    if matches!(
        task.stop_code,
        Some(StopCode::UserInitiated | StopCode::ServiceSchedulerInitiated | StopCode::NodeLost)
    ) {
        return None;
    }
    let svc = services.get_mut(&(task.namespace.clone(), name.to_owned()))?;
    let reason = task
        .stopped_reason
        .as_deref()
        .or_else(|| task.containers.iter().find_map(|c| c.reason.as_deref()))
        .unwrap_or("it stopped");
    svc.record_failed_task(deployment, &task.task_id, reason, at);
    Some(Key::Service {
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_model::{
        ContainerDefinition, ContainerState, EventLog, Resources, StopCode, TaskDefinitionSpec,
        TaskStatusUpdate,
    };

    use super::*;

    fn state_with_task() -> State {
        let mut s = State::default();
        s.apply(Command::RegisterTaskDefinition {
            namespace: "default".into(),
            spec: TaskDefinitionSpec {
                meta: Default::default(),
                family: "web".into(),
                cpu: 256,
                memory: 64,
                containers: vec![ContainerDefinition::new("app", "busybox")],
                placement: Default::default(),
            },
            reuse_identical: false,
            at: 1,
        });
        s.apply(Command::RegisterNode {
            at: 1,
            node: Node {
                name: "n1".into(),
                address: "127.0.0.1:1".into(),
                status: NodeStatus::Active,
                attributes: BTreeMap::new(),
                cpu: Resources {
                    total: 1024,
                    allocated: 0,
                },
                memory: Resources {
                    total: 1024,
                    allocated: 0,
                },
                registered_at: 1,
                events: EventLog::default(),
            },
        });
        s.apply(Command::CreateTasks {
            tasks: vec![Task {
                labels: Default::default(),
                task_id: "t1".into(),
                namespace: "default".into(),
                task_definition: "web:1".parse().expect("ref"),
                group: None,
                started_by: None,
                node: None,
                desired_status: DesiredStatus::Running,
                last_status: TaskStatus::Pending,
                cpu: 256,
                memory: 64,
                created_at: 2,
                started_at: None,
                stopped_at: None,
                stop_code: None,
                stopped_reason: None,
                containers: vec![ContainerState::pending("app", "busybox")],
                events: EventLog::default(),
                placement: Default::default(),
                metrics: None,
            }],
            client_token: Some("tok-1".into()),
            at: 2,
        });
        s
    }

    fn report(status: TaskStatus, exit: Option<i32>, code: Option<StopCode>) -> Command {
        Command::ReportTaskStatus {
            node: "n1".into(),
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                last_status: status,
                containers: vec![ContainerState {
                    last_status: status,
                    exit_code: exit,
                    ..ContainerState::pending("app", "busybox")
                }],
                stop_code: code,
                stopped_reason: code.map(|_| "Essential container in task exited".into()),
                event: None,
            }],
            at: 10,
        }
    }

    fn summary(s: &State) -> String {
        let t = s.task("default", "t1").expect("task exists");
        format!(
            "{} desired={} node={:?} code={:?} exit={:?} node_cpu={}",
            t.last_status,
            t.desired_status,
            t.node,
            t.stop_code,
            t.exit_code(),
            s.node("n1")
                .map_or(0, |n| s.node_with_allocation(n).cpu.allocated)
        )
    }

    #[test]
    fn lifecycle_of_a_task_that_exits() {
        let mut s = state_with_task();
        s.apply(Command::PlaceTasks {
            placements: vec![Placement {
                task_id: "t1".into(),
                node: "n1".into(),
            }],
            unplaced: vec![],
            at: 3,
        });
        assert_eq!(
            summary(&s),
            "PENDING desired=RUNNING node=Some(\"n1\") code=None exit=None node_cpu=256"
        );
        // The by-node index is derived state: rebuilt from objects it is the same.
        assert_eq!(s.tasks_on("n1").count(), 1);
        assert_eq!(State::from_objects(s.objects()), s);
        s.apply(report(TaskStatus::Running, None, None));
        // A report from another node is stale and ignored.
        let (_, changed) = s.apply(Command::ReportTaskStatus {
            node: "n2".into(),
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                last_status: TaskStatus::Stopped,
                containers: vec![],
                stop_code: None,
                stopped_reason: None,
                event: None,
            }],
            at: 11,
        });
        assert!(changed.is_empty());
        s.apply(report(
            TaskStatus::Stopped,
            Some(3),
            Some(StopCode::EssentialContainerExited),
        ));
        assert_eq!(
            summary(&s),
            "STOPPED desired=STOPPED node=Some(\"n1\") code=Some(EssentialContainerExited) exit=Some(3) node_cpu=0"
        );
        // Never backwards.
        s.apply(report(TaskStatus::Running, None, None));
        assert!(s.task("default", "t1").is_some_and(Task::is_stopped));
    }

    #[test]
    fn user_stop_keeps_its_stop_code() {
        let mut s = state_with_task();
        s.apply(Command::PlaceTasks {
            placements: vec![Placement {
                task_id: "t1".into(),
                node: "n1".into(),
            }],
            unplaced: vec![],
            at: 3,
        });
        s.apply(Command::StopTask {
            namespace: "default".into(),
            task_id: "t1".into(),
            stop_code: StopCode::UserInitiated,
            reason: "Task stopped by user".into(),
            at: 4,
        });
        s.apply(report(
            TaskStatus::Stopped,
            Some(137),
            Some(StopCode::EssentialContainerExited),
        ));
        assert_eq!(
            summary(&s),
            "STOPPED desired=STOPPED node=Some(\"n1\") code=Some(UserInitiated) exit=Some(137) node_cpu=0"
        );
    }

    #[test]
    fn stopping_an_unplaced_task_stops_it_at_once_and_unknown_ids_are_not_found() {
        let mut s = state_with_task();
        s.apply(Command::StopTask {
            namespace: "default".into(),
            task_id: "t1".into(),
            stop_code: StopCode::UserInitiated,
            reason: "Task stopped by user".into(),
            at: 4,
        });
        assert_eq!(
            summary(&s),
            "STOPPED desired=STOPPED node=None code=Some(UserInitiated) exit=None node_cpu=0"
        );
        let (result, _) = s.apply(Command::StopTask {
            namespace: "other".into(),
            task_id: "t1".into(),
            stop_code: StopCode::UserInitiated,
            reason: String::new(),
            at: 5,
        });
        assert_eq!(
            result,
            CommandResult::Rejected(Rejection::NotFound(
                "task t1 not found in namespace other".into()
            ))
        );
    }

    #[test]
    fn tasks_after_wraps_around() {
        let mut s = state_with_task();
        let t1 = s.task("default", "t1").cloned().expect("t1");
        let more = ["t0", "t2"]
            .map(|id| Task {
                task_id: id.into(),
                ..t1.clone()
            })
            .to_vec();
        s.apply(Command::CreateTasks {
            tasks: more,
            client_token: None,
            at: 3,
        });
        let ids = |after: &str| {
            s.tasks_after(after)
                .map(|t| t.task_id.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(""), ["t0", "t1", "t2"]);
        assert_eq!(ids("t1"), ["t2", "t0", "t1"]);
        assert_eq!(ids("t2"), ["t0", "t1", "t2"]);
    }

    #[test]
    fn unplaced_reason_is_recorded_once() {
        let mut s = state_with_task();
        for at in [3, 4] {
            s.apply(Command::PlaceTasks {
                placements: vec![],
                unplaced: vec![Unplaced {
                    task_id: "t1".into(),
                    reason: "no nodes".into(),
                }],
                at,
            });
        }
        let events: Vec<_> = s
            .task("default", "t1")
            .map(|t| t.events.iter().map(|e| e.message.clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            events,
            vec!["created".to_owned(), "unable to place: no nodes".to_owned()]
        );
    }

    #[test]
    fn a_retried_client_token_creates_nothing_new_until_it_expires() {
        let mut s = state_with_task();
        let retry = |id: &str, at| Command::CreateTasks {
            tasks: vec![Task {
                task_id: id.into(),
                ..s.task("default", "t1").cloned().expect("t1")
            }],
            client_token: Some("tok-1".into()),
            at,
        };
        let (result, changed) = s.clone().apply(retry("t2", 3));
        assert!(matches!(&result, CommandResult::Tasks(t) if t.len() == 1 && t[0].task_id == "t1"));
        assert!(changed.is_empty());
        let (result, _) = s.apply(retry("t2", 2 + CLIENT_TOKEN_TTL_MS + 1));
        assert!(matches!(&result, CommandResult::Tasks(t) if t[0].task_id == "t2"));
        assert_eq!(s.tasks().count(), 2);
    }

    #[test]
    fn replace_state_touches_old_and_new_keys() {
        let mut s = state_with_task();
        let (_, changed) = s.apply(Command::ReplaceState {
            objects: vec![],
            at: 9,
        });
        assert_eq!(s, State::default());
        assert!(changed.contains(&Key::Task("t1".into())));
        assert!(changed.contains(&Key::ClientToken("tok-1".into())));
    }

    fn service_spec(desired: u32) -> berth_model::ServiceSpec {
        berth_model::ServiceSpec {
            meta: Default::default(),
            name: "svc".into(),
            task_definition: "web:1".parse().expect("ref"),
            desired_count: desired,
            deployment_configuration: Default::default(),
            placement: Default::default(),
            autoscaling: None,
        }
    }

    fn service_task(id: &str, deployment: &str) -> Task {
        Task {
            task_id: id.into(),
            group: Some("service:svc".into()),
            started_by: Some(deployment.into()),
            ..state_with_task()
                .task("default", "t1")
                .cloned()
                .expect("t1")
        }
    }

    fn get_service(s: &State) -> Service {
        s.service("default", "svc")
            .cloned()
            .expect("service exists")
    }

    #[test]
    fn applying_a_service_starts_a_deployment_only_when_the_revision_changes() {
        let mut s = state_with_task();
        let apply = |spec, id: &str, at| Command::ApplyService {
            namespace: "default".into(),
            spec: Box::new(spec),
            deployment_id: id.into(),
            at,
        };
        let (r, _) = s.apply(apply(service_spec(2), "d1", 5));
        assert!(matches!(r, CommandResult::Service { created: true, .. }));
        let (r, changed) = s.apply(apply(service_spec(2), "d2", 6));
        assert!(
            matches!(r, CommandResult::Service { changed: false, .. }),
            "{r:?}"
        );
        assert!(changed.is_empty());
        let (r, _) = s.apply(apply(service_spec(4), "d3", 7));
        assert!(matches!(
            r,
            CommandResult::Service {
                changed: true,
                deployment_started: false,
                ..
            }
        ));
        let svc = get_service(&s);
        assert_eq!(
            (svc.desired_count, svc.deployments.len(), svc.version),
            (4, 1, 2)
        );
        // An unknown revision is refused and changes nothing.
        let mut bad = service_spec(4);
        bad.task_definition = "web:9".parse().expect("ref");
        let (r, changed) = s.apply(apply(bad, "d4", 8));
        assert!(matches!(r, CommandResult::Rejected(Rejection::NotFound(_))));
        assert!(changed.is_empty());
    }

    #[test]
    fn reconciler_decisions_for_an_older_version_are_refused() {
        let mut s = state_with_task();
        s.apply(Command::ApplyService {
            namespace: "default".into(),
            spec: Box::new(service_spec(1)),
            deployment_id: "d1".into(),
            at: 5,
        });
        let seen = get_service(&s);
        s.apply(Command::UpdateService {
            namespace: "default".into(),
            name: "svc".into(),
            change: ServiceChange::Scale(3),
            at: 6,
        });
        let (r, changed) = s.apply(Command::ReconcileService {
            namespace: "default".into(),
            name: "svc".into(),
            version: seen.version,
            service: Box::new(seen.clone()),
            start: vec![service_task("s1", "d1")],
            stop: vec![],
            remove: false,
            at: 7,
        });
        assert!(matches!(r, CommandResult::Rejected(Rejection::Conflict(_))));
        assert!(changed.is_empty());
        assert!(s.task("default", "s1").is_none());
        assert_eq!(get_service(&s).desired_count, 3, "the user's change stands");
    }

    #[test]
    fn only_tasks_that_fail_on_their_own_count_against_the_deployment() {
        let mut s = state_with_task();
        s.apply(Command::ApplyService {
            namespace: "default".into(),
            spec: Box::new(service_spec(2)),
            deployment_id: "d1".into(),
            at: 5,
        });
        let svc = get_service(&s);
        s.apply(Command::ReconcileService {
            namespace: "default".into(),
            name: "svc".into(),
            version: svc.version,
            service: Box::new(svc),
            start: vec![service_task("s1", "d1"), service_task("s2", "d1")],
            stop: vec![],
            remove: false,
            at: 6,
        });
        s.apply(Command::PlaceTasks {
            placements: ["s1", "s2"]
                .map(|id| Placement {
                    task_id: id.into(),
                    node: "n1".into(),
                })
                .to_vec(),
            unplaced: vec![],
            at: 7,
        });
        // s1 is stopped by a user: not a failure. s2 fails to start: a failure.
        s.apply(Command::StopTask {
            namespace: "default".into(),
            task_id: "s1".into(),
            stop_code: StopCode::UserInitiated,
            reason: "by hand".into(),
            at: 8,
        });
        let stopped = |id: &str, code| TaskStatusUpdate {
            task_id: id.into(),
            last_status: TaskStatus::Stopped,
            containers: vec![],
            stop_code: Some(code),
            stopped_reason: Some("image not found".into()),
            event: None,
        };
        let (_, changed) = s.apply(Command::ReportTaskStatus {
            node: "n1".into(),
            updates: vec![
                stopped("s1", StopCode::EssentialContainerExited),
                stopped("s2", StopCode::TaskFailedToStart),
            ],
            at: 9,
        });
        assert!(changed.contains(&Key::Service {
            namespace: "default".into(),
            name: "svc".into()
        }));
        let svc = get_service(&s);
        assert_eq!(svc.deployments[0].failed_tasks, 1);
        assert_eq!(svc.backoff.failures, 1);
        assert_eq!(svc.backoff.not_before, 9 + 1000);
        assert!(svc
            .events
            .last()
            .is_some_and(|e| e.message == "task s2 failed: image not found"));
    }

    #[test]
    fn a_deleted_service_refuses_changes_and_goes_once_reconciled_away() {
        let mut s = state_with_task();
        s.apply(Command::ApplyService {
            namespace: "default".into(),
            spec: Box::new(service_spec(2)),
            deployment_id: "d1".into(),
            at: 5,
        });
        let update = |change| Command::UpdateService {
            namespace: "default".into(),
            name: "svc".into(),
            change,
            at: 6,
        };
        s.apply(update(ServiceChange::Delete));
        let svc = get_service(&s);
        assert_eq!(
            (svc.status, svc.desired_count),
            (ServiceStatus::Draining, 0)
        );
        let (r, _) = s.apply(update(ServiceChange::Scale(3)));
        assert!(matches!(r, CommandResult::Rejected(Rejection::Invalid(_))));
        let (r, _) = s.apply(Command::ApplyService {
            namespace: "default".into(),
            spec: Box::new(service_spec(2)),
            deployment_id: "d2".into(),
            at: 7,
        });
        assert!(matches!(r, CommandResult::Rejected(Rejection::Invalid(_))));
        s.apply(Command::ReconcileService {
            namespace: "default".into(),
            name: "svc".into(),
            version: svc.version,
            service: Box::new(svc),
            start: vec![],
            stop: vec![],
            remove: true,
            at: 8,
        });
        assert!(s.service("default", "svc").is_none());
        assert_eq!(State::from_objects(s.objects()), s);
    }

    #[test]
    fn objects_round_trip() {
        let s = state_with_task();
        assert_eq!(State::from_objects(s.objects()), s);
    }
}
