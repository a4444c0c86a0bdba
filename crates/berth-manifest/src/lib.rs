//! Kubernetes-style YAML manifests (`apiVersion: berth.dev/v1`) to and from berth's model, with
//! errors that name the file, line, column and field.
//!
//! Pure: the caller reads files; this crate only sees text.

use std::collections::BTreeMap;
use std::fmt;

use berth_model::{
    Autoscaling, CircuitBreaker, ContainerDefinition, ContainerDependency, DependencyCondition,
    DeploymentConfiguration, DeploymentStrategy, HealthCheck, PlacementSpec, ServiceSpec,
    TargetTracking, TaskDefinitionRef, TaskDefinitionSpec, DEFAULT_STOP_TIMEOUT_SECS,
};
use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::Deserialize;

pub const API_VERSION: &str = "berth.dev/v1";
/// The kinds this version understands.
pub const KINDS: &[&str] = &["TaskDefinition", "Service", "Task"];

/// One document of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// 1-based line where the document starts.
    pub line: usize,
    pub metadata: Metadata,
    pub object: Object,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// The labels and annotations as the model keeps them.
    pub fn object_meta(&self) -> berth_model::ObjectMeta {
        berth_model::ObjectMeta {
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    TaskDefinition(TaskDefinitionSpec),
    /// A service; with an inline `template`, `spec.task_definition` is the service's name
    /// and the template is registered as the next revision of that family when it changed.
    Service {
        spec: Box<ServiceSpec>,
        template: Option<TaskDefinitionSpec>,
    },
    /// One-off tasks: `count` copies of `task_definition` (with an inline `template`, the
    /// family is the manifest's name). Applying the same document again within the client
    /// token's hour runs nothing new.
    Task {
        task_definition: TaskDefinitionRef,
        template: Option<TaskDefinitionSpec>,
        count: u32,
    },
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::TaskDefinition(_) => "TaskDefinition",
            Object::Service { .. } => "Service",
            Object::Task { .. } => "Task",
        }
    }
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskDefinitionDoc {
    #[allow(dead_code)]
    #[schemars(extend("const" = "berth.dev/v1"))]
    api_version: String,
    #[allow(dead_code)]
    #[schemars(extend("const" = "TaskDefinition"))]
    kind: String,
    metadata: Metadata,
    spec: TaskDefinitionSpecYaml,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskDefinitionSpecYaml {
    cpu: u32,
    memory: u32,
    containers: Vec<ContainerYaml>,
    /// `strategy: [{type: spread, field: attribute:zone}]`,
    /// `constraints: [{type: memberOf, expression: "attribute:disk == ssd"}]`.
    #[serde(default)]
    placement: PlacementSpec,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceDoc {
    #[allow(dead_code)]
    #[schemars(extend("const" = "berth.dev/v1"))]
    api_version: String,
    #[allow(dead_code)]
    #[schemars(extend("const" = "Service"))]
    kind: String,
    metadata: Metadata,
    spec: ServiceSpecYaml,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceSpecYaml {
    /// `family` or `family:revision`; or an inline `template`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    task_definition: Option<TaskDefinitionRef>,
    #[serde(default)]
    template: Option<TaskDefinitionSpecYaml>,
    desired_count: u32,
    #[serde(default)]
    deployment_configuration: DeploymentConfigurationYaml,
    #[serde(default)]
    placement: PlacementSpec,
    #[serde(default)]
    autoscaling: Option<AutoscalingYaml>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AutoscalingYaml {
    min_count: u32,
    max_count: u32,
    target_tracking: Vec<TargetTracking>,
    #[serde(default)]
    scale_out_cooldown: Option<Seconds>,
    #[serde(default)]
    scale_in_cooldown: Option<Seconds>,
    #[serde(default)]
    disable_scale_in: bool,
}

impl AutoscalingYaml {
    fn into_model(self) -> Autoscaling {
        let d = Autoscaling::with_defaults(self.min_count, self.max_count, self.target_tracking);
        Autoscaling {
            scale_out_cooldown: self
                .scale_out_cooldown
                .map_or(d.scale_out_cooldown, |s| s.0),
            scale_in_cooldown: self.scale_in_cooldown.map_or(d.scale_in_cooldown, |s| s.0),
            disable_scale_in: self.disable_scale_in,
            ..d
        }
    }
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeploymentConfigurationYaml {
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
    fn into_model(self) -> DeploymentConfiguration {
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
struct Seconds(u32);

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
    fn into_spec(self, family: String) -> TaskDefinitionSpec {
        TaskDefinitionSpec {
            placement: self.placement,
            family,
            cpu: self.cpu,
            memory: self.memory,
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
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskDoc {
    #[allow(dead_code)]
    #[schemars(extend("const" = "berth.dev/v1"))]
    api_version: String,
    #[allow(dead_code)]
    #[schemars(extend("const" = "Task"))]
    kind: String,
    metadata: Metadata,
    spec: TaskSpecYaml,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskSpecYaml {
    /// `family` or `family:revision`; or an inline `template`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    task_definition: Option<TaskDefinitionRef>,
    #[serde(default)]
    template: Option<TaskDefinitionSpecYaml>,
    /// How many tasks (default 1).
    #[serde(default)]
    count: Option<u32>,
}

/// A document's `taskDefinition` or inline `template` (exactly one): the reference, and the
/// template as the next revision of family `name` with `meta`. An error is `(field, message)`.
fn task_definition_or_template(
    reference: Option<TaskDefinitionRef>,
    template: Option<TaskDefinitionSpecYaml>,
    name: &str,
    meta: berth_model::ObjectMeta,
) -> Result<(TaskDefinitionRef, Option<TaskDefinitionSpec>), (String, String)> {
    match (reference, template) {
        (Some(r), None) => Ok((r, None)),
        (None, Some(t)) => {
            let mut t = t.into_spec(name.to_owned());
            t.meta = meta;
            if let Err(e) = t.validate() {
                let field = if e.field == "family" {
                    "metadata.name".to_owned()
                } else {
                    format!("spec.template.{}", e.field)
                };
                return Err((field, e.message));
            }
            let r = TaskDefinitionRef {
                family: name.to_owned(),
                revision: None,
            };
            Ok((r, Some(t)))
        }
        (Some(_), Some(_)) => Err((
            "spec.template".into(),
            "give either taskDefinition or template, not both".into(),
        )),
        (None, None) => Err((
            "spec".into(),
            "taskDefinition (family or family:revision) or an inline template is required".into(),
        )),
    }
}

/// Any one document of a manifest file, for the JSON Schema.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum AnyDocument {
    TaskDefinition(TaskDefinitionDoc),
    Service(ServiceDoc),
    Task(TaskDoc),
}

/// The JSON Schema of one manifest document (either kind), for editors to validate manifests
/// with (`berth schema`; the repository ships it as `crates/berth-manifest/berth.schema.json`).
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(AnyDocument);
    schema.insert("title".into(), "berth manifest (berth.dev/v1)".into());
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Splits a multi-document YAML text at `---` lines: `(first line, text)` per document.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            // Keep line numbers aligned: the marker line becomes an empty line.
            current.push('\n');
            start -= 1;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, t)| {
            t.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Parses every document of `text`; `file` names it in errors. Either every document is
/// valid, or the first error is returned.
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut out = Vec::new();
    for (first_line, doc) in split_documents(text) {
        let err = |line: usize, column: usize, message: String| ManifestError {
            file: file.to_owned(),
            line: first_line + line.saturating_sub(1),
            column,
            message,
        };
        let yaml_err = |e: serde_yaml_ng::Error| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            // serde_yaml_ng appends " at line L column C"; the prefix says it already.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            err(line, column, msg)
        };
        let header: Header = serde_yaml_ng::from_str(&doc).map_err(yaml_err)?;
        let doc_start = doc
            .lines()
            .position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map_or(1, |p| p + 1);
        match header.api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(other) => {
                return Err(err(
                    doc_start,
                    1,
                    format!("apiVersion {other:?} is not supported; use {API_VERSION}"),
                ))
            }
            None => {
                return Err(err(
                    doc_start,
                    1,
                    format!("apiVersion is missing; use {API_VERSION}"),
                ))
            }
        }
        let kind = header.kind.unwrap_or_default();
        let document = match kind.as_str() {
            "TaskDefinition" => {
                let parsed: TaskDefinitionDoc = serde_yaml_ng::from_str(&doc).map_err(yaml_err)?;
                let metadata = parsed.metadata.clone();
                let mut spec = parsed.spec.into_spec(parsed.metadata.name);
                spec.meta = metadata.object_meta();
                if let Err(e) = spec.validate() {
                    let field = if e.field == "family" {
                        "metadata.name".to_owned()
                    } else {
                        format!("spec.{}", e.field)
                    };
                    let (line, column) = locate(&doc, &field).unwrap_or((doc_start, 1));
                    return Err(err(line, column, format!("{field}: {}", e.message)));
                }
                Document {
                    line: first_line + doc_start - 1,
                    metadata,
                    object: Object::TaskDefinition(spec),
                }
            }
            "Service" => {
                let parsed: ServiceDoc = serde_yaml_ng::from_str(&doc).map_err(yaml_err)?;
                let metadata = parsed.metadata.clone();
                let name = parsed.metadata.name;
                let at = |field: &str, message: String| {
                    let (line, column) = locate(&doc, field).unwrap_or((doc_start, 1));
                    err(line, column, format!("{field}: {message}"))
                };
                let (task_definition, template) = task_definition_or_template(
                    parsed.spec.task_definition,
                    parsed.spec.template,
                    &name,
                    Default::default(),
                )
                .map_err(|(field, message)| at(&field, message))?;
                let spec = ServiceSpec {
                    name,
                    task_definition,
                    desired_count: parsed.spec.desired_count,
                    deployment_configuration: parsed.spec.deployment_configuration.into_model(),
                    placement: parsed.spec.placement,
                    autoscaling: parsed.spec.autoscaling.map(AutoscalingYaml::into_model),
                    meta: metadata.object_meta(),
                };
                if let Err(e) = spec.validate() {
                    let field = if e.field == "name" {
                        "metadata.name".to_owned()
                    } else {
                        format!("spec.{}", e.field)
                    };
                    return Err(at(&field, e.message));
                }
                Document {
                    line: first_line + doc_start - 1,
                    metadata,
                    object: Object::Service {
                        spec: Box::new(spec),
                        template,
                    },
                }
            }
            "Task" => {
                let parsed: TaskDoc = serde_yaml_ng::from_str(&doc).map_err(yaml_err)?;
                let metadata = parsed.metadata.clone();
                let name = parsed.metadata.name;
                let at = |field: &str, message: String| {
                    let (line, column) = locate(&doc, field).unwrap_or((doc_start, 1));
                    err(line, column, format!("{field}: {message}"))
                };
                berth_model::validate_name("metadata.name", &name)
                    .map_err(|e| at("metadata.name", e.message))?;
                let count = parsed.spec.count.unwrap_or(1);
                if count == 0 || count > 1000 {
                    return Err(at(
                        "spec.count",
                        format!("{count} is out of range; use 1..=1000"),
                    ));
                }
                let (task_definition, template) = task_definition_or_template(
                    parsed.spec.task_definition,
                    parsed.spec.template,
                    &name,
                    metadata.object_meta(),
                )
                .map_err(|(field, message)| at(&field, message))?;
                Document {
                    line: first_line + doc_start - 1,
                    metadata,
                    object: Object::Task {
                        task_definition,
                        template,
                        count,
                    },
                }
            }
            "" => {
                return Err(err(
                    doc_start,
                    1,
                    format!("kind is missing; use one of {}", KINDS.join(", ")),
                ))
            }
            other => {
                return Err(err(
                    doc_start,
                    1,
                    format!(
                        "kind {other:?} is not supported; use one of {}",
                        KINDS.join(", ")
                    ),
                ))
            }
        };
        if let Some(ns) = &document.metadata.namespace {
            berth_model::validate_name("metadata.namespace", ns)
                .map_err(|e| err(doc_start, 1, e.to_string()))?;
        }
        out.push(document);
    }
    Ok(out)
}

/// Finds the line and column of a field path such as `spec.containers[1].memory` in one
/// YAML document written in block style (how manifests are written). Flow-style documents
/// fall back to the document start.
fn locate(doc: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut from = 0; // first line of the current block
    let mut indent: Option<usize> = None; // indentation of the current block's keys
    let mut found = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        // Find `key:` at the block's indentation.
        // A key that is absent (defaulted) points at its parent.
        let Some((line_no, col)) = (from..lines.len()).find_map(|i| {
            let l = lines[i];
            let trimmed = l.trim_start().trim_start_matches("- ");
            let col = l.len() - trimmed.len();
            let ok = trimmed.starts_with(&format!("{key}:")) && indent.is_none_or(|ind| col >= ind);
            ok.then_some((i, col))
        }) else {
            return found;
        };
        found = Some((line_no + 1, col + 1));
        from = line_no + 1;
        indent = Some(col + 1);
        if let Some(index) = index {
            // Find the index-th `- ` item below the key.
            let mut seen = 0;
            let item = (from..lines.len()).find(|&i| {
                let t = lines[i].trim_start();
                if t.starts_with("- ") || t == "-" {
                    seen += 1;
                    seen == index + 1
                } else {
                    false
                }
            })?;
            let col = lines[item].len() - lines[item].trim_start().len();
            found = Some((item + 1, col + 1));
            from = item;
            indent = Some(col);
        }
    }
    found
}

#[cfg(test)]
mod tests;
