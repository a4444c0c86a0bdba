use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{validate_name, PlacementSpec, Timestamp, ValidationError};

/// Seconds a container gets between SIGTERM and SIGKILL when none is given (ECS uses 30).
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 30;

const MIN_TASK_MEMORY_MIB: u32 = 6;
/// Containers per task definition at most (ECS's limit).
pub const MAX_CONTAINERS: usize = 10;
const MAX_TASK_CPU: u32 = 64 * crate::CPU_UNITS_PER_VCPU;
const MAX_TASK_MEMORY_MIB: u32 = 1024 * 1024;

/// What a user registers: a family and its containers. The server turns it into the next
/// [`TaskDefinition`] revision of the family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinitionSpec {
    pub family: String,
    /// CPU units for the whole task (1024 = 1 vCPU).
    pub cpu: u32,
    /// Memory for the whole task in MiB.
    pub memory: u32,
    pub containers: Vec<ContainerDefinition>,
    /// Where the family's tasks may run and how nodes are ranked.
    #[serde(default, skip_serializing_if = "PlacementSpec::is_empty")]
    pub placement: PlacementSpec,
    /// The task's writable storage limit; 20 GiB when absent (as Fargate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<crate::EphemeralStorage>,
    #[serde(flatten)]
    pub meta: crate::ObjectMeta,
}

impl TaskDefinitionSpec {
    /// A family's spec with these containers, no placement rules, labels or annotations.
    pub fn new(
        family: impl Into<String>,
        cpu: u32,
        memory: u32,
        containers: Vec<ContainerDefinition>,
    ) -> Self {
        Self {
            family: family.into(),
            cpu,
            memory,
            containers,
            placement: PlacementSpec::default(),
            ephemeral_storage: None,
            meta: crate::ObjectMeta::default(),
        }
    }
}

/// One registered, immutable revision of a task definition family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    pub namespace: String,
    pub family: String,
    pub revision: u32,
    pub status: TaskDefinitionStatus,
    pub cpu: u32,
    pub memory: u32,
    pub containers: Vec<ContainerDefinition>,
    #[serde(default, skip_serializing_if = "PlacementSpec::is_empty")]
    pub placement: PlacementSpec,
    /// The task's writable storage limit; 20 GiB when absent (as Fargate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<crate::EphemeralStorage>,
    #[serde(flatten)]
    pub meta: crate::ObjectMeta,
    #[serde(with = "crate::time::rfc3339")]
    pub registered_at: Timestamp,
    /// When it became INACTIVE (ECS `deregisteredAt`); none while ACTIVE. An INACTIVE
    /// revision nothing uses any more is deleted after the task retention.
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregistered_at: Option<Timestamp>,
}

/// The fixed host ports `containers` publish (placement keeps two of them off one node).
pub fn fixed_host_ports(
    containers: &[ContainerDefinition],
) -> impl Iterator<Item = (u16, crate::Protocol)> + '_ {
    containers
        .iter()
        .flat_map(|c| &c.port_mappings)
        .filter(|m| m.host_port != 0)
        .map(|m| (m.host_port, m.protocol))
}

