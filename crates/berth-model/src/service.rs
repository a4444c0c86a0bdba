use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{EventLog, PlacementSpec, TaskDefinitionRef, Timestamp, ValidationError};

/// At most this many tasks per service.
pub const MAX_DESIRED_COUNT: u32 = 10_000;

/// What a user declares: "keep `desired_count` copies of this task definition running, and
/// change it this way". The server turns it into a [`Service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    pub name: String,
    /// `family` (the latest ACTIVE revision when applied) or `family:revision`.
    pub task_definition: TaskDefinitionRef,
    pub desired_count: u32,
    #[serde(default)]
    pub deployment_configuration: DeploymentConfiguration,
    /// Added to the task definition's: the service's strategies replace the task definition's
    /// when given; constraints of both apply.
    #[serde(default, skip_serializing_if = "PlacementSpec::is_empty")]
    pub placement: PlacementSpec,
    /// Target tracking: the leader adjusts desiredCount within min..max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// How ingresses route to the service's healthy tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<crate::IngressRule>,
    /// Seconds a task that publishes ports is out of routing before it gets SIGTERM, so
    /// requests in flight finish.
    #[serde(default = "default_deregistration_delay")]
    pub deregistration_delay: u32,
    /// Labels (copied onto the service's tasks) and annotations.
    #[serde(flatten)]
    pub meta: crate::ObjectMeta,
}

/// Target-tracking autoscaling of a service's desired count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub min_count: u32,
    pub max_count: u32,
    pub target_tracking: Vec<TargetTracking>,
    /// Seconds after a scale-out before the next scale-out.
    #[serde(default = "default_scale_out_cooldown")]
    pub scale_out_cooldown: u32,
    /// Seconds after any scaling before a scale-in.
    #[serde(default = "default_scale_in_cooldown")]
    pub scale_in_cooldown: u32,
    /// Only ever scale out (and back to minCount).
    #[serde(default)]
    pub disable_scale_in: bool,
    /// Scale to zero when no request has reached the service for a while (minCount 0 only);
    /// the ingresses wake it on the next request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZero>,
}

/// When a service with minCount 0 goes to zero, and how long a request waits for it to wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleToZero {
    /// Seconds without a request through any ingress before the service scales to zero.
    #[serde(default = "default_idle_after")]
    pub idle_after: u32,
    /// Seconds an ingress holds a request for the service while it wakes; then 503 with
    /// `Retry-After`.
    #[serde(default = "default_activation_timeout")]
    pub activation_timeout: u32,
}

/// The shortest `scaleToZero.idleAfter`: shorter would stop tasks between two requests of
/// any light but steady load.
pub const MIN_IDLE_AFTER_SECS: u32 = 30;
/// The longest `scaleToZero.activationTimeout`.
pub const MAX_ACTIVATION_TIMEOUT_SECS: u32 = 600;

impl Default for ScaleToZero {
    fn default() -> Self {
        Self {
            idle_after: default_idle_after(),
            activation_timeout: default_activation_timeout(),
        }
    }
}

fn default_idle_after() -> u32 {
    300
}

fn default_activation_timeout() -> u32 {
    30
}

impl Eq for Autoscaling {}

fn default_deregistration_delay() -> u32 {
    crate::DEFAULT_DEREGISTRATION_DELAY_SECS
}

fn default_scale_out_cooldown() -> u32 {
    10
}

fn default_scale_in_cooldown() -> u32 {
    60
}

/// Keep `metric`, per RUNNING task of the service, near `target`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetTracking {
    pub metric: ScalingMetric,
    /// Percent of the task's reserved cpu or memory (`CPUUtilization`,
    /// `MemoryUtilization`); requests per second per task (`RequestsPerTask`); requests in
    /// flight per task (`ConcurrencyPerTask`).
    pub target: f64,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScalingMetric {
    #[serde(rename = "CPUUtilization")]
    CpuUtilization,
    #[serde(rename = "MemoryUtilization")]
    MemoryUtilization,
    /// Requests per second through the ingresses, per task.
    #[serde(rename = "RequestsPerTask")]
    RequestsPerTask,
    /// Requests in flight through the ingresses, per task.
    #[serde(rename = "ConcurrencyPerTask")]
    ConcurrencyPerTask,
}

