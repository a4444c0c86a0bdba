//! A whole secured cluster over the life of its certificates: three servers and two agents that
//! join with tokens only, lose their leader, and renew every certificate (a 60 s lifetime) while
//! tasks run and users keep streams open — nothing restarted, no stream broken.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{stderr, stdout};
use anyhow::Context as _;
use berth_tests::{
    cli, cli_command, cli_json, ctr, join_token, poll, run_tasks, wait_stopped, AgentProc, Env,
    ServerProc, FAST_RAFT,
};
use berth_tls::tls::Trust;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest lifetime servers accept; certificates are renewed after two thirds of it.
const CERT_TTL: Duration = Duration::from_secs(60);

/// Two tasks, one per node, each printing a counter every second: a restarted container would
/// start again at `tick 0`.
const SERVICE: &str = "\
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: ticker
spec:
  desiredCount: 2
  template:
    cpu: 128
    memory: 32
    placement:
      constraints: [{type: distinctInstance}]
    containers:
      - name: app
        image: IMAGE
        command: [sh, -c, 'i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 1; done']
        stopTimeout: 1s
";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A certificate in a data dir (`tls/node.pem`) and the one it held first.
struct Cert {
    who: String,
    path: PathBuf,
    first: String,
}

impl Cert {
    fn new(who: impl Into<String>, data_dir: PathBuf) -> anyhow::Result<Self> {
        let path = data_dir.join("tls/node.pem");
        let first =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        Ok(Self {
            who: who.into(),
            path,
            first,
        })
    }

    fn current(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The certificate on disk now, as DER.
    fn current_der(&self) -> anyhow::Result<Vec<u8>> {
        Ok(CertificateDer::from_pem_slice(self.current().as_bytes())
            .with_context(|| format!("read {}", self.path.display()))?
            .to_vec())
    }

    fn first_expiry(&self) -> i64 {
        berth_tls::not_after(&self.first).unwrap_or(0)
    }

    /// Renewed: another certificate on disk, valid for longer than the first.
    fn renewed(&self) -> bool {
        let now = self.current();
        now != self.first && berth_tls::not_after(&now) > berth_tls::not_after(&self.first)
    }
}

/// A CLI command that streams (`logs -f`, `events --watch`), its output collected as it comes.
struct Stream {
    what: String,
    child: tokio::process::Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Collects the lines of `from` into `into` until it ends.
fn collect(from: impl AsyncRead + Unpin + Send + 'static, into: &Arc<Mutex<Vec<String>>>) {
    let into = Arc::clone(into);
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            into.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
}

impl Stream {
    /// Starts `berth ARGS` against `server` alone.
    fn open(server: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = cli_command(server)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn the CLI")?;
        let (stdout, stderr) = (Arc::default(), Arc::default());
        collect(child.stdout.take().context("the CLI's stdout")?, &stdout);
        collect(child.stderr.take().context("the CLI's stderr")?, &stderr);
        Ok(Self {
            what: format!("berth {} (through {server})", args.join(" ")),
            child,
            stdout,
            stderr,
        })
    }

    fn lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn errors(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until it printed more than `n` lines.
    async fn printed_more_than(&self, n: usize) -> anyhow::Result<()> {
        poll(
            &format!("{} to print more than {n} lines", self.what),
            TIMEOUT,
            || async { (self.lines().len() > n).then_some(()) },
        )
        .await
        .with_context(|| format!("stderr: {:?}", self.errors()))
    }

    /// Asserts it still runs and printed no error, then ends it; what it printed.
    async fn close(mut self) -> anyhow::Result<Vec<String>> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} ended ({status}); stderr: {:?}",
                self.what,
                self.errors()
            );
        }
        self.child.kill().await?;
        let errors = self.errors();
        anyhow::ensure!(errors.is_empty(), "{} printed {errors:?}", self.what);
        Ok(self.lines())
    }
}

/// The certificate (DER) that the listener at `addr` presents in a full handshake, verified
/// against the cluster CA now. A new client without session resumption: a resumed session
/// skips the certificate, so it would prove nothing about the one in use.
async fn presented_certificate(addr: &str, ca_pem: &str) -> anyhow::Result<Vec<u8>> {
    let mut config = berth_tls::tls::client_config(&Trust::Ca(ca_pem.to_owned()), None)?;
    config.resumption = rustls::client::Resumption::disabled();
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host)?, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .with_context(|| format!("{addr} presented no certificate"))?;
    Ok(leaf.to_vec())
}

