//! One in-process server on a free port, over TLS: it bootstraps a cluster CA and writes the
//! first admin credentials; the standard gRPC health and reflection services answer on the
//! same address as the API; API calls need a token; API errors carry the right status codes.

use std::time::Duration;

use berth_proto::v1::berth_client::BerthClient;
use berth_proto::v1::raft_client::RaftClient;
use berth_proto::v1::{
    DescribeTaskRequest, ListTasksRequest, RaftPayload, RegisterTaskDefinitionRequest,
    RunTaskRequest,
};
use berth_server::{Server, ServerConfig};
use berth_tls::net::Dialer;
use berth_tls::tls::{client_config, Trust};
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
        Some(1),
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse()?,
    ))
    .await?;
    let address = server.address.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    // The bootstrap server writes the first admin credentials once it leads.
    let path = dir.path().join("admin.toml");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin.toml");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let credentials: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
    let ca = credentials["ca"].as_str().expect("ca").to_owned();
    let token = credentials["token"].as_str().expect("token").to_owned();
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
    }
    let trust = Trust::Ca(ca);
    let channel = Dialer::new(client_config(&trust, None)?)
        .connect(&address)
        .await?;

    // Without a token the API refuses, and says how to get one; the Raft transport takes only
    // server certificates.
    let err = BerthClient::new(channel.clone())
        .describe_task(DescribeTaskRequest {
            stale: false,
            namespace: String::new(),
            task_id: "x".into(),
        })
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = RaftClient::new(channel.clone())
        .vote(RaftPayload {
            json: b"{}".to_vec(),
            data: vec![],
        })
        .await
        .expect_err("not a server");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

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

    // v1alpha too (Python's grpcio-reflection, Postman and older grpcurl ask it only): the
    // services, and the descriptor of the API a client needs to call it.
    use tonic_reflection::pb::v1alpha as alpha;
    let requests = [
        alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        },
        alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "berth.v1.Berth".into(),
                ),
            ),
        },
    ];
    let mut responses =
        alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter(requests))
            .await?
            .into_inner();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await?.and_then(|r| r.message_response)
    else {
        panic!("v1alpha reflection did not list services");
    };
    let alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        alpha_names.iter().any(|n| n == "berth.v1.Berth"),
        "berth.v1.Berth missing from {alpha_names:?}"
    );
    let Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await?.and_then(|r| r.message_response)
    else {
        panic!("v1alpha reflection did not answer the API's file descriptor");
    };
    assert!(
        !files.file_descriptor_proto.is_empty(),
        "no descriptor for berth.v1.Berth"
    );

    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut api = BerthClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
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
                ephemeral_storage_gib: None,
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

    // A 3 MiB environment (two such tasks would exceed an agent stream's message limit) is
    // refused by the 64 KiB limit on a task definition, naming it; the server goes on.
    let big = berth_proto::v1::ContainerDefinition {
        name: "app".into(),
        image: "busybox".into(),
        essential: true,
        environment: [("BLOB".to_owned(), "x".repeat(3 << 20))].into(),
        ..Default::default()
    };
    let err = api
        .register_task_definition(RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(berth_proto::v1::TaskDefinitionSpec {
                family: "web".into(),
                cpu: 256,
                memory: 64,
                containers: vec![big],
                ..Default::default()
            }),
            reuse_identical: false,
        })
        .await
        .expect_err("3 MiB is too large");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("taskDefinition: 3145")
            && err.message().contains("at most 65536"),
        "{}",
        err.message()
    );

    let err = api
        .run_task(RunTaskRequest {
            client_token: String::new(),
            namespace: String::new(),
            task_definition: "nope".into(),
            count: 1,
            ..Default::default()
        })
        .await
        .expect_err("unknown family");
    assert_eq!(err.code(), Code::NotFound);

    let err = api
        .describe_task(DescribeTaskRequest {
            stale: false,
            namespace: String::new(),
            task_id: "0b6c9d4e-7f1a-4c2b-9e8d-5a3f2e1d0c9b".into(),
        })
        .await
        .expect_err("unknown task");
    assert_eq!(err.code(), Code::NotFound);
    // Task IDs are UUIDs: anything else is refused as such.
    let err = api
        .describe_task(DescribeTaskRequest {
            stale: false,
            namespace: String::new(),
            task_id: "missing".into(),
        })
        .await
        .expect_err("not a task ID");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("taskId: \"missing\" is not a task ID"),
        "{}",
        err.message()
    );

    // A stop reason of 120,000 characters is refused, naming the field and the limit.
    let err = api
        .stop_task(berth_proto::v1::StopTaskRequest {
            namespace: String::new(),
            task_id: "0b6c9d4e-7f1a-4c2b-9e8d-5a3f2e1d0c9b".into(),
            reason: "x".repeat(120_000),
        })
        .await
        .expect_err("too long a reason");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("reason: 120000 bytes is too long"),
        "{}",
        err.message()
    );

    // Paging through ListTasks: newest first, every task once, a token to go on with.
    api.register_task_definition(RegisterTaskDefinitionRequest {
        namespace: String::new(),
        spec: Some(berth_proto::v1::TaskDefinitionSpec {
            family: "pager".into(),
            cpu: 256,
            memory: 64,
            containers: vec![berth_proto::v1::ContainerDefinition {
                name: "app".into(),
                image: "busybox".into(),
                essential: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        reuse_identical: false,
    })
    .await?;
    let mut created = Vec::new();
    for _ in 0..3 {
        // Three calls of two: a later call's tasks are newer.
        let run = api
            .run_task(RunTaskRequest {
                client_token: String::new(),
                namespace: String::new(),
                task_definition: "pager".into(),
                count: 2,
                ..Default::default()
            })
            .await?
            .into_inner();
        created.push(run.tasks.into_iter().map(|t| t.task_id).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = api
            .list_tasks(ListTasksRequest {
                limit: 4,
                continue_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        assert!(
            page.tasks.len() <= 4,
            "{} tasks in a page of 4",
            page.tasks.len()
        );
        listed.extend(page.tasks.into_iter().map(|t| t.task_id));
        if page.continue_token.is_empty() {
            assert_eq!(page.remaining, 0);
            break;
        }
        assert_eq!(page.remaining, 2, "6 tasks, 4 on the first page");
        token = page.continue_token;
    }
    assert_eq!(pages, 2);
    assert_eq!(listed.len(), 6, "{listed:?}");
    let position = |id: &String| listed.iter().position(|l| l == id).expect("listed");
    // The newest call's tasks come before the oldest's.
    assert!(created[2].iter().map(position).max() < created[0].iter().map(position).min());
    let err = api
        .list_tasks(ListTasksRequest {
            continue_token: "page-2".into(),
            ..Default::default()
        })
        .await
        .expect_err("a token this API did not give");
    assert_eq!(err.code(), Code::InvalidArgument);

    let _ = stop.send(());
    serving.await??;
    Ok(())
}