impl ScalingMetric {
    pub const ALL: [Self; 4] = [
        Self::CpuUtilization,
        Self::MemoryUtilization,
        Self::RequestsPerTask,
        Self::ConcurrencyPerTask,
    ];

    /// Whether the metric is a percentage of the tasks' reservation (else a rate or a count
    /// the ingresses measure).
    pub fn is_utilization(self) -> bool {
        matches!(self, Self::CpuUtilization | Self::MemoryUtilization)
    }

    /// A measured `value` with the metric's unit, for events: `42.5%`, `12.0 req/s per task`.
    pub fn format(self, value: f64) -> String {
        self.with_unit(format!("{value:.1}"))
    }

    /// A policy's `target` as written, with the metric's unit: `50%`, `10 req/s per task`.
    pub fn format_target(self, target: f64) -> String {
        self.with_unit(target.to_string())
    }

    fn with_unit(self, number: String) -> String {
        match self {
            Self::CpuUtilization | Self::MemoryUtilization => format!("{number}%"),
            Self::RequestsPerTask => format!("{number} req/s per task"),
            Self::ConcurrencyPerTask => format!("{number} in flight per task"),
        }
    }
}

impl fmt::Display for ScalingMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CpuUtilization => "CPUUtilization",
            Self::MemoryUtilization => "MemoryUtilization",
            Self::RequestsPerTask => "RequestsPerTask",
            Self::ConcurrencyPerTask => "ConcurrencyPerTask",
        })
    }
}

