//! ECS task definitions in and out: a `RegisterTaskDefinition` request read into berth's
//! [`TaskDefinitionSpec`], and a [`TaskDefinition`] written as ECS describes one. Every field
//! of the request is one of three kinds: supported (carried over), meaningless here and
//! accepted (listed in [`IGNORED_TASK_FIELDS`] and [`IGNORED_CONTAINER_FIELDS`]: berth gives
//! every task its own network namespace, pulls images itself and keeps logs on the node), or
//! refused with an `InvalidParameterException` that names each such field — never dropped in
//! silence.

use std::collections::BTreeMap;

use berth_model::{ContainerDefinition, TaskDefinition, TaskDefinitionSpec};
use serde_json::{json, Map, Value};

use crate::protocol::EcsError;
use crate::request::unsupported;

/// Task-level fields berth carries over.
const TASK_FIELDS: &[&str] = &[
    "family",
    "containerDefinitions",
    "cpu",
    "memory",
    "tags",
    "ephemeralStorage",
];

/// Task-level fields that mean nothing here, accepted and dropped.
pub const IGNORED_TASK_FIELDS: &[&str] = &[
    "networkMode",
    "requiresCompatibilities",
    "executionRoleArn",
    "taskRoleArn",
    // Linux only (checked): a node pulls the image for its own architecture.
    "runtimePlatform",
];

/// Container fields berth carries over.
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "cpu",
    "memory",
    "essential",
    "command",
    "entryPoint",
    "environment",
    "workingDirectory",
    "healthCheck",
    "dependsOn",
    "portMappings",
    "secrets",
    "repositoryCredentials",
    "user",
    "readonlyRootFilesystem",
    "linuxParameters",
    "ulimits",
    "stopTimeout",
];

/// Container fields that mean nothing here, accepted and dropped (`berth logs` reads what
/// the container wrote, from its node).
pub const IGNORED_CONTAINER_FIELDS: &[&str] = &["logConfiguration"];

/// Fields of nested objects berth carries over; any other is refused.
const NESTED_FIELDS: &[(&str, &[&str])] = &[
    ("portMappings", &["containerPort", "hostPort", "protocol"]),
    (
        "healthCheck",
        &["command", "interval", "timeout", "retries", "startPeriod"],
    ),
    ("dependsOn", &["containerName", "condition"]),
    ("secrets", &["name", "valueFrom"]),
    ("ulimits", &["name", "softLimit", "hardLimit"]),
    ("repositoryCredentials", &["credentialsParameter"]),
    ("linuxParameters", &["capabilities", "initProcessEnabled"]),
    ("environment", &["name", "value"]),
];

/// A `RegisterTaskDefinition` request, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub spec: TaskDefinitionSpec,
    /// ECS `tags`, which berth keeps as the definition's labels.
    pub tags: BTreeMap<String, String>,
}

