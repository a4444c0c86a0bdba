//! Security end to end: what an attacker with network access, a stolen or foreign credential, or
//! a scoped token can and cannot do — forged Raft messages, fake agents, tokens and roles,
//! quotas, join tokens — and certificates renewed under running tasks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ok, stderr, stdout};
use berth_proto::v1::agent_message::Msg as AgentMsg;
use berth_proto::v1::agent_service_client::AgentServiceClient;
use berth_proto::v1::berth_client::BerthClient;
use berth_proto::v1::join_client::JoinClient;
use berth_proto::v1::raft_client::RaftClient;
use berth_proto::v1::server_message::Msg as ServerMsg;
use berth_proto::v1::{AgentMessage, JoinRequest, RaftPayload, Register};
use berth_tests::{
    berth_bin, cli, cli_command, cli_json, containerd_containers, join_token, poll,
    run_script_until_running, run_until_running, wait_stopped, AgentProc, Env, ServerProc,
};
use berth_tls::tls::{client_config, Credentials, Trust};
use berth_tls::{ClusterCa, Identity, NodeKey, Role};
use tonic::codegen::tokio_stream::{self, StreamExt as _};
use tonic::transport::Channel;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(30);

/// An image nothing can pull: tasks of it stay PENDING on a server without agents.
const NO_IMAGE: &str = "127.0.0.1:1/none:latest";

/// A one-member cluster in a scratch directory (no containerd: for tests that need no task
/// to run).
async fn lone_server() -> anyhow::Result<(tempfile::TempDir, ServerProc)> {
    let dir = tempfile::Builder::new()
        .prefix("berth-sec")
        .tempdir_in("/tmp")?;
    let server = ServerProc::start(&dir.path().join("server"), None).await?;
    Ok((dir, server))
}

/// The cluster CA certificate a server keeps in its data dir.
fn ca_pem(data_dir: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(data_dir.join("tls/ca.pem"))?)
}

/// A certificate for `role`/`name` issued with the CA files in a server's data dir (what
/// another server of the cluster holds; agents' certificates are also recorded when issued).
fn forge(data_dir: &Path, role: Role, name: &str) -> anyhow::Result<Arc<Credentials>> {
    let tls = data_dir.join("tls");
    let ca = ClusterCa::load(
        &std::fs::read_to_string(tls.join("ca.pem"))?,
        &std::fs::read_to_string(tls.join("ca-key.pem"))?,
    )?;
    let identity = Identity::new(role, name);
    let key = NodeKey::generate()?;
    let issued = ca.issue(
        &key.csr(&identity)?,
        &identity,
        &[],
        Duration::from_secs(3600),
    )?;
    Ok(Arc::new(Credentials::new(
        &issued.cert_pem,
        &key.pem(),
        ca.cert_pem(),
    )?))
}

/// The certificate an agent named `name` gets by joining the cluster of `addr` with a join
/// token (the cluster records it): what a real agent holds.
async fn join_as_agent(
    addr: &str,
    data_dir: &Path,
    name: &str,
) -> anyhow::Result<Arc<Credentials>> {
    let token = berth_tls::JoinToken::parse(&join_token(addr, "agent").await?)?;
    let identity = Identity::new(Role::Agent, name);
    let key = NodeKey::generate()?;
    let answer = JoinClient::new(channel(addr, data_dir, None).await?)
        .join(JoinRequest {
            token_id: token.id,
            secret: token.secret,
            role: "agent".into(),
            name: name.into(),
            csr: key.csr(&identity)?,
            addresses: vec!["127.0.0.1:1".into()],
        })
        .await?
        .into_inner();
    Ok(Arc::new(Credentials::new(
        &answer.certificate,
        &key.pem(),
        &answer.ca,
    )?))
}

