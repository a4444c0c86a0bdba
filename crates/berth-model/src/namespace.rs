//! Namespaces as objects: a name, a quota of CPU, memory and tasks enforced when work is
//! admitted, and events. The namespace `default` exists without a record (with no quota).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{EventLog, Task, Timestamp, ValidationError};

/// Largest CPU quota, in CPU units (a million vCPUs): a bigger number is a mistake of units.
pub const MAX_QUOTA_CPU: u64 = 1 << 30;
/// Largest memory quota, in MiB (1 PiB): a bigger number is likely bytes, not MiB.
pub const MAX_QUOTA_MEMORY: u64 = 1 << 30;

/// A namespace and its quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "EventLog::is_empty")]
    pub events: EventLog,
}

impl Namespace {
    pub fn new(name: impl Into<String>, quota: Quota, created_at: Timestamp) -> Self {
        Self {
            name: name.into(),
            quota,
            created_at,
            events: EventLog::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::validate_dns_label("name", &self.name)?;
        self.quota.validate()
    }
}

/// What the tasks of a namespace that have not stopped may reserve in all; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Quota {
    /// CPU units (1024 per vCPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Tasks running or pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u32>,
}

impl Quota {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Quota::default()
    }

    /// Limits of zero are allowed (they stop new work in the namespace); limits too large to
    /// be meant are not.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.cpu.is_some_and(|c| c > MAX_QUOTA_CPU) {
            return Err(ValidationError::new(
                "quota.cpu",
                format!("must be at most {MAX_QUOTA_CPU} CPU units (1024 per vCPU)"),
            ));
        }
        if self.memory.is_some_and(|m| m > MAX_QUOTA_MEMORY) {
            return Err(ValidationError::new(
                "quota.memory",
                format!("must be at most {MAX_QUOTA_MEMORY} MiB (the quota is in MiB, not bytes)"),
            ));
        }
        Ok(())
    }

    /// Whether `asked` fits beside `used` within every limit. The refusal names the first limit
    /// that does not hold (tasks, then CPU, then memory), its value and its use.
    pub fn admit(&self, namespace: &str, used: Usage, asked: Usage) -> Result<(), QuotaExceeded> {
        let limits = [
            (
                QuotaResource::Tasks,
                self.tasks.map(u64::from),
                u64::from(used.tasks),
                u64::from(asked.tasks),
            ),
            (QuotaResource::Cpu, self.cpu, used.cpu, asked.cpu),
            (
                QuotaResource::Memory,
                self.memory,
                used.memory,
                asked.memory,
            ),
        ];
        for (resource, limit, used, asked) in limits {
            let Some(limit) = limit else { continue };
            if asked > 0 && used.saturating_add(asked) > limit {
                return Err(QuotaExceeded {
                    namespace: namespace.to_owned(),
                    resource,
                    limit,
                    used,
                    asked,
                });
            }
        }
        Ok(())
    }

    /// One phrase per limit that differs from `other`'s (`tasks 4 -> 8`, `cpu none -> 2048`).
    pub fn changes_from(&self, other: &Quota) -> Vec<String> {
        fn show<T: fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "none".to_owned(), |v| v.to_string())
        }
        let mut changes = Vec::new();
        if self.cpu != other.cpu {
            changes.push(format!("cpu {} -> {}", show(other.cpu), show(self.cpu)));
        }
        if self.memory != other.memory {
            changes.push(format!(
                "memory {} -> {}",
                show(other.memory),
                show(self.memory)
            ));
        }
        if self.tasks != other.tasks {
            changes.push(format!(
                "tasks {} -> {}",
                show(other.tasks),
                show(self.tasks)
            ));
        }
        changes
    }
}

impl fmt::Display for Quota {
    /// `cpu 2048, memory 4096 MiB, tasks 4`, or `no quota`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(cpu) = self.cpu {
            parts.push(format!("cpu {cpu}"));
        }
        if let Some(memory) = self.memory {
            parts.push(format!("memory {memory} MiB"));
        }
        if let Some(tasks) = self.tasks {
            parts.push(format!("tasks {tasks}"));
        }
        if parts.is_empty() {
            f.write_str("no quota")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// What tasks reserve: CPU units, MiB and a count of tasks. A namespace's usage counts its
/// tasks that have not stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub cpu: u64,
    pub memory: u64,
    pub tasks: u32,
}

impl Usage {
    /// What one task reserves.
    pub fn of_task(task: &Task) -> Self {
        Self::of_tasks(1, task.cpu, task.memory)
    }

    /// What `count` tasks of `cpu` units and `memory` MiB each reserve.
    pub fn of_tasks(count: u32, cpu: u32, memory: u32) -> Self {
        Self {
            cpu: u64::from(count) * u64::from(cpu),
            memory: u64::from(count) * u64::from(memory),
            tasks: count,
        }
    }