/// Reads a `RegisterTaskDefinition` request.
pub fn register_request(request: &Value) -> Result<Registration, EcsError> {
    let task = request
        .as_object()
        .ok_or_else(|| EcsError::invalid("the request body is not a JSON object"))?;
    let mut refused = unsupported(task, TASK_FIELDS, IGNORED_TASK_FIELDS, "");
    if let Some(platform) = task.get("runtimePlatform").filter(|v| !v.is_null()) {
        let os = platform
            .get("operatingSystemFamily")
            .and_then(Value::as_str)
            .unwrap_or("LINUX");
        if os != "LINUX" {
            return Err(EcsError::invalid(format!(
                "runtimePlatform.operatingSystemFamily: {os} is not supported by berth; its nodes run Linux containers (LINUX)"
            )));
        }
    }
    let containers = match task.get("containerDefinitions") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => {
            return Err(EcsError::invalid(
                "containerDefinitions: at least one container definition is required",
            ))
        }
    };
    for (i, c) in containers.iter().enumerate() {
        let at = format!("containerDefinitions[{i}].");
        let c = c
            .as_object()
            .ok_or_else(|| EcsError::invalid(format!("{at}: not an object")))?;
        refused.extend(unsupported(
            c,
            CONTAINER_FIELDS,
            IGNORED_CONTAINER_FIELDS,
            &at,
        ));
        for (field, allowed) in NESTED_FIELDS {
            // A list's items are named by their index, a lone object by the field.
            let items: Vec<(String, &Value)> = match c.get(*field) {
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(j, item)| (format!("{at}{field}[{j}]."), item))
                    .collect(),
                Some(one) => vec![(format!("{at}{field}."), one)],
                None => vec![],
            };
            for (path, item) in items {
                if let Some(obj) = item.as_object() {
                    refused.extend(unsupported(obj, allowed, &[], &path));
                }
            }
        }
    }
    if !refused.is_empty() {
        return Err(EcsError::invalid(format!(
            "not supported by berth: {}; remove them (the README's ECS section lists what \
             berth takes)",
            refused.join(", ")
        )));
    }
    let family = match task.get("family") {
        Some(Value::String(f)) if !f.is_empty() => f.clone(),
        _ => return Err(EcsError::invalid("family: a family name is required")),
    };
    let mut containers: Vec<ContainerDefinition> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| container(i, c))
        .collect::<Result<_, _>>()?;
    // In awsvpc mode (Fargate's only one) a host port is the container's own port on the
    // task's address, as each berth task has on its task network: no port of the node is
    // claimed. Another host port is a port of the node, as berth's are.
    let awsvpc = matches!(task.get("networkMode"), None | Some(Value::Null))
        || task.get("networkMode").and_then(Value::as_str) == Some("awsvpc");
    for mapping in containers.iter_mut().flat_map(|c| &mut c.port_mappings) {
        if awsvpc && mapping.host_port == mapping.container_port {
            mapping.host_port = 0;
        }
    }
    let cpu = size("cpu", task.get("cpu"), &containers, |c| c.cpu, cpu_units)?;
    let memory = size("memory", task.get("memory"), &containers, |c| c.memory, mib)?;
    let mut spec = TaskDefinitionSpec::new(family, cpu, memory, containers);
    if let Some(storage) = task.get("ephemeralStorage") {
        spec.ephemeral_storage = Some(
            serde_json::from_value(storage.clone())
                .map_err(|e| EcsError::invalid(format!("ephemeralStorage: {e}")))?,
        );
    }
    let tags = tags(task.get("tags"))?;
    spec.meta.labels = tags.clone();
    Ok(Registration { spec, tags })
}

/// One ECS container definition as berth's: ECS's defaults (essential, 30 s to stop), the
/// environment's list as a map, `initProcessEnabled` as `init`.
fn container(i: usize, c: &Value) -> Result<ContainerDefinition, EcsError> {
    let at = format!("containerDefinitions[{i}]");
    let mut c = c.as_object().cloned().unwrap_or_default();
    for ignored in IGNORED_CONTAINER_FIELDS {
        c.remove(*ignored);
    }
    c.entry("essential").or_insert(Value::Bool(true));
    c.entry("stopTimeout")
        .or_insert(json!(berth_model::DEFAULT_STOP_TIMEOUT_SECS));
    if let Some(env) = c.remove("environment") {
        let mut map = Map::new();
        for (j, pair) in env.as_array().into_iter().flatten().enumerate() {
            let name = pair.get("name").and_then(Value::as_str).ok_or_else(|| {
                EcsError::invalid(format!("{at}.environment[{j}].name is required"))
            })?;
            let value = pair.get("value").cloned().unwrap_or(json!(""));
            map.insert(name.to_owned(), value);
        }
        c.insert("environment".into(), Value::Object(map));
    }
    if let Some(Value::Object(linux)) = c.get_mut("linuxParameters") {
        if let Some(init) = linux.remove("initProcessEnabled") {
            c.insert("init".into(), init);
        }
    }
    serde_json::from_value(Value::Object(c)).map_err(|e| EcsError::invalid(format!("{at}: {e}")))
}

