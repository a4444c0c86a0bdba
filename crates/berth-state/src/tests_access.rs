//! Tests of tokens, namespaces and quota admission. Each runs a script of `(at, command)`
//! steps and compares one line per answer (with the keys it changed) to the expected lines.

use berth_model::{
    AccessRole, ApiTokenRecord, ContainerDefinition, JoinTokenRecord, NodeRole, Permission, Quota,
    SealedValue, Service, ServiceSpec, Task, TaskDefinitionSpec, Usage,
};

use crate::command::*;
use crate::{Key, State};

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One line for an answer: what it says, then the keys it changed.
fn show(result: &CommandResult, changed: &[Key]) -> String {
    let answer = match result {
        CommandResult::Done => "done".to_owned(),
        CommandResult::ApiToken(t) => format!(
            "api token {} {} of {} created {} expires {:?}",
            t.id, t.role, t.namespace, t.created_at, t.expires_at
        ),
        CommandResult::JoinToken(t) => format!(
            "join token {} for {}s created {} expires {:?}",
            t.id, t.role, t.created_at, t.expires_at
        ),
        CommandResult::Namespace(n) => format!("namespace {} ({})", n.name, n.quota),
        CommandResult::Tasks(ts) => {
            let ids: Vec<&str> = ts.iter().map(|t| t.task_id.as_str()).collect();
            format!("tasks {}", ids.join(" "))
        }
        CommandResult::Task(t) => format!("task {}", t.task_id),
        CommandResult::Service { service, .. } => {
            format!("service {} desired {}", service.name, service.desired_count)
        }
        CommandResult::Rejected(r) => {
            let kind = match r {
                Rejection::Invalid(_) => "Invalid",
                Rejection::NotFound(_) => "NotFound",
                Rejection::Conflict(_) => "Conflict",
                Rejection::QuotaExceeded(_) => "QuotaExceeded",
            };
            format!("{kind}: {r}")
        }
        other => other.kind().to_owned(),
    };
    let keys: Vec<String> = changed.iter().map(Key::encode).collect();
    format!("{answer} [{}]", keys.join(" "))
}

/// Applies each command stamped with its time; one line per answer.
fn script(s: &mut State, steps: Vec<(u64, Command)>) -> Vec<String> {
    steps
        .into_iter()
        .map(|(at, mut command)| {
            command.stamp(at);
            let (result, changed) = s.apply(command);
            show(&result, &changed)
        })
        .collect()
}

fn check(s: &mut State, steps: Vec<(u64, Command)>, expected: &[&str]) {
    assert_eq!(script(s, steps), expected);
    crate::tests::round_trips(s);
}

fn api(id: &str, role: AccessRole, namespace: &str, expires_at: Option<u64>) -> Command {
    Command::CreateApiToken {
        record: ApiTokenRecord::new(id, HASH, namespace, role, 0, expires_at),
        at: 0,
    }
}

fn join(id: &str, role: NodeRole, expires_at: Option<u64>) -> Command {
    Command::CreateJoinToken {
        record: JoinTokenRecord {
            id: id.into(),
            secret_hash: HASH.into(),
            role,
            created_at: 0,
            expires_at,
        },
        at: 0,
    }
}

fn namespace(name: &str, quota: Quota) -> Command {
    Command::CreateNamespace {
        name: name.into(),
        quota,
        at: 0,
    }
}

fn tasks_quota(tasks: u32) -> Quota {
    Quota {
        tasks: Some(tasks),
        ..Quota::default()
    }
}

