//! Rotating the cluster CA (`berth cluster ca rotate`) on a running cluster: three servers and
//! a containerd agent move onto the new CA with a task running through it, and afterwards
//! nothing trusts or presents the old CA.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::{stderr, stdout};
use berth_tests::{
    cli, cli_json, containerd_containers, join_token, poll, run_script_until_running, wait_stopped,
    AgentProc, Env, ServerProc, FAST_RAFT,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The fingerprints of the certificates in the PEM file `path`.
fn fingerprints(path: &Path) -> anyhow::Result<Vec<String>> {
    Ok(berth_tls::fingerprints(&std::fs::read_to_string(path)?))
}

#[tokio::test]
async fn the_cluster_ca_rotates_under_a_running_task_and_the_old_ca_is_then_refused(
) -> anyhow::Result<()> {
    let env = Env::start().await?;
    let s1 = ServerProc::spawn(1, &env.path("s1"), None, FAST_RAFT).await?;
    s1.wait_ready().await?;
    let addr = s1.addr.to_string();
    let token = join_token(&addr, "server").await?;
    let mut servers = vec![s1];
    for id in 2..=3 {
        let mut args = FAST_RAFT.to_vec();
        args.extend(["--join", addr.as_str(), "--join-token", token.as_str()]);
        let s = ServerProc::spawn(id, &env.path(&format!("s{id}")), None, &args).await?;
        s.wait_ready().await?;
        servers.push(s);
    }
    servers[0].wait_voters(3, TIMEOUT).await?;
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    let id = run_script_until_running(&addr, &env.image, "echo started; exec sleep 600").await?;
    let containers = containerd_containers(&env.containerd.socket, &agent.namespace).await?;
    let old = fingerprints(&servers[0].data_dir.join("tls/ca.pem"))?;
    // A copy of the admin credentials that nobody updates: it trusts the old CA only.
    let stale = env.path("stale-admin.toml");
    std::fs::copy(servers[0].data_dir.join("admin.toml"), &stale)?;

    let out = cli(&addr, &["cluster", "ca", "rotate", "--wait", "90s"]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("CA rotation 1 finished"),
        "{}",
        stdout(&out)
    );

    let status = cli_json(&addr, &["cluster", "ca", "status"]).await?;
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["rotating"], false, "{status}");
    let new = status["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let only_new = vec![new.clone()];
    assert_eq!(
        status["previousFingerprint"].as_str(),
        old.first().map(String::as_str)
    );
    assert_ne!(old, only_new);
    // Every server signs with the new CA and trusts it alone; so does the CLI's file.
    for s in &servers {
        let tls = s.data_dir.join("tls");
        assert_eq!(
            fingerprints(&tls.join("ca.pem"))?,
            only_new,
            "server {}",
            s.id
        );
        poll("the server to drop the old CA", TIMEOUT, || async {
            (!tls.join("trust.pem").exists() && !tls.join("chain.pem").exists()).then_some(())
        })
        .await?;
    }
    let admin = std::fs::read_to_string(servers[0].data_dir.join("admin.toml"))?;
    let admin: toml::Table = toml::from_str(&admin)?;
    let ca = admin["ca"].as_str().unwrap_or_default();
    assert_eq!(berth_tls::fingerprints(ca), only_new);
    // The agent renewed onto the new CA, then dropped the old one.
    let agent_tls = env.path("agent-node-1").join("tls");
    poll("the agent to trust the new CA alone", TIMEOUT, || async {
        let ca = fingerprints(&agent_tls.join("ca.pem")).ok()?;
        (ca == only_new && !agent_tls.join("trust.pem").exists()).then_some(())
    })
    .await
    .with_context(|| {
        std::fs::read_to_string(env.path("agent-node-1/agent.log")).unwrap_or_default()
    })?;
    let cert = std::fs::read_to_string(agent_tls.join("node.pem"))?;
    berth_tls::tls::verify_chain(&cert, "", ca)?;

    // The task ran through it untouched; servers still reach the agent (logs, exec) and the
    // agent still takes work.
    let task = cli_json(&addr, &["get", "task", &id]).await?;
    assert_eq!(task["lastStatus"], "RUNNING", "{task}");
    assert_eq!(
        containerd_containers(&env.containerd.socket, &agent.namespace).await?,
        containers
    );
    let out = cli(&addr, &["exec", &id, "--", "echo", "still here"]).await?;
    assert_eq!(stdout(&out), "still here\n", "{}", stderr(&out));
    let out = cli(&addr, &["logs", &id]).await?;
    assert_eq!(stdout(&out), "started\n", "{}", stderr(&out));
    let out = cli(&addr, &["run", "--wait", &env.image, "--", "echo", "after"]).await?;
    assert_eq!(stdout(&out), "after\n", "{}", stderr(&out));

    // A client that trusts only the old CA is refused by every server.
    let out = tokio::process::Command::new(berth_tests::berth_bin())
        .env_remove("BERTH_CREDENTIALS")
        .env_remove("BERTH_TOKEN")
        .arg("--credentials")
        .arg(&stale)
        .args(["--server", &addr, "get", "nodes"])
        .output()
        .await?;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));

    // A restarted agent comes back with what it stored, without a token, and adopts its task.
    agent.kill().await?;
    let agent = AgentProc::start(&env, &addr, "node-1").await?;
    poll(
        "the restarted agent to report its task",
        TIMEOUT,
        || async {
            let t = cli_json(&addr, &["get", "task", &id]).await.ok()?;
            let node = cli_json(&addr, &["get", "node", "node-1"]).await.ok()?;
            (t["lastStatus"] == "RUNNING" && node["status"] == "ACTIVE").then_some(())
        },
    )
    .await?;
    assert_eq!(
        containerd_containers(&env.containerd.socket, &agent.namespace).await?,
        containers
    );
    let out = cli(&addr, &["stop", &id]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    wait_stopped(&addr, &id, TIMEOUT).await?;
    Ok(())
}
