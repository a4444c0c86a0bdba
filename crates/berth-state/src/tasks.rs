//! Tasks: creation (with client-token deduplication), stop requests, placement, and the
//! status reports of the node that runs them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use berth_model::{
    DesiredStatus, NodeStatus, StopCode, Task, TaskDefinitionRef, TaskStatus, TaskStatusUpdate,
    Timestamp, Usage,
};

use crate::command::{CommandResult, Placement, Rejection, Unplaced};
use crate::services::record_service_failure;
use crate::{ClientToken, Key, State, TaskId};

impl State {
    /// Refreshes the indexes that follow a task's status (`pending`, `allocated`, live and
    /// stopped sets, the counts by status, by placement group and of host ports) for the
    /// tasks in `changed`. A task's node never changes once set, and a
    /// stopped task never runs again (its stop time stays).
    pub(crate) fn reindex(&mut self, changed: &[Key]) {
        for key in changed {
            let Key::Task(id) = key else { continue };
            let Some((id, task)) = self.tasks.get_key_value(id.as_str()) else {
                // Removed: `unindex` has forgotten it.
                continue;
            };
            // Shared, not copied: the indexes hold the map's own ID.
            let (id, task) = (id.clone(), Arc::clone(task));
            let task = task.as_ref();
            if waits_for_a_node(task) {
                self.pending.insert(id.clone());
            } else {
                self.pending.remove(&*id);
            }
            let group = group_of(task);
            if task.is_stopped() {
                if let Some(counted) = self.live.remove(&*id) {
                    count(&mut self.live_statuses, counted, false);
                    if let Some(g) = &group {
                        remove_from(&mut self.live_groups, g, &id);
                    }
                }
                remove_from(&mut self.live_by_namespace, &task.namespace, &id);
                if let Some(node) = &task.node {
                    if remove_from(&mut self.live_by_node, node, &id) {
                        self.count_on_node(node, task, false);
                    }
                }
                let entry = (stopped_at(task), id.clone());
                if let Some(g) = group {
                    self.stopped_groups
                        .entry(g)
                        .or_default()
                        .insert(entry.clone());
                }
                self.stopped.insert(entry);
            } else {
                let status = task.last_status;
                match self.live.insert(id.clone(), status) {
                    None => {
                        if let Some(g) = group {
                            self.live_groups.entry(g).or_default().insert(id.clone());
                        }
                        count(&mut self.live_statuses, status, true);
                    }
                    Some(counted) if counted != status => {
                        count(&mut self.live_statuses, counted, false);
                        count(&mut self.live_statuses, status, true);
                    }
                    Some(_) => {}
                }
                add_to(&mut self.live_by_namespace, &task.namespace, &id);
                if let Some(node) = &task.node {
                    if add_to(&mut self.live_by_node, node, &id) {
                        self.count_on_node(node, task, true);
                    }
                }
            }
        }
    }

    /// Recomputes every index that follows tasks' status, and the revisions' users, from
    /// every task.
    pub(crate) fn rebuild_indexes(&mut self) {
        self.pending.clear();
        self.live.clear();
        self.live_statuses.clear();
        self.live_groups.clear();
        self.live_by_node.clear();
        self.live_by_namespace.clear();
        self.stopped.clear();
        self.stopped_groups.clear();
        self.revision_users.clear();
        let keys: Vec<Key> = self
            .tasks
            .keys()
            .map(|id| Key::Task(id.to_string()))
            .collect();
        for task in self.tasks.values() {
            *self.revision_users.entry(revision_of(task)).or_default() += 1;
        }
        self.allocated.clear();
        self.placed.clear();
        self.host_ports.clear();
        self.reindex(&keys);
        self.removed_ages.clear();
        self.removed_by_node.clear();
        for r in self.removed.values() {
            self.removed_ages.insert((r.removed_at, r.task_id.clone()));
            if let Some(node) = &r.node {
                self.removed_by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(r.task_id.clone());
            }
        }
    }

    /// Counts `task` on `node` (it joined the node's live set) or stops counting it (it left):
    /// the node's allocation, its placement group's count there, the host ports it takes.
    fn count_on_node(&mut self, node: &str, task: &Task, add: bool) {
        allocate(&mut self.allocated, node, task, add);
        count_placed(&mut self.placed, node, task, add);
        self.count_ports(node, task, add);
    }

