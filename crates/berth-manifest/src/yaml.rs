//! The documents as written: serde types (which also give the JSON Schema) and their
//! conversion to the model's types. Field doc comments end up in the schema.

use std::collections::BTreeMap;
use std::fmt;

use berth_model::{
    Autoscaling, CircuitBreaker, ContainerDefinition, ContainerDependency, DependencyCondition,
    DeploymentConfiguration, DeploymentStrategy, EphemeralStorage, HealthCheck, IngressRule,
    LinuxParameters, PlacementSpec, PortMapping, Protocol, RepositoryCredentials,
    SecretEnvironment, SecretFile, TargetTracking, TaskDefinitionRef, TaskDefinitionSpec, Ulimit,
    DEFAULT_STOP_TIMEOUT_SECS,
};
use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::Metadata;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Header {
    pub(crate) api_version: Option<String>,
    pub(crate) kind: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TaskDefinitionDoc {
    #[allow(dead_code)]
    #[schemars(extend("const" = "berth.dev/v1"))]
    api_version: String,
    #[allow(dead_code)]
    #[schemars(extend("const" = "TaskDefinition"))]
    kind: String,
    pub(crate) metadata: Metadata,
    pub(crate) spec: TaskDefinitionSpecYaml,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TaskDefinitionSpecYaml {
    cpu: u32,
    memory: u32,
    containers: Vec<ContainerYaml>,
    /// `strategy: [{type: spread, field: attribute:zone}]`,
    /// `constraints: [{type: memberOf, expression: "attribute:disk == ssd"}]`.
    #[serde(default)]
    placement: PlacementSpec,
    /// The task's writable storage limit: `{sizeInGiB: 20}` (the default).
    #[serde(default)]
    ephemeral_storage: Option<EphemeralStorage>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServiceDoc {
    #[allow(dead_code)]
    #[schemars(extend("const" = "berth.dev/v1"))]
    api_version: String,
    #[allow(dead_code)]
    #[schemars(extend("const" = "Service"))]
    kind: String,
    pub(crate) metadata: Metadata,
    pub(crate) spec: ServiceSpecYaml,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServiceSpecYaml {
    /// `family` or `family:revision`; or an inline `template`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) task_definition: Option<TaskDefinitionRef>,
    #[serde(default)]
    pub(crate) template: Option<TaskDefinitionSpecYaml>,
    pub(crate) desired_count: u32,
    #[serde(default)]
    pub(crate) deployment_configuration: DeploymentConfigurationYaml,
    #[serde(default)]
    pub(crate) placement: PlacementSpec,
    #[serde(default)]
    pub(crate) autoscaling: Option<AutoscalingYaml>,
    /// How ingresses route to the service's healthy tasks.
    #[serde(default)]
    pub(crate) ingress: Vec<IngressRuleYaml>,
    /// How long a task that publishes ports is out of routing before it gets SIGTERM
    /// (default 5s).
    #[serde(default)]
    pub(crate) deregistration_delay: Option<Seconds>,
}

/// HTTP (`host`, optional `pathPrefix`) or TCP (`listenerPort`).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct IngressRuleYaml {
    /// HTTP: the Host header to match; `*` matches any host.
    #[serde(default)]
    host: Option<String>,
    /// HTTP: the path prefix to match on segment boundaries (default `/`).
    #[serde(default)]
    path_prefix: Option<String>,
    /// TCP: the port every ingress listens on for this service.
    #[serde(default)]
    listener_port: Option<u16>,
    container_name: String,
    container_port: u16,
}

impl IngressRuleYaml {
    pub(crate) fn into_model(self) -> IngressRule {
        IngressRule {
            host: self.host.map(|h| h.to_ascii_lowercase()),
            path_prefix: self.path_prefix,
            listener_port: self.listener_port,
            container_name: self.container_name,
            container_port: self.container_port,
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AutoscalingYaml {
    min_count: u32,
    max_count: u32,
    target_tracking: Vec<TargetTracking>,
    #[serde(default)]
    scale_out_cooldown: Option<Seconds>,
    #[serde(default)]
    scale_in_cooldown: Option<Seconds>,
    #[serde(default)]
    disable_scale_in: bool,
    #[serde(default)]
    scale_to_zero: Option<ScaleToZeroYaml>,
}

/// `scaleToZero: {}` takes the defaults (idle 5m, activation timeout 30s).
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScaleToZeroYaml {
    #[serde(default)]
    idle_after: Option<Seconds>,
    #[serde(default)]
    activation_timeout: Option<Seconds>,
}

impl AutoscalingYaml {
    pub(crate) fn into_model(self) -> Autoscaling {
        let d = Autoscaling::with_defaults(self.min_count, self.max_count, self.target_tracking);
        Autoscaling {
            scale_out_cooldown: self
                .scale_out_cooldown
                .map_or(d.scale_out_cooldown, |s| s.0),
            scale_in_cooldown: self.scale_in_cooldown.map_or(d.scale_in_cooldown, |s| s.0),
            disable_scale_in: self.disable_scale_in,
            scale_to_zero: self.scale_to_zero.map(|z| {
                let d = berth_model::ScaleToZero::default();
                berth_model::ScaleToZero {
                    idle_after: z.idle_after.map_or(d.idle_after, |s| s.0),
                    activation_timeout: z.activation_timeout.map_or(d.activation_timeout, |s| s.0),
                }
            }),
            ..d
        }
    }
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeploymentConfigurationYaml {
    minimum_healthy_percent: Option<u32>,
    maximum_percent: Option<u32>,
    circuit_breaker: Option<CircuitBreakerYaml>,
    healthy_deadline: Option<Seconds>,
    progress_deadline: Option<Seconds>,
    strategy: Option<DeploymentStrategy>,
    canary_count: Option<u32>,
    canary_bake_time: Option<Seconds>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CircuitBreakerYaml {
    enable: Option<bool>,
    rollback: Option<bool>,
}

impl DeploymentConfigurationYaml {
    pub(crate) fn into_model(self) -> DeploymentConfiguration {
        let d = DeploymentConfiguration::default();
        let breaker = self.circuit_breaker;
        DeploymentConfiguration {
            minimum_healthy_percent: self
                .minimum_healthy_percent
                .unwrap_or(d.minimum_healthy_percent),
            maximum_percent: self.maximum_percent.unwrap_or(d.maximum_percent),
            circuit_breaker: CircuitBreaker {
                enable: breaker
                    .as_ref()
                    .and_then(|b| b.enable)
                    .unwrap_or(d.circuit_breaker.enable),
                rollback: breaker
                    .as_ref()
                    .and_then(|b| b.rollback)
                    .unwrap_or(d.circuit_breaker.rollback),
            },
            healthy_deadline: self.healthy_deadline.map_or(d.healthy_deadline, |s| s.0),
            progress_deadline: self.progress_deadline.map_or(d.progress_deadline, |s| s.0),
            strategy: self.strategy.unwrap_or(d.strategy),
            canary_count: self.canary_count.unwrap_or(d.canary_count),
            canary_bake_time: self.canary_bake_time.map_or(d.canary_bake_time, |s| s.0),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ContainerYaml {
    name: String,
    image: NonEmpty,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    entry_point: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    working_directory: Option<String>,
    #[serde(default = "yes")]
    essential: bool,
    #[serde(default)]
    stop_timeout: Option<Seconds>,
    #[serde(default)]
    cpu: Option<u32>,
    #[serde(default)]
    memory: Option<u32>,
    #[serde(default)]
    health_check: Option<HealthCheckYaml>,
    #[serde(default)]
    depends_on: Vec<DependencyYaml>,
    /// Run the process under a minimal init as PID 1 (on unless `false`).
    #[serde(default = "yes")]
    init: bool,
    /// Container ports published on the task's node.
    #[serde(default)]
    port_mappings: Vec<PortMappingYaml>,
    /// Environment variables from secrets: `[{name: DB_PASSWORD, valueFrom: db-creds:password}]`.
    #[serde(default)]
    secrets: Vec<SecretEnvironment>,
    /// Every key of a secret as a read-only file: `[{secret: tls, path: /run/secrets/tls}]`.
    #[serde(default)]
    secret_files: Vec<SecretFile>,
    /// Registry credentials from a secret with keys `username` and `password`:
    /// `{credentialsParameter: registry-creds}`.
    #[serde(default)]
    repository_credentials: Option<RepositoryCredentials>,
    /// `uid`, `uid:gid`, `name` or `name:group` (names from the image's /etc/passwd); the
    /// image's USER when absent.
    #[serde(default)]
    user: Option<String>,
    /// Mount the root filesystem read-only.
    #[serde(default)]
    readonly_root_filesystem: bool,
    /// `{capabilities: {add: [NET_ADMIN], drop: [ALL]}}`.
    #[serde(default)]
    linux_parameters: LinuxParameters,
    /// `[{name: nofile, softLimit: 1024, hardLimit: 4096}]`.
    #[serde(default)]
    ulimits: Vec<Ulimit>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortMappingYaml {
    /// The port the container listens on.
    #[schemars(range(min = 1))]
    container_port: u16,
    /// The node's port; 0 (the default) picks a free one when the task starts. A fixed port
    /// keeps two tasks that need it off one node.
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    protocol: Protocol,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DependencyYaml {
    container_name: String,
    condition: DependencyCondition,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HealthCheckYaml {
    command: Vec<String>,
    #[serde(default)]
    interval: Option<Seconds>,
    #[serde(default)]
    timeout: Option<Seconds>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    start_period: Option<Seconds>,
}

impl HealthCheckYaml {
    fn into_model(self) -> HealthCheck {
        let d = HealthCheck::new(self.command);
        HealthCheck {
            interval: self.interval.map_or(d.interval, |s| s.0),
            timeout: self.timeout.map_or(d.timeout, |s| s.0),
            retries: self.retries.unwrap_or(d.retries),
            start_period: self.start_period.map_or(d.start_period, |s| s.0),
            command: d.command,
        }
    }
}

fn yes() -> bool {
    true
}

/// A string that must not be blank.
struct NonEmpty(String);

impl JsonSchema for NonEmpty {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NonEmptyString".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "minLength": 1, "pattern": "\\S"})
    }
}

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NonEmpty, E> {
                if s.trim().is_empty() {
                    return Err(E::custom("must not be empty"));
                }
                Ok(NonEmpty(s.to_owned()))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// A duration in whole seconds: `30s`, `5m`, `1m30s`, or a number of seconds.
pub(crate) struct Seconds(pub(crate) u32);

impl JsonSchema for Seconds {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: 30s, 5m, 1m30s, or a number of seconds",
            "anyOf": [
                {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d) ?)+$"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s or 5m, or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                u32::try_from(v)
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("{v} seconds is too long")))
            }
            fn visit_str<E: de::Error>(self, t: &str) -> Result<Seconds, E> {
                let dur = humantime::parse_duration(t).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {t:?} ({e}); write it like 30s or 5m"
                    ))
                })?;
                u32::try_from(dur.as_secs())
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("duration {t:?} is too long")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl TaskDefinitionSpecYaml {
    pub(crate) fn into_spec(self, family: String) -> TaskDefinitionSpec {
        TaskDefinitionSpec {
            placement: self.placement,
            family,
            cpu: self.cpu,
            memory: self.memory,
            ephemeral_storage: self.ephemeral_storage,
            meta: Default::default(),
            containers: self
                .containers
                .into_iter()
                .map(|c| ContainerDefinition {
                    name: c.name,
                    image: c.image.0,
                    command: c.command,
                    entry_point: c.entry_point,
                    environment: c.environment,
                    working_directory: c.working_directory,
                    essential: c.essential,
                    stop_timeout: c.stop_timeout.map_or(DEFAULT_STOP_TIMEOUT_SECS, |s| s.0),
                    cpu: c.cpu,
                    memory: c.memory,
                    health_check: c.health_check.map(HealthCheckYaml::into_model),
                    depends_on: c
                        .depends_on
                        .into_iter()
                        .map(|d| ContainerDependency {
                            container_name: d.container_name,
                            condition: d.condition,
                        })
                        .collect(),
                    init: c.init,
                    port_mappings: c
                        .port_mappings
                        .into_iter()
                        .map(|p| PortMapping {
                            container_port: p.container_port,
                            host_port: p.host_port,
                            protocol: p.protocol,
                        })
                        .collect(),
                    secrets: c.secrets,
                    secret_files: c.secret_files,
                    repository_credentials: c.repository_credentials,
                    user: c.user,
                    readonly_root_filesystem: c.readonly_root_filesystem,
                    linux_parameters: c.linux_parameters,
                    ulimits: c.ulimits,
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TaskDoc {
    #[allow(dead_code)]
    #[schemars(extend("const" = "berth.dev/v1"))]
    api_version: String,
    #[allow(dead_code)]
    #[schemars(extend("const" = "Task"))]
    kind: String,
    pub(crate) metadata: Metadata,
    pub(crate) spec: TaskSpecYaml,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TaskSpecYaml {
    /// `family` or `family:revision`; or an inline `template`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub(crate) task_definition: Option<TaskDefinitionRef>,
    #[serde(default)]
    pub(crate) template: Option<TaskDefinitionSpecYaml>,
    /// How many tasks (default 1).
    #[serde(default)]
    pub(crate) count: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SecretDoc {
    #[allow(dead_code)]
    #[schemars(extend("const" = "berth.dev/v1"))]
    api_version: String,
    #[allow(dead_code)]
    #[schemars(extend("const" = "Secret"))]
    kind: String,
    pub(crate) metadata: Metadata,
    pub(crate) spec: SecretSpecYaml,
}

/// A secret's keys and values; the servers seal them and never show them again.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SecretSpecYaml {
    /// Keys and text values.
    #[serde(default)]
    pub(crate) string_data: BTreeMap<String, String>,
    /// Keys and base64-encoded values (for binary content).
    #[serde(default)]
    pub(crate) data: BTreeMap<String, String>,
}

/// Any one document of a manifest file, for the JSON Schema.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum AnyDocument {
    TaskDefinition(TaskDefinitionDoc),
    Service(ServiceDoc),
    Task(TaskDoc),
    Secret(SecretDoc),
}
