//! ECS's API over berth's (`berth server --ecs-listen`): each call is authenticated by its AWS
//! Signature Version 4 against the secret of an `--aws` token, read with `berth_ecs`, carried
//! out by the same handlers (and checks, and audit lines) as the gRPC API, and answered as ECS
//! answers. A cluster is a namespace; task definitions live in the caller's namespace (an
//! admin's: `default`), as ECS's belong to the account rather than to a cluster.

mod clusters;
mod services;
mod tasks;

use berth_ecs::arn::Names;
use berth_ecs::protocol::{EcsError, ErrorType, Operation};
use berth_ecs::sigv4;
use berth_model::{Permission, DEFAULT_NAMESPACE};
use serde_json::Value;
use tonic::Status;

use super::BerthService;
use crate::auth::Caller;
use crate::now_ms;

/// One ECS request as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct EcsCall<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Every header; `host` included (for HTTP/2, from `:authority`).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// A gRPC handler's refusal as ECS's error: the same sentence, ECS's type.
fn ecs_error(status: Status) -> EcsError {
    use tonic::Code;
    let kind = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => ErrorType::InvalidParameter,
        Code::PermissionDenied => ErrorType::AccessDenied,
        Code::Unauthenticated => ErrorType::UnrecognizedClient,
        Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unimplemented => ErrorType::Client,
        _ => ErrorType::Server,
    };
    EcsError::new(kind, status.message())
}

/// A handler's answer that does not read back into the model: this server's fault.
fn unconverted(e: berth_proto::ConversionError) -> EcsError {
    EcsError::new(ErrorType::Server, e.to_string())
}

/// A list of names or ARNs of a describe call (`field`), at most 100 as ECS takes.
fn names_list(body: &Value, field: &str, default: Option<&str>) -> Result<Vec<String>, EcsError> {
    let request = berth_ecs::request::object(body, "the request body")?;
    let list = berth_ecs::request::strings(request, field)?;
    let list = match (list, default) {
        (Some(list), _) if !list.is_empty() => list,
        (_, Some(d)) => vec![d.to_owned()],
        _ => {
            return Err(EcsError::invalid(format!(
                "{field}: at least one is required"
            )))
        }
    };
    if list.len() > 100 {
        return Err(EcsError::invalid(format!(
            "{field}: {} given; at most 100 per call",
            list.len()
        )));
    }
    Ok(list)
}

/// A describe call's failure entry for `arn` (ECS's `MISSING`).
fn missing(arn: &str) -> Value {
    serde_json::json!({"arn": arn, "reason": "MISSING"})
}

