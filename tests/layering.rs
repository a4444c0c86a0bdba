//! Architecture invariants of the crate graph, checked on every `make test`:
//! - each berth crate depends only on the berth crates listed for it here (no upward arrows;
//!   a new crate must be added with its place in the graph);
//! - the pure crates (model, manifest, scheduler, state, control) depend on no IO crate:
//!   their other dependencies come from a short allowlist;
//! - only berth-store names openraft and redb, only berth-agent names containerd-client;
//! - only berth-proto converts between wire and model types;
//! - in the server, only `status.rs` turns errors into gRPC statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Every berth crate and the berth crates it may depend on (normal dependencies).
const GRAPH: &[(&str, &[&str])] = &[
    ("berth-model", &[]),
    ("berth-manifest", &["berth-model"]),
    ("berth-scheduler", &["berth-model"]),
    ("berth-state", &["berth-model"]),
    (
        "berth-control",
        &["berth-model", "berth-scheduler", "berth-state"],
    ),
    ("berth-proto", &["berth-model", "berth-state"]),
    (
        "berth-store",
        &["berth-model", "berth-proto", "berth-state", "berth-tls"],
    ),
    (
        "berth-server",
        &[
            "berth-model",
            "berth-proto",
            "berth-control",
            "berth-ecs",
            "berth-state",
            "berth-store",
            "berth-tls",
        ],
    ),
    (
        "berth-agent",
        &["berth-ingress", "berth-model", "berth-proto", "berth-tls"],
    ),
    (
        "berth-ingress",
        &["berth-model", "berth-proto", "berth-tls"],
    ),
    (
        "berth-cli",
        &["berth-model", "berth-manifest", "berth-proto", "berth-tls"],
    ),
    ("berth-dev", &[]),
    ("berth-tls", &[]),
    // The ECS dialect (SigV4, awsJson1_1 shapes, ECS objects read into the model's): pure.
    ("berth-ecs", &["berth-model"]),
    (
        "berth",
        &[
            "berth-agent",
            "berth-cli",
            "berth-dev",
            "berth-ingress",
            "berth-server",
            "berth-tls",
        ],
    ),
    // The bench drives real processes; the pure crates only to weigh a state rebuilt from a
    // backup (the footprint scenario) and to time the leader's scheduling rounds in process
    // (the rounds scenario).
    (
        "berth-bench",
        &[
            "berth-control",
            "berth-model",
            "berth-proto",
            "berth-state",
            "berth-tests",
        ],
    ),
    ("berth-chaos", &["berth-proto", "berth-tests"]),
    ("berth-tests", &["berth-dev", "berth-proto", "berth-tls"]),
];

/// The crates that do no IO: no async runtime, no network, no disk, no clock.
const PURE: &[&str] = &[
    "berth-model",
    "berth-manifest",
    "berth-scheduler",
    "berth-state",
    "berth-control",
];

/// What pure crates may use besides each other: data formats, error types and data
/// structures (imbl's persistent maps).
const PURE_ALLOWED: &[&str] = &[
    "imbl",
    "serde",
    "serde_json",
    "serde_yaml_ng",
    "schemars",
    "thiserror",
    "humantime",
    "base64",
];

/// Crates only one berth crate may name (in any kind of dependency).
const OWNED: &[(&str, &str)] = &[
    ("openraft", "berth-store"),
    ("redb", "berth-store"),
    ("containerd-client", "berth-agent"),
];

struct Package {
    name: String,
    dir: PathBuf,
    /// (dependency, kind): kind is "normal", "dev" or "build".
    deps: Vec<(String, String)>,
}

fn packages() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| Package {
            name: p["name"].as_str().expect("name").to_owned(),
            dir: Path::new(p["manifest_path"].as_str().expect("manifest_path"))
                .parent()
                .expect("package dir")
                .to_path_buf(),
            deps: p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| {
                    let name = d["name"].as_str().expect("dependency name").to_owned();
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    (name, kind)
                })
                .collect(),
        })
        .collect()
}

fn normal_deps(p: &Package) -> impl Iterator<Item = &str> {
    p.deps
        .iter()
        .filter(|(_, kind)| kind == "normal")
        .map(|(d, _)| d.as_str())
}

