//! Services in and out: `CreateService` and `UpdateService` requests read into berth's
//! [`ServiceSpec`] and changes to one, a [`Service`] written as ECS describes one.

use berth_model::{
    DeploymentConfiguration, Service, ServiceSpec, ServiceStatus, TaskDefinitionRef,
};
use serde_json::{json, Map, Value};

use crate::arn::{Arn, Kind, Names, Resource};
use crate::protocol::EcsError;
use crate::request::{count, flag, object, only, required, seconds, string, tag_list};
use crate::task::{cluster_of, task_definition_of};

const CREATE_FIELDS: &[&str] = &[
    "cluster",
    "serviceName",
    "taskDefinition",
    "desiredCount",
    "deploymentConfiguration",
    "tags",
    "clientToken",
    "schedulingStrategy",
    "deploymentController",
];

/// `CreateService` fields that mean nothing here, accepted and dropped (each task has its own
/// network namespace; berth's ingress routes to services without load balancer objects).
pub const IGNORED_CREATE_FIELDS: &[&str] = &[
    "launchType",
    "platformVersion",
    "networkConfiguration",
    "propagateTags",
    "enableECSManagedTags",
    "enableExecuteCommand",
    "healthCheckGracePeriodSeconds",
    "role",
];

const UPDATE_FIELDS: &[&str] = &[
    "cluster",
    "service",
    "desiredCount",
    "taskDefinition",
    "deploymentConfiguration",
    "forceNewDeployment",
];

/// `UpdateService` fields that mean nothing here, accepted and dropped.
pub const IGNORED_UPDATE_FIELDS: &[&str] = &[
    "platformVersion",
    "networkConfiguration",
    "propagateTags",
    "enableECSManagedTags",
    "enableExecuteCommand",
    "healthCheckGracePeriodSeconds",
];

/// Lists that berth has nothing for: refused when they hold anything, accepted empty.
const EMPTY_ONLY: &[&str] = &[
    "loadBalancers",
    "serviceRegistries",
    "placementConstraints",
    "placementStrategy",
    "capacityProviderStrategy",
];

const DEPLOYMENT_FIELDS: &[&str] = &[
    "maximumPercent",
    "minimumHealthyPercent",
    "deploymentCircuitBreaker",
];

/// A `CreateService` request, read.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    pub cluster: String,
    pub spec: ServiceSpec,
}

fn check_fields(
    request: &Map<String, Value>,
    supported: &[&str],
    ignored: &[&str],
) -> Result<(), EcsError> {
    let mut refused = crate::request::unsupported(request, supported, ignored, "");
    refused.retain(|f| {
        !(EMPTY_ONLY.contains(&f.as_str())
            && request[f.as_str()].as_array().is_some_and(Vec::is_empty))
    });
    crate::request::refuse_unsupported(refused)
}

/// `deploymentConfiguration` over `base`: ECS's percentages and circuit breaker.
pub fn deployment_configuration(
    value: &Value,
    mut base: DeploymentConfiguration,
) -> Result<DeploymentConfiguration, EcsError> {
    let d = object(value, "deploymentConfiguration")?;
    only(d, DEPLOYMENT_FIELDS, &[], "deploymentConfiguration.")?;
    if let Some(max) = count(d, "maximumPercent")? {
        base.maximum_percent = max;
    }
    if let Some(min) = count(d, "minimumHealthyPercent")? {
        base.minimum_healthy_percent = min;
    }
    if let Some(breaker) = d.get("deploymentCircuitBreaker").filter(|v| !v.is_null()) {
        let b = object(breaker, "deploymentConfiguration.deploymentCircuitBreaker")?;
        only(
            b,
            &["enable", "rollback"],
            &[],
            "deploymentConfiguration.deploymentCircuitBreaker.",
        )?;
        base.circuit_breaker.enable = flag(b, "enable")?.unwrap_or(false);
        base.circuit_breaker.rollback = flag(b, "rollback")?.unwrap_or(false);
    }
    Ok(base)
}