#[test]
fn tokens_are_created_revoked_and_expire() {
    use AccessRole::*;
    let mut s = State::default();
    check(
        &mut s,
        vec![
            (1, namespace("a", Quota::default())),
            (2, api("t1", Viewer, "a", Some(100))),
            (3, api("t1", Deployer, "a", None)),
            (4, api("t2", Deployer, "b", None)),
            (5, api("t3", Admin, "ignored", None)),
            (6, api("t4", Viewer, "a", Some(6))),
            (7, api("t5", Deployer, "default", None)),
            (8, join("j1", NodeRole::Agent, Some(50))),
            (9, join("j1", NodeRole::Server, None)),
            (10, Command::RevokeApiToken { id: "t3".into(), at: 0 }),
            (11, Command::RevokeApiToken { id: "t3".into(), at: 0 }),
            (200, api("t6", Deployer, "a", None)),
            (201, Command::RevokeJoinToken { id: "j1".into(), at: 0 }),
            (202, Command::RevokeJoinToken { id: "j1".into(), at: 0 }),
        ],
        &[
            "namespace a (no quota) [namespace/a]",
            "api token t1 viewer of a created 2 expires Some(100) [apitoken/t1]",
            "Conflict: API token t1 already exists []",
            "NotFound: namespace b not found; create it first with `berth namespace create b` []",
            "api token t3 admin of * created 5 expires None [apitoken/t3]",
            "Invalid: the token would expire at 1970-01-01T00:00:00.006Z, before it is created (1970-01-01T00:00:00.006Z); give a positive TTL []",
            "api token t5 deployer of default created 7 expires None [apitoken/t5]",
            "join token j1 for agents created 8 expires Some(50) [jointoken/j1]",
            "Conflict: join token j1 already exists []",
            "api token t3 admin of * created 5 expires None [apitoken/t3]",
            "NotFound: API token t3 not found; `berth token list` lists them []",
            // t1 expired at 100: forgotten as the next token is created.
            "api token t6 deployer of a created 200 expires None [apitoken/t1 apitoken/t6]",
            "join token j1 for agents created 8 expires Some(50) [jointoken/j1]",
            "NotFound: join token j1 not found; `berth cluster token list` lists them []",
        ],
    );
    let ids: Vec<&str> = s.api_tokens().iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t5", "t6"], "oldest first");
    let t6 = s.api_token("t6").expect("stored");
    assert_eq!(t6.allows(Permission::Write, Some("a"), 300), Ok(()));
    assert_eq!(
        t6.allows(Permission::Read, Some("b"), 300)
            .map_err(|e| e.to_string()),
        Err("token t6 is a deployer of namespace a: it has no access to namespace b".into())
    );
    assert!(s.join_token("j1").is_none());
}

fn sealed(key_id: &str, ciphertext: &str) -> SealedValue {
    SealedValue {
        key_id: key_id.into(),
        nonce: "bm9uY2U=".into(),
        ciphertext: ciphertext.into(),
    }
}

fn aws(id: &str, key_id: &str) -> Command {
    let mut record = ApiTokenRecord::new(id, HASH, "", AccessRole::Admin, 0, None);
    record.aws_secret = Some(sealed(key_id, "c2VhbGVk"));
    Command::CreateApiToken { record, at: 0 }
}

#[test]
fn aws_tokens_are_sealed_under_the_active_key_and_sealed_again_on_rotation() {
    let mut s = State::default();
    let activate = |key: &str| Command::ActivateSecretKey {
        key_id: key.into(),
        at: 0,
    };
    let reseal = |secrets: Vec<(&str, SealedValue)>| Command::ResealApiTokens {
        secrets: secrets
            .into_iter()
            .map(|(id, v)| (id.to_owned(), v))
            .collect(),
        at: 0,
    };
    check(
        &mut s,
        vec![
            (1, aws("t1", "k1")),
            (2, activate("k1")),
            (3, aws("t1", "k1")),
            (4, api("t2", AccessRole::Admin, "", None)),
            (5, activate("k2")),
            (6, aws("t3", "k1")),
            (
                7,
                reseal(vec![
                    ("t1", sealed("k2", "YWdhaW4=")),
                    ("t2", sealed("k2", "bm90LWF3cw==")),
                    ("gone", sealed("k2", "eA==")),
                    ("t1", sealed("k1", "b2xk")),
                ]),
            ),
        ],
        &[
            "Conflict: the secret of API token t1 was sealed with key k1, which is no longer the active key; try again []",
            "done [secret-keys]",
            "api token t1 admin of * created 3 expires None [apitoken/t1]",
            "api token t2 admin of * created 4 expires None [apitoken/t2]",
            "done [secret-keys]",
            "Conflict: the secret of API token t3 was sealed with key k1, which is no longer the active key; try again []",
            // t2 is a bearer token, "gone" is not stored, and k1 is no longer the active key.
            "Count [apitoken/t1]",
        ],
    );
    let t1 = s.api_token("t1").expect("stored");
    assert_eq!(t1.aws_secret, Some(sealed("k2", "YWdhaW4=")));
    assert_eq!(s.api_token("t2").expect("stored").aws_secret, None);
}

