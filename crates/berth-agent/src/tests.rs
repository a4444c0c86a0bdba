//! The task supervisor against [`FakeRuntime`]: the reports it sends for each way a task ends.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use berth_model::{
    Assignment, ContainerDefinition, DesiredStatus, StopCode, TaskStatus, TaskStatusUpdate,
};
use tokio::sync::{mpsc, watch};

use crate::runtime::ExistingContainer;
use crate::supervisor::{request_stop, StopReason, TaskRun};
use crate::{FakeRuntime, Metrics};

type Stop = watch::Sender<Option<StopReason>>;

fn run(
    rt: &Arc<FakeRuntime>,
    image: &str,
) -> (
    mpsc::UnboundedReceiver<TaskStatusUpdate>,
    Stop,
    tokio::task::JoinHandle<()>,
) {
    let mut c = ContainerDefinition::new("app", image);
    c.stop_timeout = 0;
    let (task, rx, stop) = task_run(rt, vec![c]);
    (rx, stop, tokio::spawn(task.run()))
}

/// `STATUS[/stopCode][/exit]` per report.
fn summarise(rx: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(u) = rx.try_recv() {
        let mut s = u.last_status.to_string();
        if let Some(code) = u.stop_code {
            s.push_str(&format!("/{code}"));
        }
        if let Some(exit) = u.containers.first().and_then(|c| c.exit_code) {
            s.push_str(&format!("/{exit}"));
        }
        out.push(s);
    }
    out
}

/// Waits for the RUNNING report.
async fn running(rx: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>) {
    loop {
        let u = rx.recv().await.expect("reports until running");
        if u.last_status == TaskStatus::Running {
            break;
        }
    }
}

/// The last report sent so far.
fn last_report(rx: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>) -> TaskStatusUpdate {
    let mut last = None;
    while let Ok(u) = rx.try_recv() {
        last = Some(u);
    }
    last.expect("a final report")
}

/// The last report's stop code and reason.
fn ended(rx: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>) -> (Option<StopCode>, String) {
    let last = last_report(rx);
    (last.stop_code, last.stopped_reason.unwrap_or_default())
}

#[tokio::test]
async fn exit_reports_essential_container_exited() {
    let rt = Arc::new(FakeRuntime::new());
    rt.exit_with("busybox", 3);
    let (mut rx, _stop, handle) = run(&rt, "busybox");
    handle.await.expect("supervisor finished");
    assert_eq!(
        summarise(&mut rx),
        [
            "PENDING",
            "PENDING",
            "ACTIVATING",
            "RUNNING",
            "STOPPED/EssentialContainerExited/3"
        ]
    );
    assert_eq!(
        rt.calls(),
        [
            "pull busybox",
            "create network t1",
            "start t1-app",
            "remove t1-app",
            "remove network t1"
        ]
    );
}

#[tokio::test]
async fn a_network_that_cannot_be_attached_fails_the_task_and_removes_what_was_made() {
    let rt = Arc::new(FakeRuntime::new());
    rt.refuse_network_attach();
    let (mut rx, _stop, handle) = run(&rt, "busybox");
    handle.await.expect("supervisor finished");
    let (code, reason) = ended(&mut rx);
    assert_eq!(code, Some(StopCode::TaskFailedToStart));
    assert!(
        reason.starts_with("CannotCreateNetworkError: attach the task's network"),
        "{reason}"
    );
    // Its container was created meanwhile: removed, never started.
    assert_eq!(
        rt.calls(),
        [
            "pull busybox",
            "create network t1",
            "attach network t1: refused",
            "remove t1-app",
            "remove network t1"
        ]
    );
    assert!(rt.running().is_empty());
}