impl Autoscaling {
    /// A policy with the default cooldowns.
    pub fn with_defaults(
        min_count: u32,
        max_count: u32,
        target_tracking: Vec<TargetTracking>,
    ) -> Self {
        Self {
            min_count,
            max_count,
            target_tracking,
            scale_out_cooldown: default_scale_out_cooldown(),
            scale_in_cooldown: default_scale_in_cooldown(),
            disable_scale_in: false,
            scale_to_zero: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let field = |f: &str| format!("autoscaling.{f}");
        if self.max_count > MAX_DESIRED_COUNT {
            return Err(ValidationError::new(
                field("maxCount"),
                format!(
                    "{} is too many; use at most {MAX_DESIRED_COUNT}",
                    self.max_count
                ),
            ));
        }
        if self.min_count > self.max_count {
            return Err(ValidationError::new(
                field("minCount"),
                format!("{} is above maxCount ({})", self.min_count, self.max_count),
            ));
        }
        if self.target_tracking.is_empty() {
            return Err(ValidationError::new(
                field("targetTracking"),
                "name at least one metric and target, e.g. {metric: CPUUtilization, target: 50}",
            ));
        }
        for (i, t) in self.target_tracking.iter().enumerate() {
            let target = field(&format!("targetTracking[{i}].target"));
            let max = if t.metric.is_utilization() {
                100.0
            } else {
                1_000_000.0
            };
            // NaN is in no range.
            let in_range = t.target > 0.0 && t.target <= max;
            if !in_range {
                let expected = if t.metric.is_utilization() {
                    "use a percentage above 0 and at most 100".to_owned()
                } else {
                    format!("{} takes a number above 0 and at most 1000000", t.metric)
                };
                return Err(ValidationError::new(
                    target,
                    format!("{} is out of range; {expected}", t.target),
                ));
            }
        }
        match (self.min_count, &self.scale_to_zero) {
            (0, None) => {
                return Err(ValidationError::new(
                    field("minCount"),
                    "0 needs scaleToZero (e.g. scaleToZero: {idleAfter: 5m}), which wakes the \
                     service on the next request; or use minCount 1 or more",
                ))
            }
            (1.., Some(_)) => {
                return Err(ValidationError::new(
                    field("scaleToZero"),
                    format!(
                        "needs minCount 0 (it is {}): a service scales to zero only if it may",
                        self.min_count
                    ),
                ))
            }
            _ => {}
        }
        if let Some(z) = &self.scale_to_zero {
            if z.idle_after < MIN_IDLE_AFTER_SECS {
                return Err(ValidationError::new(
                    field("scaleToZero.idleAfter"),
                    format!(
                        "{}s is too short; use at least {MIN_IDLE_AFTER_SECS}s",
                        z.idle_after
                    ),
                ));
            }
            if z.activation_timeout == 0 || z.activation_timeout > MAX_ACTIVATION_TIMEOUT_SECS {
                return Err(ValidationError::new(
                    field("scaleToZero.activationTimeout"),
                    format!(
                        "{}s is out of range; use 1s to {MAX_ACTIVATION_TIMEOUT_SECS}s",
                        z.activation_timeout
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the policy reads what the ingresses measure (requests), which needs HTTP
    /// ingress rules: scale to zero, `RequestsPerTask`, `ConcurrencyPerTask`.
    pub fn needs_requests(&self) -> bool {
        self.scale_to_zero.is_some()
            || self
                .target_tracking
                .iter()
                .any(|t| !t.metric.is_utilization())
    }

    /// `count` within minCount..=maxCount.
    pub fn clamp(&self, count: u32) -> u32 {
        count.clamp(self.min_count, self.max_count)
    }
}

/// How a service moves from one task definition to the next (ECS semantics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentConfiguration {
    /// The lower limit of healthy tasks during a deployment, in percent of desiredCount
    /// (rounded up).
    pub minimum_healthy_percent: u32,
    /// The upper limit of running or pending tasks during a deployment, in percent of
    /// desiredCount (rounded down).
    pub maximum_percent: u32,
    pub circuit_breaker: CircuitBreaker,
    /// A new task that is not healthy this many seconds after it was created counts as failed
    /// and is replaced.
    pub healthy_deadline: u32,
    /// A deployment that has not completed this many seconds after it started fails, so that
    /// no deployment stays IN_PROGRESS forever.
    pub progress_deadline: u32,
    pub strategy: DeploymentStrategy,
    /// Canary only: how many tasks of the new revision run first, beside the old ones.
    pub canary_count: u32,
    /// Canary only: seconds the canaries must stay healthy before the rest follows.
    pub canary_bake_time: u32,
}

impl Default for DeploymentConfiguration {
    fn default() -> Self {
        Self {
            minimum_healthy_percent: 100,
            maximum_percent: 200,
            circuit_breaker: CircuitBreaker::default(),
            healthy_deadline: 300,
            progress_deadline: 1800,
            strategy: DeploymentStrategy::Rolling,
            canary_count: 1,
            canary_bake_time: 60,
        }
    }
}

/// Stops a deployment whose new tasks keep failing (and, with `rollback`, returns to the last
/// deployment that completed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CircuitBreaker {
    pub enable: bool,
    pub rollback: bool,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            enable: true,
            rollback: true,
        }
    }
}

impl CircuitBreaker {
    /// Failed tasks that trip the breaker: half the desired count, at least 3 and at most 200
    /// (as ECS).
    pub fn threshold(desired_count: u32) -> u32 {
        desired_count.div_ceil(2).clamp(3, 200)
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeploymentStrategy {
    /// Replace tasks within minimumHealthyPercent..maximumPercent.
    #[default]
    Rolling,
    /// Run `canaryCount` new tasks first; roll the rest once they stayed healthy for the bake
    /// time (or on `berth service promote`).
    Canary,
}

/// A service as stored: its spec (with the task definition resolved to a revision), its
/// deployments and what the reconciler needs to remember between rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// Always `family:revision`.
    pub task_definition: TaskDefinitionRef,
    pub desired_count: u32,
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(default, skip_serializing_if = "PlacementSpec::is_empty")]
    pub placement: PlacementSpec,
    #[serde(flatten)]
    pub meta: crate::ObjectMeta,
    pub status: ServiceStatus,
    /// Tasks RUNNING across all deployments (as last counted by the reconciler).
    pub running_count: u32,
    /// Tasks placed or waiting for a node (as last counted by the reconciler).
    pub pending_count: u32,
    /// The primary deployment first.
    pub deployments: Vec<Deployment>,
    /// Bumped by every change made outside the reconciler (by users, by failed tasks); the
    /// reconciler's decisions name the version they were made for and are refused for any
    /// other.
    pub version: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed: Option<TaskDefinitionRef>,
    #[serde(default, skip_serializing_if = "LaunchBackoff::is_idle")]
    pub backoff: LaunchBackoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<crate::IngressRule>,
    #[serde(default = "default_deregistration_delay")]
    pub deregistration_delay: u32,
    /// When the autoscaler last scaled out and in (ms since the epoch; 0: never). Replicated,
    /// so a new leader keeps the cooldowns.
    #[serde(default)]
    pub last_scale_out_at: Timestamp,
    #[serde(default)]
    pub last_scale_in_at: Timestamp,
    /// The autoscaler's latest metric values (percent), filled in by the leader from its
    /// memory when the service is read; never part of the replicated state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricValue>,
    #[serde(default, skip_serializing_if = "EventLog::is_empty")]
    pub events: EventLog,
}

/// One metric of a service as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    pub metric: ScalingMetric,
    /// Average over the service's RUNNING tasks in the window: percent of their reservation,
    /// or requests per second or in flight per task.
    pub value: f64,
    pub target: f64,
}

impl Eq for MetricValue {}

impl Service {
    /// The event of a reconciliation that starts `count` tasks of `task_definition` for
    /// `deployment`. One function so that the state machine finds the reconciler's event when
    /// the namespace's quota holds some of those tasks back.
    pub fn started_tasks_message(
        count: usize,
        task_definition: &TaskDefinitionRef,
        deployment: &str,
    ) -> String {
        format!("started {count} tasks of {task_definition} (deployment {deployment})")
    }

    /// The group its tasks carry (`service:NAME`).
    pub fn group(&self) -> String {
        format!("service:{}", self.name)
    }

    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments.first()
    }

    /// Records that a task of deployment `deployment_id` failed (it stopped on its own, not by
    /// a user, the scheduler or a lost node): it counts toward that deployment's circuit
    /// breaker while the deployment is in progress, and slows the next launches down.
    pub fn record_failed_task(
        &mut self,
        deployment_id: &str,
        task_id: &str,
        reason: &str,
        at: Timestamp,
    ) {
        if let Some(d) = self
            .deployments
            .iter_mut()
            .find(|d| d.id == deployment_id && d.rollout_state == RolloutState::InProgress)
        {
            d.failed_tasks += 1;
            d.updated_at = at;
        }
        self.backoff.record_failure(at);
        let short = task_id.get(..8).unwrap_or(task_id);
        self.events
            .push(at, format!("task {short} failed: {reason}"));
        self.version += 1;
    }
}

/// Slows launches down after tasks fail one after another, so a crashing service does not
/// hammer its nodes and registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchBackoff {
    /// Tasks that failed since a task last became healthy.
    pub failures: u32,
    /// No new task before this time (ms since the epoch).
    pub not_before: Timestamp,
    pub last_failure_at: Timestamp,
}