/// Reads a `CreateService` request.
pub fn create_request(body: &Value) -> Result<CreateRequest, EcsError> {
    let request = object(body, "the request body")?;
    check_fields(request, CREATE_FIELDS, IGNORED_CREATE_FIELDS)?;
    if let Some(s) = string(request, "schedulingStrategy")?.filter(|s| s != "REPLICA") {
        return Err(EcsError::invalid(format!(
            "schedulingStrategy: {s} is not supported by berth; services keep desiredCount tasks (REPLICA)"
        )));
    }
    if let Some(c) = request.get("deploymentController").filter(|v| !v.is_null()) {
        let c = object(c, "deploymentController")?;
        only(c, &["type"], &[], "deploymentController.")?;
        if let Some(t) = string(c, "type")?.filter(|t| t != "ECS") {
            return Err(EcsError::invalid(format!(
                "deploymentController.type: {t} is not supported by berth; it rolls out as ECS does (ECS)"
            )));
        }
    }
    let cluster = cluster_of(request)?;
    let name = required(request, "serviceName")?;
    let (family, revision) =
        task_definition_of(&required(request, "taskDefinition")?, "taskDefinition")?;
    let deployment_configuration = match request
        .get("deploymentConfiguration")
        .filter(|v| !v.is_null())
    {
        Some(d) => deployment_configuration(d, ecs_defaults())?,
        None => ecs_defaults(),
    };
    let mut spec = ServiceSpec::new(
        name,
        TaskDefinitionRef { family, revision },
        count(request, "desiredCount")?.unwrap_or(0),
    );
    spec.deployment_configuration = deployment_configuration;
    spec.meta.labels = crate::taskdef::tags(request.get("tags"))?;
    Ok(CreateRequest { cluster, spec })
}

/// ECS's defaults for a rolling update: 100 % healthy, 200 % at most, no circuit breaker.
fn ecs_defaults() -> DeploymentConfiguration {
    let mut d = DeploymentConfiguration::default();
    d.circuit_breaker.enable = false;
    d.circuit_breaker.rollback = false;
    d
}

/// An `UpdateService` request, read: what it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    pub cluster: String,
    pub service: String,
    pub desired_count: Option<u32>,
    pub task_definition: Option<TaskDefinitionRef>,
    /// The request's `deploymentConfiguration`, to lay over the service's.
    pub deployment_configuration: Option<Value>,
    pub force_new_deployment: bool,
}

pub fn update_request(body: &Value) -> Result<UpdateRequest, EcsError> {
    let request = object(body, "the request body")?;
    check_fields(request, UPDATE_FIELDS, IGNORED_UPDATE_FIELDS)?;
    let cluster = cluster_of(request)?;
    let service = match Arn::parse(&required(request, "service")?, Kind::Service, &cluster)
        .map_err(|e| EcsError::invalid(format!("service: {e}")))?
    {
        Resource::Service { cluster: c, name } if c == cluster => name,
        Resource::Service { cluster: c, .. } => {
            return Err(EcsError::invalid(format!(
                "service: the ARN names cluster {c}, the request cluster {cluster}"
            )))
        }
        _ => return Err(EcsError::invalid("service: not a service")),
    };
    let task_definition = string(request, "taskDefinition")?
        .map(|t| task_definition_of(&t, "taskDefinition"))
        .transpose()?
        .map(|(family, revision)| TaskDefinitionRef { family, revision });
    Ok(UpdateRequest {
        cluster,
        service,
        desired_count: count(request, "desiredCount")?,
        task_definition,
        deployment_configuration: request
            .get("deploymentConfiguration")
            .filter(|v| !v.is_null())
            .cloned(),
        force_new_deployment: flag(request, "forceNewDeployment")?.unwrap_or(false),
    })
}

/// The spec `service` was made from, as stored: what an update changes a part of.
pub fn spec_of(service: &Service) -> ServiceSpec {
    let mut spec = ServiceSpec::new(
        service.name.clone(),
        service.task_definition.clone(),
        service.desired_count,
    );
    spec.deployment_configuration = service.deployment_configuration.clone();
    spec.placement = service.placement.clone();
    spec.autoscaling = service.autoscaling.clone();
    spec.ingress = service.ingress.clone();
    spec.deregistration_delay = service.deregistration_delay;
    spec.meta = service.meta.clone();
    spec
}

fn task_definition_arn(names: &Names, r: &TaskDefinitionRef) -> String {
    match r.revision {
        Some(revision) => names.task_definition(&r.family, revision),
        None => names.arn(Resource::TaskDefinition {
            family: r.family.clone(),
            revision: None,
        }),
    }
}

