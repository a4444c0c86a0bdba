use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{EventLog, PlacementSpec, TaskDefinition, TaskDefinitionRef, Timestamp};

/// The longest stop reason a user may give (ECS allows 255 characters; reasons berth writes
/// itself may quote an error and be longer).
pub const MAX_REASON_BYTES: usize = 1024;

/// A running (or finished) copy of one task definition revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_id: String,
    pub namespace: String,
    /// Always `family:revision`.
    pub task_definition: TaskDefinitionRef,
    /// `service:NAME` for service tasks; none for one-off tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The deployment that started it (service tasks); none for one-off tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// Its task definition's labels, overlaid with its service's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The node the task was placed on; none until it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub desired_status: DesiredStatus,
    pub last_status: TaskStatus,
    pub cpu: u32,
    pub memory: u32,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
    /// When its node began to pull its images (the first report from the node it was placed
    /// on): where its billable time begins, as on Fargate.
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub pull_started_at: Option<Timestamp>,
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<Timestamp>,
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub stopped_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<StopCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    pub containers: Vec<ContainerState>,
    /// The task's address on its node's task network (ECS `privateIpv4Address`); none until
    /// its network is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "EventLog::is_empty")]
    pub events: EventLog,
    /// Where it may run and how nodes are ranked (from its task definition).
    #[serde(default, skip_serializing_if = "PlacementSpec::is_empty")]
    pub placement: PlacementSpec,
    /// The latest resource usage its node reported. Filled in by the leader from its memory
    /// when the task is read; never part of the replicated state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<TaskMetrics>,
    /// Changes to its containers given when it was run (ECS `containerOverrides`), applied over
    /// its task definition's containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<ContainerOverride>,
}

/// A change to one container of one task: its command, more environment variables (ECS
/// `overrides.containerOverrides[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    /// The container of the task definition it changes.
    pub name: String,
    /// Replaces the container's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Added to the container's environment (replacing variables of the same name).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub environment: std::collections::BTreeMap<String, String>,
}

/// The most containers' overrides one task may carry, and the most bytes of them (an override
/// is in the replicated state of every task it was given for).
pub const MAX_OVERRIDE_BYTES: usize = 8192;

impl ContainerOverride {
    /// What `overrides` weigh in a task: their strings, and a few bytes for each (so that many
    /// empty strings weigh too).
    pub fn size(overrides: &[ContainerOverride]) -> usize {
        const EACH: usize = 8;
        overrides
            .iter()
            .map(|o| {
                EACH + o.name.len()
                    + o.command
                        .iter()
                        .flatten()
                        .map(|a| EACH + a.len())
                        .sum::<usize>()
                    + o.environment
                        .iter()
                        .map(|(k, v)| EACH + k.len() + v.len())
                        .sum::<usize>()
            })
            .sum()
    }

    /// Applies `overrides` to `containers` (a task definition's).
    pub fn apply(overrides: &[ContainerOverride], containers: &mut [crate::ContainerDefinition]) {
        for o in overrides {
            if let Some(c) = containers.iter_mut().find(|c| c.name == o.name) {
                if let Some(command) = &o.command {
                    c.command = command.clone();
                }
                c.environment.extend(o.environment.clone());
            }
        }
    }

    /// Checks `overrides` against the containers of `def`: each names one of its containers, at
    /// most once, and together they stay under [`MAX_OVERRIDE_BYTES`].
    pub fn validate(
        overrides: &[ContainerOverride],
        def: &TaskDefinition,
    ) -> Result<(), crate::ValidationError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut bytes = 0;
        for (i, o) in overrides.iter().enumerate() {
            let field = format!("overrides[{i}].name");
            if !def.containers.iter().any(|c| c.name == o.name) {
                let names: Vec<&str> = def.containers.iter().map(|c| c.name.as_str()).collect();
                return Err(crate::ValidationError::new(
                    field,
                    format!(
                        "{:?} is not a container of {}; its containers: {}",
                        o.name,
                        def.reference(),
                        names.join(", ")
                    ),
                ));
            }
            if !seen.insert(o.name.as_str()) {
                return Err(crate::ValidationError::new(
                    field,
                    format!("container {:?} is overridden twice", o.name),
                ));
            }
            let env = format!("overrides[{i}].environment");
            if let Some(name) = o
                .environment
                .keys()
                .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                return Err(crate::ValidationError::new(
                    env,
                    format!("{name:?} is not a valid variable name"),
                ));
            }
            if let Some(name) = o
                .environment
                .iter()
                .find(|(_, v)| v.contains('\0'))
                .map(|(k, _)| k)
            {
                return Err(crate::ValidationError::new(
                    env,
                    format!("the value of {name} holds a NUL byte"),
                ));
            }
            if o.command.iter().flatten().any(|a| a.contains('\0')) {
                return Err(crate::ValidationError::new(
                    format!("overrides[{i}].command"),
                    "an argument holds a NUL byte",
                ));
            }
            // A secret's variable keeps its secret's value: an override may not shadow it.
            let container = def.containers.iter().find(|c| c.name == o.name);
            if let Some(secret) = container
                .into_iter()
                .flat_map(|c| &c.secrets)
                .find(|s| o.environment.contains_key(&s.name))
            {
                return Err(crate::ValidationError::new(
                    env,
                    format!(
                        "{} is the variable of a secret of container {}; an override cannot replace it",
                        secret.name, o.name
                    ),
                ));
            }
            bytes += Self::size(std::slice::from_ref(o));
        }
        if bytes > MAX_OVERRIDE_BYTES {
            return Err(crate::ValidationError::new(
                "overrides",
                format!(
                    "{bytes} bytes is too large; overrides may hold {MAX_OVERRIDE_BYTES} bytes"
                ),
            ));
        }
        Ok(())
    }
}

