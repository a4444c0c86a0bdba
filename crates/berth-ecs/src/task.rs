//! Tasks in and out: `RunTask` and `ListTasks` requests read, a [`Task`] written as ECS
//! describes one.

use std::collections::BTreeMap;

use berth_model::{ContainerOverride, DesiredStatus, HealthStatus, Task};
use serde_json::{json, Map, Value};

use crate::arn::{Arn, Kind, Names, Resource};
use crate::protocol::EcsError;
use crate::request::{
    count, name_values, object, only, required, seconds, string, strings, tag_list,
};

/// `RunTask` fields berth carries over.
const RUN_FIELDS: &[&str] = &[
    "cluster",
    "taskDefinition",
    "count",
    "overrides",
    "clientToken",
    "startedBy",
    "group",
    "tags",
];

/// `RunTask` fields that mean nothing here, accepted and dropped: berth has one launch type,
/// gives every task its own network namespace, and tags nothing but what it is told to.
pub const IGNORED_RUN_FIELDS: &[&str] = &[
    "launchType",
    "networkConfiguration",
    "platformVersion",
    "enableECSManagedTags",
    "propagateTags",
    "enableExecuteCommand",
    "referenceId",
];

/// `overrides` fields: container overrides are carried over, IAM roles mean nothing here.
const OVERRIDE_FIELDS: &[&str] = &["containerOverrides"];
pub const IGNORED_OVERRIDE_FIELDS: &[&str] = &["taskRoleArn", "executionRoleArn"];
const CONTAINER_OVERRIDE_FIELDS: &[&str] = &["name", "command", "environment"];

/// A `RunTask` request, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub cluster: String,
    pub family: String,
    /// None: the family's latest ACTIVE revision.
    pub revision: Option<u32>,
    pub count: u32,
    pub client_token: Option<String>,
    pub started_by: Option<String>,
    pub group: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub overrides: Vec<ContainerOverride>,
}

/// The cluster a request names (`default` when none), by name or ARN.
pub fn cluster_of(request: &Map<String, Value>) -> Result<String, EcsError> {
    match string(request, "cluster")? {
        None => Ok(berth_model::DEFAULT_NAMESPACE.to_owned()),
        Some(c) => match Arn::parse(&c, Kind::Cluster, "")
            .map_err(|e| EcsError::invalid(format!("cluster: {e}")))?
        {
            Resource::Cluster { name } => Ok(name),
            _ => Err(EcsError::invalid("cluster: not a cluster")),
        },
    }
}

/// A task definition parameter (`FAMILY`, `FAMILY:REVISION` or an ARN) as family and revision.
pub fn task_definition_of(value: &str, field: &str) -> Result<(String, Option<u32>), EcsError> {
    match Arn::parse(value, Kind::TaskDefinition, "")
        .map_err(|e| EcsError::invalid(format!("{field}: {e}")))?
    {
        Resource::TaskDefinition { family, revision } => Ok((family, revision)),
        _ => Err(EcsError::invalid(format!("{field}: not a task definition"))),
    }
}

/// Reads a `RunTask` request.
pub fn run_request(body: &Value) -> Result<RunRequest, EcsError> {
    let request = object(body, "the request body")?;
    only(request, RUN_FIELDS, IGNORED_RUN_FIELDS, "")?;
    let cluster = cluster_of(request)?;
    let (family, revision) =
        task_definition_of(&required(request, "taskDefinition")?, "taskDefinition")?;
    let overrides = match request.get("overrides").filter(|v| !v.is_null()) {
        None => Vec::new(),
        Some(o) => overrides(o)?,
    };
    Ok(RunRequest {
        cluster,
        family,
        revision,
        count: count(request, "count")?.unwrap_or(1),
        client_token: string(request, "clientToken")?.filter(|t| !t.is_empty()),
        started_by: string(request, "startedBy")?.filter(|t| !t.is_empty()),
        group: string(request, "group")?.filter(|t| !t.is_empty()),
        tags: crate::taskdef::tags(request.get("tags"))?,
        overrides,
    })
}

