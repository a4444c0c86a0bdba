//! Secrets: sealed by the server that receives them, opened only for the node that runs a task
//! referencing them. No call answers a value.

use berth_model::Permission;
use berth_proto::v1 as pb;
use berth_state::{CommandResult, ServiceChange};
use tonic::Response;

use super::{scoped, Answer, BerthService};
use crate::auth::Caller;
use crate::secrets::info;
use crate::{now_ms, status};

fn secret_of(r: CommandResult) -> Option<Box<berth_model::Secret>> {
    match r {
        CommandResult::Secret(s) => Some(s),
        _ => None,
    }
}

impl BerthService {
    #[tracing::instrument(skip_all, fields(secret = %req.name))]
    pub(super) async fn put_secret(
        &self,
        caller: &Caller,
        req: pb::PutSecretRequest,
    ) -> Answer<pb::SecretInfo> {
        let namespace = scoped(caller, req.namespace, Permission::Write)?;
        berth_model::validate_secret(&req.name, &req.data).map_err(|e| status::invalid("", &e))?;
        let expect = berth_proto::secret_precondition(req.precondition)
            .map_err(|e| status::invalid_request("", &e))?;
        let secret = self
            .secrets
            .put(&namespace, &req.name, &req.data, expect, |command| async {
                self.propose(caller, command, secret_of).await.map(|s| *s)
            })
            .await?;
        Ok(Response::new(info(&secret)))
    }

    pub(super) async fn get_secret(
        &self,
        caller: &Caller,
        req: pb::GetSecretRequest,
    ) -> Answer<pb::SecretInfo> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        let found = self
            .read(false, |s| s.secret(&namespace, &req.name).map(info))
            .await?;
        found.map(Response::new).ok_or_else(|| {
            status::not_found(format!(
                "secret {} not found in namespace {namespace}; `berth get secrets` lists them",
                req.name
            ))
        })
    }

    pub(super) async fn list_secrets(
        &self,
        caller: &Caller,
        req: pb::ListSecretsRequest,
    ) -> Answer<pb::ListSecretsResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        let secrets = self
            .read(false, |s| s.secrets(&namespace).map(info).collect())
            .await?;
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    #[tracing::instrument(skip_all, fields(secret = %req.name))]
    pub(super) async fn delete_secret(
        &self,
        caller: &Caller,
        req: pb::DeleteSecretRequest,
    ) -> Answer<pb::SecretInfo> {
        let namespace = scoped(caller, req.namespace, Permission::Write)?;
        let command = berth_state::Command::DeleteSecret {
            namespace,
            name: req.name,
            at: now_ms(),
        };
        let secret = self.propose(caller, command, secret_of).await?;
        Ok(Response::new(info(&secret)))
    }

    pub(super) async fn rotate_secret_key(
        &self,
        caller: &Caller,
        _req: pb::RotateSecretKeyRequest,
    ) -> Answer<pb::RotateSecretKeyResponse> {
        caller.authorize(Permission::ManageCluster, None, now_ms())?;
        let r = self.secrets.rotate().await?;
        tracing::info!(target: "berth::audit", caller = %caller.who(), key = %r.key_id, r.secrets, r.tokens, r.unreadable, "rotated the secrets key");
        Ok(Response::new(pb::RotateSecretKeyResponse {
            key_id: r.key_id,
            secrets: r.secrets,
            unreadable: r.unreadable,
            tokens: r.tokens,
        }))
    }

    pub(super) async fn redeploy_service(
        &self,
        caller: &Caller,
        req: pb::RedeployServiceRequest,
    ) -> Answer<pb::Service> {
        let change = ServiceChange::Redeploy {
            deployment_id: uuid::Uuid::new_v4().to_string(),
        };
        self.change_service(caller, req.namespace, req.name, change)
            .await
    }
}
