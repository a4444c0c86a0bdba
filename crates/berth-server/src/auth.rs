//! Who calls, and what they may do. Every connection is mutual TLS where the client presents a
//! certificate (servers, agents, administrators) or none (token users); a call is
//! authenticated by its bearer token when it carries one (the token alone then decides), else
//! by its certificate. Handlers ask [`Caller::authorize`] for the permission a call needs in
//! its namespace; refusals are logged (the audit log) and answered UNAUTHENTICATED or
//! PERMISSION_DENIED with a sentence saying what was missing.

use berth_model::{ApiTokenRecord, Denied, Permission, Timestamp};
use berth_state::Credentials;
use berth_tls::{ApiToken, Identity, Role};
use tonic::Request;

use crate::status;

/// A verified caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A client certificate from the cluster CA.
    Node(Identity),
    /// A bearer token that is known and whose secret matched.
    Token(ApiTokenRecord),
}

/// The identity the verified client certificate of `req` names, if any.
pub fn peer_identity<T>(req: &Request<T>) -> Option<Identity> {
    let certs = req.peer_certs()?;
    Identity::from_cert(certs.first()?.as_ref())
}

/// The bearer token of `req`, if it carries one (`authorization: Bearer berth_…`).
fn bearer<T>(req: &Request<T>) -> Result<Option<ApiToken>, tonic::Status> {
    let Some(value) = req.metadata().get("authorization") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            status::unauthenticated("the authorization header must be `Bearer <token>`")
        })?;
    ApiToken::parse(text)
        .map(Some)
        .map_err(|e| status::unauthenticated(e.to_string()))
}

/// Authenticates `req` against the replicated `tokens` (as published: a check never waits
/// for an entry being applied).
pub fn authenticate<T>(tokens: &Credentials, req: &Request<T>) -> Result<Caller, tonic::Status> {
    if let Some(token) = bearer(req)? {
        let hash = berth_tls::hash_secret(&token.secret);
        return match tokens.api_token(&token.id) {
            Some(record) if record.secret_matches(&hash) => Ok(Caller::Token(record.clone())),
            _ => Err(status::unauthenticated(format!(
                "token {} is not known (revoked, or from another cluster)",
                token.id
            ))),
        };
    }
    match peer_identity(req) {
        Some(identity) => Ok(Caller::Node(identity)),
        None => Err(status::unauthenticated(
            "no credentials: pass a token (--token, BERTH_TOKEN, or a credentials file written by the bootstrap server or `berth dev`)",
        )),
    }
}

impl Caller {
    /// Who, for the audit log and messages: `token ID (deployer of NS)`, `admin certificate NAME`.
    pub fn who(&self) -> String {
        match self {
            Caller::Node(id) => format!("{} certificate {}", id.role, id.name),
            Caller::Token(t) => format!("token {} ({} of {})", t.id, t.role, t.namespace),
        }
    }

    /// The namespace a scoped token is limited to (none for admins and certificates).
    pub fn scope(&self) -> Option<&str> {
        match self {
            Caller::Token(t) if !t.role.is_cluster_wide() => Some(&t.namespace),
            _ => None,
        }
    }

    /// Whether the caller is an ingress watching only what it routes by: services, tasks and
    /// task definitions (in every namespace). That is all an ingress certificate may do.
    pub fn may_watch_routes(&self, kinds: &[String]) -> bool {
        const ROUTES: [&str; 3] = ["task", "service", "taskdefinition"];
        matches!(self, Caller::Node(id) if id.role == Role::Ingress)
            && !kinds.is_empty()
            && kinds.iter().all(|k| ROUTES.contains(&k.as_str()))
    }

    /// Refused (and logged) unless the caller is an ingress, by its certificate: `what` (as
    /// "report traffic") is for ingresses only.
    pub fn ingress_only(&self, what: &str) -> Result<(), tonic::Status> {
        if matches!(self, Caller::Node(id) if id.role == Role::Ingress) {
            return Ok(());
        }
        let refused = status::denied(format!(
            "only ingresses (by their certificate) {what}; the caller is {}",
            self.who()
        ));
        tracing::warn!(
            target: "berth::audit",
            caller = %self.who(),
            "refused: {}",
            refused.message()
        );
        Err(refused)
    }

    /// Whether the caller may use `permission` in `namespace` (`None`: cluster-wide) at `now`.
    pub fn authorize(
        &self,
        permission: Permission,
        namespace: Option<&str>,
        now: Timestamp,
    ) -> Result<(), tonic::Status> {
        let refused = match self {
            Caller::Token(t) => match t.allows(permission, namespace, now) {
                Ok(()) => return Ok(()),
                Err(e @ Denied::Expired { .. }) => status::unauthenticated(e.to_string()),
                Err(e) => status::denied(e.to_string()),
            },
            Caller::Node(id) if id.role == Role::Admin => return Ok(()),
            Caller::Node(id) => status::denied(format!(
                "a {} certificate ({}) cannot use the API's {permission} permission ({}); use an admin token",
                id.role,
                id.name,
                permission.calls()
            )),
        };
        tracing::warn!(
            target: "berth::audit",
            caller = %self.who(),
            %permission,
            namespace = namespace.unwrap_or("*"),
            "refused: {}",
            refused.message()
        );
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use berth_model::AccessRole;

    use super::*;

    fn token(role: AccessRole, ns: &str) -> Caller {
        Caller::Token(ApiTokenRecord::new(
            "t1",
            "0".repeat(64),
            ns,
            role,
            0,
            Some(100),
        ))
    }

    #[test]
    fn callers_are_refused_with_the_right_code() {
        let viewer = token(AccessRole::Viewer, "a");
        assert!(viewer.authorize(Permission::Read, Some("a"), 1).is_ok());
        let denied = viewer
            .authorize(Permission::Write, Some("a"), 1)
            .expect_err("viewer");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let expired = viewer
            .authorize(Permission::Read, Some("a"), 100)
            .expect_err("expired");
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        let agent = Caller::Node(Identity::new(Role::Agent, "n1"));
        let denied = agent
            .authorize(Permission::Read, Some("a"), 1)
            .expect_err("agent");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        // An ingress watches what it routes by (`Caller::may_watch_routes`), nothing else.
        let ingress = Caller::Node(Identity::new(Role::Ingress, "edge-1"));
        for permission in [Permission::Read, Permission::Write] {
            let denied = ingress
                .authorize(permission, Some("a"), 1)
                .expect_err("an ingress reads and writes nothing through the API");
            assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        }
        let kinds = |k: &[&str]| k.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        assert!(ingress.may_watch_routes(&kinds(&["task", "service", "taskdefinition"])));
        assert!(!ingress.may_watch_routes(&kinds(&["task", "node"])));
        assert!(!ingress.may_watch_routes(&[]), "no kinds: every kind");
        assert!(!viewer.may_watch_routes(&kinds(&["task"])));
        let admin = Caller::Node(Identity::new(Role::Admin, "alice"));
        assert!(admin.authorize(Permission::ManageCluster, None, 1).is_ok());
        assert_eq!(viewer.scope(), Some("a"));
        assert_eq!(token(AccessRole::Admin, "x").scope(), None);
    }
}