impl LaunchBackoff {
    /// Longest pause between launches.
    pub const MAX_DELAY_MS: u64 = 300_000;

    pub fn is_idle(&self) -> bool {
        self.failures == 0
    }

    /// Records one failed task at `at`: the pause doubles from one second up to five minutes.
    pub fn record_failure(&mut self, at: Timestamp) {
        self.failures = self.failures.saturating_add(1);
        let delay = 1000u64
            .saturating_mul(1u64 << self.failures.saturating_sub(1).min(20))
            .min(Self::MAX_DELAY_MS);
        self.last_failure_at = at;
        self.not_before = at.saturating_add(delay);
    }
}

/// One version of a service's tasks being rolled out (or kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub status: DeploymentStatus,
    /// `family:revision`.
    pub task_definition: TaskDefinitionRef,
    /// How many tasks this deployment should run now.
    pub desired_count: u32,
    pub pending_count: u32,
    pub running_count: u32,
    /// RUNNING tasks whose health checks (if any) pass.
    #[serde(default)]
    pub healthy_count: u32,
    /// New tasks of this deployment that failed while it was in progress.
    pub failed_tasks: u32,
    pub rollout_state: RolloutState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollout_state_reason: String,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "crate::time::rfc3339")]
    pub updated_at: Timestamp,
    /// Canary: since when every canary has been healthy.
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub canary_healthy_since: Option<Timestamp>,
    /// Canary: the rest of the tasks may follow.
    #[serde(default)]
    pub promoted: bool,
    /// What a failure of this deployment rolls back to: the last revision that completed, or
    /// else the revision this deployment replaced (so a bad deploy during an unfinished one
    /// does not leave the service with nothing to run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<TaskDefinitionRef>,
}

