//! Secrets end to end: set with the CLI and a manifest, read by a real container as a variable
//! and as files, and never in clear anywhere else — not in what the CLI shows, not on the
//! Watch stream, not in the servers' data dirs (Raft log, state, logs), not in a backup; a
//! second namespace's token cannot read them; joined servers hold the keys (a new leader opens
//! them, after a key rotation too).

use std::path::Path;
use std::time::Duration;

use super::{ok, stderr, stdout};
use berth_tests::{
    addresses, api, cli, cli_command, cli_json, kill_leader, poll, run_until_running,
    three_joined_servers, wait_stopped, AgentProc, Env, FAST_RAFT,
};
use tonic::codegen::tokio_stream::StreamExt as _;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Values that must never be found in clear outside the task.
const PASSWORD: &str = "pw-7f3a9c-never-in-clear";
const KEY_PEM: &str = "key-material-4b1d-never-in-clear";

fn manifest(image: &str, namespace: &str) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(KEY_PEM);
    format!(
        "\
apiVersion: berth.dev/v1
kind: Secret
metadata:
  name: tls
  namespace: {namespace}
spec:
  data:
    tls.key: {key}
---
apiVersion: berth.dev/v1
kind: TaskDefinition
metadata:
  name: app
  namespace: {namespace}
spec:
  cpu: 128
  memory: 64
  containers:
    - name: app
      image: {image}
      command: [sleep, '3600']
      stopTimeout: 1s
      secrets:
        - name: DB_PASSWORD
          valueFrom: db-creds:password
      secretFiles:
        - secret: tls
          path: /run/secrets/tls
"
    )
}

fn assert_clean(what: &str, bytes: &[u8]) {
    for value in [PASSWORD, KEY_PEM] {
        assert!(
            !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
            "{what} holds a secret value in clear"
        );
    }
}

/// Every file under `dir`, checked for values in clear.
fn assert_dir_clean(dir: &Path) -> anyhow::Result<usize> {
    let mut files = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                assert_clean(&path.display().to_string(), &std::fs::read(&path)?);
                files += 1;
            }
        }
    }
    Ok(files)
}

/// What a task's container sees: `$DB_PASSWORD` and the secret file.
async fn seen_by(server: &str, task: &str) -> anyhow::Result<String> {
    ok(
        server,
        &[
            "exec",
            task,
            "--",
            "sh",
            "-c",
            "echo \"$DB_PASSWORD\"; cat /run/secrets/tls/tls.key; echo; touch /run/secrets/tls/x 2>/dev/null && echo writable || echo read-only",
        ],
    )
    .await
}

