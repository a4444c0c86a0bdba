//! ECS's cluster (namespace), container instance (node) and tag-listing calls.

use berth_ecs::arn::{Arn, Kind, Names, Resource};
use berth_ecs::cluster::{self, Counts, NodeTasks};
use berth_ecs::protocol::{EcsError, ErrorType};
use berth_ecs::request::{object, only, required, string, tag_list};
use berth_ecs::task::cluster_of;
use berth_model::{NodeStatus, ServiceStatus, TaskStatus, DEFAULT_NAMESPACE};
use berth_proto::v1 as pb;
use berth_state::State;
use serde_json::{json, Value};

use super::tasks::arn_page;
use super::{ecs_error, missing, names_list, BerthService};
use crate::auth::Caller;

/// What a cluster's description counts, from the state.
fn counts(s: &State, namespace: &str) -> Counts {
    let mut c = Counts {
        container_instances: s
            .nodes_with_allocation()
            .iter()
            .filter(|n| n.status != NodeStatus::Down)
            .count(),
        active_services: s
            .services()
            .filter(|svc| svc.namespace == namespace && svc.status == ServiceStatus::Active)
            .count(),
        ..Counts::default()
    };
    for t in s.tasks_in(namespace) {
        match t.last_status {
            TaskStatus::Running => c.running_tasks += 1,
            TaskStatus::Stopped => {}
            _ if t.desired_status == berth_model::DesiredStatus::Running => c.pending_tasks += 1,
            _ => {}
        }
    }
    c
}

/// Lists that mean capacity providers or settings: accepted when empty.
const IGNORED_CLUSTER_FIELDS: &[&str] = &["settings", "configuration", "serviceConnectDefaults"];

impl BerthService {
    /// Reads nodes for `caller`, who must be allowed to read across namespaces, as `ListNodes`
    /// asks: nodes serve every namespace, so what they hold is no one namespace's to read.
    async fn ecs_read_nodes<R>(
        &self,
        caller: &Caller,
        f: impl FnOnce(&State) -> R,
    ) -> Result<R, EcsError> {
        caller
            .authorize(berth_model::Permission::Read, None, crate::now_ms())
            .map_err(ecs_error)?;
        self.read(false, f).await.map_err(ecs_error)
    }

    pub(super) async fn ecs_create_cluster(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        let mut refused = Vec::new();
        for field in [
            "tags",
            "capacityProviders",
            "defaultCapacityProviderStrategy",
        ] {
            if request
                .get(field)
                .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
            {
                refused.push(field.to_owned());
            }
        }
        berth_ecs::request::refuse_unsupported(refused)?;
        only(
            request,
            &[
                "clusterName",
                "tags",
                "capacityProviders",
                "defaultCapacityProviderStrategy",
            ],
            IGNORED_CLUSTER_FIELDS,
            "",
        )?;
        let name = string(request, "clusterName")?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let req = pb::CreateNamespaceRequest {
            name: name.clone(),
            quota: None,
        };
        match self.create_namespace(caller, req).await {
            Ok(_) => {}
            // ECS answers the cluster that exists.
            Err(s) if s.code() == tonic::Code::Aborted => {}
            Err(s) => return Err(ecs_error(s)),
        }
        let counts = self.ecs_read(caller, &name, |s| counts(s, &name)).await?;
        Ok(json!({"cluster": cluster::describe(&name, counts, names)}))
    }

