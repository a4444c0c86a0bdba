//! Golden tests: what `get` prints for each kind in every output format (and the listings of
//! tokens and namespaces), and the errors broken manifests produce. `BERTH_UPDATE_GOLDEN=1 cargo test -p berth-cli` rewrites the files under
//! `golden/` after an intended change; review the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_model::{
    AccessRole, ApiTokenRecord, Autoscaling, ContainerDefinition, ContainerState, Deployment,
    DeploymentStatus, DesiredStatus, EventLog, HealthStatus, JoinTokenRecord, MetricValue,
    Namespace, Node, NodeRole, NodeStatus, Quota, Resources, RolloutState, ScalingMetric, Service,
    ServiceStatus, StopCode, TargetTracking, Task, TaskDefinition, TaskDefinitionStatus,
    TaskStatus, Usage,
};

use crate::output::Format;

/// 2026-11-27T00:00:00Z.
const NOW: u64 = 1_795_737_600_000;
const MIN: u64 = 60_000;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

fn check(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run BERTH_UPDATE_GOLDEN=1 cargo test -p berth-cli",
            path.display()
        )
    });
    assert_eq!(
        actual, expected,
        "{name} changed; if intended, run BERTH_UPDATE_GOLDEN=1 cargo test -p berth-cli"
    );
}

/// Every format of one kind, one after another.
fn all_formats(render: impl Fn(Format) -> anyhow::Result<String>) -> String {
    let mut out = String::new();
    for (title, f) in [
        ("table", Format::Table),
        ("wide", Format::Wide),
        ("json", Format::Json),
        ("yaml", Format::Yaml),
    ] {
        out.push_str(&format!("=== -o {title}\n"));
        out.push_str(&render(f).expect("renders"));
    }
    out
}

fn tasks() -> Vec<Task> {
    let mut events = EventLog::default();
    events.push(NOW - 3 * MIN, "created");
    events.push(NOW - 3 * MIN, "placed on node node-1");
    let running = Task {
        labels: Default::default(),
        task_id: "0b6f3f5c-9d2e-4c7a-8a51-2f0e1c9d7a10".into(),
        namespace: "default".into(),
        task_definition: "web:2".parse().expect("ref"),
        group: Some("service:web".into()),
        started_by: Some("d-1".into()),
        node: Some("node-1".into()),
        desired_status: DesiredStatus::Running,
        last_status: TaskStatus::Running,
        cpu: 256,
        memory: 64,
        created_at: NOW - 3 * MIN,
        pull_started_at: Some(NOW - 3 * MIN + 100),
        started_at: Some(NOW - 3 * MIN + 800),
        stopped_at: None,
        stop_code: None,
        stopped_reason: None,
        containers: vec![ContainerState {
            image_digest: Some("sha256:5f2c".into()),
            last_status: TaskStatus::Running,
            health_status: HealthStatus::Healthy,
            network_bindings: vec![berth_model::NetworkBinding {
                bind_ip: "10.0.0.5".into(),
                container_port: 8080,
                host_port: 49153,
                protocol: berth_model::Protocol::Tcp,
            }],
            ..ContainerState::pending("httpd", "registry.local/web:v2")
        }],
        ip_address: Some(std::net::Ipv4Addr::new(10, 220, 0, 2)),
        events,
        placement: Default::default(),
        metrics: None,
        overrides: Vec::new(),
    };
    let stopped = Task {
        task_id: "7c1d2e3f-0000-4000-8000-000000000001".into(),
        group: None,
        started_by: None,
        task_definition: "hello:1".parse().expect("ref"),
        desired_status: DesiredStatus::Stopped,
        last_status: TaskStatus::Stopped,
        created_at: NOW - 2 * 3600 * 1000,
        pull_started_at: Some(NOW - 2 * 3600 * 1000 + 100),
        started_at: Some(NOW - 2 * 3600 * 1000 + 500),
        stopped_at: Some(NOW - 2 * 3600 * 1000 + 900),
        stop_code: Some(StopCode::EssentialContainerExited),
        stopped_reason: Some("Essential container in task exited".into()),
        containers: vec![ContainerState {
            last_status: TaskStatus::Stopped,
            exit_code: Some(3),
            ..ContainerState::pending("main", "registry.local/demo:latest")
        }],
        events: EventLog::default(),
        ..running.clone()
    };
    vec![running, stopped]
}

