//! ECS's task definition and task calls.

use berth_ecs::arn::{Arn, Kind, Names, Resource};
use berth_ecs::protocol::{EcsError, ErrorType};
use berth_ecs::request::{
    object, only, page, page_in, page_request, required, string, strings, tag_list,
};
use berth_ecs::task::{cluster_of, task_definition_of};
use berth_ecs::{task, taskdef};
use berth_model::{TaskDefinition, TaskDefinitionStatus};
use berth_proto::v1 as pb;
use serde_json::{json, Value};

use super::{ecs_error, missing, names_list, unconverted, BerthService};
use crate::auth::Caller;

fn definition_arn(names: &Names, def: &TaskDefinition) -> String {
    names.task_definition(&def.family, def.revision)
}

fn with_tags(include: Option<Vec<String>>) -> bool {
    include.is_some_and(|i| i.iter().any(|x| x == "TAGS"))
}

/// A page of ARNs, sorted by `key` (ascending unless `descending`).
pub(super) fn arn_page<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    arn: impl Fn(&T) -> String,
    request: &serde_json::Map<String, Value>,
    (max, descending): (u32, bool),
    field: &str,
) -> Result<Value, EcsError> {
    items.sort_by_key(&key);
    if descending {
        items.reverse();
    }
    let (size, token) = page_request(request, max)?;
    let (items, next) = page_in(items, key, size, token.as_deref(), descending)?;
    let mut out = json!({ field: items.iter().map(arn).collect::<Vec<_>>() });
    if let Some(next) = next {
        out["nextToken"] = json!(next);
    }
    Ok(out)
}

impl BerthService {
    pub(super) async fn ecs_register_task_definition(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let registration = taskdef::register_request(body)?;
        let req = pb::RegisterTaskDefinitionRequest {
            namespace: Self::ecs_definitions_namespace(caller),
            spec: Some(registration.spec.into()),
            reuse_identical: false,
        };
        let answer = self
            .register_task_definition(caller, req)
            .await
            .map_err(ecs_error)?
            .into_inner();
        let def: TaskDefinition = answer
            .task_definition
            .ok_or_else(|| EcsError::new(ErrorType::Server, "no task definition answered"))?
            .try_into()
            .map_err(unconverted)?;
        Ok(json!({
            "taskDefinition": taskdef::describe(&def, &definition_arn(names, &def)),
            "tags": tag_list(&registration.tags),
        }))
    }

    /// The revision a task definition parameter names, in `caller`'s namespace.
    async fn ecs_definition(
        &self,
        caller: &Caller,
        value: &str,
        field: &str,
    ) -> Result<TaskDefinition, EcsError> {
        let (family, revision) = task_definition_of(value, field)?;
        let namespace = Self::ecs_definitions_namespace(caller);
        let reference = berth_model::TaskDefinitionRef { family, revision };
        let def = self
            .ecs_read(caller, &namespace, |s| {
                s.task_definition(&namespace, &reference).cloned()
            })
            .await?;
        def.ok_or_else(|| {
            EcsError::new(
                ErrorType::Client,
                format!("Unable to describe task definition: {reference} is not registered in namespace {namespace}"),
            )
        })
    }

