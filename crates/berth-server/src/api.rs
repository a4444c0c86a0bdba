//! The public `berth.v1.Berth` service.

use std::pin::Pin;

use berth_model::{StopCode, Task, TaskDefinition, TaskDefinitionRef, DEFAULT_NAMESPACE};
use berth_proto::v1::agent_api_client::AgentApiClient;
use berth_proto::v1::berth_server::{Berth, BerthServer};
use berth_proto::v1::{self as pb, LogChunk};
use berth_store::{ClusterStatus, Command, CommandResult, ServiceChange, State, Store};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::{now_ms, status, Usage};

/// At most this many tasks per RunTask call.
pub const MAX_RUN_COUNT: u32 = 1000;

pub struct BerthService {
    store: Store,
    usage: Usage,
}

impl BerthService {
    pub fn new(store: Store, usage: Usage) -> BerthServer<Self> {
        BerthServer::new(Self { store, usage })
    }

    /// The node a task was placed on.
    async fn task_node(&self, namespace: &str, task_id: &str) -> Result<berth_model::Node, Status> {
        let (task, node) = self
            .read(false, |s| {
                let task = s.task(namespace, task_id).cloned();
                let node = task
                    .as_ref()
                    .and_then(|t| t.node.as_deref())
                    .and_then(|n| s.node(n))
                    .cloned();
                (task, node)
            })
            .await?;
        let task = task.ok_or_else(|| {
            Status::not_found(format!("task {task_id} not found in namespace {namespace}"))
        })?;
        node.ok_or_else(|| {
            Status::failed_precondition(format!(
                "task {} has not been placed on a node yet",
                task.task_id
            ))
        })
    }

    /// Reads the state: linearizable, or this server's own state when `stale`.
    async fn read<R>(&self, stale: bool, f: impl FnOnce(&State) -> R) -> Result<R, Status> {
        if stale {
            return Ok(self.store.read_stale(f));
        }
        self.store.read(f).await.map_err(status::from_store)
    }

    /// Resolves `family` or `family:revision`.
    async fn task_definition(
        &self,
        namespace: &str,
        reference: &str,
        stale: bool,
    ) -> Result<TaskDefinition, Status> {
        let reference: TaskDefinitionRef = reference
            .parse()
            .map_err(|e: berth_model::ValidationError| status::invalid("", &e))?;
        self.read(stale, |s| s.task_definition(namespace, &reference).cloned())
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "task definition {reference} not found in namespace {namespace}; register it with `berth apply -f`"
                ))
            })
    }
}

impl BerthService {
    /// What applying `spec` would change, and where the tasks it would start would go.
    async fn dry_run_service(
        &self,
        namespace: &str,
        mut spec: berth_model::ServiceSpec,
        template: Option<berth_model::TaskDefinitionSpec>,
    ) -> Result<Response<pb::ApplyServiceResponse>, Status> {
        let name = spec.name.clone();
        let latest = self
            .read(false, |s| {
                s.task_definition(namespace, &spec.task_definition).cloned()
            })
            .await?;
        // The revision the service would run: an identical latest one, or a new one.
        let (revision, size) = match (&template, latest) {
            (Some(t), Some(d)) if d.matches(t) => (Some(d.reference()), (d.cpu, d.memory, d.placement)),
            (Some(t), _) => (None, (t.cpu, t.memory, t.placement.clone())),
            (None, Some(d)) => (Some(d.reference()), (d.cpu, d.memory, d.placement)),
            (None, None) => {
                return Err(Status::not_found(format!(
                    "task definition {} not found in namespace {namespace}; register it with `berth apply -f`",
                    spec.task_definition
                )))
            }
        };
        if let Some(r) = &revision {
            spec.task_definition = r.clone();
        }
        let placement = crate::services::merged_placement(&spec.placement, &size.2);
        let (service, plan) = self
            .read(false, |s| {
                let service = s.service(namespace, &name).cloned();
                let new_revision = service
                    .as_ref()
                    .is_none_or(|svc| revision.as_ref() != Some(&svc.task_definition));
                let desired = match (&service, &spec.autoscaling) {
                    (Some(svc), Some(a)) => a.clamp(svc.desired_count),
                    (None, Some(a)) => a.clamp(spec.desired_count),
                    (_, None) => spec.desired_count,
                };
                // A new revision starts `desired` tasks; otherwise only a scale-out does.
                let starts = if new_revision {
                    desired
                } else {
                    desired.saturating_sub(service.as_ref().map_or(0, |svc| svc.desired_count))
                };
                let group = format!("service:{name}");
                let plan = crate::scheduler::preview(s, &group, size.0, size.1, &placement, starts);
                (service, plan)
            })
            .await?;
        let (changed, deployment_started) = match &service {
            None => (true, true),
            Some(s) => {
                let new_revision = revision.as_ref() != Some(&s.task_definition);
                let changed = new_revision
                    || (s.autoscaling.is_none() && s.desired_count != spec.desired_count)
                    || s.deployment_configuration != spec.deployment_configuration
                    || s.placement != spec.placement
                    || s.autoscaling != spec.autoscaling;
                (changed, new_revision)
            }
        };
        let plan = plan
            .into_iter()
            .map(|d| match d {
                berth_scheduler::Decision::Place { node, .. } => pb::PlannedTask {
                    node,
                    reason: String::new(),
                },
                berth_scheduler::Decision::Unplaceable { reason, .. } => pb::PlannedTask {
                    node: String::new(),
                    reason,
                },
            })
            .collect();
        Ok(Response::new(pb::ApplyServiceResponse {
            created: service.is_none(),
            service: service.map(Into::into),
            changed,
            deployment_started,
            plan,
        }))
    }