fn overrides(value: &Value) -> Result<Vec<ContainerOverride>, EcsError> {
    let o = object(value, "overrides")?;
    only(o, OVERRIDE_FIELDS, IGNORED_OVERRIDE_FIELDS, "overrides.")?;
    let Some(list) = o.get("containerOverrides").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| {
        EcsError::invalid("overrides.containerOverrides: a list of objects is expected")
    })?;
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("overrides.containerOverrides[{i}]");
            let c = object(c, &at)?;
            only(c, CONTAINER_OVERRIDE_FIELDS, &[], &format!("{at}."))?;
            Ok(ContainerOverride {
                name: required(c, "name").map_err(|_| {
                    EcsError::invalid(format!("{at}.name: the container's name is required"))
                })?,
                command: strings(c, "command")?.filter(|c| !c.is_empty()),
                environment: name_values(c.get("environment"), &format!("{at}.environment"))?,
            })
        })
        .collect()
}

/// A `ListTasks` request, read: its filters and page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    pub cluster: String,
    pub family: Option<String>,
    pub service: Option<String>,
    pub started_by: Option<String>,
    pub container_instance: Option<String>,
    /// ECS lists the tasks that should run unless told otherwise.
    pub desired_status: DesiredStatus,
    pub size: usize,
    pub token: Option<String>,
}

/// The most tasks a `ListTasks` page holds (ECS's bound).
pub const MAX_LIST_TASKS: u32 = 100;

pub fn list_request(body: &Value) -> Result<ListRequest, EcsError> {
    let request = object(body, "the request body")?;
    only(
        request,
        &[
            "cluster",
            "family",
            "serviceName",
            "startedBy",
            "containerInstance",
            "desiredStatus",
            "maxResults",
            "nextToken",
        ],
        &["launchType"],
        "",
    )?;
    let cluster = cluster_of(request)?;
    let desired_status = match string(request, "desiredStatus")?.as_deref() {
        None | Some("RUNNING") => DesiredStatus::Running,
        Some("STOPPED") => DesiredStatus::Stopped,
        // Nothing berth wants runs without first being RUNNING: no task's desired status is
        // PENDING, as in ECS for tasks once placed.
        Some("PENDING") => {
            return Err(EcsError::invalid(
                "desiredStatus: berth tasks are desired RUNNING or STOPPED; list RUNNING to see pending tasks",
            ))
        }
        Some(other) => {
            return Err(EcsError::invalid(format!(
                "desiredStatus: {other:?} is not RUNNING or STOPPED"
            )))
        }
    };
    let container_instance = match string(request, "containerInstance")? {
        None => None,
        Some(c) => match Arn::parse(&c, Kind::ContainerInstance, &cluster)
            .map_err(|e| EcsError::invalid(format!("containerInstance: {e}")))?
        {
            Resource::ContainerInstance { id, .. } => Some(id),
            _ => None,
        },
    };
    let (size, token) = crate::request::page_request(request, MAX_LIST_TASKS)?;
    Ok(ListRequest {
        cluster,
        family: string(request, "family")?,
        service: string(request, "serviceName")?,
        started_by: string(request, "startedBy")?,
        container_instance,
        desired_status,
        size,
        token,
    })
}

impl ListRequest {
    /// Whether `task` passes the filters.
    pub fn matches(&self, task: &Task) -> bool {
        task.desired_status == self.desired_status
            && self
                .family
                .as_ref()
                .is_none_or(|f| *f == task.task_definition.family)
            && self
                .service
                .as_ref()
                .is_none_or(|s| task.group.as_deref() == Some(&format!("service:{s}")))
            && self
                .started_by
                .as_ref()
                .is_none_or(|s| task.started_by.as_deref() == Some(s.as_str()))
            && self
                .container_instance
                .as_ref()
                .is_none_or(|n| task.node.as_deref() == Some(n.as_str()))
    }
}

/// A task's key for `ListTasks` pages: newest first, then by ID.
pub fn list_key(task: &Task) -> String {
    format!("{:020}.{}", u64::MAX - task.created_at, task.task_id)
}

/// The task's health as ECS gives it: UNHEALTHY if a container is, HEALTHY if each is.
fn health(task: &Task) -> HealthStatus {
    let all = |h| task.containers.iter().all(|c| c.health_status == h);
    if task
        .containers
        .iter()
        .any(|c| c.health_status == HealthStatus::Unhealthy)
    {
        HealthStatus::Unhealthy
    } else if !task.containers.is_empty() && all(HealthStatus::Healthy) {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unknown
    }
}

