//! Services: their spec, deployments, deployment configuration and autoscaling policy.

use berth_model as m;

use super::placement::{placement_from_wire, placement_to_wire};
use super::{
    all_to_wire, events_from_wire, events_to_wire, invalid, meta, opt_str, opt_ts, try_all,
    ConversionError, FromWire as _,
};
use crate::v1;

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
            return Err(invalid(
                "deploymentConfiguration.strategy",
                format!("unknown strategy {other:?}; use rolling or canary"),
            ))
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
            scale_to_zero: a.scale_to_zero.map(|z| v1::ScaleToZero {
                idle_after: Some(z.idle_after),
                activation_timeout: Some(z.activation_timeout),
            }),
        }
    }
}

fn scaling_metric(field: &str, name: &str) -> Result<m::ScalingMetric, ConversionError> {
    m::ScalingMetric::ALL
        .into_iter()
        .find(|metric| metric.to_string() == name)
        .ok_or_else(|| {
            let known: Vec<String> = m::ScalingMetric::ALL
                .iter()
                .map(|m| m.to_string())
                .collect();
            invalid(
                field,
                format!("unknown metric {name:?}; use one of {}", known.join(", ")),
            )
        })
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
            scale_to_zero: a.scale_to_zero.map(|z| {
                let d = m::ScaleToZero::default();
                m::ScaleToZero {
                    idle_after: z.idle_after.unwrap_or(d.idle_after),
                    activation_timeout: z.activation_timeout.unwrap_or(d.activation_timeout),
                }
            }),
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

impl TryFrom<v1::MetricValue> for m::MetricValue {
    type Error = ConversionError;
    fn try_from(v: v1::MetricValue) -> Result<Self, ConversionError> {
        Ok(Self {
            metric: scaling_metric("metrics.metric", &v.metric)?,
            value: v.value,
            target: v.target,
        })
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
            ingress: all_to_wire(s.ingress),
            deregistration_delay: Some(s.deregistration_delay),
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
            meta: meta(s.labels, s.annotations),
            ingress: try_all(s.ingress)?,
            deregistration_delay: s
                .deregistration_delay
                .unwrap_or(m::DEFAULT_DEREGISTRATION_DELAY_SECS),
        })
    }
}

/// An optional reference: empty on the wire is none.
fn opt_reference(r: String) -> Result<Option<m::TaskDefinitionRef>, ConversionError> {
    Ok(opt_str(r).map(|r| r.parse()).transpose()?)
}

fn reference_to_wire(r: Option<m::TaskDefinitionRef>) -> String {
    r.map(|r| r.to_string()).unwrap_or_default()
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
            rollback_to: reference_to_wire(d.rollback_to),
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
            rollback_to: opt_reference(d.rollback_to)?,
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
            deployments: all_to_wire(s.deployments),
            version: s.version,
            created_at: s.created_at,
            last_completed: reference_to_wire(s.last_completed),
            events: events_to_wire(&s.events),
            backoff_failures: s.backoff.failures,
            backoff_until: s.backoff.not_before,
            backoff_last_failure_at: s.backoff.last_failure_at,
            autoscaling: s.autoscaling.map(Into::into),
            last_scale_out_at: s.last_scale_out_at,
            last_scale_in_at: s.last_scale_in_at,
            metrics: all_to_wire(s.metrics),
            labels: s.meta.labels,
            annotations: s.meta.annotations,
            ingress: all_to_wire(s.ingress),
            deregistration_delay: s.deregistration_delay,
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
            meta: meta(s.labels, s.annotations),
            status: m::ServiceStatus::from_wire("status", s.status)?,
            running_count: s.running_count,
            pending_count: s.pending_count,
            deployments: try_all(s.deployments)?,
            version: s.version,
            created_at: s.created_at,
            last_completed: opt_reference(s.last_completed)?,
            backoff: m::LaunchBackoff {
                failures: s.backoff_failures,
                not_before: s.backoff_until,
                last_failure_at: s.backoff_last_failure_at,
            },
            autoscaling: s.autoscaling.map(TryInto::try_into).transpose()?,
            last_scale_out_at: s.last_scale_out_at,
            last_scale_in_at: s.last_scale_in_at,
            metrics: try_all(s.metrics)?,
            events: events_from_wire(s.events),
            ingress: try_all(s.ingress)?,
            deregistration_delay: s.deregistration_delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_round_trips() {
        let mut deployment = m::Deployment::new("d-2".into(), "web:2".parse().expect("ref"), 10);
        deployment.rollback_to = Some("web:1".parse().expect("ref"));
        deployment.canary_healthy_since = Some(12);
        let mut events = m::EventLog::default();
        events.push(10, "created");
        let service = m::Service {
            ingress: Vec::new(),
            deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
            meta: meta(
                [("app".to_owned(), "web".to_owned())].into(),
                Default::default(),
            ),
            namespace: "default".into(),
            name: "web".into(),
            task_definition: "web:2".parse().expect("ref"),
            desired_count: 3,
            deployment_configuration: m::DeploymentConfiguration {
                strategy: m::DeploymentStrategy::Canary,
                ..Default::default()
            },
            placement: Default::default(),
            status: m::ServiceStatus::Active,
            running_count: 2,
            pending_count: 1,
            deployments: vec![deployment],
            version: 4,
            created_at: 10,
            last_completed: Some("web:1".parse().expect("ref")),
            backoff: m::LaunchBackoff {
                failures: 1,
                not_before: 20,
                last_failure_at: 15,
            },
            autoscaling: Some(m::Autoscaling::with_defaults(
                1,
                5,
                vec![m::TargetTracking {
                    metric: m::ScalingMetric::MemoryUtilization,
                    target: 60.0,
                }],
            )),
            last_scale_out_at: 11,
            last_scale_in_at: 0,
            metrics: vec![m::MetricValue {
                metric: m::ScalingMetric::MemoryUtilization,
                value: 42.5,
                target: 60.0,
            }],
            events,
        };
        let wire = v1::Service::from(service.clone());
        assert_eq!(m::Service::try_from(wire).ok(), Some(service));
    }

    #[test]
    fn absent_deployment_fields_take_the_defaults() {
        let wire = v1::ServiceSpec {
            name: "web".into(),
            task_definition: "web".into(),
            deployment_configuration: Some(v1::DeploymentConfiguration {
                maximum_percent: Some(150),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = m::ServiceSpec::try_from(wire).expect("valid");
        assert_eq!(
            spec.deployment_configuration,
            m::DeploymentConfiguration {
                maximum_percent: 150,
                ..Default::default()
            }
        );
    }

    #[test]
    fn unknown_metrics_and_strategies_are_errors() {
        let wire = v1::Service {
            task_definition: "web:1".into(),
            status: v1::ServiceStatus::Active as i32,
            metrics: vec![v1::MetricValue {
                metric: "Disk".into(),
                value: 1.0,
                target: 2.0,
            }],
            ..Default::default()
        };
        assert_eq!(
            m::Service::try_from(wire).unwrap_err().to_string(),
            "metrics.metric: unknown metric \"Disk\"; use one of CPUUtilization, MemoryUtilization, RequestsPerTask, ConcurrencyPerTask"
        );
        let wire = v1::ServiceSpec {
            task_definition: "web:1".into(),
            deployment_configuration: Some(v1::DeploymentConfiguration {
                strategy: "blue-green".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            m::ServiceSpec::try_from(wire).unwrap_err().to_string(),
            "deploymentConfiguration.strategy: unknown strategy \"blue-green\"; use rolling or canary"
        );
    }
}