#[test]
fn an_expired_token_allows_nothing_while_it_is_still_stored() {
    let mut s = State::default();
    script(
        &mut s,
        vec![(1, api("t1", AccessRole::Admin, "", Some(100)))],
    );
    let t1 = s.api_token("t1").expect("stored");
    assert_eq!(t1.allows(Permission::ManageCluster, None, 99), Ok(()));
    assert_eq!(
        t1.allows(Permission::Read, Some("default"), 100)
            .map_err(|e| e.to_string()),
        Err("token t1 expired at 1970-01-01T00:00:00.100Z".into())
    );
}

/// A namespace `team-a` with `quota`, task definition `web:1` (256 CPU units, 64 MiB) in it,
/// and a node big enough for anything.
fn team_a(quota: Quota) -> State {
    let mut s = State::default();
    script(
        &mut s,
        vec![
            (1, namespace("team-a", quota)),
            (
                1,
                Command::RegisterTaskDefinition {
                    namespace: "team-a".into(),
                    spec: TaskDefinitionSpec::new(
                        "web",
                        256,
                        64,
                        vec![ContainerDefinition::new("app", "busybox")],
                    ),
                    reuse_identical: false,
                    at: 0,
                },
            ),
            (
                1,
                Command::RegisterNode {
                    node: berth_model::Node::new("n1", "127.0.0.1:1", 1 << 20, 1 << 20),
                    at: 0,
                },
            ),
        ],
    );
    s
}

/// New PENDING tasks of `web:1` in team-a, of service `svc` when `deployment` is given.
fn new_tasks(s: &State, ids: &[&str], deployment: Option<&str>) -> Vec<Task> {
    let def = s
        .task_definition("team-a", &"web:1".parse().expect("ref"))
        .expect("registered");
    ids.iter()
        .map(|id| {
            let mut t = Task::pending((*id).into(), "team-a", def, 0);
            if let Some(d) = deployment {
                t.group = Some("service:svc".into());
                t.started_by = Some(d.into());
            }
            t
        })
        .collect()
}

fn run(s: &State, ids: &[&str]) -> Command {
    Command::CreateTasks {
        tasks: new_tasks(s, ids, None),
        client_token: None,
        at: 0,
    }
}

fn stop(id: &str) -> Command {
    Command::StopTask {
        namespace: "team-a".into(),
        task_id: id.into(),
        stop_code: berth_model::StopCode::UserInitiated,
        reason: "by hand".into(),
        at: 0,
    }
}

fn apply_service(desired: u32) -> Command {
    Command::ApplyService {
        namespace: "team-a".into(),
        spec: Box::new(ServiceSpec {
            ingress: Vec::new(),
            deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
            meta: Default::default(),
            name: "svc".into(),
            task_definition: "web:1".parse().expect("ref"),
            desired_count: desired,
            deployment_configuration: Default::default(),
            placement: Default::default(),
            autoscaling: None,
        }),
        deployment_id: "d1".into(),
        at: 0,
    }
}

fn svc(s: &State) -> Service {
    s.service("team-a", "svc").cloned().expect("service")
}