    pub(super) async fn ecs_describe_task_definition(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["taskDefinition", "include"], &[], "")?;
        let def = self
            .ecs_definition(
                caller,
                &required(request, "taskDefinition")?,
                "taskDefinition",
            )
            .await?;
        let mut out =
            json!({"taskDefinition": taskdef::describe(&def, &definition_arn(names, &def))});
        if with_tags(strings(request, "include")?) {
            out["tags"] = tag_list(&def.meta.labels);
        }
        Ok(out)
    }

    pub(super) async fn ecs_list_task_definitions(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(
            request,
            &["familyPrefix", "status", "sort", "maxResults", "nextToken"],
            &[],
            "",
        )?;
        let prefix = string(request, "familyPrefix")?.unwrap_or_default();
        let status = status_filter(request, false)?;
        let descending = match string(request, "sort")?.as_deref() {
            None | Some("ASC") => false,
            Some("DESC") => true,
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "sort: {other:?} is not ASC or DESC"
                )))
            }
        };
        let namespace = Self::ecs_definitions_namespace(caller);
        let defs: Vec<(String, u32)> = self
            .ecs_read(caller, &namespace, |s| {
                s.task_definitions(&namespace)
                    .filter(|d| {
                        d.family.starts_with(&prefix) && status.is_none_or(|st| d.status == st)
                    })
                    .map(|d| (d.family.clone(), d.revision))
                    .collect()
            })
            .await?;
        // By family, then revision; DESC reverses both, as ECS does.
        arn_page(
            defs,
            |(f, r)| format!("{f}\u{0}{r:010}"),
            |(f, r)| names.task_definition(f, *r),
            request,
            (100, descending),
            "taskDefinitionArns",
        )
    }

    pub(super) async fn ecs_list_families(
        &self,
        caller: &Caller,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(
            request,
            &["familyPrefix", "status", "maxResults", "nextToken"],
            &[],
            "",
        )?;
        let prefix = string(request, "familyPrefix")?.unwrap_or_default();
        let status = status_filter(request, true)?;
        let namespace = Self::ecs_definitions_namespace(caller);
        let families: std::collections::BTreeSet<String> = self
            .ecs_read(caller, &namespace, |s| {
                s.task_definitions(&namespace)
                    .filter(|d| {
                        d.family.starts_with(&prefix) && status.is_none_or(|st| d.status == st)
                    })
                    .map(|d| d.family.clone())
                    .collect()
            })
            .await?;
        arn_page(
            families.into_iter().collect(),
            String::clone,
            String::clone,
            request,
            (100, false),
            "families",
        )
    }

    pub(super) async fn ecs_deregister_task_definition(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["taskDefinition"], &[], "")?;
        let value = required(request, "taskDefinition")?;
        let (family, revision) = task_definition_of(&value, "taskDefinition")?;
        let Some(revision) = revision else {
            return Err(EcsError::invalid(
                "taskDefinition: name a revision (FAMILY:REVISION or its ARN); ECS deregisters one at a time",
            ));
        };
        let req = pb::DeregisterTaskDefinitionRequest {
            namespace: Self::ecs_definitions_namespace(caller),
            task_definition: format!("{family}:{revision}"),
        };
        let answer = self
            .deregister_task_definition(caller, req)
            .await
            .map_err(ecs_error)?
            .into_inner();
        let def: TaskDefinition = answer
            .task_definitions
            .into_iter()
            .next()
            .ok_or_else(|| {
                EcsError::new(
                    ErrorType::Client,
                    format!("{family}:{revision} is INACTIVE already"),
                )
            })?
            .try_into()
            .map_err(unconverted)?;
        Ok(json!({"taskDefinition": taskdef::describe(&def, &definition_arn(names, &def))}))
    }

    pub(super) async fn ecs_run_task(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let r = task::run_request(body)?;
        let reference = match r.revision {
            Some(rev) => format!("{}:{rev}", r.family),
            None => r.family.clone(),
        };
        let req = pb::RunTaskRequest {
            namespace: r.cluster,
            task_definition: reference,
            count: r.count,
            client_token: r.client_token.unwrap_or_default(),
            overrides: r.overrides.into_iter().map(Into::into).collect(),
            started_by: r.started_by.unwrap_or_default(),
            group: r.group.unwrap_or_default(),
            labels: r.tags,
        };
        let answer = self
            .run_task(caller, req)
            .await
            .map_err(ecs_error)?
            .into_inner();
        let tasks = answer
            .tasks
            .into_iter()
            .map(|t| berth_model::Task::try_from(t).map(|t| task::describe(&t, names)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unconverted)?;
        Ok(json!({"tasks": tasks, "failures": []}))
    }

    pub(super) async fn ecs_describe_tasks(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["cluster", "tasks", "include"], &[], "")?;
        let cluster = cluster_of(request)?;
        let mut tasks = Vec::new();
        let mut failures = Vec::new();
        for value in names_list(body, "tasks", None)? {
            let Resource::Task { cluster, id } = Arn::parse(&value, Kind::Task, &cluster)
                .map_err(|e| EcsError::invalid(format!("tasks: {e}")))?
            else {
                continue;
            };
            let task = self
                .ecs_read(caller, &cluster, |s| s.task(&cluster, &id).cloned())
                .await?;
            match task {
                Some(t) => tasks.push(task::describe(&t, names)),
                None => failures.push(missing(&names.task(&cluster, &id))),
            }
        }
        Ok(json!({"tasks": tasks, "failures": failures}))
    }

    pub(super) async fn ecs_list_tasks(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let r = task::list_request(body)?;
        let cluster = r.cluster.clone();
        let mut tasks: Vec<(String, String)> = self
            .ecs_read(caller, &cluster, |s| {
                s.tasks_in(&cluster)
                    .filter(|t| r.matches(t))
                    .map(|t| (task::list_key(t), t.task_id.clone()))
                    .collect()
            })
            .await?;
        tasks.sort();
        let (tasks, next) = page(tasks, |(k, _)| k.clone(), r.size, r.token.as_deref())?;
        let mut out = json!({
            "taskArns": tasks.iter().map(|(_, id)| names.task(&cluster, id)).collect::<Vec<_>>()
        });
        if let Some(next) = next {
            out["nextToken"] = json!(next);
        }
        Ok(out)
    }

    pub(super) async fn ecs_stop_task(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["cluster", "task", "reason"], &[], "")?;
        let cluster = cluster_of(request)?;
        let Resource::Task { cluster, id } =
            Arn::parse(&required(request, "task")?, Kind::Task, &cluster)
                .map_err(|e| EcsError::invalid(format!("task: {e}")))?
        else {
            return Err(EcsError::invalid("task: not a task"));
        };
        let req = pb::StopTaskRequest {
            namespace: cluster,
            task_id: id,
            reason: string(request, "reason")?.unwrap_or_default(),
        };
        let stopped = self
            .stop_task(caller, req)
            .await
            .map_err(ecs_error)?
            .into_inner();
        let stopped = berth_model::Task::try_from(stopped).map_err(unconverted)?;
        Ok(json!({"task": task::describe(&stopped, names)}))
    }
}

/// A `status` filter of task definitions: ACTIVE (the default), INACTIVE, or with `all`, ALL.
fn status_filter(
    request: &serde_json::Map<String, Value>,
    all: bool,
) -> Result<Option<TaskDefinitionStatus>, EcsError> {
    match string(request, "status")?.as_deref() {
        None | Some("ACTIVE") => Ok(Some(TaskDefinitionStatus::Active)),
        Some("INACTIVE") => Ok(Some(TaskDefinitionStatus::Inactive)),
        Some("ALL") if all => Ok(None),
        Some(other) => Err(EcsError::invalid(format!(
            "status: {other:?} is not ACTIVE{}",
            if all {
                ", INACTIVE or ALL"
            } else {
                " or INACTIVE"
            }
        ))),
    }
}