impl Deployment {
    /// A new primary deployment of `task_definition`.
    pub fn new(id: String, task_definition: TaskDefinitionRef, at: Timestamp) -> Self {
        Self {
            id,
            status: DeploymentStatus::Primary,
            task_definition,
            desired_count: 0,
            pending_count: 0,
            running_count: 0,
            healthy_count: 0,
            failed_tasks: 0,
            rollout_state: RolloutState::InProgress,
            rollout_state_reason: String::new(),
            created_at: at,
            updated_at: at,
            canary_healthy_since: None,
            promoted: false,
            rollback_to: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceStatus {
    Active,
    /// Deleted: its tasks are being stopped, then it disappears.
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    /// The deployment the service converges to.
    Primary,
    /// An older deployment whose tasks are being replaced.
    Active,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

impl fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "ACTIVE",
            Self::Draining => "DRAINING",
        })
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Primary => "PRIMARY",
            Self::Active => "ACTIVE",
        })
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        })
    }
}

impl fmt::Display for DeploymentStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rolling => "rolling",
            Self::Canary => "canary",
        })
    }
}

/// The longest deregistration delay (ECS allows up to an hour).
pub const MAX_DEREGISTRATION_DELAY_SECS: u32 = 3600;

impl ServiceSpec {
    /// A service of `desired_count` tasks of `task_definition`, with the defaults of every
    /// other setting.
    pub fn new(
        name: impl Into<String>,
        task_definition: TaskDefinitionRef,
        desired_count: u32,
    ) -> Self {
        Self {
            name: name.into(),
            task_definition,
            desired_count,
            deployment_configuration: DeploymentConfiguration::default(),
            placement: PlacementSpec::default(),
            autoscaling: None,
            ingress: Vec::new(),
            deregistration_delay: default_deregistration_delay(),
            meta: crate::ObjectMeta::default(),
        }
    }

    /// Checks every rule a service must satisfy. Errors name the field in camelCase.
    pub fn validate(&self) -> Result<(), ValidationError> {
        // A service is found by name in DNS (`NAME.NAMESPACE.berth.internal`).
        crate::validate_dns_label("name", &self.name)?;
        if self.desired_count > MAX_DESIRED_COUNT {
            return Err(ValidationError::new(
                "desiredCount",
                format!(
                    "{} is too many; use at most {MAX_DESIRED_COUNT}",
                    self.desired_count
                ),
            ));
        }
        self.deployment_configuration.validate()?;
        for (i, rule) in self.ingress.iter().enumerate() {
            rule.validate(&format!("ingress[{i}]"))?;
        }
        if let Some(a) = &self.autoscaling {
            a.validate()?;
            if a.needs_requests() && !self.ingress.iter().any(|r| r.listener_port.is_none()) {
                return Err(ValidationError::new(
                    "autoscaling",
                    "scaleToZero, RequestsPerTask and ConcurrencyPerTask count the requests \
                     that reach the service through an ingress: add an HTTP ingress rule \
                     (ingress: [{host: ..., containerName: ..., containerPort: ...}])",
                ));
            }
            if a.needs_requests() && self.ingress.iter().any(|r| r.listener_port.is_some()) {
                return Err(ValidationError::new(
                    "autoscaling",
                    "scaleToZero, RequestsPerTask and ConcurrencyPerTask count HTTP requests \
                     only, and TCP connections would find no task at zero: remove the TCP \
                     ingress rules (listenerPort) or these settings",
                ));
            }
        }
        if self.deregistration_delay > MAX_DEREGISTRATION_DELAY_SECS {
            return Err(ValidationError::new(
                "deregistrationDelay",
                format!(
                    "{}s is too long; use at most {MAX_DEREGISTRATION_DELAY_SECS}s",
                    self.deregistration_delay
                ),
            ));
        }
        self.placement.validate("placement")
    }
}