    /// Registers an inline template as the next revision of family = the service's name, or
    /// answers the latest revision when it is identical.
    /// Registers the next revision of `spec.family` (with `reuse_identical`, answers the latest
    /// one when it is identical); `true` when a revision was created.
    async fn register(
        &self,
        namespace: String,
        spec: berth_model::TaskDefinitionSpec,
        reuse_identical: bool,
    ) -> Result<(TaskDefinition, bool), Status> {
        let command = Command::RegisterTaskDefinition {
            namespace,
            spec,
            reuse_identical,
            at: now_ms(),
        };
        match self
            .store
            .propose(command)
            .await
            .map_err(status::from_store)?
        {
            CommandResult::TaskDefinition {
                task_definition,
                created,
            } => Ok((task_definition, created)),
            other => Err(unexpected(other)),
        }
    }

    async fn change_service(
        &self,
        namespace: String,
        name: String,
        change: ServiceChange,
    ) -> Result<Response<pb::Service>, Status> {
        let namespace = self::namespace(namespace)?;
        let command = Command::UpdateService {
            namespace,
            name,
            change,
            at: now_ms(),
        };
        match self
            .store
            .propose(command)
            .await
            .map_err(status::from_store)?
        {
            CommandResult::Service { service, .. } => Ok(Response::new((*service).into())),
            other => Err(unexpected(other)),
        }
    }
}

fn selector(text: &str) -> Result<berth_model::LabelSelector, Status> {
    berth_model::LabelSelector::parse(text).map_err(|e| status::invalid("", &e))
}

fn namespace(ns: String) -> Result<String, Status> {
    if ns.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_owned());
    }
    berth_model::validate_name("namespace", &ns).map_err(|e| status::invalid("", &e))?;
    Ok(ns)
}

/// Refuses to add a server that is unreachable or already leads a cluster of its own (a server
/// started without `--join` or `--no-bootstrap` bootstraps one): its log would conflict.
async fn check_joinable(store: &Store, id: u64, address: &str) -> Result<(), Status> {
    let ours = store.cluster_status();
    let unreachable = |e: String| {
        Status::failed_precondition(format!(
            "cannot reach server {id} at {address} ({e}); start it first with `berth server --node-id {id} --no-bootstrap`"
        ))
    };
    let mut client = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        berth_proto::v1::berth_client::BerthClient::connect(format!("http://{address}")),
    )
    .await
    .map_err(|_| unreachable("timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let theirs = client
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map_err(|e| unreachable(e.message().to_owned()))?
        .into_inner();
    if theirs.id != id {
        return Err(Status::invalid_argument(format!(
            "the server at {address} has id {}, not {id}",
            theirs.id
        )));
    }
    let ours_ids: Vec<u64> = ours.members.iter().map(|m| m.id).collect();
    let foreign = theirs
        .members
        .iter()
        .any(|m| !ours_ids.contains(&m.id) && m.id != id)
        || (!theirs.members.is_empty() && !theirs.members.iter().any(|m| ours_ids.contains(&m.id)));
    if foreign {
        return Err(Status::failed_precondition(format!(
            "server {id} at {address} already belongs to another cluster; wipe its --data-dir and start it with --no-bootstrap (or --join)"
        )));
    }
    Ok(())
}

/// A client of the agent API of `node`.
async fn agent_client(
    node: &berth_model::Node,
) -> Result<AgentApiClient<tonic::transport::Channel>, Status> {
    AgentApiClient::connect(format!("http://{}", node.address))
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "node {} at {} is unreachable: {e}",
                node.name, node.address
            ))
        })
}

