use super::*;

const GOOD: &str = "\
apiVersion: berth.dev/v1
kind: TaskDefinition
metadata:
  name: web
  labels: {app: web}
spec:
  cpu: 256
  memory: 128
  containers:
    - name: app
      image: 127.0.0.1:5000/demo:latest
      command: [echo, hello]
      environment:
        MODE: dev
      stopTimeout: 5s
      healthCheck:
        command: [CMD-SHELL, test -f /tmp/ok]
        interval: 2s
        timeout: 1s
        retries: 2
    - name: sidecar
      image: busybox
      essential: false
      stopTimeout: 2
";

/// Parses `text` as `m.yaml` and renders the result or the error in one line.
fn check(text: &str, expected: &str) {
    let got = match parse("m.yaml", text) {
        Ok(docs) => docs
            .iter()
            .map(|d| match &d.object {
                Object::TaskDefinition(s) => format!(
                    "line {}: TaskDefinition {} cpu={} memory={} containers={}",
                    d.line,
                    s.family,
                    s.cpu,
                    s.memory,
                    s.containers
                        .iter()
                        .map(|c| format!(
                            "{}(essential={},stop={})",
                            c.name, c.essential, c.stop_timeout
                        ))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Object::Service { spec, template } => format!(
                    "line {}: Service {} td={} desired={} min={} max={} breaker={}/{} healthy={}s strategy={} template={}",
                    d.line,
                    spec.name,
                    spec.task_definition,
                    spec.desired_count,
                    spec.deployment_configuration.minimum_healthy_percent,
                    spec.deployment_configuration.maximum_percent,
                    spec.deployment_configuration.circuit_breaker.enable,
                    spec.deployment_configuration.circuit_breaker.rollback,
                    spec.deployment_configuration.healthy_deadline,
                    spec.deployment_configuration.strategy,
                    template.as_ref().map_or("-".to_owned(), |t| format!(
                        "{}:{}",
                        t.family,
                        t.containers.len()
                    )),
                ),
                Object::Task {
                    task_definition,
                    template,
                    count,
                } => format!(
                    "line {}: Task {} td={task_definition} count={count} template={}",
                    d.line,
                    d.metadata.name,
                    template.as_ref().map_or("-".to_owned(), |t| format!(
                        "{}:{} labels={:?}",
                        t.family,
                        t.containers.len(),
                        t.meta.labels
                    )),
                ),
                Object::Secret(values) => format!("line {}: Secret {:?}", d.line, values),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => e.to_string(),
    };
    assert_eq!(got, expected);
}

/// Checks `GOOD` with each `(from, to)` replacement made, as `check` does.
fn check_edits(edits: &[(&str, &str, &str)]) {
    for (from, to, expected) in edits {
        check(&GOOD.replace(from, to), expected);
    }
}

#[test]
fn parses_a_task_definition() {
    let docs = parse("m.yaml", GOOD).expect("valid");
    let Object::TaskDefinition(spec) = &docs[0].object else {
        panic!("expected a task definition")
    };
    let health = spec.containers[0]
        .health_check
        .clone()
        .expect("a health check");
    assert_eq!(
        (
            health.interval,
            health.timeout,
            health.retries,
            health.start_period
        ),
        (2, 1, 2, 0)
    );
    assert_eq!(health.argv(), ["/bin/sh", "-c", "test -f /tmp/ok"]);
    check(
        GOOD,
        "line 1: TaskDefinition web cpu=256 memory=128 containers=app(essential=true,stop=5),sidecar(essential=false,stop=2)",
    );
}

#[test]
fn multi_document_keeps_line_numbers() {
    let two = format!(
        "# first\n{GOOD}---\n{}",
        GOOD.replace("name: web", "name: api")
    );
    let docs = parse("m.yaml", &two).expect("valid");
    assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), [2, 27]);
    let bad = format!("{GOOD}---\n{}", GOOD.replace("memory: 128", "memroy: 128"));
    check(
        &bad,
        "m.yaml:33:3: spec: unknown field `memroy`, expected one of `cpu`, `memory`, `containers`, `placement`, `ephemeralStorage`",
    );
}

/// Each edit of the good manifest breaks one thing; the error names the file, line, column and
/// field, and says what to write instead.
#[test]
fn broken_fields_are_reported_with_their_position() {
    check_edits(&[
        // Unknown fields.
        ("command:", "comand:", "m.yaml:12:7: spec.containers[0]: unknown field `comand`, expected one of `name`, `image`, `command`, `entryPoint`, `environment`, `workingDirectory`, `essential`, `stopTimeout`, `cpu`, `memory`, `healthCheck`, `dependsOn`, `init`, `portMappings`, `secrets`, `secretFiles`, `repositoryCredentials`, `user`, `readonlyRootFilesystem`, `linuxParameters`, `ulimits`"),
        // Types and values.
        ("cpu: 256", "cpu: lots", "m.yaml:7:8: spec.cpu: invalid type: string \"lots\", expected u32"),
        ("stopTimeout: 5s", "stopTimeout: soon", "m.yaml:15:20: spec.containers[0].stopTimeout: invalid duration \"soon\" (expected number at 0); write it like 30s or 5m"),
        ("image: busybox", "image: \"\"", "m.yaml:22:14: spec.containers[1].image: must not be empty"),
        // The model's validation, mapped back to the field's line.
        ("timeout: 1s", "retries: 0", "m.yaml:17:9: spec.containers[0].healthCheck: duplicate field `retries`"),
        ("timeout: 1s", "timeout: 9s", "m.yaml:19:9: spec.containers[0].healthCheck.timeout: 9s is longer than the 2s interval"),
        ("memory: 128", "memory: 2", "m.yaml:8:3: spec.memory: 2 MiB is out of range; use 6..=1048576"),
        ("name: sidecar", "name: app", "m.yaml:21:7: spec.containers[1].name: container name \"app\" is used twice"),
        ("name: web", "name: -web", "m.yaml:4:3: metadata.name: \"-web\" must start with a letter or digit"),
        // The header.
        ("berth.dev/v1", "v2", "m.yaml:1:1: apiVersion \"v2\" is not supported; use berth.dev/v1"),
        ("kind: TaskDefinition", "kind: Deployment", "m.yaml:1:1: kind \"Deployment\" is not supported; use one of TaskDefinition, Service, Task, Secret"),
    ]);
}

#[test]
fn header_errors() {
    check(
        "apiVersion: v1\nkind: [oops",
        "m.yaml:2:7: kind: invalid type: sequence, expected a string",
    );
}

#[test]
fn placement_is_parsed_and_validated() {
    let with_placement = GOOD.replace(
        "  containers:\n    - name: app",
        "  placement:\n    strategy: [{type: spread, field: \"attribute:zone\"}]\n    constraints: [{type: distinctInstance}, {type: memberOf, expression: \"attribute:disk == ssd\"}]\n  containers:\n    - name: app",
    );
    let docs = parse("m.yaml", &with_placement).expect("valid");
    let Object::TaskDefinition(spec) = &docs[0].object else {
        panic!("expected a task definition")
    };
    assert_eq!(spec.placement.strategy.len(), 1);
    assert_eq!(spec.placement.constraints.len(), 2);
    let bad = with_placement.replace("attribute:disk == ssd", "disk is ssd");
    let err = parse("m.yaml", &bad).unwrap_err().to_string();
    assert!(
        err.contains("spec.placement.constraints[1].expression"),
        "{err}"
    );
}

#[test]
fn parses_services_by_reference_and_with_a_template() {
    check(
        &web_service(
        "  taskDefinition: web:2
  desiredCount: 3
---
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: api
spec:
  desiredCount: 2
  deploymentConfiguration:
    minimumHealthyPercent: 50
    maximumPercent: 150
    circuitBreaker: {rollback: false}
    healthyDeadline: 1m
    strategy: canary
  template:
    cpu: 256
    memory: 64
    containers:
      - name: app
        image: busybox
"),
        "line 1: Service web td=web:2 desired=3 min=100 max=200 breaker=true/true healthy=300s strategy=rolling template=-; \
         line 9: Service api td=api desired=2 min=50 max=150 breaker=true/false healthy=60s strategy=canary template=api:1",
    );
}

#[test]
fn service_errors_point_at_the_field() {
    check(
        &web_service(
        "  taskDefinition: web
  desiredCount: 3
  deploymentConfiguration:
    minimumHealthyPercent: 100
    maximumPercent: 100
"),
        "m.yaml:10:5: spec.deploymentConfiguration.maximumPercent: 100% leaves no room to replace tasks: it must be above minimumHealthyPercent (100%)",
    );
    check(
        &web_service(
        "  desiredCount: 3
"),
        "m.yaml:5:1: spec: taskDefinition (family or family:revision) or an inline template is required",
    );
    check(
        &web_service(
        "  taskDefinition: web
  desiredCount: 3
  replicas: 2
"),
        "m.yaml:8:3: spec: unknown field `replicas`, expected one of `taskDefinition`, `template`, `desiredCount`, `deploymentConfiguration`, `placement`, `autoscaling`, `ingress`, `deregistrationDelay`",
    );
}

#[test]
fn parses_an_autoscaling_policy() {
    let docs = parse(
        "m.yaml",
        &web_service(
            "  taskDefinition: web
  desiredCount: 1
  autoscaling:
    minCount: 1
    maxCount: 8
    targetTracking:
      - {metric: CPUUtilization, target: 50}
      - {metric: MemoryUtilization, target: 70}
    scaleInCooldown: 2m
",
        ),
    )
    .expect("valid");
    let Object::Service { spec, .. } = &docs[0].object else {
        panic!("expected a service")
    };
    let a = spec.autoscaling.as_ref().expect("a policy");
    assert_eq!((a.min_count, a.max_count), (1, 8));
    assert_eq!(a.target_tracking.len(), 2);
    assert_eq!((a.scale_out_cooldown, a.scale_in_cooldown), (10, 120));
    let err = parse(
        "m.yaml",
        &web_service(
            "  taskDefinition: web
  desiredCount: 1
  autoscaling:
    minCount: 5
    maxCount: 2
    targetTracking: [{metric: CPUUtilization, target: 50}]
",
        ),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.yaml:9:5: spec.autoscaling.minCount: 5 is above maxCount (2)"
    );
}

#[test]
fn parses_scale_to_zero_and_request_metrics_and_points_at_what_is_missing() {
    let policy = |autoscaling: &str, ingress: &str| {
        web_service(&format!(
            "  taskDefinition: web
  desiredCount: 1
  autoscaling:
{autoscaling}{ingress}"
        ))
    };
    let serverless = "    minCount: 0
    maxCount: 8
    targetTracking: [{metric: RequestsPerTask, target: 25}]
    scaleToZero: {idleAfter: 2m}
";
    let ingress = "  ingress: [{host: web.example, containerName: app, containerPort: 80}]
";
    let docs = parse("m.yaml", &policy(serverless, ingress)).expect("valid");
    let Object::Service { spec, .. } = &docs[0].object else {
        panic!("expected a service")
    };
    let a = spec.autoscaling.as_ref().expect("a policy");
    assert_eq!(
        a.scale_to_zero,
        Some(berth_model::ScaleToZero {
            idle_after: 120,
            activation_timeout: 30
        })
    );
    assert_eq!(
        a.target_tracking[0].metric,
        berth_model::ScalingMetric::RequestsPerTask
    );
    for (autoscaling, ingress, error) in [
        (
            serverless,
            "",
            "m.yaml:8:3: spec.autoscaling: scaleToZero, RequestsPerTask and ConcurrencyPerTask count the requests that reach the service through an ingress: add an HTTP ingress rule (ingress: [{host: ..., containerName: ..., containerPort: ...}])",
        ),
        (
            serverless,
            "  ingress:
    - {host: web.example, containerName: app, containerPort: 80}
    - {listenerPort: 9000, containerName: app, containerPort: 80}
",
            "m.yaml:8:3: spec.autoscaling: scaleToZero, RequestsPerTask and ConcurrencyPerTask count HTTP requests only, and TCP connections would find no task at zero: remove the TCP ingress rules (listenerPort) or these settings",
        ),
        (
            "    minCount: 0
    maxCount: 8
    targetTracking: [{metric: CPUUtilization, target: 50}]
",
            "",
            "m.yaml:9:5: spec.autoscaling.minCount: 0 needs scaleToZero (e.g. scaleToZero: {idleAfter: 5m}), which wakes the service on the next request; or use minCount 1 or more",
        ),
        (
            "    minCount: 0
    maxCount: 8
    targetTracking: [{metric: RequestsPerTask, target: 25}]
    scaleToZero: {idleAfter: 10s}
",
            ingress,
            "m.yaml:12:5: spec.autoscaling.scaleToZero.idleAfter: 10s is too short; use at least 30s",
        ),
        (
            "    minCount: 0
    maxCount: 8
    targetTracking: [{metric: RequestsPerTask, target: 0}]
    scaleToZero: {}
",
            ingress,
            "m.yaml:11:5: spec.autoscaling.targetTracking[0].target: 0 is out of range; RequestsPerTask takes a number above 0 and at most 1000000",
        ),
    ] {
        let err = parse("m.yaml", &policy(autoscaling, ingress)).unwrap_err();
        assert_eq!(err.to_string(), error);
    }
}

/// The JSON Schema shipped in the repository is the one the code generates; refresh it with
/// `BERTH_UPDATE_GOLDEN=1 cargo test -p berth-manifest`.
#[test]
fn the_shipped_json_schema_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("berth.schema.json");
    let generated = json_schema();
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let shipped = std::fs::read_to_string(&path).expect("berth.schema.json");
    assert!(
        shipped == generated,
        "berth.schema.json is stale; run BERTH_UPDATE_GOLDEN=1 cargo test -p berth-manifest"
    );
    // It knows both kinds and rejects unknown fields, as the parser does.
    let v: serde_json::Value = serde_json::from_str(&generated).expect("JSON");
    let text = v.to_string();
    assert!(
        text.contains("\"const\":\"Service\"") && text.contains("\"const\":\"TaskDefinition\"")
    );
    assert!(text.contains("\"additionalProperties\":false"));
    assert!(
        text.contains("desiredCount")
            && text.contains("healthCheck")
            && text.contains("targetTracking")
    );
}

#[test]
fn parses_task_manifests() {
    check(
        "\
apiVersion: berth.dev/v1
kind: Task
metadata:
  name: job
  labels: {team: a}
spec:
  count: 3
  template:
    cpu: 128
    memory: 32
    containers:
      - name: main
        image: busybox
---
apiVersion: berth.dev/v1
kind: Task
metadata:
  name: again
spec:
  taskDefinition: job:1
",
        "line 1: Task job td=job count=3 template=job:1 labels={\"team\": \"a\"}; line 15: Task again td=job:1 count=1 template=-",
    );
    check(
        "\
apiVersion: berth.dev/v1
kind: Task
metadata:
  name: job
spec:
  taskDefinition: job
  count: 0
",
        "m.yaml:7:3: spec.count: 0 is out of range; use 1..=1000",
    );
}

/// A Service manifest named web whose spec is `spec` (indented lines).
fn web_service(spec: &str) -> String {
    format!("apiVersion: berth.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}")
}

#[test]
fn oversized_or_deeply_nested_manifests_are_refused_before_parsing() {
    // A megabyte of open brackets: refused at once by the depth check.
    let brackets = format!(
        "apiVersion: berth.dev/v1\nkind: Task\nspec: {}",
        "[".repeat(1_000_000)
    );
    let err = crate::parse("deep.yaml", &brackets).expect_err("too deep");
    assert_eq!(
        err.to_string(),
        "deep.yaml:3:1: nested more than 32 levels deep; no berth manifest is"
    );
    // Block nesting: by indentation, and by `- - -` on one line.
    let mut indented = String::from("apiVersion: berth.dev/v1\nkind: Task\nspec:\n");
    for depth in 1..40 {
        indented.push_str(&format!("{}k{depth}:\n", " ".repeat(depth * 2)));
    }
    assert!(crate::parse("deep.yaml", &indented)
        .expect_err("too deep")
        .message
        .contains("nested more than 32"));
    let dashes = format!("spec:\n  {}x\n", "- ".repeat(40));
    assert!(crate::parse("deep.yaml", &dashes).is_err());
    // Too large.
    let large = format!("# {}\n", "x".repeat(crate::MAX_MANIFEST_BYTES));
    assert!(crate::parse("big.yaml", &large)
        .expect_err("too large")
        .message
        .contains("too large"));
    // Quotes and comments do not count.
    let quoted = "apiVersion: berth.dev/v1 # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nkind: 'x[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['\n";
    let err = crate::parse("q.yaml", quoted).expect_err("an unknown kind");
    assert!(err.message.contains("is not supported"), "{err}");
}

#[test]
fn secrets_take_text_and_base64_values_and_never_print_them() {
    let text = "\
apiVersion: berth.dev/v1
kind: Secret
metadata:
  name: db-creds
  namespace: team-a
spec:
  stringData:
    username: admin
  data:
    password: aHVudGVyMg==
";
    let docs = parse("s.yaml", text).expect("parses");
    let Object::Secret(values) = &docs[0].object else {
        panic!("a secret");
    };
    assert_eq!(values.0["username"], b"admin");
    assert_eq!(values.0["password"], b"hunter2");
    assert_eq!(docs[0].metadata.namespace.as_deref(), Some("team-a"));
    let printed = format!("{:?}", docs[0]);
    assert!(
        printed.contains("password") && !printed.contains("hunter2"),
        "{printed}"
    );
    for (edit, expected) in [
        (
            ("aHVudGVyMg==", "not base64!"),
            "s.yaml:10:5: spec.data.password: not base64; put text under stringData",
        ),
        (
            ("db-creds", "DB_creds"),
            "s.yaml:4:3: metadata.name: \"DB_creds\" is not a DNS label: use 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
        ),
        (
            ("    username", "    pass/word"),
            "s.yaml:8:5: spec.stringData.pass/word: \"pass/word\" contains '/'; use letters, digits, '-', '_' and '.'",
        ),
    ] {
        let err = parse("s.yaml", &text.replace(edit.0, edit.1)).expect_err("refused");
        assert_eq!(err.to_string(), expected);
    }
}

mod properties {
    //! Random and adversarial manifests: the parser never panics, and a refusal of a document
    //! that is valid YAML names the field it is about.

    use proptest::prelude::*;

    use super::GOOD;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_text_is_parsed_or_refused_with_a_position(text in any::<String>()) {
            if let Err(e) = crate::parse("m.yaml", &text) {
                prop_assert!(e.to_string().starts_with("m.yaml:"), "{e}");
                prop_assert!(!e.message.trim().is_empty());
            }
        }

        #[test]
        fn yaml_like_text_is_parsed_or_refused_with_a_position(
            text in "[a-zA-Z0-9:{}\\[\\],\\- \n'\"#&*!|>%@]{0,400}"
        ) {
            let doc = format!("apiVersion: berth.dev/v1\nkind: TaskDefinition\n{text}");
            if let Err(e) = crate::parse("m.yaml", &doc) {
                prop_assert!(e.to_string().starts_with("m.yaml:"), "{e}");
            }
        }

        #[test]
        fn a_changed_value_is_refused_by_its_field(
            line in 0usize..GOOD.lines().count(),
            value in prop_oneof![
                Just("-1".to_owned()),
                Just("99999999999999999999".to_owned()),
                Just("1e400".to_owned()),
                Just("''".to_owned()),
                Just("[]".to_owned()),
                Just("{}".to_owned()),
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("\"\\u0000\"".to_owned()),
                Just("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".to_owned()),
                "[a-zA-Z0-9_]{1,300}",
            ],
        ) {
            let lines: Vec<String> = GOOD
                .lines()
                .enumerate()
                .map(|(i, l)| match l.split_once(": ") {
                    Some((key, _)) if i == line => format!("{key}: {value}"),
                    _ => l.to_owned(),
                })
                .collect();
            let doc = lines.join("\n");
            if let Err(e) = crate::parse("m.yaml", &doc) {
                let names_a_field = ["spec", "metadata", "apiVersion", "kind", "nested"]
                    .iter()
                    .any(|f| e.message.contains(f));
                prop_assert!(names_a_field, "{doc}\n=> {e}");
            }
        }
    }
}
