//! The CLI's workflows against a real cluster: diff, dry runs with a placement plan, delete -f,
//! and the server-side event stream.

use std::process::Stdio;
use std::time::Duration;

use berth_tests::{cli, cli_json, poll, run_tasks, scrape, Scrape};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{stderr, stdout, Cluster};

const TIMEOUT: Duration = Duration::from_secs(60);

fn service_manifest(image: &str, count: u32, memory: u32, text: &str) -> String {
    format!(
        "\
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: web
  labels: {{app: web}}
  annotations: {{owner: team-a}}
spec:
  desiredCount: {count}
  template:
    cpu: 128
    memory: {memory}
    containers:
      - name: app
        image: {image}
        command: [sh, -c, 'echo {text}; exec sleep 600']
        stopTimeout: 1s
"
    )
}

#[tokio::test]
async fn diff_dry_run_apply_and_delete_round_trip() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let addr = c.addr();
    // A directory with a nested one: apply -f reads both.
    let dir = c.env.path("manifests");
    std::fs::create_dir_all(dir.join("nested"))?;
    std::fs::write(
        dir.join("nested/hello.yaml"),
        format!(
            "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: hello\nspec:\n  cpu: 128\n  memory: 32\n  containers:\n    - name: main\n      image: {}\n",
            c.env.image
        ),
    )?;
    let web = dir.join("web.yaml");
    std::fs::write(&web, service_manifest(&c.env.image, 2, 32, "v1"))?;
    let d = dir.display().to_string();

    // Nothing exists yet: diff says so and exits 1.
    let out = cli(&addr, &["diff", "-f", &d]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "taskdefinition/hello\n  + new\nservice/web\n  + new\n"
    );

    // A dry run validates on the server and shows where the tasks would go; stores nothing.
    let out = cli(&addr, &["apply", "--dry-run", "-f", &d]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "taskdefinition/hello valid (dry run)\nservice/web created (dry run)\n  would place 2 tasks: 2 on node-1\n"
    );
    let services = cli_json(&addr, &["get", "services"]).await?;
    assert_eq!(services, serde_json::json!([]));

    // Apply, then nothing differs.
    let out = cli(&addr, &["apply", "-f", &d, "--wait", "--timeout", "60s"]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&addr, &["diff", "-f", &d]).await?;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "");

    // Labels select services and (copied onto them) their tasks; annotations are kept.
    let selected = cli_json(&addr, &["get", "services", "-l", "app=web"]).await?;
    assert_eq!(selected[0]["annotations"]["owner"], "team-a", "{selected}");
    let none = cli_json(&addr, &["get", "services", "-l", "app!=web"]).await?;
    assert_eq!(none, serde_json::json!([]));
    let tasks = cli_json(&addr, &["get", "tasks", "-l", "app=web"]).await?;
    assert_eq!(tasks.as_array().map(Vec::len), Some(2), "{tasks}");
    let out = cli(&addr, &["get", "tasks", "-l", "app"]).await?;
    assert!(
        stderr(&out).contains("\"app\" is not key=value or key!=value"),
        "{}",
        stderr(&out)
    );

    // A change shows field by field.
    std::fs::write(&web, service_manifest(&c.env.image, 3, 32, "v2"))?;
    let out = cli(&addr, &["diff", "-f", &web.display().to_string()]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "service/web\n  ~ spec.template.containers[0].command[2]: \"echo v1; exec sleep 600\" -> \"echo v2; exec sleep 600\"\n  ~ spec.desiredCount: 2 -> 3\n"
    );

    // A dry run of something that fits nowhere says why, in numbers.
    std::fs::write(&web, service_manifest(&c.env.image, 1, 999_999, "v2"))?;
    let out = cli(
        &addr,
        &["apply", "--dry-run", "-f", &web.display().to_string()],
    )
    .await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "service/web configured (deployment started) (dry run)\n  1 task could not be placed: 0 of 1 node can run it: 1 lacked 999999 MiB memory\n"
    );

    // A deregistered revision runs no more tasks; the refusal names the active one.
    let hello = dir.join("nested/hello.yaml").display().to_string();
    std::fs::write(
        &hello,
        format!(
            "apiVersion: berth.dev/v1\nkind: TaskDefinition\nmetadata:\n  name: hello\nspec:\n  cpu: 128\n  memory: 48\n  containers:\n    - name: main\n      image: {}\n",
            c.env.image
        ),
    )?;
    let out = cli(&addr, &["apply", "-f", &hello]).await?;
    assert_eq!(
        stdout(&out),
        "taskdefinition/hello:2 registered\n",
        "{}",
        stderr(&out)
    );
    let out = cli(&addr, &["delete", "taskdef", "hello:1"]).await?;
    assert!(
        stdout(&out).starts_with("taskdefinition/hello:1 deregistered"),
        "{}",
        stderr(&out)
    );
    let out = cli(&addr, &["run", "--task-definition", "hello:1"]).await?;
    assert!(
        !out.status.success()
            && stderr(&out).contains("task definition hello:1 is INACTIVE (deregistered); use hello:2, its latest ACTIVE revision"),
        "{}",
        stderr(&out)
    );
    let revs = cli_json(&addr, &["get", "taskdefs"]).await?;
    let statuses: Vec<&str> = revs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["family"] == "hello")
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert_eq!(statuses, ["INACTIVE", "ACTIVE"], "{revs}");

    // delete -f removes the service (its tasks stop) and deregisters task definitions.
    let out = cli(&addr, &["delete", "-f", &d]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("taskdefinition/hello:2 deregistered (INACTIVE")
            && stdout(&out).ends_with("service/web deleted (its tasks are stopping)\n"),
        "{}",
        stdout(&out)
    );
    poll("the service to be gone", TIMEOUT, || async {
        let list = cli_json(&addr, &["get", "services"]).await.ok()?;
        list.as_array().is_some_and(Vec::is_empty).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn events_watch_streams_a_task_going_running() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let addr = c.addr();
    let mut watcher = berth_tests::cli_command(&addr)
        .args([
            "events", "--watch", "--kind", "task", "--kind", "node", "-o", "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(watcher.stdout.take().expect("piped stdout")).lines();
    // The node's past events come first: then the watch is open, and a task run now is seen
    // as it happens.
    let first = tokio::time::timeout(TIMEOUT, lines.next_line()).await??;
    assert!(
        first
            .as_deref()
            .is_some_and(|l| l.contains("\"kind\":\"node\"")),
        "{first:?}"
    );
    let ids = run_tasks(&addr, &["run", &c.env.image, "--", "sleep", "600"]).await?;
    let id = ids[0].clone();
    let seen = tokio::time::timeout(TIMEOUT, async {
        let mut messages = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if v["name"] == id.as_str() {
                let message = v["message"].as_str().unwrap_or_default().to_owned();
                let running = message.ends_with("-> RUNNING");
                messages.push(message);
                if running {
                    return anyhow::Ok(messages);
                }
            }
        }
        anyhow::bail!("the event stream ended: {messages:?}")
    })
    .await??;
    assert!(seen.iter().any(|m| m == "created"), "{seen:?}");
    assert!(
        seen.iter().any(|m| m.starts_with("placed on node")),
        "{seen:?}"
    );
    watcher.kill().await?;
    let out = cli(&addr, &["stop", &id]).await?;
    assert!(out.status.success());
    Ok(())
}

/// Python stubs generated from `proto/` with grpcio-tools drive the API (`make test` provides
/// the Python environment and passes it in `BERTH_PYTHON`).
#[tokio::test]
async fn a_python_client_generated_from_the_protos_runs_a_task() -> anyhow::Result<()> {
    let python = std::env::var("BERTH_PYTHON").map_err(|_| {
        anyhow::anyhow!(
            "BERTH_PYTHON is not set: run `make pyenv` and set BERTH_PYTHON=target/pyenv/bin/python (make test does both)"
        )
    })?;
    let c = Cluster::start().await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client_test.py");
    let credentials = berth_tests::credentials_for(&c.addr())
        .ok_or_else(|| anyhow::anyhow!("no credentials for the cluster"))?;
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(c.addr())
        .arg(credentials)
        .arg(&c.env.image)
        .kill_on_drop(true)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).starts_with("ok: task "), "{}", stdout(&out));
    Ok(())
}