fn unexpected(result: CommandResult) -> Status {
    match result {
        CommandResult::Rejected(r) => status::from_rejection(r),
        other => Status::internal(format!("unexpected state machine answer {other:?}")),
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Berth for BerthService {
    async fn register_task_definition(
        &self,
        req: Request<pb::RegisterTaskDefinitionRequest>,
    ) -> Result<Response<pb::RegisterTaskDefinitionResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let spec: berth_model::TaskDefinitionSpec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?
            .try_into()
            .map_err(|e: berth_proto::ConversionError| status::invalid_request("spec.", &e))?;
        spec.validate().map_err(|e| status::invalid("spec.", &e))?;
        let (def, created) = self.register(namespace, spec, req.reuse_identical).await?;
        Ok(Response::new(pb::RegisterTaskDefinitionResponse {
            task_definition: Some(def.into()),
            created,
        }))
    }

    async fn list_task_definitions(
        &self,
        req: Request<pb::ListTaskDefinitionsRequest>,
    ) -> Result<Response<pb::ListTaskDefinitionsResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let selector = selector(&req.selector)?;
        let defs = self
            .read(req.stale, |s| {
                s.task_definitions(&namespace)
                    .filter(|d| req.family.is_empty() || d.family == req.family)
                    .filter(|d| selector.matches(&d.meta.labels))
                    .cloned()
                    .map(Into::into)
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListTaskDefinitionsResponse {
            task_definitions: defs,
        }))
    }

    async fn describe_task_definition(
        &self,
        req: Request<pb::DescribeTaskDefinitionRequest>,
    ) -> Result<Response<pb::TaskDefinition>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let def = self
            .task_definition(&namespace, &req.task_definition, req.stale)
            .await?;
        Ok(Response::new(def.into()))
    }

    async fn run_task(
        &self,
        req: Request<pb::RunTaskRequest>,
    ) -> Result<Response<pb::RunTaskResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let count = req.count.max(1);
        if count > MAX_RUN_COUNT {
            return Err(Status::invalid_argument(format!(
                "count {count} is too large; run at most {MAX_RUN_COUNT} tasks per call"
            )));
        }
        let def = self
            .task_definition(&namespace, &req.task_definition, false)
            .await?;
        let at = now_ms();
        let tasks = (0..count)
            .map(|_| Task::pending(uuid::Uuid::new_v4().to_string(), &namespace, &def, at))
            .collect();
        let client_token = (!req.client_token.is_empty()).then_some(req.client_token);
        match self
            .store
            .propose(Command::CreateTasks {
                tasks,
                client_token,
                at,
            })
            .await
            .map_err(status::from_store)?
        {
            CommandResult::Tasks(tasks) => Ok(Response::new(pb::RunTaskResponse {
                tasks: tasks.into_iter().map(Into::into).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn stop_task(
        &self,
        req: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let reason = if req.reason.is_empty() {
            "Task stopped by user".to_owned()
        } else {
            req.reason
        };
        let command = Command::StopTask {
            namespace,
            task_id: req.task_id,
            stop_code: StopCode::UserInitiated,
            reason,
            at: now_ms(),
        };
        match self
            .store
            .propose(command)
            .await
            .map_err(status::from_store)?
        {
            CommandResult::Task(task) => Ok(Response::new((*task).into())),
            other => Err(unexpected(other)),
        }
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let selector = selector(&req.selector)?;
        let mut tasks: Vec<Task> = self
            .read(req.stale, |s| {
                s.tasks()
                    .filter(|t| t.namespace == namespace && selector.matches(&t.labels))
                    .cloned()
                    .collect()
            })
            .await?;
        tasks.sort_by(|a, b| (a.created_at, &a.task_id).cmp(&(b.created_at, &b.task_id)));
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks
                .into_iter()
                .map(|t| self.usage.fill(t).into())
                .collect(),
        }))
    }

    async fn describe_task(
        &self,
        req: Request<pb::DescribeTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let task = self
            .read(req.stale, |s| s.task(&namespace, &req.task_id).cloned())
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "task {} not found in namespace {namespace}",
                    req.task_id
                ))
            })?;
        Ok(Response::new(self.usage.fill(task).into()))
    }

    async fn exec_task(
        &self,
        req: Request<pb::ExecTaskRequest>,
    ) -> Result<Response<pb::ExecResult>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let node = self.task_node(&namespace, &req.task_id).await?;
        let result = agent_client(&node)
            .await?
            .exec(pb::AgentExecRequest {
                task_id: req.task_id,
                container: req.container,
                command: req.command,
                timeout_secs: req.timeout_secs,
            })
            .await?;
        Ok(result)
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(
        &self,
        req: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let node = self.task_node(&namespace, &req.task_id).await?;
        let stream = agent_client(&node)
            .await?
            .logs(pb::AgentLogsRequest {
                task_id: req.task_id,
                follow: req.follow,
                container: req.container,
                tail: req.tail,
                since: req.since,
                timestamps: req.timestamps,
            })
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn apply_service(
        &self,
        req: Request<pb::ApplyServiceRequest>,
    ) -> Result<Response<pb::ApplyServiceResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let mut wire = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let name = wire.name.clone();
        if req.template.is_some() || wire.task_definition.is_empty() {
            // The family of an inline template is the service's name.
            wire.task_definition = name.clone();
        }
        let mut spec: berth_model::ServiceSpec = wire
            .try_into()
            .map_err(|e: berth_proto::ConversionError| status::invalid_request("spec.", &e))?;
        spec.validate().map_err(|e| status::invalid("spec.", &e))?;
        let template = match req.template {
            Some(t) => {
                let mut t: berth_model::TaskDefinitionSpec =
                    t.try_into().map_err(|e: berth_proto::ConversionError| {
                        status::invalid_request("template.", &e)
                    })?;
                t.family = name.clone();
                t.validate().map_err(|e| status::invalid("template.", &e))?;
                Some(t)
            }
            None => None,
        };
        if req.dry_run {
            return self.dry_run_service(&namespace, spec, template).await;
        }
        let def = match template {
            Some(t) => self.register(namespace.clone(), t, true).await?.0,
            None => {
                self.task_definition(&namespace, &spec.task_definition.to_string(), false)
                    .await?
            }
        };
        spec.task_definition = def.reference();
        let command = Command::ApplyService {
            namespace,
            spec: Box::new(spec),
            deployment_id: uuid::Uuid::new_v4().to_string(),
            at: now_ms(),
        };
        match self
            .store
            .propose(command)
            .await
            .map_err(status::from_store)?
        {
            CommandResult::Service {
                service,
                created,
                changed,
                deployment_started,
            } => Ok(Response::new(pb::ApplyServiceResponse {
                service: Some((*service).into()),
                created,
                changed,
                deployment_started,
                plan: Vec::new(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let usage = self.usage.clone();
        let now = now_ms();
        let selector = selector(&req.selector)?;
        let services = self
            .read(req.stale, |s| {
                s.services()
                    .filter(|svc| svc.namespace == namespace && selector.matches(&svc.meta.labels))
                    .map(|svc| {
                        let mut svc = svc.clone();
                        svc.metrics = crate::autoscaler::current_metrics(s, &svc, &usage, now);
                        svc.into()
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn describe_service(
        &self,
        req: Request<pb::DescribeServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let req = req.into_inner();
        let namespace = namespace(req.namespace)?;
        let usage = self.usage.clone();
        let now = now_ms();
        let service = self
            .read(req.stale, |s| {
                s.service(&namespace, &req.name).cloned().map(|mut svc| {
                    svc.metrics = crate::autoscaler::current_metrics(s, &svc, &usage, now);
                    svc
                })
            })
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "service {} not found in namespace {namespace}; `berth get services` lists them",
                    req.name
                ))
            })?;
        Ok(Response::new(service.into()))
    }

    async fn scale_service(
        &self,
        req: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let req = req.into_inner();
        self.change_service(
            req.namespace,
            req.name,
            ServiceChange::Scale(req.desired_count),
        )
        .await
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let req = req.into_inner();
        self.change_service(req.namespace, req.name, ServiceChange::Delete)
            .await
    }

    async fn promote_service(
        &self,
        req: Request<pb::PromoteServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let req = req.into_inner();
        self.change_service(req.namespace, req.name, ServiceChange::Promote)
            .await
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let req = req.into_inner();
        let selector = selector(&req.selector)?;
        let nodes = self
            .read(req.stale, |s| {
                s.nodes_with_allocation()
                    .into_iter()
                    .filter(|n| selector.matches(&n.attributes))
                    .map(Into::into)
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn update_node_status(
        &self,
        req: Request<pb::UpdateNodeStatusRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = req.into_inner();
        let status = match pb::NodeStatus::try_from(req.status) {
            Ok(pb::NodeStatus::Active) => berth_model::NodeStatus::Active,
            Ok(pb::NodeStatus::Draining) => berth_model::NodeStatus::Draining,
            _ => {
                return Err(Status::invalid_argument(
                    "status must be ACTIVE or DRAINING",
                ))
            }
        };
        let command = Command::SetNodeStatus {
            node: req.name.clone(),
            status,
            at: now_ms(),
        };
        match self
            .store
            .propose(command)
            .await
            .map_err(status::from_store)?
        {
            CommandResult::Done => {}
            other => return Err(unexpected(other)),
        }
        let node = self
            .read(false, |s| {
                s.node(&req.name).map(|n| s.node_with_allocation(n))
            })
            .await?
            .ok_or_else(|| Status::not_found(format!("node {} not found", req.name)))?;
        Ok(Response::new(node.into()))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let ClusterStatus {
            id,
            leader,
            term,
            commit_index,
            applied_index,
            snapshot_index,
            purged_index,
            members,
        } = self.store.cluster_status();
        Ok(Response::new(pb::ClusterStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            id,
            leader,
            term,
            commit_index,
            applied_index,
            snapshot_index,
            purged_index,
            members: members
                .into_iter()
                .map(|m| pb::ClusterMember {
                    id: m.id,
                    address: m.address,
                    role: m.role.as_str().to_owned(),
                    match_index: m.match_index,
                })
                .collect(),
        }))
    }

    async fn add_server(
        &self,
        req: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::AddServerResponse>, Status> {
        let req = req.into_inner();
        if req.id == 0 {
            return Err(Status::invalid_argument(
                "server id must be a positive integer",
            ));
        }
        if req.address.parse::<std::net::SocketAddr>().is_err() && !req.address.contains(':') {
            return Err(Status::invalid_argument(format!(
                "address {:?} is not host:port",
                req.address
            )));
        }
        if let Some(m) = self
            .store
            .cluster_status()
            .members
            .into_iter()
            .find(|m| m.id == req.id && m.address != req.address)
        {
            return Err(Status::already_exists(format!(
                "server {} is already a member at {}; remove it first with `berth cluster remove {}`",
                req.id, m.address, req.id
            )));
        }
        check_joinable(&self.store, req.id, &req.address).await?;
        self.store
            .add_member(req.id, req.address, !req.learner_only)
            .await
            .map_err(status::from_store)?;
        Ok(Response::new(pb::AddServerResponse {}))
    }

    async fn remove_server(
        &self,
        req: Request<pb::RemoveServerRequest>,
    ) -> Result<Response<pb::RemoveServerResponse>, Status> {
        self.store
            .remove_member(req.into_inner().id)
            .await
            .map_err(status::from_store)?;
        Ok(Response::new(pb::RemoveServerResponse {}))
    }

    type WatchStream = crate::watch::WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let namespace = if req.namespace.is_empty() {
            None
        } else {
            Some(namespace(req.namespace)?)
        };
        const KINDS: [&str; 4] = ["task", "service", "node", "taskdefinition"];
        if let Some(bad) = req.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(Status::invalid_argument(format!(
                "kinds: unknown kind {bad:?}; use {}",
                KINDS.join(", ")
            )));
        }
        let filter = crate::watch::Filter {
            namespace,
            kinds: req.kinds,
        };
        Ok(Response::new(crate::watch::watch(
            self.store.clone(),
            filter,
            req.from_revision,
        )))
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        _req: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let backup = self.store.backup().await.map_err(status::from_store)?;
        let chunks: Vec<Result<pb::SnapshotChunk, Status>> = backup
            .chunks(1 << 20)
            .map(|c| Ok(pb::SnapshotChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
