//! ECS's wire protocol, `awsJson1_1`, as the AWS SDKs speak it: every call is a `POST /` with
//! `X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>` and a JSON body of
//! `application/x-amz-json-1.1`; an error is an HTTP 400 (500 for the server's own faults)
//! whose body names its type in `__type` and says what went wrong in `message` (botocore
//! reads both, and the type from `x-amzn-ErrorType` too).

use std::fmt;

/// The prefix of every `X-Amz-Target` of ECS's API.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// The content type of requests and answers.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The operations berth answers, by their ECS names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    RegisterTaskDefinition,
    DescribeTaskDefinition,
    ListTaskDefinitions,
    ListTaskDefinitionFamilies,
    DeregisterTaskDefinition,
    RunTask,
    StartTask,
    DescribeTasks,
    ListTasks,
    StopTask,
    CreateService,
    UpdateService,
    DescribeServices,
    ListServices,
    DeleteService,
    CreateCluster,
    DeleteCluster,
    ListClusters,
    DescribeClusters,
    ListContainerInstances,
    DescribeContainerInstances,
    TagResource,
    UntagResource,
    ListTagsForResource,
}

impl Operation {
    const ALL: [Operation; 24] = [
        Operation::RegisterTaskDefinition,
        Operation::DescribeTaskDefinition,
        Operation::ListTaskDefinitions,
        Operation::ListTaskDefinitionFamilies,
        Operation::DeregisterTaskDefinition,
        Operation::RunTask,
        Operation::StartTask,
        Operation::DescribeTasks,
        Operation::ListTasks,
        Operation::StopTask,
        Operation::CreateService,
        Operation::UpdateService,
        Operation::DescribeServices,
        Operation::ListServices,
        Operation::DeleteService,
        Operation::CreateCluster,
        Operation::DeleteCluster,
        Operation::ListClusters,
        Operation::DescribeClusters,
        Operation::ListContainerInstances,
        Operation::DescribeContainerInstances,
        Operation::TagResource,
        Operation::UntagResource,
        Operation::ListTagsForResource,
    ];

    /// The operation an `X-Amz-Target` header names.
    pub fn from_target(target: &str) -> Result<Self, EcsError> {
        let name = target.strip_prefix(TARGET_PREFIX).ok_or_else(|| {
            EcsError::new(
                ErrorType::UnknownOperation,
                format!(
                    "X-Amz-Target {target:?} is not an operation of ECS's API ({TARGET_PREFIX}<Operation>)"
                ),
            )
        })?;
        Self::ALL
            .into_iter()
            .find(|op| op.to_string() == name)
            .ok_or_else(|| {
                EcsError::new(
                    ErrorType::UnknownOperation,
                    format!("{name} is not an ECS operation berth serves"),
                )
            })
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// ECS's error types berth answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// The request is wrong in a way the client must fix (ECS's catch-all).
    Client,
    /// A parameter is missing, malformed or not supported.
    InvalidParameter,
    /// The caller's token may not do this.
    AccessDenied,
    /// The access key is not one of this cluster's.
    UnrecognizedClient,
    /// The signature does not check (`sigv4::SigError`).
    InvalidSignature,
    IncompleteSignature,
    MissingAuthenticationToken,
    ClusterNotFound,
    ServiceNotFound,
    ServiceNotActive,
    UnknownOperation,
    /// The servers could not do it now (no quorum, no leader): retry.
    Server,
}

impl ErrorType {
    /// The type's name, the `__type` of the answer.
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Client => "ClientException",
            ErrorType::InvalidParameter => "InvalidParameterException",
            ErrorType::AccessDenied => "AccessDeniedException",
            ErrorType::UnrecognizedClient => "UnrecognizedClientException",
            ErrorType::InvalidSignature => "InvalidSignatureException",
            ErrorType::IncompleteSignature => "IncompleteSignatureException",
            ErrorType::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            ErrorType::ClusterNotFound => "ClusterNotFoundException",
            ErrorType::ServiceNotFound => "ServiceNotFoundException",
            ErrorType::ServiceNotActive => "ServiceNotActiveException",
            ErrorType::UnknownOperation => "UnknownOperationException",
            ErrorType::Server => "ServerException",
        }
    }

    /// The HTTP status AWS answers it with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorType::Server => 500,
            ErrorType::MissingAuthenticationToken => 403,
            _ => 400,
        }
    }
}

/// An error as ECS answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.name())]
pub struct EcsError {
    pub kind: ErrorType,
    pub message: String,
}

impl EcsError {
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A parameter berth cannot take, named.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidParameter, message)
    }

    /// The answer's body: `{"__type": …, "message": …}`.
    pub fn body(&self) -> String {
        serde_json::json!({"__type": self.kind.name(), "message": self.message}).to_string()
    }
}

impl From<crate::sigv4::SigError> for EcsError {
    fn from(e: crate::sigv4::SigError) -> Self {
        use crate::sigv4::SigError;
        let kind = match e {
            SigError::Missing => ErrorType::MissingAuthenticationToken,
            SigError::Malformed(_) => ErrorType::IncompleteSignature,
            SigError::Expired(_) | SigError::Mismatch => ErrorType::InvalidSignature,
        };
        Self::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_operations_and_anything_else_is_unknown() {
        assert_eq!(
            Operation::from_target("AmazonEC2ContainerServiceV20141113.RunTask"),
            Ok(Operation::RunTask)
        );
        for op in Operation::ALL {
            assert_eq!(
                Operation::from_target(&format!("{TARGET_PREFIX}{op}")),
                Ok(op)
            );
        }
        for bad in [
            "AmazonEC2ContainerServiceV20141113.CreateCapacityProvider",
            "DynamoDB_20120810.GetItem",
            "",
        ] {
            let e = Operation::from_target(bad).expect_err(bad);
            assert_eq!(e.kind.name(), "UnknownOperationException");
            assert_eq!(e.kind.http_status(), 400);
        }
    }

    #[test]
    fn an_error_body_is_what_botocore_reads() {
        let e = EcsError::invalid(
            "containerDefinitions[0].mountPoints: \"volumes\"\nare not supported",
        );
        assert_eq!(
            e.body(),
            r#"{"__type":"InvalidParameterException","message":"containerDefinitions[0].mountPoints: \"volumes\"\nare not supported"}"#
        );
        let sig: EcsError = crate::sigv4::SigError::Mismatch.into();
        assert_eq!(sig.kind, ErrorType::InvalidSignature);
        assert!(sig
            .body()
            .starts_with(r#"{"__type":"InvalidSignatureException","#));
    }
}