/// A task-level size: ECS sends a string (`"256"`, `"1 vCPU"`, `"512"`, `"2 GB"`); without
/// one, the containers' own sizes added up, as ECS does for EC2 tasks.
fn size(
    field: &str,
    given: Option<&Value>,
    containers: &[ContainerDefinition],
    each: impl Fn(&ContainerDefinition) -> Option<u32>,
    parse: fn(&str) -> Option<u32>,
) -> Result<u32, EcsError> {
    match given {
        Some(Value::String(s)) => parse(s.trim()).ok_or_else(|| {
            EcsError::invalid(format!(
                "{field}: {s:?} is not a size ECS takes (\"256\" or \"1 vCPU\" for cpu, \"512\" \
                 or \"2 GB\" for memory)"
            ))
        }),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| EcsError::invalid(format!("{field}: {n} is out of range"))),
        Some(other) => Err(EcsError::invalid(format!(
            "{field}: {other} is not a size (a string such as \"256\")"
        ))),
        None => {
            let sizes: Option<Vec<u32>> = containers.iter().map(&each).collect();
            let sizes = sizes.ok_or_else(|| {
                EcsError::invalid(format!(
                    "{field}: required for the task, or on every container"
                ))
            })?;
            sizes
                .into_iter()
                .try_fold(0u32, u32::checked_add)
                .ok_or_else(|| {
                    EcsError::invalid(format!("{field}: the containers' sum is out of range"))
                })
        }
    }
}

fn cpu_units(s: &str) -> Option<u32> {
    match s.strip_suffix("vCPU").or_else(|| s.strip_suffix("vcpu")) {
        Some(v) => {
            let v: f64 = v.trim().parse().ok()?;
            (v > 0.0).then(|| (v * f64::from(berth_model::CPU_UNITS_PER_VCPU)).round() as u32)
        }
        None => s.parse().ok(),
    }
}

fn mib(s: &str) -> Option<u32> {
    match s.strip_suffix("GB").or_else(|| s.strip_suffix("gb")) {
        Some(g) => {
            let g: f64 = g.trim().parse().ok()?;
            (g > 0.0).then(|| (g * 1024.0).round() as u32)
        }
        None => s.strip_suffix("MiB").unwrap_or(s).trim().parse().ok(),
    }
}

/// ECS `tags` (`[{key, value}]`) as a map.
pub fn tags(given: Option<&Value>) -> Result<BTreeMap<String, String>, EcsError> {
    let mut out = BTreeMap::new();
    for (i, tag) in given
        .map(|t| {
            t.as_array()
                .ok_or_else(|| EcsError::invalid("tags: a list of {key, value} is expected"))
        })
        .transpose()?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let key = tag
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| EcsError::invalid(format!("tags[{i}].key is required")))?;
        let value = tag.get("value").and_then(Value::as_str).unwrap_or_default();
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// A task definition as ECS describes one; `arn` is its ARN.
pub fn describe(def: &TaskDefinition, arn: &str) -> Value {
    let containers: Vec<Value> = def
        .containers
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                let environment: Vec<Value> = c
                    .environment
                    .iter()
                    .map(|(name, value)| json!({"name": name, "value": value}))
                    .collect();
                obj.insert("environment".into(), Value::Array(environment));
                let ports: Vec<Value> = c
                    .port_mappings
                    .iter()
                    .map(|m| {
                        let host = if m.host_port == 0 {
                            m.container_port
                        } else {
                            m.host_port
                        };
                        json!({
                            "containerPort": m.container_port,
                            "hostPort": host,
                            "protocol": serde_json::to_value(m.protocol).unwrap_or_default(),
                        })
                    })
                    .collect();
                obj.insert("portMappings".into(), Value::Array(ports));
                obj.insert("essential".into(), Value::Bool(c.essential));
                let init = obj.remove("init").unwrap_or(Value::Bool(c.init));
                let linux = obj.entry("linuxParameters").or_insert_with(|| json!({}));
                if let Some(linux) = linux.as_object_mut() {
                    linux.insert("initProcessEnabled".into(), init);
                }
            }
            v
        })
        .collect();
    let mut out = json!({
        "taskDefinitionArn": arn,
        "family": def.family,
        "revision": def.revision,
        "status": def.status.to_string(),
        "cpu": def.cpu.to_string(),
        "memory": def.memory.to_string(),
        "containerDefinitions": containers,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "compatibilities": ["FARGATE"],
        "registeredAt": seconds(def.registered_at),
    });
    if let Some(at) = def.deregistered_at {
        out["deregisteredAt"] = json!(seconds(at));
    }
    if let Some(storage) = &def.ephemeral_storage {
        out["ephemeralStorage"] = serde_json::to_value(storage).unwrap_or_default();
    }
    out
}

