//! Secrets: sealed by the server that receives them, opened only for the node that runs a task
//! referencing them. No call answers a value.

use berth_proto::v1 as pb;
use tonic::Status;

use super::{Answer, BerthService};
use crate::auth::Caller;

impl BerthService {
    pub(super) async fn put_secret(
        &self,
        _: &Caller,
        _: pb::PutSecretRequest,
    ) -> Answer<pb::SecretInfo> {
        Err(Status::unimplemented("secrets: work in progress"))
    }
    pub(super) async fn get_secret(
        &self,
        _: &Caller,
        _: pb::GetSecretRequest,
    ) -> Answer<pb::SecretInfo> {
        Err(Status::unimplemented("secrets: work in progress"))
    }
    pub(super) async fn list_secrets(
        &self,
        _: &Caller,
        _: pb::ListSecretsRequest,
    ) -> Answer<pb::ListSecretsResponse> {
        Err(Status::unimplemented("secrets: work in progress"))
    }
    pub(super) async fn delete_secret(
        &self,
        _: &Caller,
        _: pb::DeleteSecretRequest,
    ) -> Answer<pb::SecretInfo> {
        Err(Status::unimplemented("secrets: work in progress"))
    }
    pub(super) async fn rotate_secret_key(
        &self,
        _: &Caller,
        _: pb::RotateSecretKeyRequest,
    ) -> Answer<pb::RotateSecretKeyResponse> {
        Err(Status::unimplemented("secrets: work in progress"))
    }
    pub(super) async fn redeploy_service(
        &self,
        _: &Caller,
        _: pb::RedeployServiceRequest,
    ) -> Answer<pb::Service> {
        Err(Status::unimplemented("secrets: work in progress"))
    }
}