impl TaskDefinition {
    /// The fixed host ports its tasks publish (placement keeps two of them off one node).
    pub fn fixed_host_ports(&self) -> impl Iterator<Item = (u16, crate::Protocol)> + '_ {
        fixed_host_ports(&self.containers)
    }

    pub fn reference(&self) -> TaskDefinitionRef {
        TaskDefinitionRef {
            family: self.family.clone(),
            revision: Some(self.revision),
        }
    }

    /// Whether this revision has the same content as `spec` (so registering it again would
    /// create an identical revision).
    pub fn matches(&self, spec: &TaskDefinitionSpec) -> bool {
        self.family == spec.family
            && self.cpu == spec.cpu
            && self.memory == spec.memory
            && self.containers == spec.containers
            && self.placement == spec.placement
            && self.ephemeral_storage == spec.ephemeral_storage
            && self.meta == spec.meta
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskDefinitionStatus {
    Active,
    Inactive,
}

impl fmt::Display for TaskDefinitionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefinition {
    pub name: String,
    pub image: String,
    /// Replaces the image's CMD when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's ENTRYPOINT when not empty (and then the image's CMD is dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_point: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// When an essential container exits, the whole task stops.
    pub essential: bool,
    /// Seconds between SIGTERM and SIGKILL when the container is stopped.
    pub stop_timeout: u32,
    /// Hard CPU limit of this container in CPU units; the task's `cpu` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Hard memory limit of this container in MiB; the task's `memory` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// A command run inside the container to decide whether it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Containers that must reach a condition before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ContainerDependency>,
    /// Runs the process under a minimal init as PID 1 (like `docker run --init`, ECS
    /// `initProcessEnabled`): it forwards signals and reaps zombies, so a process that ignores
    /// SIGTERM as PID 1 (the kernel gives PID 1 no default signal actions) still stops on it.
    /// On unless turned off.
    #[serde(default = "crate::yes", skip_serializing_if = "crate::is_true")]
    pub init: bool,
    /// Container ports published on the task's node (ECS `portMappings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<crate::PortMapping>,
    /// Environment variables whose values come from secrets (ECS `secrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::SecretEnvironment>,
    /// Secrets whose keys appear as files in a directory on a tmpfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<crate::SecretFile>,
    /// Registry credentials for the image, from a secret (ECS `repositoryCredentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_credentials: Option<crate::RepositoryCredentials>,
    /// The user the process runs as (`uid`, `uid:gid`, `name`, `name:group`); the image's
    /// USER when absent. Names are looked up in the image's /etc/passwd and /etc/group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Mounts the container's root filesystem read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly_root_filesystem: bool,
    /// Capabilities added to or dropped from the default set.
    #[serde(default, skip_serializing_if = "crate::LinuxParameters::is_empty")]
    pub linux_parameters: crate::LinuxParameters,
    /// Resource limits of the container's processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<crate::Ulimit>,
}

/// "Start this container once `container_name` has reached `condition`" (ECS `dependsOn`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDependency {
    pub container_name: String,
    pub condition: DependencyCondition,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DependencyCondition {
    /// It has started.
    Start,
    /// It has exited, with any code.
    Complete,
    /// It has exited with code 0.
    Success,
    /// Its health check passed.
    Healthy,
}

impl fmt::Display for DependencyCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Start => "START",
            Self::Complete => "COMPLETE",
            Self::Success => "SUCCESS",
            Self::Healthy => "HEALTHY",
        })
    }
}

/// Docker/ECS-style container health check. `command` is `["CMD-SHELL", "a shell line"]`,
/// `["CMD", "program", "arg", ...]`, or a plain argument list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub command: Vec<String>,
    /// Seconds between checks.
    pub interval: u32,
    /// Seconds a check may take before it counts as failed.
    pub timeout: u32,
    /// Consecutive failures that make the container UNHEALTHY.
    pub retries: u32,
    /// Seconds after start during which failures do not count.
    pub start_period: u32,
}

impl HealthCheck {
    /// ECS's defaults: every 30 s, 5 s timeout, 3 retries, no start period.
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            interval: 30,
            timeout: 5,
            retries: 3,
            start_period: 0,
        }
    }

    /// The argument list to execute inside the container.
    pub fn argv(&self) -> Vec<String> {
        match self.command.first().map(String::as_str) {
            Some("CMD-SHELL") => {
                vec!["/bin/sh".into(), "-c".into(), self.command[1..].join(" ")]
            }
            Some("CMD") => self.command[1..].to_vec(),
            _ => self.command.clone(),
        }
    }

    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.argv().is_empty() || self.argv().iter().all(|a| a.trim().is_empty()) {
            return Err(ValidationError::new(
                format!("{field}.command"),
                "must name a command",
            ));
        }
        if self.interval == 0 || self.timeout == 0 || self.retries == 0 {
            return Err(ValidationError::new(
                field,
                "interval, timeout and retries must be at least 1",
            ));
        }
        if self.timeout > self.interval {
            return Err(ValidationError::new(
                format!("{field}.timeout"),
                format!(
                    "{}s is longer than the {}s interval",
                    self.timeout, self.interval
                ),
            ));
        }
        Ok(())
    }
}