fn service() -> Service {
    let mut events = EventLog::default();
    events.push(NOW - 10 * MIN, "created with web:1 and desired count 3");
    events.push(
        NOW - MIN,
        "scaled out 3 -> 4: CPUUtilization 71.0% (target 50%) over 3 tasks in 20s, rule CPUUtilization target 50%",
    );
    let mut primary = Deployment::new("d-2".into(), "web:2".parse().expect("ref"), NOW - 2 * MIN);
    primary.desired_count = 4;
    primary.running_count = 3;
    primary.healthy_count = 3;
    primary.pending_count = 1;
    let mut old = Deployment::new("d-1".into(), "web:1".parse().expect("ref"), NOW - 10 * MIN);
    old.status = DeploymentStatus::Active;
    old.rollout_state = RolloutState::Completed;
    old.desired_count = 1;
    old.running_count = 1;
    old.healthy_count = 1;
    Service {
        ingress: Vec::new(),
        deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
        meta: berth_model::ObjectMeta {
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            annotations: BTreeMap::from([("owner".to_owned(), "team-a".to_owned())]),
        },
        namespace: "default".into(),
        name: "web".into(),
        task_definition: "web:2".parse().expect("ref"),
        desired_count: 4,
        deployment_configuration: Default::default(),
        placement: Default::default(),
        status: ServiceStatus::Active,
        running_count: 4,
        pending_count: 1,
        deployments: vec![primary, old],
        version: 7,
        created_at: NOW - 10 * MIN,
        last_completed: Some("web:1".parse().expect("ref")),
        backoff: Default::default(),
        autoscaling: Some(Autoscaling::with_defaults(
            2,
            8,
            vec![TargetTracking {
                metric: ScalingMetric::CpuUtilization,
                target: 50.0,
            }],
        )),
        last_scale_out_at: NOW - MIN,
        last_scale_in_at: 0,
        metrics: vec![MetricValue {
            metric: ScalingMetric::CpuUtilization,
            value: 71.0,
            target: 50.0,
        }],
        events,
    }
}

fn nodes() -> Vec<Node> {
    let node = |name: &str, status, zone: &str| Node {
        name: name.into(),
        address: format!("10.0.0.{}:7401", name.len()),
        status,
        attributes: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
        cpu: Resources {
            total: 2048,
            allocated: 768,
        },
        memory: Resources {
            total: 4096,
            allocated: 192,
        },
        registered_at: NOW - 3600 * 1000,
        down_since: None,
        events: EventLog::default(),
    };
    vec![
        node("node-1", NodeStatus::Active, "a"),
        node("node-22", NodeStatus::Draining, "b"),
    ]
}

fn taskdefs() -> Vec<TaskDefinition> {
    let mut c = ContainerDefinition::new("httpd", "registry.local/web:v2");
    c.command = vec!["httpd".into(), "-f".into()];
    vec![TaskDefinition {
        meta: Default::default(),
        namespace: "default".into(),
        family: "web".into(),
        revision: 2,
        status: TaskDefinitionStatus::Active,
        cpu: 256,
        memory: 64,
        containers: vec![c],
        placement: Default::default(),
        ephemeral_storage: None,
        registered_at: NOW - 5 * MIN,
        deregistered_at: None,
    }]
}

