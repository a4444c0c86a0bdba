//! Conversions between `berth_model` and the generated `v1` types. Wire timestamps use 0 for
//! "unset" and enums have an UNSPECIFIED zero value; both become `Option`/errors here.

use berth_model as m;

use crate::v1;

/// A wire message that does not describe a valid domain object.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error("{field}: value {value} is not a known {kind}")]
    UnknownEnum {
        field: &'static str,
        kind: &'static str,
        value: i32,
    },
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error(transparent)]
    Invalid(#[from] m::ValidationError),
}

fn opt_ts(ts: u64) -> Option<m::Timestamp> {
    (ts != 0).then_some(ts)
}

fn opt_str(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

// `from_wire` needs to be an inherent method of a foreign type; a local extension trait
// carries it instead.
trait FromWire: Sized {
    fn from_wire(field: &'static str, v: i32) -> Result<Self, ConversionError>;
}

macro_rules! wire_enum {
    ($model:ty, $wire:ty, $kind:literal { $($m:ident <=> $w:ident),* $(,)? }) => {
        impl From<$model> for $wire {
            fn from(v: $model) -> Self {
                match v { $(<$model>::$m => <$wire>::$w),* }
            }
        }
        impl FromWire for $model {
            fn from_wire(field: &'static str, v: i32) -> Result<Self, ConversionError> {
                match <$wire>::try_from(v) {
                    $(Ok(<$wire>::$w) => Ok(<$model>::$m),)*
                    _ => Err(ConversionError::UnknownEnum { field, kind: $kind, value: v }),
                }
            }
        }
    };
}

wire_enum!(m::TaskDefinitionStatus, v1::TaskDefinitionStatus, "task definition status" {
    Active <=> Active,
    Inactive <=> Inactive,
});

wire_enum!(m::TaskStatus, v1::TaskStatus, "task status" {
    Provisioning <=> Provisioning,
    Pending <=> Pending,
    Activating <=> Activating,
    Running <=> Running,
    Deactivating <=> Deactivating,
    Stopping <=> Stopping,
    Deprovisioning <=> Deprovisioning,
    Stopped <=> Stopped,
});

wire_enum!(m::DesiredStatus, v1::DesiredStatus, "desired status" {
    Running <=> Running,
    Stopped <=> Stopped,
});

wire_enum!(m::StopCode, v1::StopCode, "stop code" {
    TaskFailedToStart <=> TaskFailedToStart,
    EssentialContainerExited <=> EssentialContainerExited,
    UserInitiated <=> UserInitiated,
    ServiceSchedulerInitiated <=> ServiceSchedulerInitiated,
    NodeLost <=> NodeLost,
});

wire_enum!(m::HealthStatus, v1::HealthStatus, "health status" {
    Unknown <=> Unknown,
    Healthy <=> Healthy,
    Unhealthy <=> Unhealthy,
});

wire_enum!(m::DependencyCondition, v1::DependencyCondition, "dependency condition" {
    Start <=> Start,
    Complete <=> Complete,
    Success <=> Success,
    Healthy <=> Healthy,
});

wire_enum!(m::NodeStatus, v1::NodeStatus, "node status" {
    Active <=> Active,
    Draining <=> Draining,
    Down <=> Down,
});

wire_enum!(m::ServiceStatus, v1::ServiceStatus, "service status" {
    Active <=> Active,
    Draining <=> Draining,
});

wire_enum!(m::DeploymentStatus, v1::DeploymentStatus, "deployment status" {
    Primary <=> Primary,
    Active <=> Active,
});

wire_enum!(m::RolloutState, v1::RolloutState, "rollout state" {
    InProgress <=> InProgress,
    Completed <=> Completed,
    Failed <=> Failed,
});

/// Wire enums are `i32` fields in prost; these read them back with a field name for errors.
pub fn task_status(field: &'static str, v: i32) -> Result<m::TaskStatus, ConversionError> {
    m::TaskStatus::from_wire(field, v)
}

pub fn desired_status(field: &'static str, v: i32) -> Result<m::DesiredStatus, ConversionError> {
    m::DesiredStatus::from_wire(field, v)
}

/// An optional stop code: UNSPECIFIED means none.
pub fn stop_code(v: i32) -> Result<Option<m::StopCode>, ConversionError> {
    if v == v1::StopCode::Unspecified as i32 {
        return Ok(None);
    }
    m::StopCode::from_wire("stopCode", v).map(Some)
}

pub fn stop_code_to_wire(code: Option<m::StopCode>) -> i32 {
    code.map_or(v1::StopCode::Unspecified, v1::StopCode::from) as i32
}

impl From<m::ContainerDefinition> for v1::ContainerDefinition {
    fn from(c: m::ContainerDefinition) -> Self {
        Self {
            name: c.name,
            image: c.image,
            command: c.command,
            entry_point: c.entry_point,
            environment: c.environment,
            working_directory: c.working_directory.unwrap_or_default(),
            essential: c.essential,
            stop_timeout: c.stop_timeout,
            cpu: c.cpu,
            memory: c.memory,
            health_check: c.health_check.map(|h| v1::HealthCheck {
                command: h.command,
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
            }),
            depends_on: c
                .depends_on
                .into_iter()
                .map(|d| v1::ContainerDependency {
                    container_name: d.container_name,
                    condition: v1::DependencyCondition::from(d.condition) as i32,
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::ContainerDefinition> for m::ContainerDefinition {
    type Error = ConversionError;
    fn try_from(c: v1::ContainerDefinition) -> Result<Self, ConversionError> {
        let depends_on = c
            .depends_on
            .into_iter()
            .map(|d| {
                Ok(m::ContainerDependency {
                    container_name: d.container_name,
                    condition: m::DependencyCondition::from_wire(
                        "dependsOn.condition",
                        d.condition,
                    )?,
                })
            })
            .collect::<Result<_, ConversionError>>()?;
        Ok(Self {
            name: c.name,
            image: c.image,
            command: c.command,
            entry_point: c.entry_point,
            environment: c.environment,
            working_directory: opt_str(c.working_directory),
            essential: c.essential,
            stop_timeout: c.stop_timeout,
            cpu: c.cpu,
            memory: c.memory,
            health_check: c.health_check.map(|h| m::HealthCheck {
                command: h.command,
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
            }),
            depends_on,
        })
    }
}

impl From<m::TaskDefinitionSpec> for v1::TaskDefinitionSpec {
    fn from(s: m::TaskDefinitionSpec) -> Self {
        Self {
            family: s.family,
            cpu: s.cpu,
            memory: s.memory,
            containers: s.containers.into_iter().map(Into::into).collect(),
            placement: placement_to_wire(s.placement),
            labels: s.meta.labels,
            annotations: s.meta.annotations,
        }
    }
}

impl TryFrom<v1::TaskDefinitionSpec> for m::TaskDefinitionSpec {
    type Error = ConversionError;
    fn try_from(s: v1::TaskDefinitionSpec) -> Result<Self, ConversionError> {
        Ok(Self {
            family: s.family,
            cpu: s.cpu,
            memory: s.memory,
            containers: s
                .containers
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            placement: placement_from_wire(s.placement)?,
            meta: m::ObjectMeta {
                labels: s.labels,
                annotations: s.annotations,
            },
        })
    }
}

impl From<m::TaskDefinition> for v1::TaskDefinition {
    fn from(d: m::TaskDefinition) -> Self {
        Self {
            namespace: d.namespace,
            family: d.family,
            revision: d.revision,
            status: v1::TaskDefinitionStatus::from(d.status) as i32,
            cpu: d.cpu,
            memory: d.memory,
            containers: d.containers.into_iter().map(Into::into).collect(),
            registered_at: d.registered_at,
            placement: placement_to_wire(d.placement),
            labels: d.meta.labels,
            annotations: d.meta.annotations,
        }
    }
}

impl TryFrom<v1::TaskDefinition> for m::TaskDefinition {
    type Error = ConversionError;
    fn try_from(d: v1::TaskDefinition) -> Result<Self, ConversionError> {
        Ok(Self {
            namespace: d.namespace,
            family: d.family,
            revision: d.revision,
            status: m::TaskDefinitionStatus::from_wire("status", d.status)?,
            cpu: d.cpu,
            memory: d.memory,
            containers: d
                .containers
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            registered_at: d.registered_at,
            placement: placement_from_wire(d.placement)?,
            meta: m::ObjectMeta {
                labels: d.labels,
                annotations: d.annotations,
            },
        })
    }
}

impl From<m::ContainerState> for v1::ContainerState {
    fn from(c: m::ContainerState) -> Self {
        Self {
            name: c.name,
            image: c.image,
            image_digest: c.image_digest.unwrap_or_default(),
            last_status: v1::TaskStatus::from(c.last_status) as i32,
            exit_code: c.exit_code,
            reason: c.reason.unwrap_or_default(),
            health_status: v1::HealthStatus::from(c.health_status) as i32,
        }
    }
}

impl TryFrom<v1::ContainerState> for m::ContainerState {
    type Error = ConversionError;
    fn try_from(c: v1::ContainerState) -> Result<Self, ConversionError> {
        Ok(Self {
            name: c.name,
            image: c.image,
            image_digest: opt_str(c.image_digest),
            last_status: m::TaskStatus::from_wire("containers.lastStatus", c.last_status)?,
            exit_code: c.exit_code,
            reason: opt_str(c.reason),
            health_status: m::HealthStatus::from_wire("containers.healthStatus", c.health_status)?,
        })
    }
}

fn placement_to_wire(p: m::PlacementSpec) -> Option<v1::PlacementSpec> {
    if p.is_empty() {
        return None;
    }
    let strategy = p
        .strategy
        .into_iter()
        .map(|s| match s {
            m::PlacementStrategy::Binpack { field } => v1::PlacementStrategy {
                r#type: "binpack".into(),
                field: match field {
                    m::BinpackField::Cpu => "cpu".into(),
                    m::BinpackField::Memory => "memory".into(),
                },
            },
            m::PlacementStrategy::Spread { field } => v1::PlacementStrategy {
                r#type: "spread".into(),
                field,
            },
            m::PlacementStrategy::Random => v1::PlacementStrategy {
                r#type: "random".into(),
                field: String::new(),
            },
        })
        .collect();
    let constraints = p
        .constraints
        .into_iter()
        .map(|c| match c {
            m::PlacementConstraint::DistinctInstance => v1::PlacementConstraint {
                r#type: "distinctInstance".into(),
                expression: String::new(),
            },
            m::PlacementConstraint::MemberOf { expression } => v1::PlacementConstraint {
                r#type: "memberOf".into(),
                expression,
            },
        })
        .collect();
    Some(v1::PlacementSpec {
        strategy,
        constraints,
    })
}

fn placement_from_wire(p: Option<v1::PlacementSpec>) -> Result<m::PlacementSpec, ConversionError> {
    let Some(p) = p else {
        return Ok(m::PlacementSpec::default());
    };
    let invalid =
        |field: &str, msg: String| ConversionError::Invalid(m::ValidationError::new(field, msg));
    let strategy = p
        .strategy
        .into_iter()
        .map(|s| match (s.r#type.as_str(), s.field.as_str()) {
            ("binpack", "cpu" | "") => Ok(m::PlacementStrategy::Binpack { field: m::BinpackField::Cpu }),
            ("binpack", "memory") => Ok(m::PlacementStrategy::Binpack { field: m::BinpackField::Memory }),
            ("spread", f) => Ok(m::PlacementStrategy::Spread { field: f.to_owned() }),
            ("random", _) => Ok(m::PlacementStrategy::Random),
            (t, f) => Err(invalid(
                "placement.strategy",
                format!("unknown strategy {t:?} (field {f:?}); use binpack (cpu|memory), spread or random"),
            )),
        })
        .collect::<Result<_, _>>()?;
    let constraints = p
        .constraints
        .into_iter()
        .map(|c| match c.r#type.as_str() {
            "distinctInstance" => Ok(m::PlacementConstraint::DistinctInstance),
            "memberOf" => Ok(m::PlacementConstraint::MemberOf {
                expression: c.expression,
            }),
            t => Err(invalid(
                "placement.constraints",
                format!("unknown constraint {t:?}; use distinctInstance or memberOf"),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(m::PlacementSpec {
        strategy,
        constraints,
    })
}

fn events_to_wire(events: &m::EventLog) -> Vec<v1::Event> {
    events
        .iter()
        .map(|e| v1::Event {
            at: e.at,
            message: e.message.clone(),
        })
        .collect()
}

fn events_from_wire(events: Vec<v1::Event>) -> m::EventLog {
    events
        .into_iter()
        .map(|e| m::Event {
            at: e.at,
            message: e.message,
        })
        .collect()
}

impl From<m::Task> for v1::Task {
    fn from(t: m::Task) -> Self {
        Self {
            task_id: t.task_id,
            namespace: t.namespace,
            task_definition: t.task_definition.to_string(),
            group: t.group.unwrap_or_default(),
            started_by: t.started_by.unwrap_or_default(),
            labels: t.labels,
            node: t.node.unwrap_or_default(),
            desired_status: v1::DesiredStatus::from(t.desired_status) as i32,
            last_status: v1::TaskStatus::from(t.last_status) as i32,
            cpu: t.cpu,
            memory: t.memory,
            created_at: t.created_at,
            started_at: t.started_at.unwrap_or_default(),
            stopped_at: t.stopped_at.unwrap_or_default(),
            stop_code: stop_code_to_wire(t.stop_code),
            stopped_reason: t.stopped_reason.unwrap_or_default(),
            events: events_to_wire(&t.events),
            placement: placement_to_wire(t.placement),
            metrics: t.metrics.map(|m| v1::TaskMetrics {
                cpu_units: m.cpu_units,
                memory_bytes: m.memory_bytes,
                sampled_at: m.sampled_at,
            }),
            containers: t.containers.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<v1::Task> for m::Task {
    type Error = ConversionError;
    fn try_from(t: v1::Task) -> Result<Self, ConversionError> {
        Ok(Self {
            task_id: t.task_id,
            namespace: t.namespace,
            task_definition: t.task_definition.parse()?,
            group: opt_str(t.group),
            started_by: opt_str(t.started_by),
            labels: t.labels,
            node: opt_str(t.node),
            desired_status: desired_status("desiredStatus", t.desired_status)?,
            last_status: task_status("lastStatus", t.last_status)?,
            cpu: t.cpu,
            memory: t.memory,
            created_at: t.created_at,
            started_at: opt_ts(t.started_at),
            stopped_at: opt_ts(t.stopped_at),
            stop_code: stop_code(t.stop_code)?,
            stopped_reason: opt_str(t.stopped_reason),
            containers: t
                .containers
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            events: events_from_wire(t.events),
            placement: placement_from_wire(t.placement)?,
            metrics: t.metrics.map(|m| m::TaskMetrics {
                cpu_units: m.cpu_units,
                memory_bytes: m.memory_bytes,
                sampled_at: m.sampled_at,
            }),
        })
    }
}

impl From<m::Node> for v1::Node {
    fn from(n: m::Node) -> Self {
        Self {
            name: n.name,
            address: n.address,
            status: v1::NodeStatus::from(n.status) as i32,
            attributes: n.attributes,
            cpu: Some(v1::Resources {
                total: n.cpu.total,
                allocated: n.cpu.allocated,
            }),
            memory: Some(v1::Resources {
                total: n.memory.total,
                allocated: n.memory.allocated,
            }),
            registered_at: n.registered_at,
            events: events_to_wire(&n.events),
        }
    }
}

impl TryFrom<v1::Node> for m::Node {
    type Error = ConversionError;
    fn try_from(n: v1::Node) -> Result<Self, ConversionError> {
        let res = |r: Option<v1::Resources>, field| {
            r.map(|r| m::Resources {
                total: r.total,
                allocated: r.allocated,
            })
            .ok_or(ConversionError::Missing { field })
        };
        Ok(Self {
            name: n.name,
            address: n.address,
            status: m::NodeStatus::from_wire("status", n.status)?,
            attributes: n.attributes,
            cpu: res(n.cpu, "cpu")?,
            memory: res(n.memory, "memory")?,
            registered_at: n.registered_at,
            events: events_from_wire(n.events),
        })
    }
}

impl From<m::TaskStatusUpdate> for v1::TaskStatusUpdate {
    fn from(u: m::TaskStatusUpdate) -> Self {
        Self {
            task_id: u.task_id,
            last_status: v1::TaskStatus::from(u.last_status) as i32,
            containers: u.containers.into_iter().map(Into::into).collect(),
            stop_code: stop_code_to_wire(u.stop_code),
            stopped_reason: u.stopped_reason.unwrap_or_default(),
            event: u.event.unwrap_or_default(),
        }
    }
}

impl TryFrom<v1::TaskStatusUpdate> for m::TaskStatusUpdate {
    type Error = ConversionError;
    fn try_from(u: v1::TaskStatusUpdate) -> Result<Self, ConversionError> {
        Ok(Self {
            task_id: u.task_id,
            last_status: task_status("lastStatus", u.last_status)?,
            containers: u
                .containers
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            stop_code: stop_code(u.stop_code)?,
            stopped_reason: opt_str(u.stopped_reason),
            event: opt_str(u.event),
        })
    }
}

impl From<m::DeploymentConfiguration> for v1::DeploymentConfiguration {
    fn from(c: m::DeploymentConfiguration) -> Self {
        Self {
            minimum_healthy_percent: Some(c.minimum_healthy_percent),
            maximum_percent: Some(c.maximum_percent),
            circuit_breaker: Some(v1::CircuitBreaker {
                enable: Some(c.circuit_breaker.enable),
                rollback: Some(c.circuit_breaker.rollback),
            }),
            healthy_deadline: Some(c.healthy_deadline),
            progress_deadline: Some(c.progress_deadline),
            strategy: c.strategy.to_string(),
            canary_count: Some(c.canary_count),
            canary_bake_time: Some(c.canary_bake_time),
        }
    }
}

/// Absent fields take the model's defaults.
fn deployment_configuration_from_wire(
    c: Option<v1::DeploymentConfiguration>,
) -> Result<m::DeploymentConfiguration, ConversionError> {
    let d = m::DeploymentConfiguration::default();
    let Some(c) = c else { return Ok(d) };
    let breaker = c.circuit_breaker.unwrap_or_default();
    let strategy = match c.strategy.as_str() {
        "" | "rolling" => m::DeploymentStrategy::Rolling,
        "canary" => m::DeploymentStrategy::Canary,
        other => {
            return Err(ConversionError::Invalid(m::ValidationError::new(
                "deploymentConfiguration.strategy",
                format!("unknown strategy {other:?}; use rolling or canary"),
            )))
        }
    };
    Ok(m::DeploymentConfiguration {
        minimum_healthy_percent: c
            .minimum_healthy_percent
            .unwrap_or(d.minimum_healthy_percent),
        maximum_percent: c.maximum_percent.unwrap_or(d.maximum_percent),
        circuit_breaker: m::CircuitBreaker {
            enable: breaker.enable.unwrap_or(d.circuit_breaker.enable),
            rollback: breaker.rollback.unwrap_or(d.circuit_breaker.rollback),
        },
        healthy_deadline: c.healthy_deadline.unwrap_or(d.healthy_deadline),
        progress_deadline: c.progress_deadline.unwrap_or(d.progress_deadline),
        strategy,
        canary_count: c.canary_count.unwrap_or(d.canary_count),
        canary_bake_time: c.canary_bake_time.unwrap_or(d.canary_bake_time),
    })
}

impl From<m::Autoscaling> for v1::Autoscaling {
    fn from(a: m::Autoscaling) -> Self {
        Self {
            min_count: a.min_count,
            max_count: a.max_count,
            target_tracking: a
                .target_tracking
                .into_iter()
                .map(|t| v1::TargetTracking {
                    metric: t.metric.to_string(),
                    target: t.target,
                })
                .collect(),
            scale_out_cooldown: Some(a.scale_out_cooldown),
            scale_in_cooldown: Some(a.scale_in_cooldown),
            disable_scale_in: a.disable_scale_in,
        }
    }
}

fn scaling_metric(field: &str, name: &str) -> Result<m::ScalingMetric, ConversionError> {
    match name {
        "CPUUtilization" => Ok(m::ScalingMetric::CpuUtilization),
        "MemoryUtilization" => Ok(m::ScalingMetric::MemoryUtilization),
        other => Err(ConversionError::Invalid(m::ValidationError::new(
            field,
            format!("unknown metric {other:?}; use CPUUtilization or MemoryUtilization"),
        ))),
    }
}

impl TryFrom<v1::Autoscaling> for m::Autoscaling {
    type Error = ConversionError;
    fn try_from(a: v1::Autoscaling) -> Result<Self, ConversionError> {
        let defaults = m::Autoscaling::with_defaults(0, 0, Vec::new());
        Ok(Self {
            min_count: a.min_count,
            max_count: a.max_count,
            target_tracking: a
                .target_tracking
                .into_iter()
                .map(|t| {
                    Ok(m::TargetTracking {
                        metric: scaling_metric("autoscaling.targetTracking.metric", &t.metric)?,
                        target: t.target,
                    })
                })
                .collect::<Result<_, ConversionError>>()?,
            scale_out_cooldown: a.scale_out_cooldown.unwrap_or(defaults.scale_out_cooldown),
            scale_in_cooldown: a.scale_in_cooldown.unwrap_or(defaults.scale_in_cooldown),
            disable_scale_in: a.disable_scale_in,
        })
    }
}

impl From<m::MetricValue> for v1::MetricValue {
    fn from(v: m::MetricValue) -> Self {
        Self {
            metric: v.metric.to_string(),
            value: v.value,
            target: v.target,
        }
    }
}

impl From<m::ServiceSpec> for v1::ServiceSpec {
    fn from(s: m::ServiceSpec) -> Self {
        Self {
            name: s.name,
            task_definition: s.task_definition.to_string(),
            desired_count: s.desired_count,
            deployment_configuration: Some(s.deployment_configuration.into()),
            placement: placement_to_wire(s.placement),
            autoscaling: s.autoscaling.map(Into::into),
            labels: s.meta.labels,
            annotations: s.meta.annotations,
        }
    }
}

impl TryFrom<v1::ServiceSpec> for m::ServiceSpec {
    type Error = ConversionError;
    fn try_from(s: v1::ServiceSpec) -> Result<Self, ConversionError> {
        Ok(Self {
            name: s.name,
            task_definition: s.task_definition.parse()?,
            desired_count: s.desired_count,
            deployment_configuration: deployment_configuration_from_wire(
                s.deployment_configuration,
            )?,
            placement: placement_from_wire(s.placement)?,
            autoscaling: s.autoscaling.map(TryInto::try_into).transpose()?,
            meta: m::ObjectMeta {
                labels: s.labels,
                annotations: s.annotations,
            },
        })
    }
}

impl From<m::Deployment> for v1::Deployment {
    fn from(d: m::Deployment) -> Self {
        Self {
            id: d.id,
            status: v1::DeploymentStatus::from(d.status) as i32,
            task_definition: d.task_definition.to_string(),
            desired_count: d.desired_count,
            pending_count: d.pending_count,
            running_count: d.running_count,
            healthy_count: d.healthy_count,
            failed_tasks: d.failed_tasks,
            rollout_state: v1::RolloutState::from(d.rollout_state) as i32,
            rollout_state_reason: d.rollout_state_reason,
            created_at: d.created_at,
            updated_at: d.updated_at,
            canary_healthy_since: d.canary_healthy_since.unwrap_or_default(),
            promoted: d.promoted,
            rollback_to: d.rollback_to.map(|r| r.to_string()).unwrap_or_default(),
        }
    }
}

impl TryFrom<v1::Deployment> for m::Deployment {
    type Error = ConversionError;
    fn try_from(d: v1::Deployment) -> Result<Self, ConversionError> {
        Ok(Self {
            id: d.id,
            status: m::DeploymentStatus::from_wire("deployments.status", d.status)?,
            task_definition: d.task_definition.parse()?,
            desired_count: d.desired_count,
            pending_count: d.pending_count,
            running_count: d.running_count,
            healthy_count: d.healthy_count,
            failed_tasks: d.failed_tasks,
            rollout_state: m::RolloutState::from_wire("deployments.rolloutState", d.rollout_state)?,
            rollout_state_reason: d.rollout_state_reason,
            created_at: d.created_at,
            updated_at: d.updated_at,
            canary_healthy_since: opt_ts(d.canary_healthy_since),
            promoted: d.promoted,
            rollback_to: opt_str(d.rollback_to).map(|r| r.parse()).transpose()?,
        })
    }
}

impl From<m::Service> for v1::Service {
    fn from(s: m::Service) -> Self {
        Self {
            namespace: s.namespace,
            name: s.name,
            task_definition: s.task_definition.to_string(),
            desired_count: s.desired_count,
            deployment_configuration: Some(s.deployment_configuration.into()),
            placement: placement_to_wire(s.placement),
            status: v1::ServiceStatus::from(s.status) as i32,
            running_count: s.running_count,
            pending_count: s.pending_count,
            deployments: s.deployments.into_iter().map(Into::into).collect(),
            version: s.version,
            created_at: s.created_at,
            last_completed: s.last_completed.map(|r| r.to_string()).unwrap_or_default(),
            events: events_to_wire(&s.events),
            backoff_failures: s.backoff.failures,
            backoff_until: s.backoff.not_before,
            backoff_last_failure_at: s.backoff.last_failure_at,
            autoscaling: s.autoscaling.map(Into::into),
            last_scale_out_at: s.last_scale_out_at,
            last_scale_in_at: s.last_scale_in_at,
            metrics: s.metrics.into_iter().map(Into::into).collect(),
            labels: s.meta.labels,
            annotations: s.meta.annotations,
        }
    }
}

impl TryFrom<v1::Service> for m::Service {
    type Error = ConversionError;
    fn try_from(s: v1::Service) -> Result<Self, ConversionError> {
        Ok(Self {
            namespace: s.namespace,
            name: s.name,
            task_definition: s.task_definition.parse()?,
            desired_count: s.desired_count,
            deployment_configuration: deployment_configuration_from_wire(
                s.deployment_configuration,
            )?,
            placement: placement_from_wire(s.placement)?,
            meta: m::ObjectMeta {
                labels: s.labels,
                annotations: s.annotations,
            },
            status: m::ServiceStatus::from_wire("status", s.status)?,
            running_count: s.running_count,
            pending_count: s.pending_count,
            deployments: s
                .deployments
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            version: s.version,
            created_at: s.created_at,
            last_completed: opt_str(s.last_completed).map(|r| r.parse()).transpose()?,
            backoff: m::LaunchBackoff {
                failures: s.backoff_failures,
                not_before: s.backoff_until,
                last_failure_at: s.backoff_last_failure_at,
            },
            autoscaling: s.autoscaling.map(TryInto::try_into).transpose()?,
            last_scale_out_at: s.last_scale_out_at,
            last_scale_in_at: s.last_scale_in_at,
            metrics: s
                .metrics
                .into_iter()
                .map(|v| {
                    Ok(m::MetricValue {
                        metric: scaling_metric("metrics.metric", &v.metric)?,
                        value: v.value,
                        target: v.target,
                    })
                })
                .collect::<Result<_, ConversionError>>()?,
            events: events_from_wire(s.events),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_round_trips() {
        let mut events = m::EventLog::default();
        events.push(5, "placed on node-1");
        let task = m::Task {
            labels: Default::default(),
            task_id: "t1".into(),
            namespace: "default".into(),
            task_definition: "web:2".parse().expect("valid ref"),
            group: None,
            started_by: None,
            node: Some("node-1".into()),
            desired_status: m::DesiredStatus::Stopped,
            last_status: m::TaskStatus::Stopped,
            cpu: 256,
            memory: 64,
            created_at: 1,
            started_at: Some(2),
            stopped_at: Some(3),
            stop_code: Some(m::StopCode::EssentialContainerExited),
            stopped_reason: Some("Essential container in task exited".into()),
            containers: vec![m::ContainerState {
                exit_code: Some(3),
                ..m::ContainerState::pending("app", "busybox")
            }],
            events,
            placement: m::PlacementSpec {
                strategy: vec![
                    m::PlacementStrategy::Spread {
                        field: "attribute:zone".into(),
                    },
                    m::PlacementStrategy::Binpack {
                        field: m::BinpackField::Memory,
                    },
                    m::PlacementStrategy::Random,
                ],
                constraints: vec![
                    m::PlacementConstraint::DistinctInstance,
                    m::PlacementConstraint::MemberOf {
                        expression: "attribute:disk == ssd".into(),
                    },
                ],
            },
            metrics: Some(m::TaskMetrics {
                cpu_units: 300.5,
                memory_bytes: 1 << 20,
                sampled_at: 9,
            }),
        };
        let wire = v1::Task::from(task.clone());
        assert_eq!(m::Task::try_from(wire).ok(), Some(task));
    }

    #[test]
    fn unknown_enum_is_an_error() {
        let wire = v1::Task {
            task_definition: "web:1".into(),
            last_status: 42,
            desired_status: 1,
            ..Default::default()
        };
        assert_eq!(
            m::Task::try_from(wire).unwrap_err().to_string(),
            "lastStatus: value 42 is not a known task status"
        );
    }
}