impl BerthService {
    /// Carries out one ECS request for account `account`; an error is answered as ECS does.
    pub(crate) async fn ecs(&self, call: EcsCall<'_>, account: &str) -> Result<Value, EcsError> {
        if call.method != "POST" || call.path != "/" {
            return Err(EcsError::new(
                ErrorType::UnknownOperation,
                format!(
                    "{} {} is not an ECS call: ECS's API is POST / with X-Amz-Target",
                    call.method, call.path
                ),
            ));
        }
        let request = sigv4::Request {
            method: call.method,
            path: call.path,
            query: call.query,
            headers: call.headers,
            body: call.body,
        };
        let auth = request.authorization()?;
        let caller = self.ecs_caller(&request, &auth)?;
        let target = call
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-target"))
            .map(|(_, v)| *v)
            .unwrap_or_default();
        let op = Operation::from_target(target)?;
        let body: Value = if call.body.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(call.body).map_err(|e| {
                EcsError::new(
                    ErrorType::Client,
                    format!("the request body is not JSON: {e}"),
                )
            })?
        };
        let names = Names::new(auth.region.clone(), account);
        tracing::debug!(caller = %caller.who(), operation = %op, "ECS call");
        self.ecs_operation(&caller, op, &names, &body).await
    }

    /// The caller whose `--aws` token signed `request`.
    fn ecs_caller(
        &self,
        request: &sigv4::Request<'_>,
        auth: &sigv4::Authorization,
    ) -> Result<Caller, EcsError> {
        let unknown = || {
            tracing::warn!(target: "berth::audit", access_key = %auth.access_key_id, "refused: an ECS call with an unknown access key");
            EcsError::new(
                ErrorType::UnrecognizedClient,
                format!(
                    "The security token included in the request is invalid: access key {} is not one of this cluster's (`berth token create --aws` makes one)",
                    auth.access_key_id
                ),
            )
        };
        let id = berth_model::token_id_of_access_key(&auth.access_key_id).ok_or_else(unknown)?;
        let record = self
            .store
            .credentials()
            .api_token(&id)
            .cloned()
            .ok_or_else(unknown)?;
        let secret = match self.secrets.open_token(&record) {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                return Err(EcsError::new(
                    ErrorType::UnrecognizedClient,
                    format!(
                        "token {} was made without --aws: it has no AWS secret; make one with `berth token create --aws`",
                        record.id
                    ),
                ))
            }
            Err(e) => {
                return Err(EcsError::new(
                    ErrorType::Server,
                    format!("the token's secret cannot be opened here yet ({e}); retry"),
                ))
            }
        };
        let now = berth_store::wall_ms() / 1000;
        sigv4::verify(request, auth, &secret, now).map_err(|e| {
            tracing::warn!(target: "berth::audit", token = %record.id, "refused: an ECS call's signature: {e}");
            EcsError::from(e)
        })?;
        Ok(Caller::Token(record))
    }

    async fn ecs_operation(
        &self,
        caller: &Caller,
        op: Operation,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        use Operation as O;
        match op {
            O::RegisterTaskDefinition => self.ecs_register_task_definition(caller, names, body).await,
            O::DescribeTaskDefinition => self.ecs_describe_task_definition(caller, names, body).await,
            O::ListTaskDefinitions => self.ecs_list_task_definitions(caller, names, body).await,
            O::ListTaskDefinitionFamilies => self.ecs_list_families(caller, body).await,
            O::DeregisterTaskDefinition => {
                self.ecs_deregister_task_definition(caller, names, body).await
            }
            O::RunTask => self.ecs_run_task(caller, names, body).await,
            O::StartTask => Err(EcsError::invalid(
                "StartTask is not supported by berth: it places every task itself. Use RunTask, with placement constraints in the task definition to choose nodes",
            )),
            O::DescribeTasks => self.ecs_describe_tasks(caller, names, body).await,
            O::ListTasks => self.ecs_list_tasks(caller, names, body).await,
            O::StopTask => self.ecs_stop_task(caller, names, body).await,
            O::CreateService => self.ecs_create_service(caller, names, body).await,
            O::UpdateService => self.ecs_update_service(caller, names, body).await,
            O::DescribeServices => self.ecs_describe_services(caller, names, body).await,
            O::ListServices => self.ecs_list_services(caller, names, body).await,
            O::DeleteService => self.ecs_delete_service(caller, names, body).await,
            O::CreateCluster => self.ecs_create_cluster(caller, names, body).await,
            O::DeleteCluster => self.ecs_delete_cluster(caller, names, body).await,
            O::ListClusters => self.ecs_list_clusters(caller, names, body).await,
            O::DescribeClusters => self.ecs_describe_clusters(caller, names, body).await,
            O::ListContainerInstances => self.ecs_list_instances(caller, names, body).await,
            O::DescribeContainerInstances => {
                self.ecs_describe_instances(caller, names, body).await
            }
            O::TagResource => self.ecs_tag(caller, body, true).await,
            O::UntagResource => self.ecs_tag(caller, body, false).await,
            O::ListTagsForResource => self.ecs_list_tags(caller, body).await,
        }
    }

    /// The namespace task definitions of `caller` live in: a scoped token's, else `default`.
    fn ecs_definitions_namespace(caller: &Caller) -> String {
        caller.scope().unwrap_or(DEFAULT_NAMESPACE).to_owned()
    }

    /// Reads the state for `caller`, who must be allowed to read `namespace`.
    async fn ecs_read<R>(
        &self,
        caller: &Caller,
        namespace: &str,
        f: impl FnOnce(&berth_state::State) -> R,
    ) -> Result<R, EcsError> {
        caller
            .authorize(Permission::Read, Some(namespace), now_ms())
            .map_err(ecs_error)?;
        self.read(false, f).await.map_err(ecs_error)
    }
}