#[tokio::test]
async fn failed_pull_reports_task_failed_to_start_with_the_image() {
    let rt = Arc::new(FakeRuntime::new());
    rt.missing_image("nope");
    let (mut rx, _stop, handle) = run(&rt, "nope");
    handle.await.expect("supervisor finished");
    let last = last_report(&mut rx);
    assert_eq!(last.last_status, TaskStatus::Stopped);
    assert_eq!(last.stop_code, Some(StopCode::TaskFailedToStart));
    assert_eq!(
        last.stopped_reason.as_deref(),
        Some("CannotPullContainerError: image nope not found: manifest unknown")
    );
}

#[tokio::test]
async fn stop_request_terms_then_kills_and_removes() {
    let rt = Arc::new(FakeRuntime::new());
    let (mut rx, stop, handle) = run(&rt, "sleeper");
    running(&mut rx).await;
    request_stop(&stop, StopReason::Server);
    handle.await.expect("supervisor finished");
    assert_eq!(
        summarise(&mut rx),
        ["STOPPING", "STOPPED/UserInitiated/143"]
    );
    assert_eq!(
        rt.calls(),
        [
            "pull sleeper",
            "create network t1",
            "start t1-app",
            "kill t1-app 15",
            "remove t1-app",
            "remove network t1",
        ]
    );
    assert!(rt.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failing_health_checks_make_the_task_unhealthy_and_stop_it() {
    let rt = Arc::new(FakeRuntime::new());
    rt.exec_exits_with("t1-app", 1);
    let mut c = ContainerDefinition::new("app", "sleeper");
    c.stop_timeout = 0;
    c.health_check = Some(berth_model::HealthCheck {
        interval: 1,
        timeout: 1,
        retries: 2,
        ..berth_model::HealthCheck::new(vec!["CMD".into(), "false".into()])
    });
    let (task, mut rx, _stop) = task_run(&rt, vec![c]);
    task.run().await;
    let last = last_report(&mut rx);
    assert_eq!(
        last.containers[0].health_status,
        berth_model::HealthStatus::Unhealthy
    );
    assert_eq!(
        last.stopped_reason.as_deref(),
        Some("Task failed container health checks: essential container app is UNHEALTHY (check exited with 1)")
    );
    let execs = rt
        .calls()
        .iter()
        .filter(|c| c.starts_with("exec t1-app false"))
        .count();
    assert_eq!(
        execs,
        2,
        "exactly `retries` failed checks: {:?}",
        rt.calls()
    );
}

fn two_containers(init_image: &str) -> Vec<ContainerDefinition> {
    let mut init = ContainerDefinition::new("init", init_image);
    init.essential = false;
    let mut app = ContainerDefinition::new("app", "sleeper");
    app.stop_timeout = 0;
    app.depends_on = vec![berth_model::ContainerDependency {
        container_name: "init".into(),
        condition: berth_model::DependencyCondition::Success,
    }];
    vec![init, app]
}

fn task_run(
    rt: &Arc<FakeRuntime>,
    containers: Vec<ContainerDefinition>,
) -> (TaskRun, mpsc::UnboundedReceiver<TaskStatusUpdate>, Stop) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(None);
    let run = TaskRun {
        assignment: Assignment {
            task_id: "t1".into(),
            namespace: "default".into(),
            task_definition: "web:1".parse().expect("a valid reference"),
            desired_status: DesiredStatus::Running,
            cpu: 256,
            memory: 64,
            containers,
            last_status: TaskStatus::Pending,
            deregistration_delay: 0,
            ephemeral_storage: Default::default(),
            secrets: Default::default(),
        },
        runtime: rt.clone(),
        log_dir: std::env::temp_dir(),
        updates: tx,
        stop: stop_rx,
        done: Arc::new(AtomicBool::new(false)),
        adopt: vec![],
        metrics: Metrics::new(),
        bind_ip: "10.0.0.5".into(),
        ip_address: None,
        resolv_conf: None,
        deregistration_delay: Arc::default(),
        secrets_dir: std::env::temp_dir().join(format!("berth-secrets-{}", std::process::id())),
    };
    (run, rx, stop)
}

#[tokio::test]
async fn a_container_created_but_never_started_before_an_agent_restart_ends_its_task() {
    let rt = Arc::new(FakeRuntime::new());
    let (mut run, mut rx, _stop) = task_run(&rt, vec![ContainerDefinition::new("app", "busybox")]);
    run.adopt = vec![ExistingContainer {
        id: "t1-app".into(),
        task_id: "t1".into(),
        container_name: "app".into(),
        running: false,
        exit_code: None,
    }];
    run.run().await;
    let last = last_report(&mut rx);
    assert_eq!(last.last_status, TaskStatus::Stopped);
    assert_eq!(
        last.containers[0].reason.as_deref(),
        Some("was never started: the agent stopped while starting the task")
    );
    assert_eq!(last.containers[0].exit_code, None);
    // Nothing is watched as if it ran: the container and the network go.
    assert!(
        rt.calls().contains(&"remove t1-app".to_owned()),
        "{:?}",
        rt.calls()
    );
    assert!(rt.running().is_empty());
}

#[tokio::test]
async fn a_dependent_container_starts_after_its_dependency_succeeds_in_a_shared_network() {
    let rt = Arc::new(FakeRuntime::new());
    rt.exit_with("init-ok", 0);
    let (run, mut rx, stop) = task_run(&rt, two_containers("init-ok"));
    let handle = tokio::spawn(run.run());
    running(&mut rx).await;
    request_stop(&stop, StopReason::Server);
    handle.await.expect("supervisor finished");
    assert_eq!(
        rt.calls(),
        [
            "pull init-ok",
            "pull sleeper",
            "create network t1",
            "start t1-init",
            "start t1-app",
            "kill t1-app 15",
            "remove t1-init",
            "remove t1-app",
            "remove network t1",
        ]
    );
}

#[tokio::test]
async fn a_failed_success_dependency_fails_the_task_without_starting_the_dependent() {
    let rt = Arc::new(FakeRuntime::new());
    rt.exit_with("init-bad", 3);
    let (run, mut rx, _stop) = task_run(&rt, two_containers("init-bad"));
    run.run().await;
    let last = last_report(&mut rx);
    assert_eq!(last.stop_code, Some(StopCode::TaskFailedToStart));
    assert_eq!(
        last.stopped_reason.as_deref(),
        Some("container app needs init to succeed, but it exited with 3")
    );
    assert!(
        !rt.calls().contains(&"start t1-app".to_owned()),
        "{:?}",
        rt.calls()
    );
}

#[tokio::test]
async fn containers_stop_in_reverse_dependency_order() {
    let rt = Arc::new(FakeRuntime::new());
    let mut db = ContainerDefinition::new("db", "sleeper");
    db.stop_timeout = 0;
    let mut app = ContainerDefinition::new("app", "sleeper");
    app.stop_timeout = 0;
    app.depends_on = vec![berth_model::ContainerDependency {
        container_name: "db".into(),
        condition: berth_model::DependencyCondition::Start,
    }];
    // Defined app first: the start order still puts db first, and the stop order app first.
    let (run, mut rx, stop) = task_run(&rt, vec![app, db]);
    let handle = tokio::spawn(run.run());
    running(&mut rx).await;
    request_stop(&stop, StopReason::Server);
    handle.await.expect("supervisor finished");
    let calls: Vec<String> = rt
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("start") || c.starts_with("kill"))
        .collect();
    assert_eq!(
        calls,
        [
            "start t1-db",
            "start t1-app",
            "kill t1-app 15",
            "kill t1-db 15"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fenced_task_reports_node_lost_and_stops_with_a_short_grace() {
    let rt = Arc::new(FakeRuntime::new());
    // It ignores SIGTERM for a minute: fencing does not wait that long.
    rt.ignore_sigterm("sleeper");
    let mut c = ContainerDefinition::new("app", "sleeper");
    c.stop_timeout = 60;
    let (run, mut rx, stop) = task_run(&rt, vec![c]);
    let handle = tokio::spawn(run.run());
    running(&mut rx).await;
    let asked = tokio::time::Instant::now();
    request_stop(&stop, StopReason::Fenced);
    handle.await.expect("supervisor finished");
    assert!(asked.elapsed() <= crate::supervisor::FENCED_STOP_GRACE);
    assert_eq!(
        ended(&mut rx),
        (
            Some(StopCode::NodeLost),
            "the node lost contact with every server, so its agent stopped the task (self-fencing)"
                .to_owned()
        )
    );
    assert_eq!(
        rt.calls(),
        [
            "pull sleeper",
            "create network t1",
            "start t1-app",
            "kill t1-app 15",
            "kill t1-app 9",
            "remove t1-app",
            "remove network t1",
        ]
    );
}

#[tokio::test]
async fn a_task_stopped_by_the_server_then_fenced_keeps_its_stop_code() {
    let rt = Arc::new(FakeRuntime::new());
    let (mut rx, stop, handle) = run(&rt, "sleeper");
    running(&mut rx).await;
    request_stop(&stop, StopReason::Server);
    request_stop(&stop, StopReason::Fenced);
    handle.await.expect("supervisor finished");
    let (code, _) = ended(&mut rx);
    // Whichever request the task read first decides; both say the task was stopped.
    assert!(matches!(
        code,
        Some(StopCode::UserInitiated | StopCode::NodeLost)
    ));
}

#[tokio::test]
async fn a_task_reports_its_address_and_where_each_container_s_ports_were_published() {
    let rt = Arc::new(FakeRuntime::new());
    let mut web = ContainerDefinition::new("web", "sleeper");
    web.port_mappings = vec![
        berth_model::PortMapping::tcp(8080),
        berth_model::PortMapping {
            container_port: 9090,
            host_port: 9090,
            protocol: berth_model::Protocol::Udp,
        },
    ];
    let mut side = ContainerDefinition::new("side", "sleeper");
    side.port_mappings = vec![berth_model::PortMapping::tcp(7070)];
    let plain = ContainerDefinition::new("plain", "sleeper");
    let (run, mut rx, stop) = task_run(&rt, vec![web, plain, side]);
    let handle = tokio::spawn(run.run());
    let running = loop {
        let u = rx.recv().await.expect("reports until running");
        if u.last_status == TaskStatus::Running {
            break u;
        }
    };
    assert!(running.ip_address.is_some(), "{running:?}");
    let published: Vec<Vec<String>> = running
        .containers
        .iter()
        .map(|c| {
            c.network_bindings
                .iter()
                .map(|b| {
                    format!(
                        "{}:{}->{}/{}",
                        b.bind_ip, b.host_port, b.container_port, b.protocol
                    )
                })
                .collect()
        })
        .collect();
    let dynamic = |i: usize| running.containers[i].network_bindings[0].host_port;
    assert_eq!(
        published,
        [
            vec![
                format!("10.0.0.5:{}->8080/tcp", dynamic(0)),
                "10.0.0.5:9090->9090/udp".to_owned()
            ],
            vec![],
            vec![format!("10.0.0.5:{}->7070/tcp", dynamic(2))],
        ]
    );
    request_stop(&stop, StopReason::Server);
    handle.await.expect("supervisor finished");
    let last = last_report(&mut rx);
    assert!(
        last.containers
            .iter()
            .all(|c| c.network_bindings.is_empty()),
        "a stopped task's ports are released: {last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_waits_out_the_deregistration_delay_before_sigterm_unless_fenced() {
    for (fence, waited) in [(false, 5), (true, 2)] {
        let rt = Arc::new(FakeRuntime::new());
        let mut c = ContainerDefinition::new("app", "sleeper");
        c.stop_timeout = 0;
        let (task, mut rx, stop) = task_run(&rt, vec![c]);
        task.deregistration_delay
            .store(5, std::sync::atomic::Ordering::SeqCst);
        let handle = tokio::spawn(task.run());
        running(&mut rx).await;
        let asked = tokio::time::Instant::now();
        request_stop(&stop, StopReason::Server);
        if fence {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            request_stop(&stop, StopReason::Fenced);
        }
        handle.await.expect("supervisor finished");
        assert_eq!(asked.elapsed().as_secs(), waited, "fenced: {fence}");
        let reports = summarise(&mut rx);
        let expected_end = if fence {
            "STOPPED/NodeLost/143"
        } else {
            "STOPPED/UserInitiated/143"
        };
        assert_eq!(
            reports,
            ["DEACTIVATING", "STOPPING", expected_end],
            "fenced: {fence}"
        );
    }
}

#[tokio::test]
async fn a_task_whose_secrets_could_not_be_opened_fails_to_start_without_pulling() {
    let rt = Arc::new(FakeRuntime::new());
    let (mut run, mut rx, _stop) = task_run(&rt, vec![ContainerDefinition::new("app", "sleeper")]);
    run.assignment.secrets.error = Some("secret db-creds not found in namespace default".into());
    run.run().await;
    assert_eq!(
        ended(&mut rx),
        (
            Some(StopCode::TaskFailedToStart),
            "secret db-creds not found in namespace default".to_owned()
        )
    );
    assert_eq!(rt.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn secrets_reach_the_process_env_the_pull_and_files_that_go_with_the_task() {
    let rt = Arc::new(FakeRuntime::new());
    let mut app = ContainerDefinition::new("app", "sleeper");
    app.stop_timeout = 0;
    app.environment.insert("PLAIN".into(), "1".into());
    let (mut run, mut rx, stop) = task_run(&rt, vec![app]);
    let secrets_dir = tempfile::tempdir().expect("a temp dir");
    run.secrets_dir = secrets_dir.path().to_owned();
    let mut s = berth_model::ContainerSecrets::default();
    s.environment.insert("DB_PASSWORD".into(), "hunter2".into());
    s.files.insert(
        "/run/secrets/tls".into(),
        std::collections::BTreeMap::from([("key.pem".into(), b"PRIVATE".to_vec())]),
    );
    s.registry = Some(("robot".into(), "s3cret".into()));
    run.assignment.secrets.containers.insert("app".into(), s);
    let handle = tokio::spawn(run.run());
    running(&mut rx).await;
    let spec = rt.spec("t1-app").expect("running");
    assert_eq!(
        spec.env[spec.env.len() - 2..],
        ["PLAIN=1".to_owned(), "DB_PASSWORD=hunter2".to_owned()]
    );
    assert_eq!(
        rt.pull_credentials("sleeper"),
        Some(("robot".into(), "s3cret".into()))
    );
    let [mount] = &spec.secret_mounts[..] else {
        panic!("one secret mount: {:?}", spec.secret_mounts);
    };
    assert_eq!(mount.destination, "/run/secrets/tls");
    assert_eq!(
        std::fs::read(mount.source.join("key.pem")).expect("written"),
        b"PRIVATE"
    );
    request_stop(&stop, StopReason::Server);
    handle.await.expect("supervisor finished");
    assert!(!mount.source.exists(), "the secret files go with the task");
    // No report carries a value.
    while let Ok(u) = rx.try_recv() {
        let printed = format!("{u:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("PRIVATE"));
    }
}

#[tokio::test]
async fn an_image_user_name_is_resolved_and_a_missing_one_fails_the_task() {
    let rt = Arc::new(FakeRuntime::new());
    for image in ["named", "ghost"] {
        rt.image_file(
            image,
            "/etc/passwd",
            b"root:x:0:0::/:/bin/sh\napp:x:1234:2345::/:/bin/sh\n",
        );
        rt.image_file(image, "/etc/group", b"app:x:2345:\nextra:x:3456:app\n");
    }
    rt.image_user("named", "app");
    rt.image_user("ghost", "nobody-here");
    let (mut rx, stop, handle) = run(&rt, "named");
    running(&mut rx).await;
    let spec = rt.spec("t1-app").expect("running");
    assert_eq!(
        (spec.uid, spec.gid, spec.additional_gids),
        (1234, 2345, vec![3456])
    );
    request_stop(&stop, StopReason::Server);
    handle.await.expect("supervisor finished");

    let rt = Arc::new(FakeRuntime::new());
    rt.image_file("ghost", "/etc/passwd", b"root:x:0:0::/:/bin/sh\n");
    rt.image_user("ghost", "nobody-here");
    let (mut rx, _stop, handle) = run(&rt, "ghost");
    handle.await.expect("supervisor finished");
    assert_eq!(
        ended(&mut rx),
        (
            Some(StopCode::TaskFailedToStart),
            "CannotStartContainerError: container app: user \"nobody-here\" not found in the image's /etc/passwd".to_owned()
        )
    );
    assert_eq!(rt.calls(), ["pull ghost"], "nothing was created");
}

#[tokio::test(start_paused = true)]
async fn a_task_over_its_ephemeral_storage_is_stopped_with_the_reason() {
    let rt = Arc::new(FakeRuntime::new());
    let (mut rx, _stop, handle) = run(&rt, "sleeper");
    running(&mut rx).await;
    rt.set_storage("t1-app", (20 << 30) - 1);
    tokio::time::sleep(crate::ephemeral::STORAGE_CHECK_INTERVAL * 2).await;
    assert!(!handle.is_finished(), "within the 20 GiB default");
    rt.set_storage("t1-app", 21 << 30);
    handle.await.expect("supervisor finished");
    assert_eq!(
        ended(&mut rx),
        (
            Some(StopCode::EssentialContainerExited),
            "ephemeral storage: the task wrote 21.0 GiB, over its 20 GiB limit (ephemeralStorage.sizeInGiB)".to_owned()
        )
    );
}

#[test]
fn a_task_far_from_its_storage_limit_is_measured_less_often() {
    use crate::ephemeral::{next_storage_check, STORAGE_CHECK_INTERVAL};
    let gib = |n: u32| berth_model::EphemeralStorage { size_in_gib: n };
    // 20 GiB free at 2 GiB/s: 10 s.
    assert_eq!(
        next_storage_check(0, gib(20)),
        std::time::Duration::from_secs(10)
    );
    // Close to the limit, at it, or past it: the shortest interval.
    for used in [(19 << 30) + 1, 20 << 30, 21 << 30] {
        assert_eq!(next_storage_check(used, gib(20)), STORAGE_CHECK_INTERVAL);
    }
    assert_eq!(next_storage_check(0, gib(1)), STORAGE_CHECK_INTERVAL);
    // Never longer than 30 s.
    assert_eq!(
        next_storage_check(0, gib(200)),
        std::time::Duration::from_secs(30)
    );
}

#[test]
fn the_storage_limit_is_the_sum_of_the_writable_layers() {
    use crate::ephemeral::storage_exceeded;
    let one = berth_model::EphemeralStorage { size_in_gib: 1 };
    assert_eq!(storage_exceeded(1 << 30, one), None);
    assert_eq!(
        storage_exceeded((1 << 30) + (1 << 30) / 8, one).as_deref(),
        Some("ephemeral storage: the task wrote 1.1 GiB, over its 1 GiB limit (ephemeralStorage.sizeInGiB)")
    );
    assert_eq!(
        storage_exceeded((1 << 30) + 1, one).as_deref(),
        Some("ephemeral storage: the task wrote 1.0 GiB, over its 1 GiB limit (ephemeralStorage.sizeInGiB)")
    );
}