/// A TLS channel to `addr` trusting the cluster CA of `data_dir`, presenting `certificate`
/// (none: a caller with nothing but network access).
async fn channel(
    addr: &str,
    data_dir: &Path,
    certificate: Option<Arc<Credentials>>,
) -> anyhow::Result<Channel> {
    let config = client_config(&Trust::Ca(ca_pem(data_dir)?), certificate)?;
    Ok(berth_tls::net::Dialer::new(config).connect(addr).await?)
}

/// Sends `authorization: Bearer TOKEN` when it has a token.
#[derive(Clone)]
struct WithToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

type TokenApi = BerthClient<tonic::service::interceptor::InterceptedService<Channel, WithToken>>;

/// The public API over TLS without a client certificate, with `token` (or none).
async fn token_api(addr: &str, data_dir: &Path, token: Option<&str>) -> anyhow::Result<TokenApi> {
    let value = token.map(|t| format!("Bearer {t}").parse()).transpose()?;
    Ok(BerthClient::with_interceptor(
        channel(addr, data_dir, None).await?,
        WithToken(value),
    ))
}

/// The CLI against `server` calling with `token` instead of the admin's.
async fn cli_as(server: &str, token: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(cli_command(server)
        .arg("--token")
        .arg(token)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?)
}

/// `berth token create -n NS --role ROLE`: the token, from the last line of stdout.
async fn api_token(server: &str, namespace: &str, role: &str) -> anyhow::Result<String> {
    let out = cli(
        server,
        &["token", "create", "-n", namespace, "--role", role],
    )
    .await?;
    anyhow::ensure!(out.status.success(), "token create: {}", stderr(&out));
    let token = stdout(&out)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    anyhow::ensure!(
        token.starts_with("berth_"),
        "no token printed: {}",
        stdout(&out)
    );
    Ok(token)
}

/// The ID part of an API token (`berth_ID_SECRET`).
fn token_id(token: &str) -> String {
    token.split('_').nth(1).unwrap_or_default().to_owned()
}

/// The IDs of the tasks `berth get tasks` lists in `namespace`.
async fn task_ids(server: &str, namespace: &str) -> anyhow::Result<Vec<String>> {
    let tasks = cli_json(server, &["get", "tasks", "-n", namespace]).await?;
    Ok(tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["taskId"].as_str().map(str::to_owned))
        .collect())
}

/// A Raft `Vote` request (openraft's JSON) from a candidate with a huge term: granted, it would
/// depose the leader.
fn vote_request(term: u64) -> RaftPayload {
    let json = serde_json::json!({
        "vote": {"leader_id": {"term": term, "node_id": 2}, "committed": false},
        "last_log_id": null,
    });
    RaftPayload {
        json: json.to_string().into_bytes(),
        data: vec![],
    }
}

/// A forwarded write (berth-store's `Write::Command`) replacing the whole state with nothing.
fn replace_state() -> RaftPayload {
    let json = serde_json::json!({"Command": {"ReplaceState": {"objects": [], "at": 0}}});
    RaftPayload {
        json: json.to_string().into_bytes(),
        data: vec![],
    }
}

fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: Code,
) -> tonic::Status {
    match result {
        Ok(v) => panic!("{what} was accepted: {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

#[tokio::test]
async fn forged_raft_messages_and_foreign_certificates_are_refused_and_change_nothing(
) -> anyhow::Result<()> {
    let (_dir, server) = lone_server().await?;
    let addr = server.addr.to_string();
    let data = &server.data_dir;
    // A task that stays PENDING (no agents), so that a wiped state would show.
    let created = ok(&addr, &["run", NO_IMAGE, "--", "true"]).await?;
    let task = created.trim().to_owned();
    let before = server.status().await?;
    assert_eq!(task_ids(&addr, "default").await?, vec![task.clone()]);

    // Nothing but network access: no client certificate.
    let mut anonymous = RaftClient::new(channel(&addr, data, None).await?);
    let refused = assert_refused(
        "an anonymous Vote",
        anonymous.vote(vote_request(999_999)).await,
        Code::PermissionDenied,
    );
    assert!(
        refused.message().contains("server certificates"),
        "{refused:?}"
    );
    assert_refused(
        "an anonymous Forward of ReplaceState",
        anonymous.forward(replace_state()).await,
        Code::PermissionDenied,
    );
    assert_refused(
        "an anonymous ReadIndex",
        anonymous
            .read_index(RaftPayload {
                json: b"null".to_vec(),
                data: vec![],
            })
            .await,
        Code::PermissionDenied,
    );

    // An agent's certificate of this very cluster is no server's: one issued from the CA files,
    // and one an agent got by joining.
    for (how, certificate) in [
        ("issued", forge(data, Role::Agent, "x")?),
        ("joined", join_as_agent(&addr, data, "y").await?),
    ] {
        let mut agent = RaftClient::new(channel(&addr, data, Some(certificate)).await?);
        assert_refused(
            &format!("an {how} agent certificate's Vote"),
            agent.vote(vote_request(999_999)).await,
            Code::PermissionDenied,
        );
        assert_refused(
            &format!("an {how} agent certificate's Forward"),
            agent.forward(replace_state()).await,
            Code::PermissionDenied,
        );
    }

    // A server certificate may forward writes, but never one only the leader may propose.
    let mut peer =
        RaftClient::new(channel(&addr, data, Some(forge(data, Role::Server, "2")?)).await?);
    let refused = assert_refused(
        "a server certificate forwarding ReplaceState",
        peer.forward(replace_state()).await,
        Code::PermissionDenied,
    );
    assert!(
        refused.message().contains("only be proposed by the leader"),
        "{refused:?}"
    );
    let batch = serde_json::json!({"Command": {"Batch": [
        {"MarkNodeDown": {"node": "node-1", "reason": "forged", "at": 0}},
        {"ReplaceState": {"objects": [], "at": 0}},
    ]}});
    assert_refused(
        "a server certificate forwarding a batch hiding ReplaceState",
        peer.forward(RaftPayload {
            json: batch.to_string().into_bytes(),
            data: vec![],
        })
        .await,
        Code::PermissionDenied,
    );

    // Nothing changed: same leader, same term, the task still there.
    let after = server.status().await?;
    assert_eq!(after["leader"], before["leader"], "{after}");
    assert_eq!(after["term"], before["term"], "{after}");
    assert_eq!(task_ids(&addr, "default").await?, vec![task.clone()]);
    let t = cli_json(&addr, &["get", "task", &task]).await?;
    assert_eq!(t["desiredStatus"], "RUNNING", "{t}");
    Ok(())
}

/// An `Attach` stream whose first message registers `name` at `address`; it stays open.
fn register(name: &str, address: &str, cpu: u64) -> impl tokio_stream::Stream<Item = AgentMessage> {
    let first = AgentMessage {
        msg: Some(AgentMsg::Register(Register {
            node_name: name.to_owned(),
            address: address.to_owned(),
            cpu,
            memory: 1024,
            attributes: Default::default(),
        })),
    };
    tokio_stream::iter([first]).chain(tokio_stream::pending())
}

#[tokio::test]
async fn fake_agents_cannot_attach_without_a_certificate_or_as_another_node() -> anyhow::Result<()>
{
    let (_dir, server) = lone_server().await?;
    let addr = server.addr.to_string();
    let data = &server.data_dir;

    // Node b, attached with the certificate it got by joining.
    let b_certificate = join_as_agent(&addr, data, "b").await?;
    let mut b = AgentServiceClient::new(channel(&addr, data, Some(b_certificate)).await?);
    let mut b_stream = b
        .attach(register("b", "127.0.0.1:1", 1024))
        .await?
        .into_inner();
    let first = tokio::time::timeout(TIMEOUT, b_stream.message()).await??;
    assert!(
        matches!(first.and_then(|m| m.msg), Some(ServerMsg::Registered(_))),
        "node b was not registered"
    );
    let nodes = cli_json(&addr, &["get", "nodes"]).await?;
    assert_eq!(nodes[0]["name"], "b", "{nodes}");
    assert_eq!(nodes[0]["address"], "127.0.0.1:1", "{nodes}");

    // Without a certificate: refused before anything is registered.
    let mut anonymous = AgentServiceClient::new(channel(&addr, data, None).await?);
    let refused = assert_refused(
        "an anonymous Attach",
        anonymous
            .attach(register("b", "10.6.6.6:1", 1_000_000_000))
            .await
            .map(|_| ()),
        Code::Unauthenticated,
    );
    assert!(
        refused.message().contains("agent certificates"),
        "{refused:?}"
    );

    // Node a, joined with a token of its own, registering as b to hijack b's exec traffic.
    let a_certificate = join_as_agent(&addr, data, "a").await?;
    let mut a = AgentServiceClient::new(channel(&addr, data, Some(a_certificate)).await?);
    let refused = assert_refused(
        "node a's certificate registering as b",
        a.attach(register("b", "10.6.6.6:1", 1_000_000_000))
            .await
            .map(|_| ()),
        Code::PermissionDenied,
    );
    assert!(
        refused.message().contains("cannot register node b"),
        "{refused:?}"
    );

    // A server's certificate is no agent's either.
    let mut s =
        AgentServiceClient::new(channel(&addr, data, Some(forge(data, Role::Server, "1")?)).await?);
    assert_refused(
        "a server certificate's Attach",
        s.attach(register("b", "10.6.6.6:1", 1_000_000_000))
            .await
            .map(|_| ()),
        Code::Unauthenticated,
    );

    // b is still the only node, at its own address with its own resources.
    let nodes = cli_json(&addr, &["get", "nodes"]).await?;
    let nodes = nodes.as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["name"], "b", "{nodes:?}");
    assert_eq!(nodes[0]["address"], "127.0.0.1:1", "{nodes:?}");
    assert!(
        !nodes[0].to_string().contains("1000000000"),
        "the forged resources were recorded: {nodes:?}"
    );
    drop(b_stream);
    Ok(())
}

/// Waits until `task` of `namespace` is RUNNING (as the admin sees it).
async fn wait_running(server: &str, namespace: &str, task: &str) -> anyhow::Result<()> {
    poll(
        &format!("task {task} to run"),
        Duration::from_secs(60),
        || async {
            let t = cli_json(server, &["get", "task", task, "-n", namespace])
                .await
                .ok()?;
            (t["lastStatus"] == "RUNNING").then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn tokens_are_required_and_roles_and_namespaces_limit_what_they_allow() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let data = server.data_dir.clone();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    ok(&addr, &["namespace", "create", "a"]).await?;
    ok(&addr, &["namespace", "create", "b"]).await?;
    let viewer = api_token(&addr, "a", "viewer").await?;
    let deployer = api_token(&addr, "a", "deployer").await?;
    // A task of namespace b, run by the admin.
    let created = ok(
        &addr,
        &[
            "run",
            "-n",
            "b",
            "--stop-timeout",
            "1s",
            &env.image,
            "--",
            "sh",
            "-c",
            "echo secret-of-b; exec sleep 600",
        ],
    )
    .await?;
    let b_task = created.trim().to_owned();
    wait_running(&addr, "b", &b_task).await?;

    // No token: the server answers UNAUTHENTICATED; the CLI does not even call without one.
    let mut anonymous = token_api(&addr, &data, None).await?;
    let refused = assert_refused(
        "ListTasks without a token",
        anonymous
            .list_tasks(berth_proto::v1::ListTasksRequest {
                namespace: "b".into(),
                ..Default::default()
            })
            .await,
        Code::Unauthenticated,
    );
    assert!(refused.message().contains("no credentials"), "{refused:?}");
    let no_token = env.path("no-token.toml");
    std::fs::write(
        &no_token,
        format!("servers = [\"{addr}\"]\nca = '''\n{}'''\n", ca_pem(&data)?),
    )?;
    let out = tokio::process::Command::new(berth_bin())
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_CREDENTIALS")
        .arg("--credentials")
        .arg(&no_token)
        .args(["get", "tasks", "-n", "b"])
        .output()
        .await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("no API token"), "{}", stderr(&out));
    // A made-up token is no better.
    let forged = format!("berth_{}_{}", "0".repeat(16), "1".repeat(64));
    let out = cli_as(&addr, &forged, &["get", "tasks", "-n", "b"]).await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("not known"), "{}", stderr(&out));

    // A viewer of a reads a, and cannot run there.
    let out = cli_as(&addr, &viewer, &["get", "tasks", "-n", "a", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli_as(&addr, &viewer, &["run", "-n", "a", NO_IMAGE, "--", "true"]).await?;
    assert!(!out.status.success(), "a viewer ran {}", stdout(&out));
    assert!(
        stderr(&out).contains("lacks the write permission"),
        "{}",
        stderr(&out)
    );
    let mut as_viewer = token_api(&addr, &data, Some(&viewer)).await?;
    let refused = assert_refused(
        "RunTask by a viewer",
        as_viewer
            .run_task(berth_proto::v1::RunTaskRequest {
                namespace: "a".into(),
                task_definition: "demo".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(refused.message().contains("write"), "{refused:?}");

    // A deployer of a runs in a…
    let mine = cli_as(
        &addr,
        &deployer,
        &["run", "-n", "a", NO_IMAGE, "--", "true"],
    )
    .await?;
    assert!(mine.status.success(), "{}", stderr(&mine));
    // …but sees, stops, reads and execs into nothing of b.
    for args in [
        vec!["get", "tasks", "-n", "b"],
        vec!["get", "task", &b_task, "-n", "b"],
        vec!["logs", &b_task, "-n", "b"],
        vec!["exec", "-n", "b", &b_task, "--", "echo", "pwned"],
        vec!["stop", "-n", "b", &b_task],
    ] {
        let out = cli_as(&addr, &deployer, &args).await?;
        assert!(
            !out.status.success(),
            "deployer of a: berth {} succeeded: {}",
            args.join(" "),
            stdout(&out)
        );
        assert!(
            !stdout(&out).contains("secret-of-b") && !stdout(&out).contains("pwned"),
            "{}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains("namespace"),
            "berth {}: {}",
            args.join(" "),
            stderr(&out)
        );
    }
    // Named from its own namespace, b's task does not exist.
    let out = cli_as(&addr, &deployer, &["get", "task", &b_task, "-n", "a"]).await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = cli_as(&addr, &deployer, &["get", "tasks", "-n", "a", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains(&b_task), "{}", stdout(&out));
    let mut as_deployer = token_api(&addr, &data, Some(&deployer)).await?;
    assert_refused(
        "StopTask of b by a deployer of a",
        as_deployer
            .stop_task(berth_proto::v1::StopTaskRequest {
                namespace: "b".into(),
                task_id: b_task.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_refused(
        "ExecTask into b by a deployer of a",
        as_deployer
            .exec_task(berth_proto::v1::ExecTaskRequest {
                namespace: "b".into(),
                task_id: b_task.clone(),
                command: vec!["true".into()],
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    let t = cli_json(&addr, &["get", "task", &b_task, "-n", "b"]).await?;
    assert_eq!(t["lastStatus"], "RUNNING", "{t}");
    assert_eq!(t["desiredStatus"], "RUNNING", "{t}");

    // The admin does all of it.
    let out = cli(&addr, &["exec", "-n", "b", &b_task, "--", "echo", "admin"]).await?;
    assert_eq!(stdout(&out), "admin\n", "{}", stderr(&out));
    poll("the admin to read b's logs", TIMEOUT, || async {
        let out = cli(&addr, &["logs", "-n", "b", &b_task]).await.ok()?;
        stdout(&out).contains("secret-of-b").then_some(())
    })
    .await?;
    ok(&addr, &["stop", "-n", "b", &b_task]).await?;
    poll("b's task to stop", TIMEOUT, || async {
        let t = cli_json(&addr, &["get", "task", &b_task, "-n", "b"])
            .await
            .ok()?;
        (t["lastStatus"] == "STOPPED").then_some(())
    })
    .await?;

    // A revoked token stops working within seconds.
    let out = cli(&addr, &["token", "revoke", &token_id(&deployer)]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let revoked_at = Instant::now();
    let message = poll("the revoked token to be refused", TIMEOUT, || async {
        let out = cli_as(&addr, &deployer, &["get", "tasks", "-n", "a"])
            .await
            .ok()?;
        (!out.status.success()).then(|| stderr(&out))
    })
    .await?;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked_at.elapsed()
    );
    assert!(message.contains("not known"), "{message}");
    let mut as_revoked = token_api(&addr, &data, Some(&deployer)).await?;
    assert_refused(
        "ListTasks with a revoked token",
        as_revoked
            .list_tasks(berth_proto::v1::ListTasksRequest {
                namespace: "a".into(),
                ..Default::default()
            })
            .await,
        Code::Unauthenticated,
    );
    // The viewer's token was not touched.
    let out = cli_as(&addr, &viewer, &["get", "tasks", "-n", "a"]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

const SERVICE: &str = "\
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: web
spec:
  desiredCount: 3
  template:
    cpu: 128
    memory: 32
    containers:
      - name: app
        image: 127.0.0.1:1/none:latest
";

#[tokio::test]
async fn quotas_refuse_tasks_applies_and_scales_beyond_their_limits() -> anyhow::Result<()> {
    let (dir, server) = lone_server().await?;
    let addr = server.addr.to_string();
    ok(&addr, &["namespace", "create", "q", "--tasks", "1"]).await?;

    // The first task fits (it stays PENDING: no agents); the second does not.
    let first = ok(&addr, &["run", "-n", "q", NO_IMAGE, "--", "true"]).await?;
    let first = first.trim().to_owned();
    let out = cli(&addr, &["run", "-n", "q", NO_IMAGE, "--", "true"]).await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    let message = stderr(&out);
    assert!(
        message.contains("quota of 1 task") && message.contains("1 running or pending"),
        "{message}"
    );
    let task = cli_json(&addr, &["get", "task", &first, "-n", "q"]).await?;
    let family = task["taskDefinition"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut api = berth_tests::api(&addr).await?;
    let refused = assert_refused(
        "a RunTask beyond the task quota",
        api.run_task(berth_proto::v1::RunTaskRequest {
            namespace: "q".into(),
            task_definition: family,
            ..Default::default()
        })
        .await,
        Code::ResourceExhausted,
    );
    assert!(refused.message().contains("quota of 1 task"), "{refused:?}");
    assert_eq!(task_ids(&addr, "q").await?, vec![first.clone()]);

    // A memory quota counts reservations.
    ok(&addr, &["namespace", "create", "m", "--memory", "100"]).await?;
    let out = cli(
        &addr,
        &["run", "-n", "m", "--memory", "128", NO_IMAGE, "--", "true"],
    )
    .await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("quota of 100 MiB of memory"),
        "{}",
        stderr(&out)
    );
    assert!(task_ids(&addr, "m").await?.is_empty());

    // A service whose desired count exceeds the quota is not applied; one that fits is, and
    // then cannot be scaled past the quota.
    ok(&addr, &["namespace", "create", "s", "--tasks", "2"]).await?;
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, SERVICE)?;
    let file = manifest.display().to_string();
    let out = cli(&addr, &["apply", "-n", "s", "-f", &file]).await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    let message = stderr(&out);
    assert!(
        message.contains("desired count 3")
            && message.contains("quota of 2 tasks")
            && message.contains("3 more asked"),
        "{message}"
    );
    let services = cli_json(&addr, &["get", "services", "-n", "s"]).await?;
    assert_eq!(services, serde_json::json!([]), "{services}");
    std::fs::write(
        &manifest,
        SERVICE.replace("desiredCount: 3", "desiredCount: 2"),
    )?;
    ok(&addr, &["apply", "-n", "s", "-f", &file]).await?;
    let out = cli(&addr, &["scale", "-n", "s", "web", "5"]).await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("quota of 2 tasks is used up"),
        "{}",
        stderr(&out)
    );
    let service = cli_json(&addr, &["get", "service", "web", "-n", "s"]).await?;
    assert_eq!(service["desiredCount"], 2, "{service}");
    Ok(())
}

/// Spawns `berth agent` for `name` with `token`, its output in DATA_DIR/agent.log; does not
/// wait for it to register.
fn spawn_agent(
    env: &Env,
    server: &str,
    name: &str,
    token: &str,
) -> anyhow::Result<(tokio::process::Child, PathBuf)> {
    let data_dir = env.path(&format!("agent-{name}"));
    std::fs::create_dir_all(&data_dir)?;
    let log_path = data_dir.join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let child = tokio::process::Command::new(berth_bin())
        .args(["agent", "--servers", server, "--node-name", name])
        .args(["--containerd-namespace", &format!("berth-e2e-{name}")])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--containerd")
        .arg(&env.containerd.socket)
        .args(["--join-token", token])
        .args(env.network(name).flags())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    Ok((child, log_path))
}

/// Waits until `child` exits; its exit status and what it logged.
async fn exited(
    child: &mut tokio::process::Child,
    log: &Path,
    within: Duration,
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .map_err(|_| anyhow::anyhow!("the agent still runs after {within:?}"))??;
    Ok((status, std::fs::read_to_string(log)?))
}

async fn node_names(server: &str) -> anyhow::Result<Vec<String>> {
    let nodes = cli_json(server, &["get", "nodes"]).await?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn foreign_or_revoked_join_tokens_join_nothing_and_a_restart_needs_no_token(
) -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let other = ServerProc::start(&env.path("other"), None).await?;

    // A token of another cluster: the agent checks the CA before it sends anything.
    let foreign = join_token(&other.addr.to_string(), "agent").await?;
    let (mut stranger, stranger_log) = spawn_agent(&env, &addr, "stranger", &foreign)?;

    // A revoked token: the server refuses it, and the agent gives up at once.
    let revoked = join_token(&addr, "agent").await?;
    let tokens = cli_json(&addr, &["cluster", "token", "list"]).await?;
    let id = tokens[0]["id"].as_str().unwrap_or_default().to_owned();
    assert!(revoked.contains(&id), "{tokens} / {revoked}");
    ok(&addr, &["cluster", "token", "revoke", &id]).await?;
    let (mut late, late_log) = spawn_agent(&env, &addr, "late", &revoked)?;
    let (status, log) = exited(&mut late, &late_log, TIMEOUT).await?;
    assert!(!status.success(), "{log}");
    assert!(log.contains("revoked"), "{log}");

    // An agent that joined restarts from its data dir, with every join token revoked.
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    let address = cli_json(&addr, &["get", "node", "node-1"]).await?["address"].clone();
    let tokens = cli_json(&addr, &["cluster", "token", "list"]).await?;
    for t in tokens.as_array().into_iter().flatten() {
        ok(
            &addr,
            &[
                "cluster",
                "token",
                "revoke",
                t["id"].as_str().unwrap_or_default(),
            ],
        )
        .await?;
    }
    assert_eq!(
        cli_json(&addr, &["cluster", "token", "list"]).await?,
        serde_json::json!([])
    );
    agent.kill().await?;
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    // Its new API port shows that the new process registered.
    poll("the restarted agent to register", TIMEOUT, || async {
        let node = cli_json(&addr, &["get", "node", "node-1"]).await.ok()?;
        (node["address"] != address && node["status"] == "ACTIVE").then_some(())
    })
    .await?;
    let id = run_until_running(&addr, &["run", &env.image, "--", "sleep", "600"]).await?;
    let task = cli_json(&addr, &["get", "task", &id]).await?;
    assert_eq!(task["node"], "node-1", "{task}");

    // The stranger gives up at once, naming the CA mismatch (asking again would not change
    // the server's CA), and never registers.
    let (status, log) = exited(&mut stranger, &stranger_log, TIMEOUT).await?;
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("presented a CA that does not match the join token's fingerprint"),
        "{log}"
    );
    let names = node_names(&addr).await?;
    assert_eq!(names, vec!["node-1".to_owned()]);
    assert!(node_names(&other.addr.to_string()).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn certificates_renew_under_a_running_task_without_disrupting_it() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let server = ServerProc::spawn(1, &env.path("server"), None, &["--cert-ttl", "60s"]).await?;
    server.wait_ready().await?;
    let addr = server.addr.to_string();
    let server_cert_path = server.data_dir.join("tls/node.pem");
    let first_server_cert = std::fs::read_to_string(&server_cert_path)?;
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    let cert_path = env.path("agent-node-1").join("tls/node.pem");
    let first_cert = std::fs::read_to_string(&cert_path)?;
    let first_expiry = berth_tls::not_after(&first_cert).unwrap_or_default();
    let id = run_script_until_running(&addr, &env.image, "echo started; exec sleep 600").await?;
    let containers = containerd_containers(&env.containerd.socket, &agent.namespace).await?;
    assert_eq!(containers.len(), 1, "{containers:?}");

    // Renewed at two thirds of 60 s.
    poll(
        "the agent's certificate to be renewed",
        Duration::from_secs(75),
        || async {
            let cert = std::fs::read_to_string(&cert_path).ok()?;
            (cert != first_cert).then_some(cert)
        },
    )
    .await
    .map(|cert| {
        let expiry = berth_tls::not_after(&cert).unwrap_or_default();
        assert!(expiry > first_expiry, "{expiry} <= {first_expiry}");
    })?;

    // The server renews its own certificate on its own clock (it started before the agent
    // joined, so at about the same time or earlier); a loaded machine may delay either.
    let first_server_expiry = berth_tls::not_after(&first_server_cert).unwrap_or_default();
    poll(
        "the server's certificate to be renewed",
        Duration::from_secs(30),
        || async {
            let cert = std::fs::read_to_string(&server_cert_path).ok()?;
            (berth_tls::not_after(&cert).unwrap_or_default() > first_server_expiry).then_some(())
        },
    )
    .await?;

    // The same task runs on, in the same container; logs and exec (server → agent over TLS,
    // both renewed by now) work.
    let task = cli_json(&addr, &["get", "task", &id]).await?;
    assert_eq!(task["lastStatus"], "RUNNING", "{task}");
    assert_eq!(task_ids(&addr, "default").await?, vec![id.clone()]);
    assert_eq!(
        containerd_containers(&env.containerd.socket, &agent.namespace).await?,
        containers
    );
    let node = cli_json(&addr, &["get", "node", "node-1"]).await?;
    assert_eq!(node["status"], "ACTIVE", "{node}");
    let out = cli(&addr, &["exec", &id, "--", "echo", "still here"]).await?;
    assert_eq!(stdout(&out), "still here\n", "{}", stderr(&out));
    let out = cli(&addr, &["logs", &id]).await?;
    assert_eq!(stdout(&out), "started\n", "{}", stderr(&out));
    ok(&addr, &["stop", &id]).await?;
    let stopped = wait_stopped(&addr, &id, TIMEOUT).await?;
    assert_eq!(stopped["stopCode"], "UserInitiated", "{stopped}");
    Ok(())
}