#[tokio::test]
async fn secrets_reach_only_their_tasks_and_never_appear_in_clear() -> anyhow::Result<()> {
    let env = Env::start().await?;
    // Three servers: two join after the first, before any key exists.
    let mut servers = three_joined_servers(&env, FAST_RAFT).await?;
    let all = addresses(&servers);
    let bootstrap = servers[0].addr.to_string();
    let _agent = AgentProc::start(&env, &all, "node-1").await?;

    // One secret from the CLI, one from a manifest with the task definition that uses both.
    ok(
        &all,
        &[
            "secret",
            "create",
            "db-creds",
            "--from-literal",
            &format!("password={PASSWORD}"),
            "--from-literal",
            "user=admin",
        ],
    )
    .await?;
    let again = cli(
        &all,
        &["secret", "create", "db-creds", "--from-literal", "a=b"],
    )
    .await?;
    assert!(
        !again.status.success() && stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );
    let path = env.path("app.yaml");
    std::fs::write(&path, manifest(&env.image, "default"))?;
    ok(&all, &["apply", "-f", &path.display().to_string()]).await?;

    let task = run_until_running(&all, &["run", "--task-definition", "app"]).await?;
    let seen = seen_by(&all, &task).await?;
    assert_eq!(seen, format!("{PASSWORD}\n{KEY_PEM}\nread-only\n"));

    // Nothing the CLI shows holds a value; the secret shows its keys.
    let shown = ok(&all, &["get", "secret", "db-creds", "-o", "yaml"]).await?;
    assert!(shown.contains("- password\n- user\n"), "{shown}");
    for args in [
        &["get", "secret", "db-creds", "-o", "yaml"][..],
        &["get", "secrets", "-o", "json"],
        &["get", "taskdef", "app", "-o", "yaml"],
        &["get", "task", &task, "-o", "json"],
        &["describe", "task", &task],
        &["events", "--recent", "500"],
        &["logs", &task],
    ] {
        assert_clean(
            &format!("berth {}", args.join(" ")),
            ok(&all, args).await?.as_bytes(),
        );
    }
    // Nor the Watch stream's first listing (every object there is).
    let mut watch = api(&bootstrap)
        .await?
        .watch(berth_proto::v1::WatchRequest::default())
        .await?
        .into_inner();
    let listing = tokio::time::timeout(TIMEOUT, async {
        let mut text = String::new();
        while let Some(event) = watch.next().await {
            let event = event?;
            text.push_str(&format!("{event:?}\n"));
            if event.r#type == berth_proto::v1::watch_event::Type::Synced as i32 {
                break;
            }
        }
        anyhow::Ok(text)
    })
    .await??;
    assert!(listing.contains(&task), "the listing has the task");
    assert_clean("the Watch listing", listing.as_bytes());
    // Nor a backup.
    let backup = env.path("backup.json");
    ok(
        &all,
        &["cluster", "snapshot", "save", &backup.display().to_string()],
    )
    .await?;
    assert_clean("a backup", &std::fs::read(&backup)?);

    // A second namespace's token can neither read the secret nor use it.
    ok(&all, &["namespace", "create", "team-b"]).await?;
    let out = cli(
        &all,
        &["token", "create", "-n", "team-b", "--role", "deployer"],
    )
    .await?;
    let team_b = stdout(&out)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let as_b = |args: &[&str]| {
        let mut c = cli_command(&all);
        c.arg("--token").arg(&team_b).args(args).kill_on_drop(true);
        c
    };
    let denied = as_b(&["get", "secret", "db-creds", "-n", "default"])
        .output()
        .await?;
    assert!(
        !denied.status.success() && stderr(&denied).contains("has no access to"),
        "{}",
        stderr(&denied)
    );
    let listed = as_b(&["get", "secrets", "-n", "team-b", "-o", "json"])
        .output()
        .await?;
    assert_eq!(stdout(&listed).trim(), "[]", "{}", stderr(&listed));
    // Its own copy of the task definition names db-creds, which team-b does not have: the
    // task stops with the reason.
    let path_b = env.path("app-b.yaml");
    std::fs::write(&path_b, manifest(&env.image, "team-b"))?;
    let applied = as_b(&["apply", "-f", &path_b.display().to_string()])
        .output()
        .await?;
    assert!(applied.status.success(), "{}", stderr(&applied));
    let run = as_b(&["run", "-n", "team-b", "--task-definition", "app"])
        .output()
        .await?;
    assert!(run.status.success(), "{}", stderr(&run));
    let task_b = stdout(&run)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let stopped = poll("team-b's task to stop", TIMEOUT, || async {
        let t = cli_json(&all, &["get", "task", &task_b, "-n", "team-b"])
            .await
            .ok()?;
        (t["lastStatus"] == "STOPPED").then_some(t)
    })
    .await?;
    let reason = stopped["stoppedReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("secret db-creds not found in namespace team-b"),
        "{stopped}"
    );

    // A new key: every secret is sealed again; then the leader goes, and a task started by
    // the new one (which got the key from its peers) still reads the values.
    let rotated = ok(&all, &["secret", "rotate-key"]).await?;
    assert!(rotated.contains(": 3 secrets"), "{rotated}");
    let keyrings: Vec<String> = servers
        .iter()
        .map(|s| std::fs::read_to_string(s.data_dir.join("secrets.keyring")))
        .collect::<Result<_, _>>()?;
    for (s, k) in servers.iter().zip(&keyrings) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(s.data_dir.join("secrets.keyring"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "server {}", s.id);
        assert_eq!(k.lines().count(), 3, "two keys on server {}: {k}", s.id);
    }
    kill_leader(&mut servers).await?;
    let rest = addresses(&servers);
    let after = poll("a task after the leader's death", TIMEOUT, || async {
        run_until_running(&rest, &["run", "--task-definition", "app"])
            .await
            .ok()
    })
    .await?;
    let seen = seen_by(&rest, &after).await?;
    assert_eq!(seen, format!("{PASSWORD}\n{KEY_PEM}\nread-only\n"));

    // Nothing on the servers' disks or in their logs holds a value in clear.
    for name in ["s1", "s2", "s3"] {
        let files = assert_dir_clean(&env.path(name))?;
        assert!(files > 3, "server {name}: {files} files");
    }
    assert_clean(
        "the agent's log",
        &std::fs::read(env.path("agent-node-1").join("agent.log"))?,
    );
    for t in [&task, &after] {
        ok(&rest, &["stop", t]).await?;
        wait_stopped(&rest, t, TIMEOUT).await?;
    }
    Ok(())
}