/// The leader as every one of `servers` sees it, once they agree on one of them.
async fn leader_of(servers: &[ServerProc]) -> anyhow::Result<u64> {
    poll("the servers to agree on a leader", TIMEOUT, || async {
        let mut seen = Vec::new();
        for s in servers {
            seen.push(s.status().await.ok()?["leader"].as_u64()?);
        }
        let first = *seen.first()?;
        (seen.iter().all(|l| *l == first) && servers.iter().any(|s| s.id == first)).then_some(first)
    })
    .await
}

/// The containers running in an agent's containerd namespace and their process IDs, from `ctr`.
async fn containerd_pids(env: &Env, agent: &AgentProc) -> anyhow::Result<BTreeMap<String, u64>> {
    let out = ctr(&env.containerd.socket, &agent.namespace, &["tasks", "list"]).await?;
    anyhow::ensure!(out.status.success(), "ctr tasks list: {}", stderr(&out));
    // TASK  PID  STATUS
    Ok(stdout(&out)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (task, pid, status) = (fields.next()?, fields.next()?, fields.next()?);
            (status == "RUNNING").then(|| (task.to_owned(), pid.parse().unwrap_or(0)))
        })
        .collect())
}

/// The service's tasks: ID → (node, lastStatus, startedAt, events).
async fn ticker_tasks(
    servers: &str,
) -> anyhow::Result<BTreeMap<String, (Value, Value, Value, Value)>> {
    let tasks = cli_json(servers, &["get", "tasks"]).await?;
    Ok(tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["group"] == "service:ticker")
        .map(|t| {
            (
                t["taskId"].as_str().unwrap_or_default().to_owned(),
                (
                    t["node"].clone(),
                    t["lastStatus"].clone(),
                    t["startedAt"].clone(),
                    t["events"].clone(),
                ),
            )
        })
        .collect())
}

/// Checks that a `logs -f` stream printed `tick 0`, `tick 1`, … with nothing missing, repeated
/// or restarted.
fn assert_ticks(task: &str, lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            line,
            &format!("tick {i}"),
            "the followed output of {task} is not one unbroken count: {lines:?}"
        );
    }
}

