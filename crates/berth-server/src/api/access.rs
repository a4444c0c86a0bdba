//! Tokens and namespaces: API tokens (their secret shown once, only its hash replicated),
//! join tokens (pinning the cluster CA by its fingerprint), namespaces and their quotas.

use berth_model::{ApiTokenRecord, JoinTokenRecord, Permission, Quota};
use berth_proto::v1 as pb;
use berth_state::{Command, CommandResult};
use berth_tls::{hash_secret, ApiToken, JoinToken};
use tonic::{Response, Status};

use super::{namespace, Answer, BerthService};
use crate::auth::Caller;
use crate::{now_ms, status};

/// An expiry `ttl_secs` from `now` (0: never).
fn expiry(now: u64, ttl_secs: u64) -> Option<u64> {
    (ttl_secs > 0).then(|| now.saturating_add(ttl_secs.saturating_mul(1000)))
}

/// A token's ID from the whole token or the ID alone.
fn token_id(text: &str, parse: impl Fn(&str) -> Option<String>) -> String {
    parse(text).unwrap_or_else(|| text.trim().to_owned())
}

fn tls_error(e: berth_tls::TlsError) -> Status {
    status::internal(format!(
        "generate a token: {}",
        berth_model::error_chain(&e)
    ))
}

fn api_record(r: CommandResult) -> Option<Box<ApiTokenRecord>> {
    match r {
        CommandResult::ApiToken(t) => Some(t),
        _ => None,
    }
}

fn join_record(r: CommandResult) -> Option<Box<JoinTokenRecord>> {
    match r {
        CommandResult::JoinToken(t) => Some(t),
        _ => None,
    }
}

impl BerthService {
    /// As an admin: proposes the command `make` builds for the time now, and answers the
    /// record it created or removed.
    async fn as_admin<R>(
        &self,
        caller: &Caller,
        make: impl FnOnce(u64) -> Result<Command, Status>,
        pick: fn(CommandResult) -> Option<Box<R>>,
    ) -> Result<R, Status> {
        let now = now_ms();
        caller.authorize(Permission::ManageCluster, None, now)?;
        let command = make(now)?;
        self.propose(caller, command, pick).await.map(|r| *r)
    }

    /// As an admin: the records `list` reads, as listed on the wire.
    async fn list_as_admin<T: Clone, W: From<T>>(
        &self,
        caller: &Caller,
        list: impl FnOnce(&berth_state::State) -> Vec<&T>,
    ) -> Result<Vec<W>, Status> {
        caller.authorize(Permission::ManageCluster, None, now_ms())?;
        self.read(false, |s| {
            list(s).into_iter().cloned().map(W::from).collect()
        })
        .await
    }