/// Every violation of the graph, pure-crate and ownership rules, one line each.
fn graph_violations(packages: &[Package]) -> Vec<String> {
    let graph: BTreeMap<&str, BTreeSet<&str>> = GRAPH
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect();
    let mut violations = Vec::new();
    for p in packages {
        let Some(allowed) = graph.get(p.name.as_str()) else {
            violations.push(format!(
                "{} is not in tests/layering.rs's GRAPH: add it with the berth crates it may use",
                p.name
            ));
            continue;
        };
        let pure = PURE.contains(&p.name.as_str());
        for dep in normal_deps(p) {
            if dep.starts_with("berth") && !allowed.contains(dep) {
                violations.push(format!("{} must not depend on {dep}", p.name));
            }
            if pure && !dep.starts_with("berth") && !PURE_ALLOWED.contains(&dep) {
                violations.push(format!(
                    "{} is pure (no IO): it must not depend on {dep}",
                    p.name
                ));
            }
        }
        for (crate_name, owner) in OWNED {
            if p.name != *owner && p.deps.iter().any(|(d, _)| d == crate_name) {
                violations.push(format!(
                    "only {owner} may name {crate_name}, but {} does",
                    p.name
                ));
            }
        }
    }
    violations
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Wire messages that mirror a model type: built by hand anywhere but berth-proto, they are a
/// conversion written in the wrong place.
const MIRRORED: &[&str] = &[
    "Task",
    "TaskDefinition",
    "TaskDefinitionSpec",
    "ContainerDefinition",
    "ContainerState",
    "Service",
    "ServiceSpec",
    "Deployment",
    "Autoscaling",
    "MetricValue",
    "PlacementSpec",
    "Node",
    "Event",
    "TaskAssignment",
    "TaskStatusUpdate",
    "TaskMetrics",
    "TaskSample",
    "WatchEvent",
    "ClusterMember",
    "ClusterStatusResponse",
    "PlannedTask",
];

/// A line that converts between wire and model types: a `From`/`TryFrom` impl naming a
/// generated type, a wire enum built from or read into a model value, or a wire message that
/// mirrors a model type built field by field.
fn converts_wire_types(line: &str) -> bool {
    let line = line.trim_start();
    if line.starts_with("//") {
        return false;
    }
    let wire = |s: &str| s.contains("v1::") || s.contains("pb::");
    let is_impl =
        (line.starts_with("impl From<") || line.starts_with("impl TryFrom<")) && wire(line);
    let enum_conversion = ["v1::", "pb::"].iter().any(|prefix| {
        line.match_indices(prefix).any(|(i, _)| {
            let rest = &line[i + prefix.len()..];
            let ty: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let after = &rest[ty.len()..];
            after.starts_with("::from(") || after.starts_with("::try_from(")
        })
    });
    let mirrored_literal = ["v1::", "pb::"].iter().any(|prefix| {
        MIRRORED.iter().any(|ty| {
            let literal = format!("{prefix}{ty} {{");
            // `-> pb::Task {` opens a function that returns one; it builds nothing itself.
            line.match_indices(&literal)
                .any(|(i, _)| !line[..i].trim_end().ends_with("->"))
        })
    });
    is_impl || enum_conversion || mirrored_literal
}

/// A line that builds a `tonic::Status` from scratch.
fn builds_status(line: &str) -> bool {
    let line = line.trim_start();
    !line.starts_with("//")
        && line.match_indices("Status::").any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + "Status::".len()..].chars().next();
            // `tonic::Status::x(` or `Status::x(` with a lowercase constructor, not
            // `NodeStatus::Active` or `TaskStatus::ALL`.
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && after.is_some_and(|c| c.is_ascii_lowercase())
        })
}

