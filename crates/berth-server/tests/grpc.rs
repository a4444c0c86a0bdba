//! One in-process server on a free port: the standard gRPC health and reflection services
//! answer on the same address as the API, and API errors carry the right status codes.

use std::time::Duration;

use berth_proto::v1::berth_client::BerthClient;
use berth_proto::v1::{DescribeTaskRequest, RegisterTaskDefinitionRequest, RunTaskRequest};
use berth_server::{Server, ServerConfig};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test]
async fn health_reflection_and_status_codes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(ServerConfig::new(
        1,
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse()?,
    ))
    .await?;
    let url = format!("http://{}", server.address);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "berth.v1.Berth".into(),
        })
        .await?
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await?.and_then(|r| r.message_response)
    else {
        panic!("reflection did not list services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["berth.v1.Berth", "berth.v1.AgentService", "berth.v1.Raft"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let mut api = BerthClient::new(channel);
    // The single-member cluster may still be electing itself; writes wait for it.
    let err = api
        .register_task_definition(RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(berth_proto::v1::TaskDefinitionSpec {
                annotations: Default::default(),
                labels: Default::default(),
                family: "web".into(),
                cpu: 0,
                memory: 64,
                containers: vec![],
                placement: None,
            }),
            reuse_identical: false,
        })
        .await
        .expect_err("cpu 0 is invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("spec.cpu: 0 CPU units is out of range"),
        "{}",
        err.message()
    );
    // The field is named in a google.rpc.BadRequest detail too.
    {
        use tonic_types::StatusExt as _;
        let details = err.get_error_details();
        let violations = &details
            .bad_request()
            .expect("a BadRequest detail")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "spec.cpu");
        assert!(violations[0].description.contains("out of range"));
    }

    let err = api
        .run_task(RunTaskRequest {
            client_token: String::new(),
            namespace: String::new(),
            task_definition: "nope".into(),
            count: 1,
        })
        .await
        .expect_err("unknown family");
    assert_eq!(err.code(), Code::NotFound);

    let err = api
        .describe_task(DescribeTaskRequest {
            stale: false,
            namespace: String::new(),
            task_id: "missing".into(),
        })
        .await
        .expect_err("unknown task");
    assert_eq!(err.code(), Code::NotFound);

    let _ = stop.send(());
    serving.await??;
    Ok(())
}