/// A service as ECS describes one.
pub fn describe(service: &Service, names: &Names) -> Value {
    let cluster = &service.namespace;
    let deployments: Vec<Value> = service
        .deployments
        .iter()
        .map(|d| {
            let mut out = json!({
                "id": d.id,
                "status": d.status.to_string(),
                "taskDefinition": task_definition_arn(names, &d.task_definition),
                "desiredCount": d.desired_count,
                "pendingCount": d.pending_count,
                "runningCount": d.running_count,
                "failedTasks": d.failed_tasks,
                "createdAt": seconds(d.created_at),
                "updatedAt": seconds(d.updated_at),
                "launchType": "FARGATE",
                "rolloutState": d.rollout_state.to_string(),
            });
            if !d.rollout_state_reason.is_empty() {
                out["rolloutStateReason"] = json!(d.rollout_state_reason);
            }
            out
        })
        .collect();
    // ECS lists events newest first.
    let events: Vec<Value> = service
        .events
        .iter()
        .rev()
        .enumerate()
        .map(|(i, e)| {
            json!({
                "id": format!("{}-{}", e.at, i),
                "createdAt": seconds(e.at),
                "message": format!("(service {}) {}", service.name, e.message),
            })
        })
        .collect();
    let d = &service.deployment_configuration;
    json!({
        "serviceArn": names.service(cluster, &service.name),
        "serviceName": service.name,
        "clusterArn": names.cluster(cluster),
        "status": match service.status {
            ServiceStatus::Active => "ACTIVE",
            ServiceStatus::Draining => "DRAINING",
        },
        "desiredCount": service.desired_count,
        "runningCount": service.running_count,
        "pendingCount": service.pending_count,
        "launchType": "FARGATE",
        "taskDefinition": task_definition_arn(names, &service.task_definition),
        "deploymentConfiguration": {
            "maximumPercent": d.maximum_percent,
            "minimumHealthyPercent": d.minimum_healthy_percent,
            "deploymentCircuitBreaker": {
                "enable": d.circuit_breaker.enable,
                "rollback": d.circuit_breaker.rollback,
            },
        },
        "deployments": deployments,
        "events": events,
        "createdAt": seconds(service.created_at),
        "schedulingStrategy": "REPLICA",
        "deploymentController": {"type": "ECS"},
        "loadBalancers": [],
        "serviceRegistries": [],
        "placementConstraints": [],
        "placementStrategy": [],
        "tags": tag_list(&service.meta.labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_becomes_a_spec_with_ecs_defaults() {
        let body = json!({
            "cluster": "team-a",
            "serviceName": "api",
            "taskDefinition": "arn:aws:ecs:us-east-1:1:task-definition/web:4",
            "desiredCount": 3,
            "launchType": "FARGATE",
            "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["s"]}},
            "loadBalancers": [],
            "deploymentConfiguration": {
                "maximumPercent": 150,
                "deploymentCircuitBreaker": {"enable": true, "rollback": true}
            },
            "tags": [{"key": "team", "value": "a"}]
        });
        let r = create_request(&body).expect("reads");
        assert_eq!(r.cluster, "team-a");
        assert_eq!(r.spec.name, "api");
        assert_eq!(r.spec.task_definition.to_string(), "web:4");
        assert_eq!(r.spec.desired_count, 3);
        let d = &r.spec.deployment_configuration;
        assert_eq!((d.maximum_percent, d.minimum_healthy_percent), (150, 100));
        assert!(d.circuit_breaker.enable && d.circuit_breaker.rollback);
        assert_eq!(
            r.spec.meta.labels.get("team").map(String::as_str),
            Some("a")
        );
        let plain =
            create_request(&json!({"serviceName": "a", "taskDefinition": "web"})).expect("reads");
        assert!(!plain.spec.deployment_configuration.circuit_breaker.enable);
        assert_eq!(plain.spec.task_definition.revision, None);
    }

    #[test]
    fn what_berth_lacks_is_refused_by_name() {
        for (field, value) in [
            ("loadBalancers", json!([{"targetGroupArn": "x"}])),
            ("placementStrategy", json!([{"type": "spread"}])),
            ("serviceConnectConfiguration", json!({"enabled": true})),
            ("schedulingStrategy", json!("DAEMON")),
        ] {
            let mut body = json!({"serviceName": "a", "taskDefinition": "web"});
            body[field] = value;
            let e = create_request(&body).expect_err(field);
            assert!(e.message.contains(field), "{field}: {}", e.message);
        }
        let e = create_request(&json!({
            "serviceName": "a",
            "taskDefinition": "web",
            "deploymentConfiguration": {"alarms": {"enable": true}}
        }))
        .expect_err("alarms");
        assert!(
            e.message.contains("deploymentConfiguration.alarms"),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_update_names_only_what_it_changes() {
        let r = update_request(&json!({
            "cluster": "default",
            "service": "arn:aws:ecs:us-east-1:1:service/default/api",
            "desiredCount": 0
        }))
        .expect("reads");
        assert_eq!((r.service.as_str(), r.desired_count), ("api", Some(0)));
        assert_eq!(r.task_definition, None);
        assert!(!r.force_new_deployment);
        let e = update_request(&json!({
            "cluster": "b",
            "service": "arn:aws:ecs:us-east-1:1:service/a/api"
        }))
        .expect_err("another cluster");
        assert!(e.message.contains("cluster a"), "{}", e.message);
    }
}
