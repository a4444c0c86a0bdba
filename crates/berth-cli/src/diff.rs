//! `berth diff -f`: what applying manifests would change, field by field, against the server.
//! Exit code 0 when nothing differs, 1 when something does (as `kubectl diff`).

use berth_manifest::{Document, Object};
use berth_model::{ServiceSpec, TaskDefinition, TaskDefinitionSpec};
use berth_proto::v1 as pb;
use serde_json::Value;

use crate::manifests::namespace_of;
use crate::{Client, GlobalArgs};

/// Appends `  ~ path: old -> new` for every leaf that differs.
pub fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let child = format!("{path}.{k}");
                diff_values(
                    &child,
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                diff_values(
                    &format!("{path}[{i}]"),
                    a.get(i).unwrap_or(&Value::Null),
                    b.get(i).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if old != new => {
            let show = |v: &Value| match v {
                Value::Null => "(none)".to_owned(),
                other => other.to_string(),
            };
            out.push(format!("  ~ {path}: {} -> {}", show(old), show(new)));
        }
        _ => {}
    }
}

/// A registered revision's content as a spec, to compare with a manifest's.
fn spec_of(d: &TaskDefinition) -> TaskDefinitionSpec {
    TaskDefinitionSpec {
        meta: d.meta.clone(),
        family: d.family.clone(),
        cpu: d.cpu,
        memory: d.memory,
        containers: d.containers.clone(),
        placement: d.placement.clone(),
        ephemeral_storage: d.ephemeral_storage,
    }
}

/// Every revision of `family`, oldest first.
async fn revisions(
    client: &mut Client,
    namespace: &str,
    family: &str,
) -> anyhow::Result<Vec<TaskDefinition>> {
    crate::taskdefs::list(client, namespace, family, false, "").await
}

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(v)?)
}

pub async fn run(global: &GlobalArgs, documents: Vec<Document>) -> anyhow::Result<i32> {
    let mut client = Client::new(global)?;
    let mut differs = false;
    for d in documents {
        let namespace = namespace_of(&d, global);
        let mut lines = Vec::new();
        let title = match d.object {
            Object::TaskDefinition(spec) => {
                let revs = revisions(&mut client, &namespace, &spec.family).await?;
                match revs.last() {
                    None => lines.push("  + new".to_owned()),
                    Some(latest) => {
                        diff_values("spec", &json(&spec_of(latest))?, &json(&spec)?, &mut lines)
                    }
                }
                format!("taskdefinition/{}", spec.family)
            }
            Object::Task {
                task_definition,
                count,
                ..
            } => {
                // One-off tasks run again on every apply (after the client token's hour).
                lines.push(format!("  + runs {count} tasks of {task_definition}"));
                format!("task/{}", d.metadata.name)
            }
            Object::Service { spec, template } => {
                lines = diff_service(&mut client, &namespace, &spec, template.as_ref()).await?;
                format!("service/{}", spec.name)
            }
            Object::Secret(values) => {
                lines = diff_secret(&mut client, &namespace, &d.metadata.name, &values.0).await?;
                format!("secret/{}", d.metadata.name)
            }
        };
        if !lines.is_empty() {
            differs = true;
            println!("{title}");
            for l in &lines {
                println!("{l}");
            }
        }
    }
    Ok(i32::from(differs))
}

/// What applying a secret's manifest would change: its keys (values are never shown back, so
/// a key present on both sides is replaced without a comparison).
async fn diff_secret(
    client: &mut Client,
    namespace: &str,
    name: &str,
    values: &std::collections::BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<Vec<String>> {
    let req = pb::ListSecretsRequest {
        namespace: namespace.to_owned(),
    };
    let list = client
        .request(req, |mut c, req| async move { c.list_secrets(req).await })
        .await?;
    let Some(current) = list.secrets.into_iter().find(|s| s.name == name) else {
        return Ok(vec!["  + new".to_owned()]);
    };
    let mut lines = Vec::new();
    for key in values.keys() {
        if current.keys.contains(key) {
            lines.push(format!("  ~ data.{key}: replaced (values are never shown)"));
        } else {
            lines.push(format!("  + data.{key}"));
        }
    }
    for key in current.keys.iter().filter(|k| !values.contains_key(*k)) {
        lines.push(format!("  - data.{key}"));
    }
    Ok(lines)
}

/// What applying a service's manifest (`spec`, and `template` when it carries its task
/// definition) would change.
async fn diff_service(
    client: &mut Client,
    namespace: &str,
    spec: &ServiceSpec,
    template: Option<&TaskDefinitionSpec>,
) -> anyhow::Result<Vec<String>> {
    let req = pb::ListServicesRequest {
        namespace: namespace.to_owned(),
        stale: false,
        selector: String::new(),
    };
    let list = client
        .request(req, |mut c, req| async move { c.list_services(req).await })
        .await?;
    let current = list.services.into_iter().find(|s| s.name == spec.name);
    let Some(current) = current else {
        return Ok(vec!["  + new".to_owned()]);
    };
    let current: berth_model::Service = current.try_into()?;
    let mut lines = Vec::new();
    let mut desired: ServiceSpec = spec.clone();
    let running = ServiceSpec {
        ingress: current.ingress.clone(),
        deregistration_delay: current.deregistration_delay,
        meta: current.meta.clone(),
        name: current.name.clone(),
        task_definition: current.task_definition.clone(),
        desired_count: current.desired_count,
        deployment_configuration: current.deployment_configuration.clone(),
        placement: current.placement.clone(),
        autoscaling: current.autoscaling.clone(),
    };
    if desired.autoscaling.is_some() {
        // The autoscaler owns the count.
        desired.desired_count = current.desired_count;
    }
    let revs = revisions(client, namespace, &current.task_definition.family).await?;
    let running_def = revs
        .iter()
        .find(|r| Some(r.revision) == current.task_definition.revision);
    match (template, running_def) {
        (Some(t), Some(def)) => {
            diff_values(
                "spec.template",
                &json(&spec_of(def))?,
                &json(t)?,
                &mut lines,
            );
            desired.task_definition = current.task_definition.clone();
        }
        (Some(_), None) => lines.push("  ~ spec.template: (running revision unknown)".into()),
        (None, _) => {
            // A bare family means its latest revision.
            if desired.task_definition.revision.is_none() {
                let latest = revisions(client, namespace, &desired.task_definition.family)
                    .await?
                    .last()
                    .map(TaskDefinition::reference);
                if let Some(r) = latest {
                    desired.task_definition = r;
                }
            }
        }
    }
    diff_values("spec", &json(&running)?, &json(&desired)?, &mut lines);
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::diff_values;

    #[test]
    fn leaves_that_differ_are_listed_with_their_paths() {
        let mut out = Vec::new();
        diff_values(
            "spec",
            &json!({"cpu": 256, "containers": [{"image": "a:v1", "command": ["x"]}]}),
            &json!({"cpu": 512, "containers": [{"image": "a:v2", "command": ["x"]}], "memory": 64}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "  ~ spec.containers[0].image: \"a:v1\" -> \"a:v2\"",
                "  ~ spec.cpu: 256 -> 512",
                "  ~ spec.memory: (none) -> 64",
            ]
        );
    }
}