/// What the state keeps of a stopped task the retention removed, for a while: enough to answer
/// a question about it with "removed by retention" instead of "not found", and to tell its
/// node that its logs can go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedTask {
    pub task_id: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(with = "crate::time::rfc3339")]
    pub stopped_at: Timestamp,
    #[serde(with = "crate::time::rfc3339")]
    pub removed_at: Timestamp,
}

/// Resource usage of a task (all its containers), sampled by its node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskMetrics {
    /// CPU in use in CPU units (1024 = one CPU fully busy), averaged since the previous sample.
    pub cpu_units: f64,
    /// Working-set memory in bytes.
    pub memory_bytes: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub sampled_at: Timestamp,
}

impl Eq for TaskMetrics {}

impl TaskMetrics {
    /// CPU use as a percentage of `reserved` CPU units.
    pub fn cpu_percent(&self, reserved: u32) -> f64 {
        100.0 * self.cpu_units / f64::from(reserved.max(1))
    }

    /// Memory use as a percentage of `reserved` MiB.
    pub fn memory_percent(&self, reserved_mib: u32) -> f64 {
        100.0 * self.memory_bytes as f64 / (f64::from(reserved_mib.max(1)) * 1024.0 * 1024.0)
    }
}

impl Task {
    /// A new task of `def`, waiting for a node.
    pub fn pending(task_id: String, namespace: &str, def: &TaskDefinition, at: Timestamp) -> Self {
        Self {
            task_id,
            namespace: namespace.to_owned(),
            task_definition: def.reference(),
            group: None,
            started_by: None,
            labels: def.meta.labels.clone(),
            node: None,
            desired_status: DesiredStatus::Running,
            last_status: TaskStatus::Pending,
            cpu: def.cpu,
            memory: def.memory,
            created_at: at,
            pull_started_at: None,
            started_at: None,
            stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            containers: def
                .containers
                .iter()
                .map(|c| ContainerState::pending(&c.name, &c.image))
                .collect(),
            ip_address: None,
            events: EventLog::default(),
            placement: def.placement.clone(),
            metrics: None,
            overrides: Vec::new(),
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.last_status == TaskStatus::Stopped
    }

    /// The group placement spreads and keeps apart (within its namespace): its service's, or
    /// (as ECS does for standalone tasks) `family:FAMILY`.
    pub fn placement_group(&self) -> std::borrow::Cow<'_, str> {
        match &self.group {
            Some(g) => g.as_str().into(),
            None => format!("family:{}", self.task_definition.family).into(),
        }
    }

    /// The exit code that stands for the whole task: the first essential container's that has
    /// one (`run --wait` exits with it).
    pub fn exit_code(&self) -> Option<i32> {
        self.containers.iter().find_map(|c| c.exit_code)
    }
}

/// The state of one container of a task as last reported by its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub last_status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub health_status: HealthStatus,
    /// Where its port mappings were published on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_bindings: Vec<crate::NetworkBinding>,
}

impl ContainerState {
    pub fn pending(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            image_digest: None,
            last_status: TaskStatus::Pending,
            exit_code: None,
            reason: None,
            health_status: HealthStatus::Unknown,
            network_bindings: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredStatus {
    Running,
    Stopped,
}

/// The lifecycle of a task, in the order ECS moves through it. A task never moves backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Reserved for network set-up (per-task network namespaces come later).
    Provisioning,
    /// Waiting for a node, or placed and waiting for the node to pull and start it.
    Pending,
    /// The node is creating the containers.
    Activating,
    Running,
    Deactivating,
    /// The node is stopping the containers (SIGTERM, grace period, SIGKILL).
    Stopping,
    Deprovisioning,
    Stopped,
}

impl TaskStatus {
    /// Whether a task with this status was taken up by its node (its containers were being
    /// created, or more): a node that has no container for such a task lost it.
    pub fn reached_node(self) -> bool {
        self >= TaskStatus::Activating
    }
}

/// Why a task stopped, as ECS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
    ServiceSchedulerInitiated,
    NodeLost,
}