/// Listed tokens carry no hash.
fn api_tokens() -> Vec<ApiTokenRecord> {
    let mut ci = ApiTokenRecord::new(
        "4f1c2a9e8b7d6c5a",
        "",
        "team-a",
        AccessRole::Deployer,
        NOW - 3 * 86_400_000,
        Some(NOW + 27 * 86_400_000),
    );
    ci.description = "ci pipeline".into();
    // Made with --aws: listed with its access key ID (the wire carries no secret).
    ci.aws_secret = Some(berth_model::SealedValue {
        key_id: String::new(),
        nonce: String::new(),
        ciphertext: String::new(),
    });
    let admin = ApiTokenRecord::new(
        "0a1b2c3d4e5f6071",
        "",
        "",
        AccessRole::Admin,
        NOW - 10 * 86_400_000,
        None,
    );
    let old = ApiTokenRecord::new(
        "9e8d7c6b5a493827",
        "",
        "team-b",
        AccessRole::Viewer,
        NOW - 2 * 3_600_000,
        Some(NOW - 3_600_000),
    );
    // Listed newest first here: the listing puts the oldest first.
    vec![old, ci, admin]
}

fn join_tokens() -> Vec<JoinTokenRecord> {
    vec![
        JoinTokenRecord {
            id: "a1b2c3d4e5f60718".into(),
            secret_hash: String::new(),
            role: NodeRole::Agent,
            created_at: NOW - 5 * MIN,
            expires_at: Some(NOW + 55 * MIN),
        },
        JoinTokenRecord {
            id: "5d4c3b2a19081726".into(),
            secret_hash: String::new(),
            role: NodeRole::Server,
            created_at: NOW - 86_400_000,
            expires_at: None,
        },
    ]
}

fn namespaces() -> Vec<(Namespace, Usage)> {
    let team_a = Quota {
        cpu: Some(4096),
        memory: Some(8192),
        tasks: Some(10),
    };
    let team_b = Quota {
        tasks: Some(4),
        ..Quota::default()
    };
    vec![
        (
            Namespace::new("default", Quota::default(), 0),
            Usage::of_tasks(3, 256, 512),
        ),
        (
            Namespace::new("team-a", team_a, NOW - 2 * 86_400_000),
            Usage::of_tasks(2, 1024, 2048),
        ),
        (
            Namespace::new("team-b", team_b, NOW - 30 * MIN),
            Usage::default(),
        ),
    ]
}

#[test]
fn token_and_namespace_listings_in_every_format() {
    check(
        "tokens.txt",
        &all_formats(|f| crate::tokens::render_tokens(f, &api_tokens(), NOW)),
    );
    check(
        "join-tokens.txt",
        &all_formats(|f| crate::tokens::render_join_tokens(f, &join_tokens(), NOW)),
    );
    check(
        "namespaces.txt",
        &all_formats(|f| crate::namespaces::render_namespaces(f, &namespaces(), false, NOW)),
    );
    let one = &namespaces()[1..2];
    check(
        "namespace.txt",
        &all_formats(|f| crate::namespaces::render_namespaces(f, one, true, NOW)),
    );
}

#[test]
fn get_output_of_every_kind_in_every_format() {
    check(
        "tasks.txt",
        &all_formats(|f| crate::render::render_tasks(f, &tasks(), false, NOW)),
    );
    check(
        "services.txt",
        &all_formats(|f| crate::services::render(f, &[service()], false, NOW)),
    );
    check(
        "nodes.txt",
        &all_formats(|f| crate::render::render_nodes(f, &nodes(), false)),
    );
    check(
        "taskdefs.txt",
        &all_formats(|f| crate::render::render_taskdefs(f, &taskdefs(), false, NOW)),
    );
}

#[test]
fn broken_manifests_explain_what_to_fix() {
    let dir = golden_dir().join("manifests");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("golden/manifests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 5);
    let mut out = String::new();
    for path in names {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(&path).expect("read manifest");
        let result = berth_manifest::parse(&name, &text);
        let line = match result {
            Ok(_) => "(valid)".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        out.push_str(&format!("{name}\n  {line}\n"));
    }
    check("manifest-errors.txt", &out);
}

#[test]
fn the_shipped_example_manifests_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read example");
            let docs = berth_manifest::parse(&path.display().to_string(), &text)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!docs.is_empty());
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} examples");
}