fn text<T: serde::Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// A task as ECS describes one.
pub fn describe(task: &Task, names: &Names) -> Value {
    let cluster = &task.namespace;
    let task_arn = names.task(cluster, &task.task_id);
    let def = &task.task_definition;
    let containers: Vec<Value> = task
        .containers
        .iter()
        .map(|c| {
            let mut out = json!({
                "containerArn": format!("{}/{}", task_arn.replacen(":task/", ":container/", 1), c.name),
                "taskArn": task_arn,
                "name": c.name,
                "image": c.image,
                "lastStatus": text(c.last_status),
                "healthStatus": text(c.health_status),
                "networkBindings": text(&c.network_bindings),
                "networkInterfaces": task.ip_address.map_or_else(Vec::new, |ip| {
                    vec![json!({"attachmentId": task.task_id, "privateIpv4Address": ip.to_string()})]
                }),
            });
            if let Some(digest) = &c.image_digest {
                out["imageDigest"] = json!(digest);
            }
            if let Some(code) = c.exit_code {
                out["exitCode"] = json!(code);
            }
            if let Some(reason) = &c.reason {
                out["reason"] = json!(reason);
            }
            out
        })
        .collect();
    let overrides: Vec<Value> = task
        .overrides
        .iter()
        .map(|o| {
            let mut out = json!({"name": o.name});
            if let Some(command) = &o.command {
                out["command"] = json!(command);
            }
            if !o.environment.is_empty() {
                out["environment"] = Value::Array(
                    o.environment
                        .iter()
                        .map(|(name, value)| json!({"name": name, "value": value}))
                        .collect(),
                );
            }
            out
        })
        .collect();
    let mut out = json!({
        "taskArn": task_arn,
        "clusterArn": names.cluster(cluster),
        "taskDefinitionArn": names.task_definition(&def.family, def.revision.unwrap_or_default()),
        "lastStatus": text(task.last_status),
        "desiredStatus": text(task.desired_status),
        "cpu": task.cpu.to_string(),
        "memory": task.memory.to_string(),
        "containers": containers,
        "overrides": {"containerOverrides": overrides},
        "createdAt": seconds(task.created_at),
        "launchType": "FARGATE",
        "healthStatus": text(health(task)),
        "tags": tag_list(&task.labels),
        "attachments": [],
    });
    let optional = [
        ("startedBy", task.started_by.clone().map(Value::from)),
        ("group", task.group.clone().map(Value::from)),
        (
            "containerInstanceArn",
            task.node
                .as_ref()
                .map(|n| Value::from(names.container_instance(cluster, n))),
        ),
        (
            "pullStartedAt",
            task.pull_started_at.map(|t| json!(seconds(t))),
        ),
        ("startedAt", task.started_at.map(|t| json!(seconds(t)))),
        ("stoppedAt", task.stopped_at.map(|t| json!(seconds(t)))),
        ("stopCode", task.stop_code.map(text)),
        (
            "stoppedReason",
            task.stopped_reason.clone().map(Value::from),
        ),
    ];
    for (field, value) in optional {
        if let Some(value) = value {
            out[field] = value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use berth_model::{ContainerDefinition, TaskDefinition};

    use super::*;

    fn names() -> Names {
        Names::new("eu-west-1", "123456789012")
    }

    #[test]
    fn a_run_request_carries_overrides_and_refuses_what_berth_lacks_by_name() {
        let body = json!({
            "cluster": "arn:aws:ecs:eu-west-1:123456789012:cluster/team-a",
            "taskDefinition": "web:3",
            "count": 2,
            "startedBy": "ci",
            "group": "batch",
            "clientToken": "tok",
            "launchType": "FARGATE",
            "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["s-1"]}},
            "tags": [{"key": "team", "value": "a"}],
            "overrides": {
                "taskRoleArn": "arn:aws:iam::1:role/x",
                "containerOverrides": [{
                    "name": "app",
                    "command": ["sh", "-c", "exit 3"],
                    "environment": [{"name": "MODE", "value": "once"}]
                }]
            }
        });
        let r = run_request(&body).expect("reads");
        assert_eq!((r.cluster.as_str(), r.family.as_str()), ("team-a", "web"));
        assert_eq!((r.revision, r.count), (Some(3), 2));
        assert_eq!(r.started_by.as_deref(), Some("ci"));
        assert_eq!(r.tags.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            r.overrides,
            vec![ContainerOverride {
                name: "app".into(),
                command: Some(vec!["sh".into(), "-c".into(), "exit 3".into()]),
                environment: [("MODE".to_owned(), "once".to_owned())].into(),
            }]
        );
        let refused = json!({
            "taskDefinition": "web",
            "placementStrategy": [{"type": "spread"}],
            "overrides": {"cpu": "512", "containerOverrides": [{"name": "app", "memory": 64}]}
        });
        let e = run_request(&refused).expect_err("unsupported");
        assert!(e.message.contains("placementStrategy"), "{}", e.message);
        let e = run_request(&json!({"taskDefinition": "web", "overrides": {"cpu": "512"}}))
            .expect_err("task-level size override");
        assert!(e.message.contains("overrides.cpu"), "{}", e.message);
        let e = run_request(&json!({"cluster": "a"})).expect_err("no definition");
        assert_eq!(e.message, "taskDefinition is required");
    }

    #[test]
    fn list_requests_filter_as_ecs_does() {
        let r = list_request(&json!({"family": "web"})).expect("reads");
        assert_eq!(r.cluster, "default");
        assert_eq!(r.desired_status, DesiredStatus::Running, "ECS's default");
        assert_eq!(r.size, 100);
        let r = list_request(&json!({
            "desiredStatus": "STOPPED",
            "containerInstance": "arn:aws:ecs:r:1:container-instance/default/node-1",
            "maxResults": 5
        }))
        .expect("reads");
        assert_eq!(r.container_instance.as_deref(), Some("node-1"));
        assert_eq!((r.desired_status, r.size), (DesiredStatus::Stopped, 5));
        assert!(list_request(&json!({"desiredStatus": "DONE"})).is_err());
    }

    fn task() -> Task {
        let def = TaskDefinition {
            namespace: "team-a".into(),
            family: "web".into(),
            revision: 3,
            status: berth_model::TaskDefinitionStatus::Active,
            cpu: 256,
            memory: 512,
            containers: vec![ContainerDefinition::new("app", "registry.local/app:1")],
            placement: Default::default(),
            ephemeral_storage: None,
            meta: Default::default(),
            registered_at: 1_000,
            deregistered_at: None,
        };
        let mut task = Task::pending("t-1".into(), "team-a", &def, 1_796_214_600_000);
        task.node = Some("node-1".into());
        task.started_by = Some("ci".into());
        task
    }

    #[test]
    fn a_task_is_described_with_stable_arns() {
        let mut t = task();
        t.overrides = vec![ContainerOverride {
            name: "app".into(),
            command: Some(vec!["true".into()]),
            environment: BTreeMap::new(),
        }];
        let d = describe(&t, &names());
        assert_eq!(
            d["taskArn"],
            "arn:aws:ecs:eu-west-1:123456789012:task/team-a/t-1"
        );
        assert_eq!(
            d["taskDefinitionArn"],
            "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:3"
        );
        assert_eq!(
            d["containerInstanceArn"],
            "arn:aws:ecs:eu-west-1:123456789012:container-instance/team-a/node-1"
        );
        assert_eq!(
            (d["cpu"].as_str(), d["memory"].as_str()),
            (Some("256"), Some("512"))
        );
        assert_eq!(d["lastStatus"], "PENDING");
        assert_eq!(d["desiredStatus"], "RUNNING");
        assert_eq!(d["createdAt"], json!(1_796_214_600.0));
        assert_eq!(d["containers"][0]["name"], "app");
        assert_eq!(
            d["overrides"]["containerOverrides"][0]["command"],
            json!(["true"])
        );
        assert!(d.get("stoppedAt").is_none());
        // What one call answers, the next accepts.
        let arn = d["taskArn"].as_str().expect("arn");
        assert_eq!(
            Arn::parse(arn, Kind::Task, "default"),
            Ok(Resource::Task {
                cluster: "team-a".into(),
                id: "t-1".into()
            })
        );
    }

    #[test]
    fn list_keys_put_the_newest_first() {
        let older = task();
        let mut newer = task();
        newer.created_at += 1;
        assert!(list_key(&newer) < list_key(&older));
    }
}