    /// The amount of one resource.
    pub fn get(&self, resource: QuotaResource) -> u64 {
        match resource {
            QuotaResource::Tasks => u64::from(self.tasks),
            QuotaResource::Cpu => self.cpu,
            QuotaResource::Memory => self.memory,
        }
    }

    /// What is left of `self` once `other` is taken away (never below zero).
    pub fn saturating_sub(self, other: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(other.cpu),
            memory: self.memory.saturating_sub(other.memory),
            tasks: self.tasks.saturating_sub(other.tasks),
        }
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_add(other.cpu),
            memory: self.memory.saturating_add(other.memory),
            tasks: self.tasks.saturating_add(other.tasks),
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), |a, b| a + b)
    }
}

/// A limit of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaResource {
    Tasks,
    Cpu,
    Memory,
}

/// Work that does not fit a namespace's quota: which limit, its value, what is used and what
/// was asked on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub namespace: String,
    pub resource: QuotaResource,
    pub limit: u64,
    pub used: u64,
    pub asked: u64,
}

impl fmt::Display for QuotaExceeded {
    /// `namespace team-a's quota of 4 tasks is used up: 4 running or pending, 1 more asked`
    /// (or `has room for 1 more` when some is left).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            namespace,
            limit,
            used,
            asked,
            ..
        } = self;
        let (limit_text, used_text) = match self.resource {
            QuotaResource::Tasks => (
                format!("{limit} task{}", if *limit == 1 { "" } else { "s" }),
                format!("{used} running or pending"),
            ),
            QuotaResource::Cpu => (
                format!("{limit} CPU units"),
                format!("{used} reserved by tasks running or pending"),
            ),
            QuotaResource::Memory => (
                format!("{limit} MiB of memory"),
                format!("{used} MiB reserved by tasks running or pending"),
            ),
        };
        let state = if used >= limit {
            "is used up".to_owned()
        } else {
            format!("has room for {} more", limit - used)
        };
        write!(
            f,
            "namespace {namespace}'s quota of {limit_text} {state}: {used_text}, {asked} more asked"
        )
    }
}

impl std::error::Error for QuotaExceeded {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_names_the_limit_its_value_and_its_use() {
        let quota = Quota {
            cpu: Some(2048),
            memory: Some(1024),
            tasks: Some(4),
        };
        let check = |used: Usage, asked: Usage| match quota.admit("team-a", used, asked) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        let table = [
            (Usage::of_tasks(3, 256, 64), Usage::of_tasks(1, 256, 64)),
            (Usage::of_tasks(4, 256, 64), Usage::of_tasks(1, 256, 64)),
            (Usage::of_tasks(3, 256, 64), Usage::of_tasks(2, 256, 64)),
            (Usage::of_tasks(1, 1024, 64), Usage::of_tasks(2, 1024, 64)),
            (Usage::of_tasks(1, 256, 1024), Usage::of_tasks(1, 256, 1)),
            (Usage::of_tasks(9, 256, 64), Usage::default()),
        ];
        let lines: Vec<String> = table.iter().map(|(u, a)| check(*u, *a)).collect();
        assert_eq!(
            lines,
            [
                "ok",
                "namespace team-a's quota of 4 tasks is used up: 4 running or pending, 1 more asked",
                "namespace team-a's quota of 4 tasks has room for 1 more: 3 running or pending, 2 more asked",
                "namespace team-a's quota of 2048 CPU units has room for 1024 more: 1024 reserved by tasks running or pending, 2048 more asked",
                "namespace team-a's quota of 1024 MiB of memory is used up: 1024 MiB reserved by tasks running or pending, 1 more asked",
                "ok",
            ]
        );
        assert!(Quota::default()
            .admit("x", Usage::of_tasks(9, 9, 9), Usage::of_tasks(9, 9, 9))
            .is_ok());
    }

    #[test]
    fn quotas_validate_print_and_diff() {
        let q = Quota {
            cpu: Some(2048),
            memory: None,
            tasks: Some(4),
        };
        assert_eq!(q.to_string(), "cpu 2048, tasks 4");
        assert_eq!(Quota::default().to_string(), "no quota");
        assert_eq!(
            Quota {
                tasks: Some(8),
                ..q
            }
            .changes_from(&q),
            ["tasks 4 -> 8"]
        );
        assert_eq!(
            Quota {
                memory: Some(8 << 30),
                ..q
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "quota.memory: must be at most 1073741824 MiB (the quota is in MiB, not bytes)"
        );
        let ns = Namespace::new("team-a", q, 1_800_000_000_000);
        let json = serde_json::to_string(&ns).expect("encodes");
        assert_eq!(
            json,
            r#"{"name":"team-a","quota":{"cpu":2048,"tasks":4},"createdAt":"2027-01-15T08:00:00.000Z"}"#
        );
        assert_eq!(
            serde_json::from_str::<Namespace>(&json).expect("decodes"),
            ns
        );
        assert!(Namespace::new("a b", q, 0).validate().is_err());
    }
}