    /// Counts the fixed host ports of `task`'s definition on `node`, or stops counting them
    /// (it joined or left the node's live set); ports at zero leave, and so do nodes without
    /// any. A task's definition stays while a task uses it.
    fn count_ports(&mut self, node: &str, task: &Task, add: bool) {
        // Only an exact revision stays the same between the add and the removal (every task
        // the state creates names one).
        if task.task_definition.revision.is_none() {
            return;
        }
        let ports: Vec<_> = self
            .task_definition(&task.namespace, &task.task_definition)
            .map(|d| d.fixed_host_ports().collect())
            .unwrap_or_default();
        if ports.is_empty() {
            return;
        }
        let taken = self.host_ports.entry(node.to_owned()).or_default();
        for port in ports {
            count(taken, port, add);
        }
        if taken.is_empty() {
            self.host_ports.remove(node);
        }
    }

    /// The tasks waiting for a node, the first after task ID `after` first (wrapping around).
    pub fn pending_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Task> + 'a {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        self.pending
            .range::<str, _>((Excluded(after), Unbounded))
            .chain(self.pending.range::<str, _>((Unbounded, Included(after))))
            .filter_map(|id| self.task_by_id(id))
    }

    /// Adds a new task to the map and to the indexes that never change with its status (by
    /// namespace, by node once placed, its revision's users), under one shared ID;
    /// [`State::reindex`] does the rest.
    pub(crate) fn insert_task(&mut self, task: Task) {
        let id: TaskId = Arc::from(task.task_id.as_str());
        *self.revision_users.entry(revision_of(&task)).or_default() += 1;
        self.tasks_by_namespace
            .entry(task.namespace.clone())
            .or_default()
            .insert(id.clone());
        if let Some(n) = &task.node {
            self.tasks_by_node
                .entry(n.clone())
                .or_default()
                .insert(id.clone());
        }
        self.tasks.insert(id, Arc::new(task));
    }

    pub(crate) fn create_tasks(
        &mut self,
        tasks: Vec<Task>,
        client_token: Option<String>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        self.expire_client_tokens(at, changed);
        let ours = tasks.first().map(|t| t.namespace.as_str());
        if let Some(earlier) = self.created_before(client_token.as_deref(), ours) {
            return earlier;
        }
        self.create_new_tasks(tasks, client_token, at, changed)
    }

    /// `RunTasks`: the tasks `task_ids` of `definition` (namespace, exact revision), each as
    /// `Task::pending` makes it with what `run` adds, created as `create_tasks` creates them.
    pub(crate) fn run_tasks(
        &mut self,
        (namespace, definition): (String, TaskDefinitionRef),
        task_ids: Vec<String>,
        run: Run,
        client_token: Option<String>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        self.expire_client_tokens(at, changed);
        if let Some(earlier) = self.created_before(client_token.as_deref(), Some(&namespace)) {
            return earlier;
        }
        let def = match self.task_definition(&namespace, &definition) {
            Some(def) if definition.revision.is_some() => def,
            _ => {
                return CommandResult::Rejected(Rejection::NotFound(format!(
                    "task definition {definition} not found in namespace {namespace}"
                )))
            }
        };
        let tasks = task_ids
            .into_iter()
            .map(|id| {
                let mut task = Task::pending(id, &namespace, def, at);
                task.overrides.clone_from(&run.overrides);
                task.started_by.clone_from(&run.started_by);
                task.group.clone_from(&run.group);
                task.labels
                    .extend(run.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                task
            })
            .collect();
        self.create_new_tasks(tasks, client_token, at, changed)
    }

    /// The answer to a repeated call: the tasks created under `client_token` before, to a
    /// caller in their namespace `ours` (another namespace's learns nothing of them).
    fn created_before(
        &self,
        client_token: Option<&str>,
        ours: Option<&str>,
    ) -> Option<CommandResult> {
        let seen = self.client_tokens.get(client_token?)?;
        let earlier: Vec<Task> = seen
            .task_ids
            .iter()
            .filter_map(|id| self.task_by_id(id))
            .cloned()
            .collect();
        if earlier.iter().any(|t| Some(t.namespace.as_str()) != ours) {
            return Some(CommandResult::Rejected(Rejection::Conflict(format!(
                "client token {} was used for tasks of another namespace; choose another token",
                seen.token
            ))));
        }
        Some(CommandResult::Tasks(earlier))
    }

    fn create_new_tasks(
        &mut self,
        mut tasks: Vec<Task>,
        client_token: Option<String>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
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
            if self.tasks.contains_key(task.task_id.as_str()) {
                return CommandResult::Rejected(Rejection::Invalid(format!(
                    "task {} already exists",
                    task.task_id
                )));
            }
        }
        // All or nothing: the tasks of each namespace must fit its quota together.
        let mut asked: BTreeMap<&str, Usage> = BTreeMap::new();
        for task in &tasks {
            *asked.entry(task.namespace.as_str()).or_default() += Usage::of_task(task);
        }
        for (namespace, asked) in asked {
            if let Err(e) = self.admit(namespace, asked) {
                return CommandResult::Rejected(Rejection::QuotaExceeded(e.to_string()));
            }
        }
        for task in &mut tasks {
            task.created_at = at;
            task.events.push(at, "created");
            changed.push(Key::Task(task.task_id.clone()));
            self.insert_task(task.clone());
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

    pub(crate) fn stop_task(
        &mut self,
        namespace: String,
        task_id: String,
        stop_code: StopCode,
        reason: String,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        // A task already asked to stop is answered as it is, not copied for writing.
        if let Some(task) = self
            .tasks
            .get(task_id.as_str())
            .filter(|t| t.namespace == namespace && t.desired_status != DesiredStatus::Running)
        {
            return CommandResult::Task(Box::new(Task::clone(task)));
        }
        match self
            .tasks
            .get_mut(task_id.as_str())
            .filter(|t| t.namespace == namespace)
            .map(Arc::make_mut)
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

    pub(crate) fn report_task_status(
        &mut self,
        node: String,
        updates: Vec<TaskStatusUpdate>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        // What the ledger counts from and to (never inside a closed bucket).
        let metered = self.metered_time(at);
        for update in updates {
            // Reports from a node that no longer owns the task, or about a task that
            // already stopped, are stale; so is one behind what the task reached. Checked
            // before the task is copied for writing (a reader or the change feed may share it).
            let stale = |task: &Task| {
                task.node.as_deref() != Some(node.as_str())
                    || task.is_stopped()
                    || update.last_status < task.last_status
            };
            let Some(task) = task_to_change(&mut self.tasks, &update.task_id, |t| !stale(t)) else {
                continue;
            };
            let mut touched = update.last_status != task.last_status;
            // The node's first word about the task: it is pulling the images.
            if task.pull_started_at.is_none() {
                task.pull_started_at = Some(metered);
                touched = true;
            }
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
            if update.ip_address.is_some() && update.ip_address != task.ip_address {
                task.ip_address = update.ip_address;
                touched = true;
            }
            // A task that goes straight to STOPPED never started.
            let ran = TaskStatus::Running..TaskStatus::Stopped;
            if ran.contains(&task.last_status) && task.started_at.is_none() {
                task.started_at = Some(metered);
            }
            if task.last_status == TaskStatus::Stopped {
                task.stopped_at = Some(metered);
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

    /// Applies a scheduling round. A placement is checked again here: a node that is not
    /// ACTIVE, or that the task no longer fits (a new leader decided from a state that was
    /// behind, or tasks were placed on the node since), refuses it; the task stays PENDING with
    /// an event saying why (once), and the next round places it again. Constraints
    /// (`distinctInstance`, `memberOf`) are the scheduler's alone: they are not checked again.
    /// Answers how many placements were applied.
    pub(crate) fn place_tasks(
        &mut self,
        placements: Vec<Placement>,
        unplaced: Vec<Unplaced>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        // Free capacity of the nodes this round touches, computed once per node.
        let mut free: HashMap<String, (u64, u64)> = HashMap::new();
        let mut placed = 0;
        for Placement { task_id, node } in placements {
            let Some(task) = self.tasks.get(task_id.as_str()) else {
                continue;
            };
            if task.node.is_some()
                || task.desired_status != DesiredStatus::Running
                || task.last_status != TaskStatus::Pending
            {
                continue;
            }
            let (cpu, memory) = (u64::from(task.cpu), u64::from(task.memory));
            let refused = match self.nodes.get(&node) {
                None => Some(format!(
                    "placement on node {node} refused: it is not registered"
                )),
                Some(n) if n.status != NodeStatus::Active => Some(format!(
                    "placement on node {node} refused: it is {}",
                    n.status
                )),
                Some(n) => {
                    let room = free.entry(node.clone()).or_insert_with(|| {
                        let (cpu, memory) = self.allocated_on(&node);
                        (
                            n.cpu.total.saturating_sub(cpu),
                            n.memory.total.saturating_sub(memory),
                        )
                    });
                    if cpu > room.0 {
                        Some(format!("placement on node {node} refused: it no longer fits ({cpu} CPU units wanted, {} free)", room.0))
                    } else if memory > room.1 {
                        Some(format!("placement on node {node} refused: it no longer fits ({memory} MiB wanted, {} free)", room.1))
                    } else {
                        room.0 -= cpu;
                        room.1 -= memory;
                        None
                    }
                }
            };
            let (id, task) = self
                .tasks
                .get_key_value_mut(task_id.as_str())
                .expect("task looked up above");
            let (id, task) = (id.clone(), Arc::make_mut(task));
            if let Some(message) = refused {
                // Said once: the next round may propose the same placement again.
                if task.events.last().map(|e| e.message.as_str()) != Some(message.as_str()) {
                    task.events.push(at, message);
                    changed.push(Key::Task(task_id));
                }
                continue;
            }
            placed += 1;
            task.events.push(at, format!("placed on node {node}"));
            self.tasks_by_node
                .entry(node.clone())
                .or_default()
                .insert(id);
            task.node = Some(node);
            changed.push(Key::Task(task_id));
        }
        for Unplaced { task_id, reason } in unplaced {
            let message = format!("unable to place: {reason}");
            // Nothing to write (placed or stopped meanwhile, or already said): the task is
            // not copied for writing.
            let said = |task: &Task| {
                task.node.is_some()
                    || task.is_stopped()
                    || task.events.last().map(|e| e.message.as_str()) == Some(message.as_str())
            };
            let Some(task) = task_to_change(&mut self.tasks, &task_id, |t| !said(t)) else {
                continue;
            };
            task.events.push(at, message);
            changed.push(Key::Task(task_id));
        }
        CommandResult::Placed(placed)
    }
}

impl State {
    /// Takes a task out of the state and out of every index (the retention's removal).
    pub(crate) fn unindex(&mut self, id: &str) -> Option<Task> {
        let (shared_id, task) = self.tasks.remove_with_key(id)?;
        let task = Arc::unwrap_or_clone(task);
        if let Some(ids) = self.tasks_by_namespace.get_mut(&task.namespace) {
            ids.remove(id);
            if ids.is_empty() {
                self.tasks_by_namespace.remove(&task.namespace);
            }
        }
        if let Some(node) = &task.node {
            remove_from(&mut self.tasks_by_node, node, id);
        }
        let revision = revision_of(&task);
        if let Some(n) = self.revision_users.get_mut(&revision) {
            *n -= 1;
            if *n == 0 {
                self.revision_users.remove(&revision);
            }
        }
        self.pending.remove(id);
        let group = group_of(&task);
        if let Some(counted) = self.live.remove(id) {
            count(&mut self.live_statuses, counted, false);
            if let Some(g) = &group {
                remove_from(&mut self.live_groups, g, id);
            }
        }
        remove_from(&mut self.live_by_namespace, &task.namespace, id);
        if let Some(node) = &task.node {
            if remove_from(&mut self.live_by_node, node, id) {
                self.count_on_node(node, &task, false);
            }
        }
        let entry = (stopped_at(&task), shared_id);
        if self.stopped.remove(&entry) {
            if let Some(g) = group {
                if let Some(set) = self.stopped_groups.get_mut(&g) {
                    set.remove(&entry);
                    if set.is_empty() {
                        self.stopped_groups.remove(&g);
                    }
                }
            }
        }
        Some(task)
    }
}

/// The `(namespace, group)` a task belongs to, if it has a group.
fn group_of(task: &Task) -> Option<(String, String)> {
    task.group
        .as_ref()
        .map(|g| (task.namespace.clone(), g.clone()))
}

/// When a stopped task stopped (its creation when no stop time was recorded).
pub(crate) fn stopped_at(task: &Task) -> Timestamp {
    task.stopped_at.unwrap_or(task.created_at)
}

fn revision_of(task: &Task) -> crate::RevisionKey {
    crate::RevisionKey {
        namespace: task.namespace.clone(),
        family: task.task_definition.family.clone(),
        revision: task.task_definition.revision.unwrap_or_default(),
    }
}

/// Takes `id` out of `key`'s set in `index` (and the set, once empty); answers whether it
/// was there.
pub(crate) fn remove_from<K: Ord, T: Ord + std::borrow::Borrow<str>>(
    index: &mut BTreeMap<K, BTreeSet<T>>,
    key: &K,
    id: &str,
) -> bool {
    let Some(set) = index.get_mut(key) else {
        return false;
    };
    let removed = set.remove(id);
    if set.is_empty() {
        index.remove(key);
    }
    removed
}

/// Task `task_id` of `tasks` for writing, if `changes` says the command changes it: copied
/// first when a reader or the change feed shares it, so a command that changes nothing copies
/// nothing.
fn task_to_change<'a>(
    tasks: &'a mut imbl::OrdMap<TaskId, Arc<Task>>,
    task_id: &str,
    changes: impl FnOnce(&Task) -> bool,
) -> Option<&'a mut Task> {
    if !tasks.get(task_id).is_some_and(|t| changes(t)) {
        return None;
    }
    tasks.get_mut(task_id).map(Arc::make_mut)
}

/// What a `RunTasks` adds to each task beyond its definition.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) overrides: Vec<berth_model::ContainerOverride>,
    pub(crate) started_by: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
}

/// Adds `id` to `key`'s set of `index`; whether it was not there. A task's status changes
/// several times while it stays in the same sets: the key is copied only for a new set.
fn add_to(index: &mut BTreeMap<String, BTreeSet<TaskId>>, key: &str, id: &TaskId) -> bool {
    match index.get_mut(key) {
        Some(set) => !set.contains(&**id) && set.insert(id.clone()),
        None => {
            index.insert(key.to_owned(), BTreeSet::from([id.clone()]));
            true
        }
    }
}

/// Adds `task`'s reservation to `node`'s allocation, or takes it away (the task joined or
/// left the node's live set; a task's reservation never changes); nodes at zero leave.
fn allocate(allocated: &mut HashMap<String, (u64, u64)>, node: &str, task: &Task, add: bool) {
    let (cpu, memory) = (u64::from(task.cpu), u64::from(task.memory));
    let current = allocated.get(node).copied().unwrap_or_default();
    let next = match add {
        true => (current.0 + cpu, current.1 + memory),
        false => (
            current.0.saturating_sub(cpu),
            current.1.saturating_sub(memory),
        ),
    };
    if next == (0, 0) {
        allocated.remove(node);
    } else {
        allocated.insert(node.to_owned(), next);
    }
}

/// Counts one more under `key`, or one less (keys at zero leave): tasks by status, host ports.
fn count<K: Ord + Copy + std::fmt::Debug>(counts: &mut BTreeMap<K, u64>, key: K, add: bool) {
    let n = counts.entry(key).or_default();
    if add {
        *n += 1;
    } else {
        debug_assert!(*n > 0, "{key:?} was not counted");
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

/// Counts `task` in its placement group on `node`, or stops counting it (it joined or left
/// the node's live set); counts at zero leave, and so do groups and namespaces without any.
fn count_placed(placed: &mut crate::PlacedByGroup, node: &str, task: &Task, add: bool) {
    let group = task.placement_group();
    if add {
        *placed
            .entry(task.namespace.clone())
            .or_default()
            .entry(group.into_owned())
            .or_default()
            .entry(node.to_owned())
            .or_default() += 1;
        return;
    }
    let Some(groups) = placed.get_mut(&task.namespace) else {
        return;
    };
    if let Some(nodes) = groups.get_mut(group.as_ref()) {
        if let Some(n) = nodes.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                nodes.remove(node);
            }
        }
        if nodes.is_empty() {
            groups.remove(group.as_ref());
        }
    }
    if groups.is_empty() {
        placed.remove(&task.namespace);
    }
}

/// Whether the scheduler is to place `task`: no node yet, to run, and still PENDING.
fn waits_for_a_node(task: &Task) -> bool {
    task.node.is_none()
        && task.desired_status == DesiredStatus::Running
        && task.last_status == TaskStatus::Pending
}
