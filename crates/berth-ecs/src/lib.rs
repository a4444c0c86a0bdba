//! The ECS dialect of berth's API, as pure functions: AWS Signature Version 4 checked against
//! an access key's secret (`sigv4`), ECS's resource names for berth's objects (`arn`: a
//! cluster is a namespace, a container instance a node), and the `awsJson1_1` protocol's
//! operations and error answers (`protocol`), and ECS task definitions read into berth's and
//! written back (`taskdef`). Not served yet: the server's ECS
//! endpoint (`--ecs-listen`, issue #21) will carry requests to these.

pub mod arn;
pub mod cluster;
pub mod protocol;
pub mod request;
pub mod service;
pub mod sigv4;
pub mod task;
pub mod taskdef;
