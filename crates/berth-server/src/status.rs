//! Errors to gRPC statuses: the only place in the server where that happens. Handlers say what
//! went wrong (a state machine [`Rejection`], a [`StoreError`], a model validation error, or one
//! of the kinds below) and this module picks the code.

use berth_proto::LEADER_HINT;
use berth_state::Rejection;
use berth_store::StoreError;
use tonic::Status;

pub fn from_store(e: StoreError) -> Status {
    match e {
        StoreError::NotLeader {
            leader_addr: Some(addr),
            ..
        } => {
            let mut status = Status::unavailable(format!(
                "this server is not the leader; the leader is at {addr}"
            ));
            if let Ok(v) = addr.parse() {
                status.metadata_mut().insert(LEADER_HINT, v);
            }
            status
        }
        StoreError::NotLeader {
            leader_addr: None, ..
        } => Status::unavailable("the cluster has no leader right now; retry shortly"),
        StoreError::NoQuorum(msg) => {
            Status::unavailable(format!("the cluster has no quorum: {msg}"))
        }
        StoreError::Membership(e) => Status::failed_precondition(e.to_string()),
        e => Status::internal(berth_store::error_chain(&e)),
    }
}

/// INVALID_ARGUMENT naming the offending field in a `google.rpc.BadRequest` detail, so that
/// clients can point at it; `prefix` places nested objects (`template.`).
pub fn invalid(prefix: &str, e: &berth_model::ValidationError) -> Status {
    use tonic_types::{ErrorDetails, StatusExt as _};
    let field = format!("{prefix}{}", e.field);
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: {}", e.message),
        ErrorDetails::with_bad_request_violation(field, e.message.clone()),
    )
}

/// A request that does not convert to the model: field violations when the error names one.
pub fn invalid_request(prefix: &str, e: &berth_proto::ConversionError) -> Status {
    match e {
        berth_proto::ConversionError::Invalid(v) => invalid(prefix, v),
        other => Status::invalid_argument(format!("{prefix}{other}")),
    }
}

/// A request that is wrong in a way no single model field explains.
pub fn bad_request(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

/// A required field of the request is missing.
pub fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}

/// The caller could not be identified (no, unknown or expired credentials).
pub fn unauthenticated(message: impl Into<String>) -> Status {
    Status::unauthenticated(message.into())
}

/// The caller is known but lacks a permission; the message says which.
pub fn denied(message: impl Into<String>) -> Status {
    Status::permission_denied(message.into())
}

pub fn not_found(message: impl Into<String>) -> Status {
    Status::not_found(message.into())
}

pub fn already_exists(message: impl Into<String>) -> Status {
    Status::already_exists(message.into())
}

/// The request is valid but the system is not in a state to carry it out.
pub fn precondition(message: impl Into<String>) -> Status {
    Status::failed_precondition(message.into())
}

/// Something this server needs (an agent, a peer) cannot be reached now; retrying may help.
pub fn unreachable(message: impl Into<String>) -> Status {
    Status::unavailable(message.into())
}

/// UNAVAILABLE with the leader's address in the `berth-leader` metadata, when known.
pub fn not_leader(leader_addr: Option<String>) -> Status {
    from_store(StoreError::NotLeader {
        leader_id: None,
        leader_addr,
    })
}

pub fn from_rejection(r: Rejection) -> Status {
    match r {
        Rejection::Invalid(msg) => Status::invalid_argument(msg),
        Rejection::NotFound(msg) => Status::not_found(msg),
        Rejection::Conflict(msg) => Status::aborted(msg),
        Rejection::QuotaExceeded(msg) => Status::resource_exhausted(msg),
    }
}

/// A call this server does not carry out yet; the message says what to do instead.
pub fn not_yet(message: impl Into<String>) -> Status {
    Status::unimplemented(message.into())
}

/// A failure of this server that the caller cannot fix (the system's random source, say).
pub fn internal(message: impl Into<String>) -> Status {
    Status::internal(message.into())
}

/// A state machine answer the proposer did not expect (`kind` names it): a bug.
pub fn unexpected(kind: &str) -> Status {
    Status::internal(format!("unexpected state machine answer {kind}"))
}
