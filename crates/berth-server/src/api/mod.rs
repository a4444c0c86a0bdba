//! The public `berth.v1.Berth` service. This module holds what every handler shares
//! (authentication, reads, proposals, request checks); the handlers live with their object:
//! [`task_definitions`], [`tasks`], [`services`], [`nodes`], [`cluster`], [`access`] (tokens,
//! namespaces). The `Berth` impl authenticates each call and routes it; each handler asks for
//! the permission it needs in its namespace.

mod access;
mod ca;
mod cluster;
mod console;
mod ecs;
mod nodes;
mod secrets;
mod services;
mod task_definitions;
mod tasks;
mod usage;

use std::pin::Pin;
use std::sync::Arc;

use berth_model::{Permission, TaskDefinition, TaskDefinitionRef, DEFAULT_NAMESPACE};
use berth_proto::v1::berth_server::{Berth, BerthServer};
use berth_proto::v1::{self as pb, LogChunk};
use berth_state::{Command, CommandResult, State};
use berth_store::Store;
use berth_tls::net::Dialer;
use futures::Stream;
use tonic::{Request, Response, Status};

pub use console::routes as console_routes;
pub use ecs::EcsCall;

use crate::auth::{self, Caller};
use crate::tls::ServerTls;
use crate::{now_ms, status, Usage};

/// At most this many tasks per RunTask call.
pub const MAX_RUN_COUNT: u32 = 1000;

pub struct BerthService {
    store: Store,
    usage: Usage,
    tls: Arc<ServerTls>,
    /// Channels to agents (logs, exec): this server's certificate; only agents answer.
    dialer: Dialer,
    /// The life of certificates this server issues (itself included, on a CA rotation).
    cert_ttl: std::time::Duration,
    /// Sealing secrets, rotating their key.
    secrets: crate::secrets::Secrets,
}

impl BerthService {
    pub fn new(
        store: Store,
        usage: Usage,
        tls: Arc<ServerTls>,
        dialer: Dialer,
        cert_ttl: std::time::Duration,
        secrets: crate::secrets::Secrets,
    ) -> Self {
        Self {
            store,
            usage,
            tls,
            dialer,
            cert_ttl,
            secrets,
        }
    }

    /// The gRPC service of `this`.
    pub fn grpc(this: Arc<Self>) -> BerthServer<Self> {
        BerthServer::from_arc(this)
    }

    /// Reads the state: linearizable, or this server's own state when `stale`.
    async fn read<R>(&self, stale: bool, f: impl FnOnce(&State) -> R) -> Result<R, Status> {
        if stale {
            return Ok(self.store.read_stale(f));
        }
        self.store.read(f).await.map_err(status::from_store)
    }

    /// The tasks as published ([`Store::task_view`]): a read of them never waits for an entry
    /// being applied, nor holds the applier up.
    async fn tasks(&self, stale: bool) -> Result<std::sync::Arc<berth_state::TaskView>, Status> {
        self.store
            .task_view(stale)
            .await
            .map_err(status::from_store)
    }

    /// Who calls: its bearer token (checked against the replicated tokens) or its certificate.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        auth::authenticate(&self.store.credentials(), req)
    }

    /// Proposes `command` for `caller` and picks the answer out of its result with `expect`; a
    /// rejection becomes the matching status, any other answer an internal error. Every
    /// proposal is an audit line: who, what, and the result.
    async fn propose<T>(
        &self,
        caller: &Caller,
        command: Command,
        expect: impl FnOnce(CommandResult) -> Option<T>,
    ) -> Result<T, Status> {
        let subject = command.subject();
        let namespace = command.namespace().unwrap_or_default().to_owned();
        let result = self
            .store
            .propose(command)
            .await
            .map_err(status::from_store);
        let outcome = match &result {
            Ok(CommandResult::Rejected(r)) => format!("refused: {r}"),
            Ok(_) => "done".to_owned(),
            Err(e) => format!("failed: {}", e.message()),
        };
        tracing::info!(target: "berth::audit", caller = %caller.who(), %namespace, %subject, "{outcome}");
        let result = result?;
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

/// The request's namespace (`default` when empty), once the caller may use `permission` there.
fn scoped(caller: &Caller, ns: String, permission: Permission) -> Result<String, Status> {
    let ns = namespace(ns)?;
    caller.authorize(permission, Some(&ns), now_ms())?;
    Ok(ns)
}

fn selector(text: &str) -> Result<berth_model::LabelSelector, Status> {
    berth_model::LabelSelector::parse(text).map_err(|e| status::invalid("", &e))
}

fn namespace(ns: String) -> Result<String, Status> {
    if ns.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_owned());
    }
    // Names made before namespaces had to be DNS labels still name theirs; new ones are
    // DNS labels (`Namespace::validate`).
    berth_model::validate_name("namespace", &ns).map_err(|e| status::invalid("", &e))?;
    Ok(ns)
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;
type Answer<T> = Result<Response<T>, Status>;