/// What berth-scheduler's reconciler proposes to start `ids` for deployment d1: the service
/// as stored plus its "started N tasks" event, and the tasks.
fn reconcile_start(s: &State, ids: &[&str], at: u64) -> Command {
    let mut service = svc(s);
    service.events.push(
        at,
        format!("started {} tasks of web:1 (deployment d1)", ids.len()),
    );
    Command::ReconcileService(Reconciliation {
        namespace: "team-a".into(),
        name: "svc".into(),
        version: service.version,
        service: Box::new(service),
        start: new_tasks(s, ids, Some("d1")),
        stop: vec![],
        remove: false,
        at,
    })
}

fn events(s: &State) -> Vec<String> {
    svc(s).events.iter().map(|e| e.message.clone()).collect()
}

#[test]
fn run_task_is_stopped_at_the_quota_with_the_limit_and_its_use() {
    let mut s = team_a(tasks_quota(2));
    let steps = vec![
        (2, run(&s, &["t1", "t2"])),
        (3, run(&s, &["t3"])),
        (4, stop("t1")),
        (5, run(&s, &["t3", "t4"])),
        (6, run(&s, &["t3"])),
    ];
    check(
        &mut s,
        steps,
        &[
            "tasks t1 t2 [task/t1 task/t2]",
            "QuotaExceeded: namespace team-a's quota of 2 tasks is used up: 2 running or pending, 1 more asked []",
            // Not placed yet: it stops at once and frees its share.
            "task t1 [task/t1]",
            "QuotaExceeded: namespace team-a's quota of 2 tasks has room for 1 more: 1 running or pending, 2 more asked []",
            "tasks t3 [task/t3]",
        ],
    );
    assert_eq!(s.namespace_usage("team-a"), Usage::of_tasks(2, 256, 64));

    let mut s = team_a(Quota {
        cpu: Some(512),
        memory: Some(100),
        tasks: None,
    });
    let steps = vec![
        (2, run(&s, &["t1"])),
        (3, run(&s, &["t2", "t3"])),
        (4, run(&s, &["t2"])),
    ];
    check(
        &mut s,
        steps,
        &[
            "tasks t1 [task/t1]",
            "QuotaExceeded: namespace team-a's quota of 512 CPU units has room for 256 more: 256 reserved by tasks running or pending, 512 more asked []",
            "QuotaExceeded: namespace team-a's quota of 100 MiB of memory has room for 36 more: 64 MiB reserved by tasks running or pending, 64 more asked []",
        ],
    );
}

#[test]
fn a_namespace_without_a_limit_and_default_admit_anything() {
    let mut s = team_a(Quota::default());
    let steps = vec![(2, run(&s, &["t1", "t2", "t3"]))];
    check(&mut s, steps, &["tasks t1 t2 t3 [task/t1 task/t2 task/t3]"]);
    assert_eq!(
        s.admit("default", Usage::of_tasks(1000, 1 << 20, 1 << 20)),
        Ok(())
    );
}

#[test]
fn apply_and_scale_are_refused_when_the_desired_count_does_not_fit() {
    let mut s = team_a(tasks_quota(3));
    let steps = vec![
        (2, run(&s, &["t1"])),
        (3, apply_service(3)),
        (4, apply_service(2)),
        (5, apply_service(3)),
        (
            6,
            Command::UpdateService {
                namespace: "team-a".into(),
                name: "svc".into(),
                change: ServiceChange::Scale(4),
                at: 0,
            },
        ),
        (
            7,
            Command::UpdateService {
                namespace: "team-a".into(),
                name: "svc".into(),
                change: ServiceChange::Scale(1),
                at: 0,
            },
        ),
    ];
    check(
        &mut s,
        steps,
        &[
            "tasks t1 [task/t1]",
            "QuotaExceeded: service svc at desired count 3 does not fit: namespace team-a's quota of 3 tasks has room for 2 more: 1 running or pending, 3 more asked []",
            "service svc desired 2 [service/team-a/svc]",
            "QuotaExceeded: service svc at desired count 3 does not fit: namespace team-a's quota of 3 tasks has room for 2 more: 1 running or pending, 3 more asked []",
            "QuotaExceeded: scaling service svc to 4 does not fit: namespace team-a's quota of 3 tasks has room for 2 more: 1 running or pending, 4 more asked []",
            "service svc desired 1 [service/team-a/svc]",
        ],
    );
}