impl ContainerDefinition {
    /// A container with the defaults ECS applies: essential, 30 s stop timeout.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            entry_point: Vec::new(),
            environment: BTreeMap::new(),
            working_directory: None,
            essential: true,
            stop_timeout: DEFAULT_STOP_TIMEOUT_SECS,
            cpu: None,
            memory: None,
            health_check: None,
            depends_on: Vec::new(),
            init: true,
            port_mappings: Vec::new(),
            secrets: Vec::new(),
            secret_files: Vec::new(),
            repository_credentials: None,
            user: None,
            readonly_root_filesystem: false,
            linux_parameters: crate::LinuxParameters::default(),
            ulimits: Vec::new(),
        }
    }
}

impl TaskDefinitionSpec {
    /// Checks every rule a task definition must satisfy before it is registered. Errors name
    /// the field in camelCase (`containers[1].memory`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("family", &self.family)?;
        if self.cpu == 0 || self.cpu > MAX_TASK_CPU {
            return Err(ValidationError::new(
                "cpu",
                format!(
                    "{} CPU units is out of range; use 1..={MAX_TASK_CPU} (1024 = 1 vCPU)",
                    self.cpu
                ),
            ));
        }
        if self.memory < MIN_TASK_MEMORY_MIB || self.memory > MAX_TASK_MEMORY_MIB {
            return Err(ValidationError::new(
                "memory",
                format!(
                    "{} MiB is out of range; use {MIN_TASK_MEMORY_MIB}..={MAX_TASK_MEMORY_MIB}",
                    self.memory
                ),
            ));
        }
        if self.containers.is_empty() {
            return Err(ValidationError::new(
                "containers",
                "at least one container is required",
            ));
        }
        if self.containers.len() > MAX_CONTAINERS {
            return Err(ValidationError::new(
                "containers",
                format!(
                    "{} containers is too many; a task has at most {MAX_CONTAINERS} (as in ECS)",
                    self.containers.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        for (i, c) in self.containers.iter().enumerate() {
            let field = |f: &str| format!("containers[{i}].{f}");
            validate_name(&field("name"), &c.name)?;
            if !names.insert(c.name.as_str()) {
                return Err(ValidationError::new(
                    field("name"),
                    format!("container name {:?} is used twice", c.name),
                ));
            }
            if c.image.trim().is_empty() {
                return Err(ValidationError::new(field("image"), "must not be empty"));
            }
            if c.image.chars().any(char::is_whitespace) {
                return Err(ValidationError::new(
                    field("image"),
                    format!("{:?} contains whitespace", c.image),
                ));
            }
            if let Some(cpu) = c.cpu {
                if cpu > self.cpu {
                    return Err(ValidationError::new(
                        field("cpu"),
                        format!("{cpu} CPU units exceeds the task's {}", self.cpu),
                    ));
                }
            }
            if let Some(memory) = c.memory {
                if memory < MIN_TASK_MEMORY_MIB || memory > self.memory {
                    return Err(ValidationError::new(
                        field("memory"),
                        format!(
                            "{memory} MiB is out of range; use {MIN_TASK_MEMORY_MIB}..={} (the task's memory)",
                            self.memory
                        ),
                    ));
                }
            }
            if let Some(h) = &c.health_check {
                h.validate(&field("healthCheck"))?;
            }
            for key in c.environment.keys() {
                if key.is_empty() || key.contains('=') {
                    return Err(ValidationError::new(
                        field("environment"),
                        format!("{key:?} is not a valid variable name"),
                    ));
                }
            }
            crate::secret::validate_references(
                &field,
                &c.secrets,
                &c.secret_files,
                c.repository_credentials.as_ref(),
                &c.environment,
            )?;
            if let Some(user) = &c.user {
                crate::sandbox::validate_user(&field("user"), user)?;
            }
            crate::sandbox::validate_linux_parameters(
                &field("linuxParameters"),
                &c.linux_parameters,
            )?;
            crate::sandbox::validate_ulimits(&field("ulimits"), &c.ulimits)?;
        }
        self.validate_dependencies()?;
        crate::network::validate_port_mappings(
            self.containers.iter().map(|c| c.port_mappings.as_slice()),
        )?;
        self.placement.validate("placement")?;
        if let Some(storage) = self.ephemeral_storage {
            crate::sandbox::validate_ephemeral_storage(storage)?;
        }
        if !self.containers.iter().any(|c| c.essential) {
            return Err(ValidationError::new(
                "containers",
                "at least one container must be essential",
            ));
        }
        // In u64: a sum of u32s must not wrap around (10 × 1 TiB would).
        let sum = |f: fn(&ContainerDefinition) -> Option<u32>| -> u64 {
            self.containers.iter().filter_map(f).map(u64::from).sum()
        };
        if sum(|c| c.memory) > u64::from(self.memory) {
            return Err(ValidationError::new(
                "containers",
                format!(
                    "container memory limits add up to more than the task's {} MiB",
                    self.memory
                ),
            ));
        }
        Ok(())
    }
}

impl TaskDefinitionSpec {
    /// `dependsOn` names existing containers, HEALTHY only containers with a health check, and
    /// the dependencies form no cycle.
    fn validate_dependencies(&self) -> Result<(), ValidationError> {
        for (i, c) in self.containers.iter().enumerate() {
            for (j, d) in c.depends_on.iter().enumerate() {
                let field = format!("containers[{i}].dependsOn[{j}].containerName");
                let Some(target) = self.containers.iter().find(|t| t.name == d.container_name)
                else {
                    return Err(ValidationError::new(
                        field,
                        format!("no container named {:?} in this task", d.container_name),
                    ));
                };
                if target.name == c.name {
                    return Err(ValidationError::new(
                        field,
                        "a container cannot depend on itself",
                    ));
                }
                if d.condition == DependencyCondition::Healthy && target.health_check.is_none() {
                    return Err(ValidationError::new(
                        format!("containers[{i}].dependsOn[{j}].condition"),
                        format!("HEALTHY needs a healthCheck on {:?}", d.container_name),
                    ));
                }
            }
        }
        // Kahn's algorithm: if no order starts every container, there is a cycle.
        let mut started: HashSet<&str> = HashSet::new();
        while started.len() < self.containers.len() {
            let next = self.containers.iter().find(|c| {
                !started.contains(c.name.as_str())
                    && c.depends_on
                        .iter()
                        .all(|d| started.contains(d.container_name.as_str()))
            });
            match next {
                Some(c) => {
                    started.insert(&c.name);
                }
                None => {
                    return Err(ValidationError::new(
                        "containers",
                        "dependsOn forms a cycle; no container could start first",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// `family` or `family:revision`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskDefinitionRef {
    pub family: String,
    /// `None` means the latest ACTIVE revision.
    pub revision: Option<u32>,
}

impl fmt::Display for TaskDefinitionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.revision {
            Some(rev) => write!(f, "{}:{rev}", self.family),
            None => f.write_str(&self.family),
        }
    }
}

impl FromStr for TaskDefinitionRef {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (family, revision) = match s.split_once(':') {
            Some((family, rev)) => {
                let rev = rev.parse::<u32>().ok().filter(|r| *r > 0).ok_or_else(|| {
                    ValidationError::new(
                        "taskDefinition",
                        format!("{s:?}: revision {rev:?} is not a positive integer"),
                    )
                })?;
                (family, Some(rev))
            }
            None => (s, None),
        };
        validate_name("taskDefinition", family)?;
        Ok(Self {
            family: family.to_owned(),
            revision,
        })
    }
}

impl TryFrom<String> for TaskDefinitionRef {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TaskDefinitionRef> for String {
    fn from(r: TaskDefinitionRef) -> Self {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskDefinitionSpec {
        TaskDefinitionSpec {
            meta: Default::default(),
            family: "web".into(),
            cpu: 256,
            memory: 512,
            containers: vec![ContainerDefinition::new("app", "busybox:latest")],
            placement: PlacementSpec::default(),
            ephemeral_storage: None,
        }
    }

    fn check(edit: impl FnOnce(&mut TaskDefinitionSpec), expected: &str) {
        let mut s = spec();
        edit(&mut s);
        let got = match s.validate() {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn container_counts_and_memory_sums_are_bounded_without_wrapping() {
        let many = |n: usize| {
            move |s: &mut TaskDefinitionSpec| {
                s.containers = (0..n)
                    .map(|i| ContainerDefinition::new(format!("c{i}"), "busybox"))
                    .collect();
            }
        };
        check(many(MAX_CONTAINERS), "ok");
        check(
            many(MAX_CONTAINERS + 1),
            "containers: 11 containers is too many; a task has at most 10 (as in ECS)",
        );
        // Ten containers of 1 TiB each would wrap a u32 sum to a small number.
        check(
            |s| {
                s.memory = MAX_TASK_MEMORY_MIB;
                many(MAX_CONTAINERS)(s);
                for c in &mut s.containers {
                    c.memory = Some(MAX_TASK_MEMORY_MIB);
                }
            },
            "containers: container memory limits add up to more than the task's 1048576 MiB",
        );
    }

    #[test]
    fn validation() {
        check(|_| {}, "ok");
        check(
            |s| s.cpu = 0,
            "cpu: 0 CPU units is out of range; use 1..=65536 (1024 = 1 vCPU)",
        );
        check(
            |s| s.memory = 2,
            "memory: 2 MiB is out of range; use 6..=1048576",
        );
        check(
            |s| s.containers.clear(),
            "containers: at least one container is required",
        );
        check(
            |s| s.containers.push(ContainerDefinition::new("app", "x")),
            "containers[1].name: container name \"app\" is used twice",
        );
        check(
            |s| s.containers[0].image = " ".into(),
            "containers[0].image: must not be empty",
        );
        check(
            |s| s.containers[0].memory = Some(1024),
            "containers[0].memory: 1024 MiB is out of range; use 6..=512 (the task's memory)",
        );
        check(
            |s| s.containers[0].essential = false,
            "containers: at least one container must be essential",
        );
        check(
            |s| {
                s.containers[0].environment.insert("A=B".into(), "x".into());
            },
            "containers[0].environment: \"A=B\" is not a valid variable name",
        );
    }

    #[test]
    fn dependencies() {
        let dep = |name: &str, condition| ContainerDependency {
            container_name: name.into(),
            condition,
        };
        check(
            |s| {
                s.containers
                    .push(ContainerDefinition::new("init", "busybox"));
                s.containers[0].depends_on = vec![dep("init", DependencyCondition::Success)];
            },
            "ok",
        );
        check(
            |s| s.containers[0].depends_on = vec![dep("db", DependencyCondition::Start)],
            "containers[0].dependsOn[0].containerName: no container named \"db\" in this task",
        );
        check(
            |s| {
                s.containers
                    .push(ContainerDefinition::new("side", "busybox"));
                s.containers[0].depends_on = vec![dep("side", DependencyCondition::Healthy)];
            },
            "containers[0].dependsOn[0].condition: HEALTHY needs a healthCheck on \"side\"",
        );
        check(
            |s| {
                s.containers
                    .push(ContainerDefinition::new("side", "busybox"));
                s.containers[0].depends_on = vec![dep("side", DependencyCondition::Start)];
                s.containers[1].depends_on = vec![dep("app", DependencyCondition::Start)];
            },
            "containers: dependsOn forms a cycle; no container could start first",
        );
    }

    #[test]
    fn refs() {
        assert_eq!(
            "web:3".parse::<TaskDefinitionRef>().ok(),
            Some(TaskDefinitionRef {
                family: "web".into(),
                revision: Some(3)
            })
        );
        assert_eq!(
            "web".parse::<TaskDefinitionRef>().map(|r| r.revision).ok(),
            Some(None)
        );
        assert_eq!(
            "web:x"
                .parse::<TaskDefinitionRef>()
                .unwrap_err()
                .to_string(),
            "taskDefinition: \"web:x\": revision \"x\" is not a positive integer"
        );
        assert_eq!("web:0".parse::<TaskDefinitionRef>().ok(), None);
    }
}