#[tokio::test]
async fn three_servers_and_two_agents_join_with_tokens_survive_a_leader_kill_and_renew_certificates(
) -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::start().await?;
    let ttl = format!("{}s", CERT_TTL.as_secs());
    // Every server issues certificates (its own, and agents' when they join or renew through it).
    let mut flags = FAST_RAFT.to_vec();
    flags.extend(["--cert-ttl", &ttl]);

    // Server 1 bootstraps; servers 2 and 3 join with a server join token and no node ID.
    let first = ServerProc::spawn(1, &env.path("s1"), None, &flags).await?;
    first.wait_ready().await?;
    let bootstrap = first.addr.to_string();
    let token = join_token(&bootstrap, "server").await?;
    let mut servers = vec![first];
    for name in ["s2", "s3"] {
        servers.push(ServerProc::join(&env.path(name), &bootstrap, &token, &flags).await?);
    }
    for s in &servers {
        s.wait_ready().await?;
    }
    servers[0].wait_voters(3, TIMEOUT).await?;
    let ids: Vec<u64> = servers.iter().map(|s| s.id).collect();
    assert_eq!(ids, [1, 2, 3], "the joining servers got no free IDs");
    let all = servers
        .iter()
        .map(|s| s.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");

    // Two agents join with an agent join token each (the harness gives one, and nothing else).
    let agents = [
        AgentProc::start(&env, &all, "node-1").await?,
        AgentProc::start(&env, &all, "node-2").await?,
    ];
    let mut certs = Vec::new();
    for s in &servers {
        certs.push(Cert::new(format!("server {}", s.id), s.data_dir.clone())?);
    }
    for a in &agents {
        certs.push(Cert::new(
            format!("agent {}", a.name),
            env.path(&format!("agent-{}", a.name)),
        )?);
    }
    for c in &certs {
        let left = c.first_expiry() - unix_now();
        assert!(
            left <= i64::try_from(CERT_TTL.as_secs())?,
            "{}'s certificate expires in {left}s, later than --cert-ttl allows",
            c.who,
        );
    }

    // A user watches the cluster's events through a follower, from before there is a service.
    let leader = leader_of(&servers).await?;
    let followers: Vec<String> = servers
        .iter()
        .filter(|s| s.id != leader)
        .map(|s| s.addr.to_string())
        .collect();
    let events = Stream::open(&followers[0], &["events", "--watch"])?;
    // The agents' registrations come first, once the stream is synced.
    events.printed_more_than(0).await?;

    // A service with a task on each node.
    let manifest = env.path("ticker.yaml");
    std::fs::write(&manifest, SERVICE.replace("IMAGE", &env.image))?;
    let out = cli(&all, &["apply", "-f", &manifest.to_string_lossy()]).await?;
    assert!(out.status.success(), "apply: {}", stderr(&out));
    let tasks = poll(
        "the service's two tasks to run",
        Duration::from_secs(60),
        || {
            let all = all.clone();
            async move {
                let tasks = ticker_tasks(&all).await.ok()?;
                let running = tasks.values().filter(|t| t.1 == "RUNNING").count();
                (running == 2).then_some(tasks)
            }
        },
    )
    .await?;
    let mut nodes: Vec<&str> = tasks.values().filter_map(|t| t.0.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["node-1", "node-2"], "{tasks:?}");
    let task_ids: Vec<String> = tasks.keys().cloned().collect();
    let mut pids = Vec::new();
    for a in &agents {
        let p = containerd_pids(&env, a).await?;
        assert_eq!(p.len(), 1, "containers of {}: {p:?}", a.name);
        pids.push(p);
    }
    // The watcher saw both tasks start; anything it says about them from here on is a change.
    poll(
        "the event stream to see both tasks run",
        TIMEOUT,
        || async {
            let lines = events.lines();
            task_ids
                .iter()
                .all(|id| {
                    lines
                        .iter()
                        .any(|l| l.contains(id.as_str()) && l.ends_with("-> RUNNING"))
                })
                .then_some(())
        },
    )
    .await
    .with_context(|| format!("events: {:?}", events.lines()))?;
    let watched_before = events.lines().len();

    // Users follow both tasks' output, each through another follower.
    let mut logs = Vec::new();
    for (task, via) in task_ids.iter().zip(&followers) {
        logs.push(Stream::open(via, &["logs", "-f", task])?);
    }
    for s in &logs {
        s.printed_more_than(0).await?;
    }

    // kill -9 of the leader, before any certificate was renewed.
    assert!(
        certs.iter().all(|c| c.current() == c.first),
        "a certificate was renewed before the leader was killed"
    );
    assert_eq!(leader_of(&servers).await?, leader, "the leader moved");
    let at = servers
        .iter()
        .position(|s| s.id == leader)
        .context("the leader")?;
    let killed = servers.remove(at);
    certs.retain(|c| c.path != killed.data_dir.join("tls/node.pem"));
    killed.kill().await?;
    let killed_at = Instant::now();
    let successor = leader_of(&servers).await?;
    assert_ne!(successor, leader);
    eprintln!(
        "server {leader} killed at {:?}; server {successor} leads after {:?}",
        started.elapsed(),
        killed_at.elapsed()
    );
    // The CLI fails over for reads and writes, and the agents follow the new leader: it places
    // a task on one of them and sees it finish.
    let out = cli(
        &all,
        &["run", "--wait", &env.image, "--", "echo", "after the kill"],
    )
    .await?;
    assert_eq!(stdout(&out), "after the kill\n", "{}", stderr(&out));

    // Every surviving server's and both agents' certificates are renewed, and then the first
    // ones expire: from there on every new connection proves the renewed certificates are used.
    poll(
        "every certificate to be renewed",
        CERT_TTL + TIMEOUT,
        || async { certs.iter().all(Cert::renewed).then_some(()) },
    )
    .await
    .with_context(|| {
        let late: Vec<&str> = certs
            .iter()
            .filter(|c| !c.renewed())
            .map(|c| c.who.as_str())
            .collect();
        format!("not renewed: {late:?}")
    })?;
    eprintln!("every certificate renewed at {:?}", started.elapsed());
    let expiry = certs.iter().map(Cert::first_expiry).max().unwrap_or(0);
    poll("the first certificates to expire", CERT_TTL, || async {
        (unix_now() > expiry).then_some(())
    })
    .await?;
    eprintln!("the first certificates expired at {:?}", started.elapsed());

    // Each surviving server answers a new connection.
    for s in &servers {
        let status = s.status().await?;
        assert_eq!(status["leader"], successor, "{status}");
    }
    // Both nodes are ACTIVE and never were DOWN.
    let listed = cli_json(&all, &["get", "nodes"]).await?;
    for n in listed.as_array().into_iter().flatten() {
        assert_eq!(n["status"], "ACTIVE", "{n}");
        assert!(!n["events"].to_string().contains("DOWN"), "{n}");
    }
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    // Every surviving server and both agents present their renewed certificates.
    let ca = std::fs::read_to_string(servers[0].data_dir.join("tls/ca.pem"))?;
    let mut listeners: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    for a in &agents {
        let node = cli_json(&all, &["get", "node", &a.name]).await?;
        listeners.push(node["address"].as_str().unwrap_or_default().to_owned());
    }
    for (addr, cert) in listeners.iter().zip(&certs) {
        assert!(
            presented_certificate(addr, &ca).await? == cert.current_der()?,
            "{} at {addr} does not present its renewed certificate",
            cert.who
        );
    }

    // The same two tasks run, started when they were, in the same containers and processes.
    assert_eq!(ticker_tasks(&all).await?, tasks);
    for (a, before) in agents.iter().zip(&pids) {
        assert_eq!(&containerd_pids(&env, a).await?, before, "{}", a.name);
    }
    let service = cli_json(&all, &["get", "service", "ticker"]).await?;
    assert_eq!(service["runningCount"], 2, "{service}");

    // Servers reach the agents with the new certificates: exec into both tasks, and new tasks
    // on both nodes run, report and log.
    for task in &task_ids {
        let out = cli(&all, &["exec", task, "--", "echo", "still here"]).await?;
        assert_eq!(stdout(&out), "still here\n", "{}", stderr(&out));
    }
    let echoes = run_tasks(
        &all,
        &[
            "run",
            "--count",
            "2",
            "--placement-constraint",
            "distinctInstance",
            &env.image,
            "--",
            "echo",
            "renewed",
        ],
    )
    .await?;
    let mut echo_nodes = Vec::new();
    for id in &echoes {
        let task = wait_stopped(&all, id, TIMEOUT).await?;
        assert_eq!(task["containers"][0]["exitCode"], 0, "{task}");
        echo_nodes.push(task["node"].as_str().unwrap_or_default().to_owned());
        let out = cli(&all, &["logs", id]).await?;
        assert_eq!(stdout(&out), "renewed\n", "{}", stderr(&out));
    }
    echo_nodes.sort();
    assert_eq!(echo_nodes, ["node-1", "node-2"]);

    // The streams opened before the kill are still open and still flowing, with no error: the
    // watcher reports the new tasks, and each task's output is one unbroken count.
    poll(
        "the event stream to report the new tasks",
        TIMEOUT,
        || async {
            let lines = events.lines();
            echoes
                .iter()
                .all(|id| lines.iter().any(|l| l.contains(id.as_str())))
                .then_some(())
        },
    )
    .await
    .with_context(|| format!("events: {:?}", events.lines()))?;
    for s in &logs {
        s.printed_more_than(s.lines().len()).await?;
    }
    let seen = events.close().await?;
    let changes: Vec<&String> = seen[watched_before..]
        .iter()
        .filter(|l| task_ids.iter().any(|id| l.contains(id.as_str())))
        .collect();
    assert!(
        changes.is_empty(),
        "the service's tasks changed: {changes:?}"
    );
    for (task, stream) in task_ids.iter().zip(logs) {
        assert_ticks(task, &stream.close().await?);
    }
    eprintln!("done in {:?}", started.elapsed());
    Ok(())
}