#[test]
fn reconciler_starts_beyond_the_quota_are_held_back_and_said_once() {
    // Quota of 3 tasks: a service of 2 and then two one-off tasks leave room for one of the
    // service's tasks.
    let mut s = team_a(tasks_quota(3));
    let steps = vec![(2, apply_service(2)), (3, run(&s, &["t1", "t2"]))];
    script(&mut s, steps);
    let round1 = reconcile_start(&s, &["s1", "s2"], 4);
    check(
        &mut s,
        vec![(4, round1)],
        &["done [task/s1 service/team-a/svc]"],
    );
    // The reconciler asks again for the one missing: nothing changes, nothing is written.
    for at in [5, 6] {
        let again = reconcile_start(&s, &[&format!("s{at}")], at);
        check(&mut s, vec![(at, again)], &["done []"]);
    }
    assert_eq!(
        events(&s),
        [
            "created with web:1 and desired count 2",
            "started 1 tasks of web:1 (deployment d1)",
            "new tasks held back: namespace team-a's quota of 3 tasks is used up: 3 running or pending, 1 more asked",
        ]
    );
    assert_eq!(s.namespace_usage("team-a").tasks, 3);
    // The quota grows: the next round starts the missing task and says so.
    let grow = Command::UpdateNamespace {
        name: "team-a".into(),
        quota: tasks_quota(4),
        at: 0,
    };
    let round = reconcile_start(&s, &["s7"], 7);
    check(
        &mut s,
        vec![(7, grow), (8, round)],
        &[
            "namespace team-a (tasks 4) [namespace/team-a]",
            "done [task/s7 service/team-a/svc]",
        ],
    );
    assert_eq!(
        events(&s)[3..],
        [
            "started 1 tasks of web:1 (deployment d1)",
            "no longer held back by namespace team-a's quota: 1 new task started",
        ]
    );
}

#[test]
fn autoscaling_out_beyond_the_quota_is_refused_with_one_event() {
    let mut s = team_a(tasks_quota(3));
    script(&mut s, vec![(2, apply_service(2))]);
    let scale = |s: &State, desired: u32| {
        Command::AutoScale(ScalingDecision {
            namespace: "team-a".into(),
            name: "svc".into(),
            version: svc(s).version,
            desired_count: desired,
            scale_out: true,
            reason: format!("cpu above target: {desired}"),
            at: 0,
        })
    };
    let steps = vec![
        (3, scale(&s, 5)),
        (4, scale(&s, 5)),
        (5, scale(&s, 4)),
        (6, scale(&s, 3)),
    ];
    check(
        &mut s,
        steps,
        &[
            "QuotaExceeded: scale-out of service svc to 5 refused: namespace team-a's quota of 3 tasks has room for 3 more: 0 running or pending, 5 more asked [service/team-a/svc]",
            "QuotaExceeded: scale-out of service svc to 5 refused: namespace team-a's quota of 3 tasks has room for 3 more: 0 running or pending, 5 more asked []",
            "QuotaExceeded: scale-out of service svc to 4 refused: namespace team-a's quota of 3 tasks has room for 3 more: 0 running or pending, 4 more asked [service/team-a/svc]",
            "done [service/team-a/svc]",
        ],
    );
    assert_eq!(
        events(&s),
        [
            "created with web:1 and desired count 2",
            "scale-out of service svc to 4 refused: namespace team-a's quota of 3 tasks has room for 3 more: 0 running or pending, 4 more asked",
            "cpu above target: 3",
        ]
    );
    assert_eq!(svc(&s).desired_count, 3);
}