macro_rules! string_enum {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(<$ty>::$variant),)*
                    other => Err(format!(
                        "unknown {} {other:?}; expected one of {}",
                        stringify!($ty),
                        [$($text),*].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(TaskStatus {
    Provisioning => "PROVISIONING",
    Pending => "PENDING",
    Activating => "ACTIVATING",
    Running => "RUNNING",
    Deactivating => "DEACTIVATING",
    Stopping => "STOPPING",
    Deprovisioning => "DEPROVISIONING",
    Stopped => "STOPPED",
});

string_enum!(DesiredStatus { Running => "RUNNING", Stopped => "STOPPED" });

string_enum!(HealthStatus { Unknown => "UNKNOWN", Healthy => "HEALTHY", Unhealthy => "UNHEALTHY" });

string_enum!(StopCode {
    TaskFailedToStart => "TaskFailedToStart",
    EssentialContainerExited => "EssentialContainerExited",
    UserInitiated => "UserInitiated",
    ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
    NodeLost => "NodeLost",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_the_containers_they_name_and_are_checked() {
        let def = TaskDefinition {
            namespace: "default".into(),
            family: "web".into(),
            revision: 1,
            status: crate::TaskDefinitionStatus::Active,
            cpu: 256,
            memory: 512,
            containers: vec![
                crate::ContainerDefinition::new("app", "busybox"),
                crate::ContainerDefinition::new("side", "busybox"),
            ],
            placement: Default::default(),
            ephemeral_storage: None,
            meta: Default::default(),
            registered_at: 0,
            deregistered_at: None,
        };
        let o = |name: &str| ContainerOverride {
            name: name.into(),
            command: Some(vec!["true".into()]),
            environment: [("MODE".to_owned(), "once".to_owned())].into(),
        };
        let mut containers = def.containers.clone();
        containers[0].environment.insert("KEEP".into(), "1".into());
        ContainerOverride::apply(&[o("app")], &mut containers);
        assert_eq!(containers[0].command, ["true"]);
        assert_eq!(containers[0].environment.len(), 2, "added to, not replaced");
        assert_eq!(containers[1], def.containers[1]);
        assert!(ContainerOverride::validate(&[o("app"), o("side")], &def).is_ok());
        let err = |list: &[ContainerOverride]| {
            ContainerOverride::validate(list, &def)
                .expect_err("refused")
                .to_string()
        };
        assert!(err(&[o("db")]).contains("its containers: app, side"));
        assert!(err(&[o("app"), o("app")]).contains("overridden twice"));
        let mut big = o("app");
        big.environment
            .insert("X".into(), "x".repeat(MAX_OVERRIDE_BYTES));
        assert!(err(&[big]).contains("too large"));
        // Empty strings weigh too: a command of many empty arguments is no way around it.
        let mut empties = o("app");
        empties.command = Some(vec![String::new(); MAX_OVERRIDE_BYTES]);
        assert!(err(&[empties]).contains("too large"));
        let mut nul = o("app");
        nul.command = Some(vec!["a\0b".into()]);
        assert!(err(&[nul]).contains("NUL"));
        // A secret's variable stays the secret's.
        let mut with_secret = def.clone();
        with_secret.containers[0]
            .secrets
            .push(crate::SecretEnvironment {
                name: "MODE".into(),
                value_from: "db:password".parse().expect("reference"),
            });
        let refused = ContainerOverride::validate(&[o("app")], &with_secret)
            .expect_err("shadows a secret")
            .to_string();
        assert!(
            refused.contains("MODE is the variable of a secret"),
            "{refused}"
        );
    }

    #[test]
    fn statuses_round_trip_and_order() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().ok(), Some(*s));
            assert_eq!(serde_json::to_string(s).ok(), Some(format!("\"{s}\"")));
        }
        assert!(TaskStatus::Pending < TaskStatus::Running);
        assert!(TaskStatus::Running < TaskStatus::Stopped);
        for c in StopCode::ALL {
            assert_eq!(serde_json::to_string(c).ok(), Some(format!("\"{c}\"")));
        }
        assert_eq!(
            "DONE".parse::<TaskStatus>().unwrap_err(),
            "unknown TaskStatus \"DONE\"; expected one of PROVISIONING, PENDING, ACTIVATING, \
             RUNNING, DEACTIVATING, STOPPING, DEPROVISIONING, STOPPED"
        );
    }
}

/// A node's report of the current state of one task it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatusUpdate {
    pub task_id: String,
    pub last_status: TaskStatus,
    pub containers: Vec<ContainerState>,
    /// Set with STOPPED when the node decided why the task stopped.
    pub stop_code: Option<StopCode>,
    pub stopped_reason: Option<String>,
    /// One line for the task's event log.
    pub event: Option<String>,
    /// The task's address on its node's task network, once attached.
    #[serde(default)]
    pub ip_address: Option<std::net::Ipv4Addr>,
}

impl TaskStatusUpdate {
    /// A report of `last_status` alone: no container states, stop code, reason or event.
    pub fn status(task_id: impl Into<String>, last_status: TaskStatus) -> Self {
        Self {
            task_id: task_id.into(),
            last_status,
            containers: Vec::new(),
            stop_code: None,
            stopped_reason: None,
            event: None,
            ip_address: None,
        }
    }
}
