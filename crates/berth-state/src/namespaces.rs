//! Namespaces: records with a quota, and the admission checks that keep a namespace's tasks
//! within it. `default` exists without a record (no quota), so a cluster that never created a
//! namespace behaves as before. The checks run inside `State::apply`, so every member admits
//! exactly the same work.

use std::sync::OnceLock;

use berth_model::{Namespace, Quota, QuotaExceeded, Task, Timestamp, Usage, DEFAULT_NAMESPACE};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

/// `default` as it is until someone gives it a quota.
fn implicit_default() -> &'static Namespace {
    static DEFAULT: OnceLock<Namespace> = OnceLock::new();
    DEFAULT.get_or_init(|| Namespace::new(DEFAULT_NAMESPACE, Quota::default(), 0))
}

impl State {
    /// A namespace by name; `default` always exists (with no quota until it is given one).
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces
            .get(name)
            .or_else(|| (name == DEFAULT_NAMESPACE).then(implicit_default))
    }

    /// Whether `name` is a namespace (it has a record, or it is `default`).
    pub fn namespace_exists(&self, name: &str) -> bool {
        self.namespace(name).is_some()
    }

    /// Every namespace, by name, `default` included.
    pub fn namespaces(&self) -> Vec<&Namespace> {
        let mut all: Vec<&Namespace> = self.namespaces.values().collect();
        if !self.namespaces.contains_key(DEFAULT_NAMESPACE) {
            let at = all.partition_point(|n| n.name.as_str() < DEFAULT_NAMESPACE);
            all.insert(at, implicit_default());
        }
        all
    }

    /// What the tasks of `namespace` that have not stopped reserve. Cost: one look-up per
    /// live task of the namespace; admission pays it only in namespaces whose quota limits
    /// something.
    pub fn namespace_usage(&self, namespace: &str) -> Usage {
        self.usage_where(namespace, |_| true)
    }

    fn usage_where(&self, namespace: &str, keep: impl Fn(&Task) -> bool) -> Usage {
        self.live_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task_by_id(id))
            .filter(|t| keep(t))
            .map(Usage::of_task)
            .sum()
    }

    /// The quota of `namespace`, when it limits anything.
    pub(crate) fn limiting_quota(&self, namespace: &str) -> Option<Quota> {
        self.namespaces
            .get(namespace)
            .map(|n| n.quota)
            .filter(|q| !q.is_unlimited())
    }

    /// Whether `asked` more fits `namespace`'s quota beside what its tasks reserve now (what
    /// `CreateTasks` checks; the API may ask first to answer before proposing).
    pub fn admit(&self, namespace: &str, asked: Usage) -> Result<(), QuotaExceeded> {
        match self.limiting_quota(namespace) {
            None => Ok(()),
            Some(q) => q.admit(namespace, self.namespace_usage(namespace), asked),
        }
    }

    /// Whether service `name` with `desired_count` tasks of `cpu` units and `memory` MiB fits
    /// `namespace`'s quota beside every other task of the namespace (its own tasks now are
    /// left out: they are what the count replaces). What `ApplyService`, scaling and
    /// autoscaling check. The refusal counts the service's own tasks as used and asks for the
    /// difference, as a user reads it ("2 running or pending, 2 more asked" for 2 -> 4).
    pub fn admit_service(
        &self,
        namespace: &str,
        name: &str,
        desired_count: u32,
        cpu: u32,
        memory: u32,
    ) -> Result<(), QuotaExceeded> {
        let Some(q) = self.limiting_quota(namespace) else {
            return Ok(());
        };
        let group = format!("service:{name}");
        let mine = |t: &Task| t.group.as_deref() == Some(group.as_str());
        let others = self.usage_where(namespace, |t| !mine(t));
        q.admit(
            namespace,
            others,
            Usage::of_tasks(desired_count, cpu, memory),
        )
        .map_err(|mut e| {
            let own = self.usage_where(namespace, mine).get(e.resource);
            e.used = e.used.saturating_add(own);
            e.asked = e.asked.saturating_sub(own);
            e
        })
    }

    pub(crate) fn create_namespace(
        &mut self,
        name: String,
        quota: Quota,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let mut namespace = Namespace::new(name, quota, at);
        if let Err(e) = namespace.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        if self.namespace_exists(&namespace.name) {
            return CommandResult::Rejected(Rejection::Conflict(format!(
                "namespace {} already exists",
                namespace.name
            )));
        }
        namespace
            .events
            .push(at, format!("created with {}", describe(&quota)));
        changed.push(Key::Namespace(namespace.name.clone()));
        self.namespaces
            .insert(namespace.name.clone(), namespace.clone());
        CommandResult::Namespace(Box::new(namespace))
    }

    pub(crate) fn update_namespace(
        &mut self,
        name: String,
        quota: Quota,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if let Err(e) = quota.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        let Some(existing) = self.namespace(&name) else {
            return CommandResult::Rejected(not_found(&name));
        };
        let changes = quota.changes_from(&existing.quota);
        if changes.is_empty() {
            return CommandResult::Namespace(Box::new(existing.clone()));
        }
        let namespace = self
            .namespaces
            .entry(name.clone())
            .or_insert_with(|| Namespace::new(name.clone(), Quota::default(), at));
        namespace.quota = quota;
        namespace
            .events
            .push(at, format!("quota changed: {}", changes.join(", ")));
        changed.push(Key::Namespace(name));
        CommandResult::Namespace(Box::new(namespace.clone()))
    }

    pub(crate) fn delete_namespace(
        &mut self,
        name: &str,
        _at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if name == DEFAULT_NAMESPACE {
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "namespace {DEFAULT_NAMESPACE} cannot be deleted"
            )));
        }
        if !self.namespaces.contains_key(name) {
            return CommandResult::Rejected(not_found(name));
        }
        let services = self.services.keys().filter(|(ns, _)| ns == name).count();
        let tasks = self.namespace_usage(name).tasks;
        if services > 0 || tasks > 0 {
            let mut held = Vec::new();
            if services > 0 {
                held.push(count(services, "service"));
            }
            if tasks > 0 {
                held.push(format!(
                    "{} that {} not stopped",
                    count(tasks as usize, "task"),
                    if tasks == 1 { "has" } else { "have" }
                ));
            }
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "namespace {name} still holds {}; delete its services and stop its tasks first (`berth get services -n {name}`, `berth get tasks -n {name}`)",
                held.join(" and ")
            )));
        }
        let Some(namespace) = self.namespaces.remove(name) else {
            return CommandResult::Rejected(not_found(name));
        };
        changed.push(Key::Namespace(name.to_owned()));
        self.revoke_namespace_tokens(name, changed);
        self.delete_namespace_secrets(name, changed);
        CommandResult::Namespace(Box::new(namespace))
    }
}

fn not_found(name: &str) -> Rejection {
    Rejection::NotFound(format!(
        "namespace {name} not found; `berth namespace get` lists them"
    ))
}

fn describe(quota: &Quota) -> String {
    if quota.is_unlimited() {
        "no quota".to_owned()
    } else {
        format!("quota {quota}")
    }
}

/// `1 service`, `2 services`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