#[tokio::test]
async fn prometheus_metrics_are_served_next_to_the_grpc_api() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let addr = c.addr();
    let out = cli(&addr, &["run", "--wait", &c.env.image, "--", "true"]).await?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Over TLS, and only with a token: an anonymous scrape is refused.
    let refused = scrape(&addr, &addr, Scrape::Anonymous).await?;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let body = scrape(&addr, &addr, Scrape::Token).await?;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for line in [
        "berth_raft_is_leader 1",
        "berth_raft_apply_lag 0",
        "berth_tasks{state=\"STOPPED\"} 1",
        "berth_placements_total 1",
        "berth_agent_connections 1",
        "berth_nodes{state=\"ACTIVE\"} 1",
        "berth_objects{kind=\"task\"} 1",
        "berth_objects{kind=\"node\"} 1",
        "berth_api_request_duration_seconds_count{method=\"/berth.v1.Berth/RunTask\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
    // The store's sizes: a log, the state's snapshot (none yet in a cluster this young: the
    // first comes after 5,000 entries or 16 MiB of log), and the database file.
    for (series, written) in [
        ("berth_store_log_entries", true),
        ("berth_store_log_bytes", true),
        ("berth_store_object_bytes", false),
        ("berth_store_file_bytes", true),
    ] {
        let value: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {series} in:\n{body}"))?;
        assert_eq!(value > 0, written, "{series} is {value}");
    }
    assert!(
        body.contains("berth_scheduling_latency_seconds_bucket"),
        "{body}"
    );

    // The agent serves its own: the image it pulled for the task, and how long that took.
    let nodes = cli_json(&addr, &["get", "nodes"]).await?;
    let agent = nodes[0]["address"].as_str().unwrap_or_default().to_owned();
    // An agent cannot check tokens: its /metrics takes a client certificate of the cluster.
    let refused = scrape(&agent, &addr, Scrape::Token).await?;
    assert!(!refused.starts_with("HTTP/1.1 200"), "{refused}");
    let body = scrape(&agent, &addr, Scrape::Certificate).await?;
    for line in [
        "berth_agent_image_pulls_total{result=\"pulled\"} 1",
        "berth_agent_image_pull_duration_seconds_count 1",
        "berth_agent_tasks_running 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_task_manifest_runs_once_per_document_and_delete_stops_it() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let addr = c.addr();
    let file = c.env.path("job.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: berth.dev/v1\nkind: Task\nmetadata:\n  name: job\n  labels: {{team: a}}\nspec:\n  count: 2\n  template:\n    cpu: 128\n    memory: 32\n    containers:\n      - name: main\n        image: {}\n        command: [sleep, '600']\n        stopTimeout: 1s\n",
            c.env.image
        ),
    )?;
    let f = file.display().to_string();
    let out = cli(&addr, &["apply", "-f", &f]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let first: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        first.iter().all(|l| l.ends_with(" created (job:1)")),
        "{first:?}"
    );
    // The same document again runs nothing new.
    let out = cli(&addr, &["apply", "-f", &f]).await?;
    let again: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        again
            .iter()
            .map(|l| l.split(' ').next())
            .collect::<Vec<_>>(),
        first
            .iter()
            .map(|l| l.split(' ').next())
            .collect::<Vec<_>>()
    );
    // The template's labels reach the tasks.
    poll("both tasks to run", TIMEOUT, || async {
        let t = cli_json(&addr, &["get", "tasks", "-l", "team=a"])
            .await
            .ok()?;
        let running = t
            .as_array()?
            .iter()
            .filter(|t| t["lastStatus"] == "RUNNING")
            .count();
        (running == 2).then_some(())
    })
    .await?;
    let out = cli(&addr, &["delete", "-f", &f]).await?;
    assert_eq!(
        stdout(&out),
        "task/job deleted (2 running tasks stopping)\n",
        "{}",
        stderr(&out)
    );
    poll("both tasks to stop", TIMEOUT, || async {
        let t = cli_json(&addr, &["get", "tasks", "-l", "team=a"])
            .await
            .ok()?;
        t.as_array()?
            .iter()
            .all(|t| t["lastStatus"] == "STOPPED" && t["stopCode"] == "UserInitiated")
            .then_some(())
    })
    .await?;
    Ok(())
}