impl DeploymentConfiguration {
    fn validate(&self) -> Result<(), ValidationError> {
        let field = |f: &str| format!("deploymentConfiguration.{f}");
        if self.minimum_healthy_percent > 100 {
            return Err(ValidationError::new(
                field("minimumHealthyPercent"),
                format!("{}% is over 100%", self.minimum_healthy_percent),
            ));
        }
        if self.maximum_percent < 100 || self.maximum_percent > 400 {
            return Err(ValidationError::new(
                field("maximumPercent"),
                format!("{}% is out of range; use 100..=400", self.maximum_percent),
            ));
        }
        if self.maximum_percent <= self.minimum_healthy_percent {
            return Err(ValidationError::new(
                field("maximumPercent"),
                format!(
                    "{}% leaves no room to replace tasks: it must be above minimumHealthyPercent ({}%)",
                    self.maximum_percent, self.minimum_healthy_percent
                ),
            ));
        }
        if self.healthy_deadline == 0 {
            return Err(ValidationError::new(
                field("healthyDeadline"),
                "must be at least 1s",
            ));
        }
        if self.progress_deadline == 0 {
            return Err(ValidationError::new(
                field("progressDeadline"),
                "must be at least 1s",
            ));
        }
        if self.strategy == DeploymentStrategy::Canary && self.canary_count == 0 {
            return Err(ValidationError::new(
                field("canaryCount"),
                "must be at least 1 with strategy canary",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            ingress: Vec::new(),
            deregistration_delay: crate::DEFAULT_DEREGISTRATION_DELAY_SECS,
            meta: Default::default(),
            name: "web".into(),
            task_definition: "web".parse().expect("ref"),
            desired_count: 3,
            deployment_configuration: DeploymentConfiguration::default(),
            placement: PlacementSpec::default(),
            autoscaling: None,
        }
    }

    #[test]
    fn breaker_threshold_is_half_the_desired_count_clamped() {
        assert_eq!(CircuitBreaker::threshold(1), 3);
        assert_eq!(CircuitBreaker::threshold(10), 5);
        assert_eq!(CircuitBreaker::threshold(11), 6);
        assert_eq!(CircuitBreaker::threshold(1000), 200);
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let mut b = LaunchBackoff::default();
        let delays: Vec<u64> = (0..12)
            .map(|_| {
                b.record_failure(1000);
                b.not_before - 1000
            })
            .collect();
        assert_eq!(&delays[..4], &[1000, 2000, 4000, 8000]);
        assert_eq!(delays[11], LaunchBackoff::MAX_DELAY_MS);
    }

    #[test]
    fn validation_names_the_field() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.deployment_configuration.maximum_percent = 100;
        assert_eq!(
            s.validate().unwrap_err().field,
            "deploymentConfiguration.maximumPercent"
        );
        let mut s = spec();
        s.name = "bad name".into();
        assert_eq!(s.validate().unwrap_err().field, "name");
        let mut s = spec();
        s.desired_count = MAX_DESIRED_COUNT + 1;
        assert_eq!(s.validate().unwrap_err().field, "desiredCount");
    }

    #[test]
    fn configuration_defaults_fill_missing_fields() {
        let c: DeploymentConfiguration =
            serde_json::from_str(r#"{"maximumPercent": 150}"#).expect("parses");
        assert_eq!(c.maximum_percent, 150);
        assert_eq!(c.minimum_healthy_percent, 100);
        assert!(c.circuit_breaker.enable && c.circuit_breaker.rollback);
    }
}

/// One task a service's reconciler stops (stop code ServiceSchedulerInitiated), and why.
/// Field names stay snake_case: this is part of the Raft log's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopOrder {
    pub task_id: String,
    pub reason: String,
}
