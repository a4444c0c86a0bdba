//! Conversion of errors to gRPC statuses: the only place where that happens.

use berth_store::{Rejection, StoreError};
use tonic::Status;

/// Metadata key carrying the leader's address on UNAVAILABLE answers from followers.
pub const LEADER_HINT: &str = "berth-leader";

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
        StoreError::Membership(msg) => Status::failed_precondition(msg),
        e @ (StoreError::Open { .. } | StoreError::Start(_) | StoreError::Fatal(_)) => {
            Status::internal(e.to_string())
        }
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

pub fn from_rejection(r: Rejection) -> Status {
    match r {
        Rejection::Invalid(msg) => Status::invalid_argument(msg),
        Rejection::NotFound(msg) => Status::not_found(msg),
        Rejection::Conflict(msg) => Status::aborted(msg),
    }
}