    pub(super) async fn ecs_delete_cluster(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["cluster"], &[], "")?;
        let name = match Arn::parse(&required(request, "cluster")?, Kind::Cluster, "")
            .map_err(|e| EcsError::invalid(format!("cluster: {e}")))?
        {
            Resource::Cluster { name } => name,
            _ => return Err(EcsError::invalid("cluster: not a cluster")),
        };
        self.delete_namespace(caller, pb::DeleteNamespaceRequest { name: name.clone() })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => {
                    EcsError::new(ErrorType::ClusterNotFound, s.message().to_owned())
                }
                _ => ecs_error(s),
            })?;
        let mut out = cluster::describe(&name, Counts::default(), names);
        out["status"] = json!("INACTIVE");
        Ok(json!({ "cluster": out }))
    }

    pub(super) async fn ecs_list_clusters(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["maxResults", "nextToken"], &[], "")?;
        let listed = self
            .list_namespaces(caller, pb::ListNamespacesRequest {})
            .await
            .map_err(ecs_error)?
            .into_inner();
        let list: Vec<String> = listed.namespaces.into_iter().map(|n| n.name).collect();
        arn_page(
            list,
            String::clone,
            |n| names.cluster(n),
            request,
            (100, false),
            "clusterArns",
        )
    }

    pub(super) async fn ecs_describe_clusters(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["clusters", "include"], &[], "")?;
        let mut clusters = Vec::new();
        let mut failures = Vec::new();
        for value in names_list(body, "clusters", Some(DEFAULT_NAMESPACE))? {
            let name = match Arn::parse(&value, Kind::Cluster, "")
                .map_err(|e| EcsError::invalid(format!("clusters: {e}")))?
            {
                Resource::Cluster { name } => name,
                _ => continue,
            };
            let found = self
                .ecs_read(caller, &name, |s| {
                    s.namespace_exists(&name).then(|| counts(s, &name))
                })
                .await?;
            match found {
                Some(c) => clusters.push(cluster::describe(&name, c, names)),
                None => failures.push(missing(&names.cluster(&name))),
            }
        }
        Ok(json!({"clusters": clusters, "failures": failures}))
    }

    pub(super) async fn ecs_list_instances(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(
            request,
            &["cluster", "status", "maxResults", "nextToken"],
            &[],
            "",
        )?;
        let cluster = cluster_of(request)?;
        let status = match string(request, "status")?.as_deref() {
            None => None,
            Some("ACTIVE") => Some(NodeStatus::Active),
            Some("DRAINING") => Some(NodeStatus::Draining),
            Some(other) => {
                return Err(EcsError::invalid(format!(
                    "status: {other:?} is not ACTIVE or DRAINING"
                )))
            }
        };
        let nodes: Vec<String> = self
            .ecs_read_nodes(caller, |s| {
                s.nodes_with_allocation()
                    .into_iter()
                    .filter(|n| {
                        n.status != NodeStatus::Down && status.is_none_or(|st| n.status == st)
                    })
                    .map(|n| n.name)
                    .collect()
            })
            .await?;
        arn_page(
            nodes,
            String::clone,
            |n| names.container_instance(&cluster, n),
            request,
            (100, false),
            "containerInstanceArns",
        )
    }

    pub(super) async fn ecs_describe_instances(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(
            request,
            &["cluster", "containerInstances", "include"],
            &[],
            "",
        )?;
        let cluster = cluster_of(request)?;
        let mut instances = Vec::new();
        let mut failures = Vec::new();
        for value in names_list(body, "containerInstances", None)? {
            let Resource::ContainerInstance { cluster, id } =
                Arn::parse(&value, Kind::ContainerInstance, &cluster)
                    .map_err(|e| EcsError::invalid(format!("containerInstances: {e}")))?
            else {
                continue;
            };
            let found = self
                .ecs_read_nodes(caller, |s| {
                    let node = s
                        .nodes_with_allocation()
                        .into_iter()
                        .find(|n| n.name == id)?;
                    let mut tasks = NodeTasks::default();
                    for t in s
                        .tasks_in(&cluster)
                        .filter(|t| t.node.as_deref() == Some(&id))
                    {
                        match t.last_status {
                            TaskStatus::Running => tasks.running += 1,
                            TaskStatus::Stopped => {}
                            _ => tasks.pending += 1,
                        }
                    }
                    Some((node, tasks))
                })
                .await?;
            match found {
                Some((node, tasks)) => {
                    instances.push(cluster::describe_instance(&node, tasks, &cluster, names))
                }
                None => failures.push(missing(&names.container_instance(&cluster, &id))),
            }
        }
        Ok(json!({"containerInstances": instances, "failures": failures}))
    }

    pub(super) async fn ecs_list_tags(
        &self,
        caller: &Caller,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["resourceArn"], &[], "")?;
        let arn = required(request, "resourceArn")?;
        let resource = [
            Kind::Task,
            Kind::Service,
            Kind::TaskDefinition,
            Kind::Cluster,
            Kind::ContainerInstance,
        ]
        .into_iter()
        .find_map(|kind| Arn::parse(&arn, kind, "").ok())
        .filter(|_| arn.starts_with("arn:"))
        .ok_or_else(|| {
            EcsError::invalid(format!(
                "resourceArn: {arn:?} is not the ARN of an ECS resource"
            ))
        })?;
        if let Resource::ContainerInstance { id, .. } = &resource {
            let known = self
                .ecs_read_nodes(caller, |s| s.node(id).is_some())
                .await?;
            if !known {
                return Err(EcsError::new(
                    ErrorType::Client,
                    format!("The specified resource could not be found: {arn}"),
                ));
            }
            return Ok(json!({ "tags": [] }));
        }
        let definitions = Self::ecs_definitions_namespace(caller);
        let (namespace, resource) = match resource {
            Resource::Task { ref cluster, .. }
            | Resource::Service { ref cluster, .. }
            | Resource::ContainerInstance { ref cluster, .. } => (cluster.clone(), resource),
            Resource::Cluster { ref name } => (name.clone(), resource),
            Resource::TaskDefinition { .. } => (definitions, resource),
        };
        let labels = self
            .ecs_read(caller, &namespace, |s| match &resource {
                Resource::Task { id, .. } => s.task(&namespace, id).map(|t| t.labels.clone()),
                Resource::Service { name, .. } => s
                    .service(&namespace, name)
                    .map(|svc| svc.meta.labels.clone()),
                Resource::TaskDefinition { family, revision } => s
                    .task_definition(
                        &namespace,
                        &berth_model::TaskDefinitionRef {
                            family: family.clone(),
                            revision: *revision,
                        },
                    )
                    .map(|d| d.meta.labels.clone()),
                Resource::Cluster { name } => s.namespace_exists(name).then(Default::default),
                Resource::ContainerInstance { id, .. } => s.node(id).map(|_| Default::default()),
            })
            .await?
            .ok_or_else(|| {
                EcsError::new(
                    ErrorType::Client,
                    format!("The specified resource could not be found: {arn}"),
                )
            })?;
        Ok(json!({ "tags": tag_list(&labels) }))
    }
}