    pub(super) async fn create_token(
        &self,
        caller: &Caller,
        req: pb::CreateTokenRequest,
    ) -> Answer<pb::CreateTokenResponse> {
        let token = ApiToken::generate().map_err(tls_error)?;
        caller.authorize(Permission::ManageCluster, None, now_ms())?;
        // The secret of an `--aws` token is sealed under the active key; a rotation between
        // sealing and the write refuses it, and it is sealed again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let aws_secret = if req.aws {
                Some(self.secrets.seal_token(&token.id, &token.secret).await?)
            } else {
                None
            };
            match self
                .create_token_once(caller, &req, &token, aws_secret)
                .await
            {
                Err(e)
                    if attempt < 3
                        && e.code() == tonic::Code::Aborted
                        && e.message().contains("no longer the active key") => {}
                other => return other,
            }
        }
    }

    async fn create_token_once(
        &self,
        caller: &Caller,
        req: &pb::CreateTokenRequest,
        token: &ApiToken,
        aws_secret: Option<berth_model::SealedValue>,
    ) -> Answer<pb::CreateTokenResponse> {
        let make = |now| {
            let role = berth_proto::access_role("role", &req.role)
                .map_err(|e| status::invalid_request("", &e))?;
            let namespace = if role.is_cluster_wide() {
                berth_model::ALL_NAMESPACES.to_owned()
            } else {
                namespace(req.namespace.clone())?
            };
            let mut record = ApiTokenRecord::new(
                token.id.clone(),
                hash_secret(&token.secret),
                namespace,
                role,
                now,
                expiry(now, req.ttl_secs),
            );
            record.description = req.description.clone();
            record.aws_secret = aws_secret;
            Ok(Command::CreateApiToken { record, at: now })
        };
        let record = self.as_admin(caller, make, api_record).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(record.into()),
            secret_token: token.to_string(),
        }))
    }

    pub(super) async fn list_tokens(
        &self,
        caller: &Caller,
        _req: pb::ListTokensRequest,
    ) -> Answer<pb::ListTokensResponse> {
        let tokens = self.list_as_admin(caller, |s| s.api_tokens()).await?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    pub(super) async fn revoke_token(
        &self,
        caller: &Caller,
        req: pb::RevokeTokenRequest,
    ) -> Answer<pb::RevokeTokenResponse> {
        let id = token_id(&req.token, |t| ApiToken::parse(t).ok().map(|t| t.id));
        let make = |at| Ok(Command::RevokeApiToken { id, at });
        let record = self.as_admin(caller, make, api_record).await?;
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(record.into()),
        }))
    }

    pub(super) async fn create_join_token(
        &self,
        caller: &Caller,
        req: pb::CreateJoinTokenRequest,
    ) -> Answer<pb::CreateJoinTokenResponse> {
        let fingerprint = self.tls.ca().fingerprint().map_err(tls_error)?;
        let token = JoinToken::generate(&fingerprint).map_err(tls_error)?;
        let make = |now| {
            let role = berth_proto::node_role("role", &req.role)
                .map_err(|e| status::invalid_request("", &e))?;
            let record = JoinTokenRecord {
                id: token.id.clone(),
                secret_hash: hash_secret(&token.secret),
                role,
                created_at: now,
                expires_at: expiry(now, req.ttl_secs),
            };
            Ok(Command::CreateJoinToken { record, at: now })
        };
        let record = self.as_admin(caller, make, join_record).await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: Some(record.into()),
            secret_token: token.to_string(),
        }))
    }

    pub(super) async fn list_join_tokens(
        &self,
        caller: &Caller,
        _req: pb::ListJoinTokensRequest,
    ) -> Answer<pb::ListJoinTokensResponse> {
        let tokens = self.list_as_admin(caller, |s| s.join_tokens()).await?;
        Ok(Response::new(pb::ListJoinTokensResponse { tokens }))
    }

    pub(super) async fn revoke_join_token(
        &self,
        caller: &Caller,
        req: pb::RevokeJoinTokenRequest,
    ) -> Answer<pb::RevokeJoinTokenResponse> {
        let id = token_id(&req.token, |t| JoinToken::parse(t).ok().map(|t| t.id));
        let make = |at| Ok(Command::RevokeJoinToken { id, at });
        let record = self.as_admin(caller, make, join_record).await?;
        Ok(Response::new(pb::RevokeJoinTokenResponse {
            token: Some(record.into()),
        }))
    }

    /// As an admin: a namespace change; answers the namespace with its usage.
    async fn change_namespace(
        &self,
        caller: &Caller,
        name: String,
        make: impl FnOnce(String, u64) -> Command,
    ) -> Answer<pb::Namespace> {
        let name = namespace(name)?;
        let ns = self
            .as_admin(
                caller,
                |now| Ok(make(name, now)),
                |r| match r {
                    CommandResult::Namespace(n) => Some(n),
                    _ => None,
                },
            )
            .await?;
        let usage = self.store.read_stale(|s| s.namespace_usage(&ns.name));
        Ok(Response::new(berth_proto::namespace_to_wire(ns, usage)))
    }

    pub(super) async fn create_namespace(
        &self,
        caller: &Caller,
        req: pb::CreateNamespaceRequest,
    ) -> Answer<pb::Namespace> {
        let quota = req.quota.map(Quota::from).unwrap_or_default();
        self.change_namespace(caller, req.name, |name, at| Command::CreateNamespace {
            name,
            quota,
            at,
        })
        .await
    }

    pub(super) async fn update_namespace(
        &self,
        caller: &Caller,
        req: pb::UpdateNamespaceRequest,
    ) -> Answer<pb::Namespace> {
        let quota = req.quota.map(Quota::from).unwrap_or_default();
        self.change_namespace(caller, req.name, |name, at| Command::UpdateNamespace {
            name,
            quota,
            at,
        })
        .await
    }

    pub(super) async fn delete_namespace(
        &self,
        caller: &Caller,
        req: pb::DeleteNamespaceRequest,
    ) -> Answer<pb::Namespace> {
        self.change_namespace(caller, req.name, |name, at| Command::DeleteNamespace {
            name,
            at,
        })
        .await
    }

    /// Every namespace for an admin; a scoped token sees its own.
    pub(super) async fn list_namespaces(
        &self,
        caller: &Caller,
        _req: pb::ListNamespacesRequest,
    ) -> Answer<pb::ListNamespacesResponse> {
        let scope = caller.scope().map(str::to_owned);
        caller.authorize(Permission::Read, scope.as_deref(), now_ms())?;
        let namespaces = self
            .read(false, |s| {
                s.namespaces()
                    .into_iter()
                    .filter(|n| scope.as_deref().is_none_or(|ns| ns == n.name))
                    .map(|n| berth_proto::namespace_to_wire(n.clone(), s.namespace_usage(&n.name)))
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.name))]
    pub(super) async fn remove_node(
        &self,
        caller: &Caller,
        req: pb::RemoveNodeRequest,
    ) -> Answer<pb::RemoveNodeResponse> {
        // Its tasks are lost and its certificates revoked: its agent's stream ends, and it
        // can neither attach nor renew again (`agents`, `join`).
        let node = req.name;
        let make = |at| Ok(Command::RemoveNode { node, at });
        let done = |r| matches!(r, CommandResult::Done).then(|| Box::new(()));
        self.as_admin(caller, make, done).await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_and_token_ids() {
        assert_eq!(expiry(1_000, 0), None);
        assert_eq!(expiry(1_000, 60), Some(61_000));
        let api = ApiToken::generate().expect("token");
        let parse = |t: &str| ApiToken::parse(t).ok().map(|t| t.id);
        assert_eq!(token_id(&api.to_string(), parse), api.id);
        assert_eq!(token_id(" abc ", parse), "abc");
    }
}