#[test]
fn namespaces_are_created_updated_and_deleted_only_when_empty() {
    let mut s = team_a(tasks_quota(4));
    let steps = vec![
        (2, namespace("team-a", Quota::default())),
        (2, namespace("default", Quota::default())),
        (2, namespace("a b", Quota::default())),
        (
            3,
            Command::UpdateNamespace {
                name: "team-a".into(),
                quota: Quota {
                    cpu: Some(2048),
                    ..tasks_quota(8)
                },
                at: 0,
            },
        ),
        (
            3,
            Command::UpdateNamespace {
                name: "nope".into(),
                quota: Quota::default(),
                at: 0,
            },
        ),
        (4, apply_service(1)),
        (5, run(&s, &["t1", "t2"])),
        (6, api("t-a", AccessRole::Viewer, "team-a", None)),
        (
            7,
            Command::DeleteNamespace {
                name: "team-a".into(),
                at: 0,
            },
        ),
        (8, stop("t1")),
        (8, stop("t2")),
        (
            8,
            Command::UpdateService {
                namespace: "team-a".into(),
                name: "svc".into(),
                change: ServiceChange::Delete,
                at: 0,
            },
        ),
    ];
    check(
        &mut s,
        steps,
        &[
            "Conflict: namespace team-a already exists []",
            "Conflict: namespace default already exists []",
            "Invalid: name: \"a b\" is not a DNS label: use 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit []",
            "namespace team-a (cpu 2048, tasks 8) [namespace/team-a]",
            "NotFound: namespace nope not found; `berth namespace get` lists them []",
            "service svc desired 1 [service/team-a/svc]",
            "tasks t1 t2 [task/t1 task/t2]",
            "api token t-a viewer of team-a created 6 expires None [apitoken/t-a]",
            "Invalid: namespace team-a still holds 1 service and 2 tasks that have not stopped; delete its services and stop its tasks first (`berth get services -n team-a`, `berth get tasks -n team-a`) []",
            "task t1 [task/t1]",
            "task t2 [task/t2]",
            "service svc desired 0 [service/team-a/svc]",
        ],
    );
    let deleted = svc(&s);
    let steps = vec![
        (
            9,
            Command::ReconcileService(Reconciliation {
                namespace: "team-a".into(),
                name: "svc".into(),
                version: deleted.version,
                service: Box::new(deleted),
                start: vec![],
                stop: vec![],
                remove: true,
                at: 0,
            }),
        ),
        (
            10,
            Command::DeleteNamespace {
                name: "team-a".into(),
                at: 0,
            },
        ),
        (
            11,
            Command::DeleteNamespace {
                name: "default".into(),
                at: 0,
            },
        ),
        (
            12,
            Command::DeleteNamespace {
                name: "team-a".into(),
                at: 0,
            },
        ),
    ];
    check(
        &mut s,
        steps,
        &[
            "done [service/team-a/svc]",
            // Its tokens go with it.
            "namespace team-a (cpu 2048, tasks 8) [namespace/team-a apitoken/t-a]",
            "Invalid: namespace default cannot be deleted []",
            "NotFound: namespace team-a not found; `berth namespace get` lists them []",
        ],
    );
}