/// One routed call: authenticate, then hand the caller and the message to the handler.
macro_rules! route {
    ($self:ident, $req:ident, $handler:ident) => {{
        let caller = $self.caller(&$req)?;
        $self.$handler(&caller, $req.into_inner()).await
    }};
}

#[tonic::async_trait]
impl Berth for BerthService {
    async fn register_task_definition(
        &self,
        req: Request<pb::RegisterTaskDefinitionRequest>,
    ) -> Answer<pb::RegisterTaskDefinitionResponse> {
        route!(self, req, register_task_definition)
    }

    async fn list_task_definitions(
        &self,
        req: Request<pb::ListTaskDefinitionsRequest>,
    ) -> Answer<pb::ListTaskDefinitionsResponse> {
        route!(self, req, list_task_definitions)
    }

    async fn describe_task_definition(
        &self,
        req: Request<pb::DescribeTaskDefinitionRequest>,
    ) -> Answer<pb::TaskDefinition> {
        route!(self, req, describe_task_definition)
    }

    async fn run_task(&self, req: Request<pb::RunTaskRequest>) -> Answer<pb::RunTaskResponse> {
        route!(self, req, run_task)
    }

    async fn stop_task(&self, req: Request<pb::StopTaskRequest>) -> Answer<pb::Task> {
        route!(self, req, stop_task)
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Answer<pb::ListTasksResponse> {
        route!(self, req, list_tasks)
    }

    async fn describe_task(&self, req: Request<pb::DescribeTaskRequest>) -> Answer<pb::Task> {
        route!(self, req, describe_task)
    }

    async fn exec_task(&self, req: Request<pb::ExecTaskRequest>) -> Answer<pb::ExecResult> {
        route!(self, req, exec_task)
    }

    async fn apply_service(
        &self,
        req: Request<pb::ApplyServiceRequest>,
    ) -> Answer<pb::ApplyServiceResponse> {
        route!(self, req, apply_service)
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Answer<pb::ListServicesResponse> {
        route!(self, req, list_services)
    }

    async fn describe_service(
        &self,
        req: Request<pb::DescribeServiceRequest>,
    ) -> Answer<pb::Service> {
        route!(self, req, describe_service)
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Answer<pb::ListNodesResponse> {
        route!(self, req, list_nodes)
    }

    async fn update_node_status(
        &self,
        req: Request<pb::UpdateNodeStatusRequest>,
    ) -> Answer<pb::Node> {
        route!(self, req, update_node_status)
    }

    async fn add_server(
        &self,
        req: Request<pb::AddServerRequest>,
    ) -> Answer<pb::AddServerResponse> {
        route!(self, req, add_server)
    }

    async fn remove_server(
        &self,
        req: Request<pb::RemoveServerRequest>,
    ) -> Answer<pb::RemoveServerResponse> {
        route!(self, req, remove_server)
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Answer<pb::CreateTokenResponse> {
        route!(self, req, create_token)
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Answer<pb::ListTokensResponse> {
        route!(self, req, list_tokens)
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Answer<pb::RevokeTokenResponse> {
        route!(self, req, revoke_token)
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Answer<pb::CreateJoinTokenResponse> {
        route!(self, req, create_join_token)
    }

    async fn list_join_tokens(
        &self,
        req: Request<pb::ListJoinTokensRequest>,
    ) -> Answer<pb::ListJoinTokensResponse> {
        route!(self, req, list_join_tokens)
    }

    async fn revoke_join_token(
        &self,
        req: Request<pb::RevokeJoinTokenRequest>,
    ) -> Answer<pb::RevokeJoinTokenResponse> {
        route!(self, req, revoke_join_token)
    }

    async fn get_ca(&self, req: Request<pb::GetCaRequest>) -> Answer<pb::CaStatus> {
        route!(self, req, get_ca)
    }

    async fn rotate_ca(&self, req: Request<pb::RotateCaRequest>) -> Answer<pb::CaStatus> {
        route!(self, req, rotate_ca)
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Answer<pb::Namespace> {
        route!(self, req, create_namespace)
    }

    async fn update_namespace(
        &self,
        req: Request<pb::UpdateNamespaceRequest>,
    ) -> Answer<pb::Namespace> {
        route!(self, req, update_namespace)
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::DeleteNamespaceRequest>,
    ) -> Answer<pb::Namespace> {
        route!(self, req, delete_namespace)
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Answer<pb::ListNamespacesResponse> {
        route!(self, req, list_namespaces)
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Answer<pb::RemoveNodeResponse> {
        route!(self, req, remove_node)
    }

    async fn deregister_task_definition(
        &self,
        req: Request<pb::DeregisterTaskDefinitionRequest>,
    ) -> Answer<pb::DeregisterTaskDefinitionResponse> {
        route!(self, req, deregister_task_definition)
    }

    async fn put_secret(&self, req: Request<pb::PutSecretRequest>) -> Answer<pb::SecretInfo> {
        route!(self, req, put_secret)
    }

    async fn get_secret(&self, req: Request<pb::GetSecretRequest>) -> Answer<pb::SecretInfo> {
        route!(self, req, get_secret)
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Answer<pb::ListSecretsResponse> {
        route!(self, req, list_secrets)
    }

    async fn delete_secret(&self, req: Request<pb::DeleteSecretRequest>) -> Answer<pb::SecretInfo> {
        route!(self, req, delete_secret)
    }

    async fn rotate_secret_key(
        &self,
        req: Request<pb::RotateSecretKeyRequest>,
    ) -> Answer<pb::RotateSecretKeyResponse> {
        route!(self, req, rotate_secret_key)
    }

    async fn redeploy_service(
        &self,
        req: Request<pb::RedeployServiceRequest>,
    ) -> Answer<pb::Service> {
        route!(self, req, redeploy_service)
    }

    async fn report_traffic(
        &self,
        req: Request<pb::TrafficReport>,
    ) -> Answer<pb::TrafficReportResponse> {
        route!(self, req, report_traffic)
    }

    async fn activate_service(
        &self,
        req: Request<pb::ActivateServiceRequest>,
    ) -> Answer<pb::Service> {
        route!(self, req, activate_service)
    }

    async fn get_usage(&self, req: Request<pb::GetUsageRequest>) -> Answer<pb::GetUsageResponse> {
        route!(self, req, get_usage)
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(&self, req: Request<pb::TaskLogsRequest>) -> Answer<LogStream> {
        route!(self, req, task_logs)
    }

    async fn scale_service(&self, req: Request<pb::ScaleServiceRequest>) -> Answer<pb::Service> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        let change = berth_state::ServiceChange::Scale(req.desired_count);
        self.change_service(&caller, req.namespace, req.name, change)
            .await
    }

    async fn delete_service(&self, req: Request<pb::DeleteServiceRequest>) -> Answer<pb::Service> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        let change = berth_state::ServiceChange::Delete;
        self.change_service(&caller, req.namespace, req.name, change)
            .await
    }

    async fn promote_service(
        &self,
        req: Request<pb::PromoteServiceRequest>,
    ) -> Answer<pb::Service> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        let change = berth_state::ServiceChange::Promote;
        self.change_service(&caller, req.namespace, req.name, change)
            .await
    }

    /// Any authenticated caller may read the cluster's status (members and their roles).
    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Answer<pb::ClusterStatusResponse> {
        self.caller(&req)?;
        Ok(Response::new(self.cluster_status()))
    }

    type WatchStream = crate::watch::WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Answer<Self::WatchStream> {
        let caller = self.caller(&req)?;
        self.watch(&caller, req.into_inner())
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(&self, req: Request<pb::SaveSnapshotRequest>) -> Answer<SnapshotStream> {
        let caller = self.caller(&req)?;
        self.save_snapshot(&caller).await
    }
}
