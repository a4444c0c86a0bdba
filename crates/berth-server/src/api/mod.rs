//! The public `berth.v1.Berth` service. This module holds what every handler shares (reads,
//! proposals, request checks); the handlers live with their object: [`task_definitions`],
//! [`tasks`], [`services`], [`nodes`], [`cluster`]. The `Berth` impl only routes.

mod cluster;
mod nodes;
mod services;
mod task_definitions;
mod tasks;

use std::pin::Pin;

use berth_model::{TaskDefinition, TaskDefinitionRef, DEFAULT_NAMESPACE};
use berth_proto::v1::berth_server::{Berth, BerthServer};
use berth_proto::v1::{self as pb, LogChunk};
use berth_state::{Command, CommandResult, State};
use berth_store::Store;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::{status, Usage};

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

    /// Reads the state: linearizable, or this server's own state when `stale`.
    async fn read<R>(&self, stale: bool, f: impl FnOnce(&State) -> R) -> Result<R, Status> {
        if stale {
            return Ok(self.store.read_stale(f));
        }
        self.store.read(f).await.map_err(status::from_store)
    }

    /// Proposes `command` and picks the answer out of its result with `expect`; a rejection
    /// becomes the matching status, any other answer an internal error.
    async fn propose<T>(
        &self,
        command: Command,
        expect: impl FnOnce(CommandResult) -> Option<T>,
    ) -> Result<T, Status> {
        let result = self
            .store
            .propose(command)
            .await
            .map_err(status::from_store)?;
        if let CommandResult::Rejected(r) = result {
            return Err(status::from_rejection(r));
        }
        let kind = result.kind();
        expect(result).ok_or_else(|| status::unexpected(kind))
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
                status::not_found(format!(
                    "task definition {reference} not found in namespace {namespace}; register it with `berth apply -f`"
                ))
            })
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

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;
type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Berth for BerthService {
    async fn register_task_definition(
        &self,
        req: Request<pb::RegisterTaskDefinitionRequest>,
    ) -> Answer<pb::RegisterTaskDefinitionResponse> {
        self.register_task_definition(req.into_inner()).await
    }

    async fn list_task_definitions(
        &self,
        req: Request<pb::ListTaskDefinitionsRequest>,
    ) -> Answer<pb::ListTaskDefinitionsResponse> {
        self.list_task_definitions(req.into_inner()).await
    }

    async fn describe_task_definition(
        &self,
        req: Request<pb::DescribeTaskDefinitionRequest>,
    ) -> Answer<pb::TaskDefinition> {
        self.describe_task_definition(req.into_inner()).await
    }

    async fn run_task(&self, req: Request<pb::RunTaskRequest>) -> Answer<pb::RunTaskResponse> {
        self.run_task(req.into_inner()).await
    }

    async fn stop_task(&self, req: Request<pb::StopTaskRequest>) -> Answer<pb::Task> {
        self.stop_task(req.into_inner()).await
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Answer<pb::ListTasksResponse> {
        self.list_tasks(req.into_inner()).await
    }

    async fn describe_task(&self, req: Request<pb::DescribeTaskRequest>) -> Answer<pb::Task> {
        self.describe_task(req.into_inner()).await
    }

    async fn exec_task(&self, req: Request<pb::ExecTaskRequest>) -> Answer<pb::ExecResult> {
        self.exec_task(req.into_inner()).await
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(&self, req: Request<pb::TaskLogsRequest>) -> Answer<LogStream> {
        self.task_logs(req.into_inner()).await
    }

    async fn apply_service(
        &self,
        req: Request<pb::ApplyServiceRequest>,
    ) -> Answer<pb::ApplyServiceResponse> {
        self.apply_service(req.into_inner()).await
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Answer<pb::ListServicesResponse> {
        self.list_services(req.into_inner()).await
    }

    async fn describe_service(
        &self,
        req: Request<pb::DescribeServiceRequest>,
    ) -> Answer<pb::Service> {
        self.describe_service(req.into_inner()).await
    }

    async fn scale_service(&self, req: Request<pb::ScaleServiceRequest>) -> Answer<pb::Service> {
        let req = req.into_inner();
        let change = berth_state::ServiceChange::Scale(req.desired_count);
        self.change_service(req.namespace, req.name, change).await
    }

    async fn delete_service(&self, req: Request<pb::DeleteServiceRequest>) -> Answer<pb::Service> {
        let req = req.into_inner();
        let change = berth_state::ServiceChange::Delete;
        self.change_service(req.namespace, req.name, change).await
    }

    async fn promote_service(
        &self,
        req: Request<pb::PromoteServiceRequest>,
    ) -> Answer<pb::Service> {
        let req = req.into_inner();
        let change = berth_state::ServiceChange::Promote;
        self.change_service(req.namespace, req.name, change).await
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Answer<pb::ListNodesResponse> {
        self.list_nodes(req.into_inner()).await
    }

    async fn update_node_status(
        &self,
        req: Request<pb::UpdateNodeStatusRequest>,
    ) -> Answer<pb::Node> {
        self.update_node_status(req.into_inner()).await
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Answer<pb::ClusterStatusResponse> {
        Ok(Response::new(self.cluster_status()))
    }

    async fn add_server(
        &self,
        req: Request<pb::AddServerRequest>,
    ) -> Answer<pb::AddServerResponse> {
        self.add_server(req.into_inner()).await
    }

    async fn remove_server(
        &self,
        req: Request<pb::RemoveServerRequest>,
    ) -> Answer<pb::RemoveServerResponse> {
        self.remove_server(req.into_inner()).await
    }

    type WatchStream = crate::watch::WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Answer<Self::WatchStream> {
        self.watch(req.into_inner())
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        _req: Request<pb::SaveSnapshotRequest>,
    ) -> Answer<SnapshotStream> {
        self.save_snapshot().await
    }
}