#[test]
fn default_exists_without_a_record_and_gets_one_with_a_quota() {
    let mut s = State::default();
    let names = |s: &State| -> Vec<String> {
        s.namespaces()
            .iter()
            .map(|n| format!("{} ({})", n.name, n.quota))
            .collect()
    };
    assert_eq!(names(&s), ["default (no quota)"]);
    assert!(s.namespace("default").is_some() && s.namespace("other").is_none());
    check(
        &mut s,
        vec![
            (1, namespace("alpha", Quota::default())),
            (1, namespace("zeta", tasks_quota(1))),
            (
                2,
                Command::UpdateNamespace {
                    name: "default".into(),
                    quota: tasks_quota(10),
                    at: 0,
                },
            ),
        ],
        &[
            "namespace alpha (no quota) [namespace/alpha]",
            "namespace zeta (tasks 1) [namespace/zeta]",
            "namespace default (tasks 10) [namespace/default]",
        ],
    );
    assert_eq!(
        names(&s),
        ["alpha (no quota)", "default (tasks 10)", "zeta (tasks 1)"]
    );
    let events: Vec<&str> = s
        .namespace("default")
        .expect("default")
        .events
        .iter()
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(events, ["quota changed: tasks none -> 10"]);
}

#[test]
fn new_objects_keep_their_stored_json() {
    let mut s = team_a(tasks_quota(4));
    script(
        &mut s,
        vec![
            (
                1_800_000_000_000,
                api("t1", AccessRole::Deployer, "team-a", None),
            ),
            (
                1_800_000_000_000,
                join("j1", NodeRole::Server, Some(1_800_000_060_000)),
            ),
        ],
    );
    let stored: Vec<String> = s
        .objects()
        .filter(|o| {
            matches!(
                o,
                crate::Object::ApiToken(_)
                    | crate::Object::JoinToken(_)
                    | crate::Object::Namespace(_)
            )
        })
        .map(|o| crate::tests::stored(&o))
        .collect();
    assert_eq!(
        stored,
        [
            format!(r#"apitoken/t1 {{"kind":"apiToken","object":{{"id":"t1","secretHash":"{HASH}","namespace":"team-a","role":"deployer","createdAt":"2027-01-15T08:00:00.000Z"}}}}"#),
            format!(r#"jointoken/j1 {{"kind":"joinToken","object":{{"id":"j1","secretHash":"{HASH}","role":"server","createdAt":"2027-01-15T08:00:00.000Z","expiresAt":"2027-01-15T08:01:00.000Z"}}}}"#),
            r#"namespace/team-a {"kind":"namespace","object":{"name":"team-a","quota":{"tasks":4},"createdAt":"1970-01-01T00:00:00.001Z","events":[{"at":"1970-01-01T00:00:00.001Z","message":"created with quota tasks 4"}]}}"#.to_owned(),
        ]
    );
    let decoded: Vec<crate::Object> = s
        .objects()
        .map(|o| {
            serde_json::from_str(&serde_json::to_string(&o).expect("encodes")).expect("decodes")
        })
        .collect();
    assert_eq!(State::from_objects(decoded), s);
}

#[test]
fn commands_name_their_namespace_for_the_audit_log() {
    let stop = Command::StopTask {
        namespace: "team-a".into(),
        task_id: "t1".into(),
        stop_code: berth_model::StopCode::UserInitiated,
        reason: String::new(),
        at: 0,
    };
    assert_eq!(stop.namespace(), Some("team-a"));
    let delete = Command::DeleteNamespace {
        name: "team-b".into(),
        at: 0,
    };
    assert_eq!(delete.namespace(), Some("team-b"));
    let none = Command::CreateTasks {
        tasks: vec![],
        client_token: None,
        at: 0,
    };
    assert_eq!(none.namespace(), None);
    let cluster_wide = Command::RemoveNode {
        node: "n1".into(),
        at: 0,
    };
    assert_eq!(cluster_wide.namespace(), None);
}

#[test]
fn credentials_hold_the_tokens_of_their_moment() {
    use AccessRole::*;
    let mut s = State::default();
    s.apply(api("t1", Admin, "", None));
    let created = s.credentials();
    s.apply(Command::RevokeApiToken {
        id: "t1".into(),
        at: 1,
    });
    let revoked = s.credentials();
    assert_eq!(created.api_token("t1").map(|t| t.role), Some(Admin));
    assert!(
        revoked.api_token("t1").is_none(),
        "a revoked token is gone from the next view"
    );
}