/// Milliseconds as the seconds (with a fraction) ECS's timestamps are.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the AWS documentation's Fargate web-server example (a task definition
    /// with one container, its port, an entry point and a command, and the fields that mean
    /// nothing here).
    fn fargate_example() -> Value {
        json!({
            "family": "sample-fargate",
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"],
            "executionRoleArn": "arn:aws:iam::000000000000:role/ecsTaskExecutionRole",
            "cpu": "256",
            "memory": "512",
            "containerDefinitions": [{
                "name": "fargate-app",
                "image": "127.0.0.1:5000/httpd:2.4",
                "portMappings": [{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}],
                "essential": true,
                "entryPoint": ["sh", "-c"],
                "command": ["httpd -f -p 80"],
                "environment": [{"name": "GREETING", "value": "hello"}],
                "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g"}}
            }],
            "tags": [{"key": "team", "value": "web"}]
        })
    }

    #[test]
    fn an_ecs_task_definition_reads_into_berths() {
        let r = register_request(&fargate_example()).expect("registers");
        assert_eq!(r.spec.family, "sample-fargate");
        assert_eq!((r.spec.cpu, r.spec.memory), (256, 512));
        let c = &r.spec.containers[0];
        assert_eq!(c.image, "127.0.0.1:5000/httpd:2.4");
        assert_eq!(c.entry_point, ["sh", "-c"]);
        assert_eq!(
            c.environment.get("GREETING").map(String::as_str),
            Some("hello")
        );
        assert_eq!(c.port_mappings[0].container_port, 80);
        assert!(c.essential);
        assert_eq!(c.stop_timeout, 30, "ECS's default");
        assert_eq!(r.tags.get("team").map(String::as_str), Some("web"));
        assert_eq!(r.spec.meta.labels, r.tags);
    }

    #[test]
    fn sizes_come_as_ecs_writes_them_or_from_the_containers() {
        assert_eq!(cpu_units("1 vCPU"), Some(1024));
        assert_eq!(cpu_units(".25 vCPU"), Some(256));
        assert_eq!(cpu_units("512"), Some(512));
        assert_eq!(mib("2 GB"), Some(2048));
        assert_eq!(mib("0.5GB"), Some(512));
        assert_eq!(mib("1024"), Some(1024));
        assert_eq!(cpu_units("lots"), None);

        let mut ec2 = fargate_example();
        let task = ec2.as_object_mut().expect("object");
        task.remove("cpu");
        task.remove("memory");
        let err = register_request(&ec2).expect_err("no size anywhere");
        assert!(err.message.contains("cpu: required"), "{err}");
        ec2["containerDefinitions"][0]["cpu"] = json!(128);
        ec2["containerDefinitions"][0]["memory"] = json!(256);
        let r = register_request(&ec2).expect("sizes from the container");
        assert_eq!((r.spec.cpu, r.spec.memory), (128, 256));
    }

    #[test]
    fn fields_berth_does_not_take_are_refused_by_name_not_dropped() {
        let mut def = fargate_example();
        def["volumes"] = json!([{"name": "data"}]);
        def["containerDefinitions"][0]["mountPoints"] = json!([]);
        def["containerDefinitions"][0]["portMappings"][0]["appProtocol"] = json!("http");
        def["containerDefinitions"][0]["linuxParameters"] = json!({"devices": []});
        let err = register_request(&def).expect_err("unsupported fields");
        assert_eq!(err.kind.name(), "InvalidParameterException");
        for named in [
            "volumes",
            "containerDefinitions[0].mountPoints",
            "containerDefinitions[0].portMappings[0].appProtocol",
            "containerDefinitions[0].linuxParameters.devices",
        ] {
            assert!(
                err.message.contains(named),
                "{named} not named: {}",
                err.message
            );
        }
        // The accepted-and-ignored ones are not named.
        assert!(!err.message.contains("logConfiguration"), "{}", err.message);
        assert!(!err.message.contains("networkMode"), "{}", err.message);
    }

    #[test]
    fn only_awsvpc_host_ports_are_the_task_s_own() {
        let mut def = fargate_example();
        def["networkMode"] = json!("bridge");
        let r = register_request(&def).expect("registers");
        assert_eq!(
            r.spec.containers[0].port_mappings[0].host_port, 80,
            "a node port in bridge mode"
        );
    }

    #[test]
    fn linux_is_the_runtime_platform() {
        let mut def = fargate_example();
        def["runtimePlatform"] =
            json!({"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"});
        assert!(register_request(&def).is_ok());
        def["runtimePlatform"] = json!({"operatingSystemFamily": "WINDOWS_SERVER_2022_CORE"});
        let e = register_request(&def).expect_err("windows");
        assert!(
            e.message.contains("WINDOWS_SERVER_2022_CORE"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_description_reads_back_as_the_same_request() {
        let r = register_request(&fargate_example()).expect("registers");
        let def = TaskDefinition {
            namespace: "default".into(),
            family: r.spec.family.clone(),
            revision: 3,
            status: berth_model::TaskDefinitionStatus::Active,
            cpu: r.spec.cpu,
            memory: r.spec.memory,
            containers: r.spec.containers.clone(),
            placement: Default::default(),
            ephemeral_storage: None,
            meta: r.spec.meta.clone(),
            registered_at: 1_796_214_600_250,
            deregistered_at: None,
        };
        let arn = "arn:aws:ecs:us-east-1:000000000000:task-definition/sample-fargate:3";
        let described = describe(&def, arn);
        assert_eq!(described["taskDefinitionArn"], arn);
        assert_eq!(described["cpu"], "256");
        assert_eq!(described["status"], "ACTIVE");
        assert_eq!(described["registeredAt"], 1_796_214_600.25);
        assert_eq!(
            described["containerDefinitions"][0]["environment"],
            json!([{"name": "GREETING", "value": "hello"}])
        );
        // What DescribeTaskDefinition answers registers again as the same definition (as
        // `aws ecs register-task-definition --cli-input-json` of a described one does, minus
        // the fields ECS itself adds).
        let mut again = described.clone();
        let obj = again.as_object_mut().expect("object");
        for added in [
            "taskDefinitionArn",
            "revision",
            "status",
            "compatibilities",
            "registeredAt",
        ] {
            obj.remove(added);
        }
        // awsvpc's hostPort is the container's port on the task's own address: no node port.
        assert_eq!(r.spec.containers[0].port_mappings[0].host_port, 0);
        assert_eq!(
            described["containerDefinitions"][0]["portMappings"],
            json!([{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}])
        );
        let r2 = register_request(&again).expect("registers again");
        assert_eq!(r2.spec.containers, r.spec.containers);
        assert_eq!((r2.spec.cpu, r2.spec.memory), (256, 512));
    }
}