/// Source lines matching `bad` in `package` outside the files `allowed` (relative to the
/// package's directory), as `path:line: text`.
fn offending_lines(package: &Package, bad: fn(&str) -> bool, allowed: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&package.dir.join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&package.dir).unwrap_or(&file);
        if allowed.iter().any(|a| relative == Path::new(a)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // Test modules may build wire messages to drive the code under test.
        let production = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in production.lines().enumerate() {
            if bad(line) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_crate_graph_has_no_forbidden_arrows() {
    let packages = packages();
    assert!(
        packages.len() >= GRAPH.len(),
        "cargo metadata listed {} packages",
        packages.len()
    );
    let violations = graph_violations(&packages);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn only_berth_proto_converts_wire_types() {
    let mut found = Vec::new();
    // Crates without the model speak the wire only: nothing to convert. The benchmarks are
    // clients of the wire too; their model is for the in-process `rounds` scenario alone.
    let has_model = |p: &Package| p.deps.iter().any(|(d, _)| d == "berth-model");
    for p in packages()
        .iter()
        .filter(|p| !["berth-proto", "berth-bench"].contains(&p.name.as_str()) && has_model(p))
    {
        found.extend(offending_lines(p, converts_wire_types, &[]));
    }
    assert!(
        found.is_empty(),
        "convert wire types in berth-proto, not here:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_grpc_edges_build_statuses() {
    let edges: &[(&str, &[&str])] = &[
        ("berth-server", &["src/status.rs"]),
        ("berth-agent", &["src/api.rs"]),
        // The Raft transport is a gRPC edge of its own.
        ("berth-store", &["src/network.rs"]),
    ];
    let mut found = Vec::new();
    for p in packages() {
        let allowed = edges
            .iter()
            .find(|(name, _)| *name == p.name)
            .map_or(&[][..], |(_, files)| *files);
        if ["berth-server", "berth-agent", "berth-store"].contains(&p.name.as_str()) {
            found.extend(offending_lines(&p, builds_status, allowed));
        }
    }
    assert!(
        found.is_empty(),
        "build gRPC statuses in the edge's status module:\n{}",
        found.join("\n")
    );
}

/// rustls uses ring: aws-lc-sys needs cmake, which this machine (and CI) does not have.
#[test]
fn nothing_pulls_in_aws_lc() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
        .expect("read Cargo.lock");
    assert!(
        !lock.contains("name = \"aws-lc-sys\""),
        "a dependency pulls in aws-lc-sys; use rustls with the ring provider"
    );
}

#[test]
fn the_rules_catch_what_they_are_meant_to() {
    let package = |name: &str, deps: &[(&str, &str)]| Package {
        name: name.into(),
        dir: PathBuf::new(),
        deps: deps
            .iter()
            .map(|(d, k)| ((*d).to_owned(), (*k).to_owned()))
            .collect(),
    };
    let violations = graph_violations(&[
        package(
            "berth-state",
            &[("berth-model", "normal"), ("tokio", "normal")],
        ),
        package("berth-control", &[("berth-store", "normal")]),
        package("berth-server", &[("openraft", "dev")]),
        package("berth-cli", &[("containerd-client", "normal")]),
        package("berth-new", &[]),
    ]);
    assert_eq!(
        violations,
        [
            "berth-state is pure (no IO): it must not depend on tokio",
            "berth-control must not depend on berth-store",
            "only berth-store may name openraft, but berth-server does",
            "only berth-agent may name containerd-client, but berth-cli does",
            "berth-new is not in tests/layering.rs's GRAPH: add it with the berth crates it may use",
        ]
    );
    assert!(converts_wire_types("impl From<m::Node> for v1::Node {"));
    assert!(converts_wire_types(
        "desired_status: berth_proto::v1::DesiredStatus::from(t.desired_status) as i32,"
    ));
    assert!(converts_wire_types(
        "let s = pb::NodeStatus::try_from(req.status);"
    ));
    assert!(!converts_wire_types("let msg = pb::Ack {};"));
    assert!(converts_wire_types("    pb::WatchEvent {"));
    assert!(!converts_wire_types(
        "fn event(change: Change) -> pb::WatchEvent {"
    ));
    assert!(!converts_wire_types(
        "let page = pb::ListTasksResponse { tasks };"
    ));
    assert!(builds_status("Err(Status::not_found(format!(\"x\")))"));
    assert!(builds_status("tonic::Status::unavailable(\"x\")"));
    assert!(!builds_status("status: NodeStatus::Active,"));
    assert!(!builds_status("for s in TaskStatus::ALL {"));
}
