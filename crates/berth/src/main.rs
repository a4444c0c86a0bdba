//! `berth`: one binary, four roles — `server`, `agent`, `dev`, and every other subcommand is
//! the admin CLI.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_agent::{Agent, AgentConfig, ContainerdConfig, ContainerdRuntime};
use berth_server::{RaftTuning, Server, ServerConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    args_override_self = true,
    about = "A self-hosted, Fargate-style container task scheduler"
)]
struct Cli {
    #[command(flatten)]
    global: berth_cli::GlobalArgs,
    #[command(subcommand)]
    command: Role,
}

#[derive(Debug, clap::Subcommand)]
enum Role {
    /// Run a control node (Raft member, API, agent endpoint, controllers).
    Server(ServerArgs),
    /// Run a node agent that runs tasks through containerd.
    Agent(AgentArgs),
    /// Run a server and an agent in one process, with their own containerd and registry.
    Dev(DevArgs),
    /// (internal) The log driver containerd's shim runs for each container: MAX_BYTES:PATH.
    #[command(hide = true)]
    LogDriver { spec: String },
    /// Print a shell completion script: `source <(berth completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the client's version and the answering server's.
    Version,
    /// (internal) Print the CLI reference in Markdown, as README.md carries it.
    #[command(hide = true)]
    CliReference,
    #[command(flatten)]
    Client(berth_cli::Command),
}

/// Container log files rotate at this size by default.
const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// This executable, which containerd's shims start as the log driver.
fn log_driver_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("find the berth executable for the log driver")
}

/// Options of the long-running roles.
#[derive(Debug, Clone, clap::Args)]
struct DaemonArgs {
    /// A TOML file of options: keys are the long flag names (`data-dir = "/var/lib/berth"`,
    /// `attr = ["zone=a"]`, `bootstrap = true`); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How log lines are written to stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Where the Raft log and state machine live.
    #[arg(long)]
    data_dir: PathBuf,
    /// The address every gRPC service listens on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// The address other servers and agents use to reach this one (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// This server's Raft member ID, unique in the cluster (default: the one its data dir holds;
    /// 1 for a new cluster; a free one given by the cluster it joins).
    #[arg(long)]
    node_id: Option<u64>,
    /// Start a new one-member cluster (what a server with no state and no --join does anyway).
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster of the server at this address (on first start, with --join-token;
    /// later starts rejoin from their own state).
    #[arg(long, value_name = "ADDR")]
    join: Option<String>,
    /// A join token for servers (`berth cluster token create --role server`): the server
    /// trusts the cluster's CA only if it matches the token, then trades the token for its
    /// certificate.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BERTH_JOIN_TOKEN",
        hide_env_values = true
    )]
    join_token: Option<String>,
    /// Read the join token from this file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// With no state, wait to be added with `berth cluster add` instead of bootstrapping (with
    /// --join: get a certificate, but do not ask to be added).
    #[arg(long, conflicts_with = "bootstrap")]
    no_bootstrap: bool,
    /// More names for this server's certificate (DNS names or IP addresses), besides the
    /// --advertise host, localhost and 127.0.0.1.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_san: Vec<String>,
    /// How long the certificates this server issues live (its own included); they are renewed
    /// after two thirds of it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    cert_ttl: Duration,
    /// Serve /metrics without a token or client certificate.
    #[arg(long)]
    metrics_public: bool,
    /// Start a new cluster from a backup made with `berth cluster snapshot save`.
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    restore: Option<PathBuf>,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this).
    #[arg(long, default_value_t = 400)]
    election_timeout_ms: u64,
    /// How long a write may wait for a leader and a quorum before failing with UNAVAILABLE.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    write_timeout: Duration,
    /// A node whose agent is silent this long becomes DOWN and its tasks are lost; agents stop
    /// their own tasks after 80% of it without contact (self-fencing).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    node_ttl: Duration,
    /// Build a Raft snapshot (and compact the log) after this many entries.
    #[arg(long, default_value_t = 5000)]
    snapshot_every: u64,
    /// Log entries kept after a snapshot for followers that are a little behind.
    #[arg(long, default_value_t = 1000)]
    keep_logs: u64,
}

impl ServerArgs {
    fn config(self) -> anyhow::Result<ServerConfig> {
        // `--bootstrap` states the intent explicitly; without `--join` a server with no state
        // bootstraps anyway, and with state it has nothing to bootstrap.
        let _ = self.bootstrap;
        anyhow::ensure!(
            self.heartbeat_ms * 2 < self.election_timeout_ms,
            "--election-timeout-ms must be more than twice --heartbeat-ms"
        );
        anyhow::ensure!(
            self.cert_ttl >= Duration::from_secs(60),
            "--cert-ttl must be at least a minute"
        );
        let join_token = match (&self.join_token, &self.join_token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("read --join-token-file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        anyhow::ensure!(
            self.join.is_none() || join_token.is_some() || self.data_dir.join("tls").exists(),
            "--join needs --join-token (or --join-token-file): create one on a member with `berth cluster token create --role server`"
        );
        let mut config = ServerConfig::new(self.node_id, self.data_dir, self.listen);
        config.advertise = self.advertise;
        config.join = self.join;
        config.join_token = join_token;
        config.tls_san = self.tls_san;
        config.cert_ttl = self.cert_ttl;
        config.metrics_public = self.metrics_public;
        config.restore = self.restore;
        config.no_bootstrap = self.no_bootstrap;
        config.node_ttl = self.node_ttl;
        config.raft = RaftTuning {
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            election_timeout: (
                Duration::from_millis(self.election_timeout_ms),
                Duration::from_millis(self.election_timeout_ms * 2),
            ),
            write_timeout: self.write_timeout,
            snapshot_every: self.snapshot_every,
            keep_logs: self.keep_logs,
        };
        Ok(config)
    }
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Run N hollow agents instead (the real agent code over an in-memory runtime, for
    /// control-plane benchmarks), named NODE_NAME-0 … NODE_NAME-(N-1).
    #[arg(long, value_name = "N")]
    hollow: Option<u32>,
    /// Where task logs and agent state live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Server addresses, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7400")]
    servers: Vec<String>,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd: PathBuf,
    /// containerd namespace for this agent's containers (default: berth-<node name>).
    #[arg(long)]
    containerd_namespace: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// CPU units offered to tasks (default: 1024 per CPU).
    #[arg(long)]
    cpu: Option<u64>,
    /// MiB offered to tasks (default: the host's memory).
    #[arg(long)]
    memory: Option<u64>,
    /// Node attributes for placement constraints, KEY=VALUE.
    #[arg(long = "attr", value_name = "K=V")]
    attributes: Vec<String>,
    /// Where the agent's API (logs, exec; TLS) listens; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The address servers dial for logs and exec, HOST[:PORT] (without a port: the API's).
    /// Its host is a name in the agent's certificate. Default: --listen, which then must not
    /// be an unspecified address such as 0.0.0.0 or [::].
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise: Option<String>,
    /// The join token that `berth cluster token create --role agent` printed. Needed on the
    /// first start only: the agent then keeps its certificate in DATA_DIR/tls and renews it.
    /// Prefer --join-token-file, which keeps the token out of the process list.
    #[arg(long, value_name = "TOKEN", conflicts_with = "join_token_file")]
    join_token: Option<String>,
    /// A file holding the join token (surrounding white space is ignored).
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// Serve /metrics to callers without a client certificate of the cluster.
    #[arg(long)]
    metrics_public: bool,
    /// How often resource usage of running tasks is sampled and sent to the servers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    metrics_interval: Duration,
    /// Disk budget for images in MiB: above it, the least recently pulled images that no
    /// container uses are deleted after each pull. No limit when unset.
    #[arg(long, value_name = "MIB")]
    image_budget_mib: Option<u64>,
    /// Size at which a container's log file rotates (one older file is kept).
    #[arg(long, default_value_t = DEFAULT_LOG_MAX_BYTES)]
    log_max_bytes: u64,
    /// Credentials for a registry, HOST=USER:PASSWORD (repeatable; prefer --registry-auth-file,
    /// which keeps passwords out of the process list).
    #[arg(long = "registry-auth", value_name = "HOST=USER:PASSWORD")]
    registry_auth: Vec<String>,
    /// A file of registry credentials, one `HOST USER PASSWORD` per line (# for comments).
    #[arg(long)]
    registry_auth_file: Option<PathBuf>,
    /// Registries (host:port) reached over plain HTTP besides loopback ones.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct DevArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Where everything (Raft, containerd, registry, logs) lives.
    #[arg(long, default_value = ".berth-dev")]
    data_dir: PathBuf,
    /// The server's listen address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Use this containerd socket instead of starting one.
    #[arg(long)]
    containerd: Option<PathBuf>,
    /// Where the local registry listens (started from PATH when nothing answers there).
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: SocketAddr,
    /// Do not start a registry or push the demo image.
    #[arg(long)]
    no_registry: bool,
}

fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `berth ROLE --config FILE …`: the file's options become flags placed before the command
/// line's own (with `args_override_self`, later flags win). Keys must be the role's long flags.
fn expand_config(args: Vec<std::ffi::OsString>) -> anyhow::Result<Vec<std::ffi::OsString>> {
    use clap::CommandFactory as _;
    let strings: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(role_at) = strings
        .iter()
        .position(|a| matches!(a.as_str(), "server" | "agent" | "dev"))
    else {
        return Ok(args);
    };
    let file = strings[role_at..].iter().enumerate().find_map(|(i, a)| {
        if a == "--config" {
            strings.get(role_at + i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    });
    let Some(file) = file else {
        return Ok(args);
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("read config file {file}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("config file {file}: {e}"))?;
    let cmd = Cli::command();
    let role = cmd
        .find_subcommand(&strings[role_at])
        .context("role subcommand")?;
    let known: Vec<&str> = role.get_arguments().filter_map(|a| a.get_long()).collect();
    let mut extra: Vec<String> = Vec::new();
    for (key, value) in table {
        if key == "config" || !known.contains(&key.as_str()) {
            anyhow::bail!(
                "config file {file}: unknown option {key:?}; use the long flag names of `berth {} --help`",
                strings[role_at]
            );
        }
        let flag = format!("--{key}");
        let scalar = |v: &toml::Value| -> anyhow::Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    anyhow::bail!("config file {file}: {key} = {other} is not a string or number")
                }
            })
        };
        match &value {
            toml::Value::Boolean(true) => extra.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    extra.push(flag.clone());
                    extra.push(scalar(item)?);
                }
            }
            other => {
                extra.push(flag);
                extra.push(scalar(other)?);
            }
        }
    }
    let mut out: Vec<std::ffi::OsString> = args[..=role_at].to_vec();
    out.extend(extra.into_iter().map(Into::into));
    out.extend(args[role_at + 1..].iter().cloned());
    Ok(out)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("install SIGTERM handler: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

fn host_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(1024, |kb| kb / 1024)
}

/// Registry credentials from `--registry-auth` flags and `--registry-auth-file`.
fn registry_credentials(
    flags: &[String],
    file: Option<&std::path::Path>,
) -> anyhow::Result<std::collections::HashMap<String, (String, String)>> {
    let mut creds = std::collections::HashMap::new();
    for flag in flags {
        let parsed = flag
            .split_once('=')
            .and_then(|(host, rest)| rest.split_once(':').map(|(u, p)| (host, u, p)));
        let (host, user, password) = parsed
            .with_context(|| format!("--registry-auth {flag:?} must be HOST=USER:PASSWORD"))?;
        creds.insert(host.to_owned(), (user.to_owned(), password.to_owned()));
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("read registry credentials {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [host, user, password] = parts[..] else {
                anyhow::bail!(
                    "{}:{}: expected `HOST USER PASSWORD`",
                    file.display(),
                    n + 1
                );
            };
            creds.insert(host.to_owned(), (user.to_owned(), password.to_owned()));
        }
    }
    Ok(creds)
}

fn parse_attributes(attrs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    attrs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--attr {kv:?} must be KEY=VALUE"))
        })
        .collect()
}

/// How long an agent tries to join (servers may still be starting) before it gives up.
const AGENT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Hollow agents of one process join this many at a time …
const HOLLOW_JOINS_AT_ONCE: usize = 32;
/// … and each may take this long once its turn came (a loaded cluster answers slowly).
const HOLLOW_JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// `--hollow N`: N agents in this process, each the real agent code (stream, registration,
/// heartbeats, reports) over an in-memory runtime, named NAME-0 … NAME-(N-1). For benchmarks of
/// the control plane only: nothing runs.
async fn run_hollow(args: AgentArgs, count: u32) -> anyhow::Result<()> {
    let prefix = args.node_name.clone().unwrap_or_else(host_name);
    // Each hollow agent joins with the one token under its own name, with its own key, and
    // keeps its certificate in its own data dir.
    let join_token =
        berth_agent::join_token(args.join_token.as_deref(), args.join_token_file.as_deref())?;
    let listen = SocketAddr::new(args.listen.ip(), 0);
    let advertise = berth_agent::Advertise::new(listen, args.advertise.as_deref())?;
    anyhow::ensure!(
        !advertise.has_port(),
        "--advertise for --hollow agents takes a host without a port: each hollow agent listens on a port of its own"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    let gate = Some(Arc::new(tokio::sync::Semaphore::new(HOLLOW_JOINS_AT_ONCE)));
    for i in 0..count {
        let config = AgentConfig {
            node_name: format!("{prefix}-{i}"),
            data_dir: args.data_dir.join(format!("hollow-{i}")),
            servers: args.servers.clone(),
            listen,
            advertise: advertise.clone(),
            join_token: join_token.clone(),
            // Thousands join a few at a time; each one's timeout starts with its turn.
            join_timeout: HOLLOW_JOIN_TIMEOUT,
            join_gate: gate.clone(),
            metrics_public: args.metrics_public,
            cpu: args.cpu.unwrap_or(4096),
            memory: args.memory.unwrap_or(16_384),
            attributes: parse_attributes(&args.attributes)?,
            heartbeat_interval: Duration::from_secs(1),
            metrics_interval: args.metrics_interval,
            // Each hollow agent has its own metrics, as it would in its own process.
            metrics: berth_agent::Metrics::new(),
        };
        let mut stop = stop_rx.clone();
        agents.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            Agent::run(config, Arc::new(berth_agent::FakeRuntime::new()), shutdown).await
        });
    }
    tracing::info!(count, %prefix, "hollow agents started");
    tokio::select! {
        () = shutdown_signal() => {}
        Some(r) = agents.join_next() => {
            r.context("hollow agent")??;
        }
    }
    let _ = stop_tx.send(true);
    while agents.join_next().await.is_some() {}
    Ok(())
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    if let Some(count) = args.hollow {
        return run_hollow(args, count).await;
    }
    let node_name = args.node_name.unwrap_or_else(host_name);
    // Flags are checked before anything starts.
    let advertise = berth_agent::Advertise::new(args.listen, args.advertise.as_deref())?;
    let join_token =
        berth_agent::join_token(args.join_token.as_deref(), args.join_token_file.as_deref())?;
    let runtime = ContainerdRuntime::connect(ContainerdConfig {
        socket: args.containerd.clone(),
        namespace: args
            .containerd_namespace
            .unwrap_or_else(|| format!("berth-{node_name}")),
        insecure_registries: args.insecure_registries,
        registry_auth: registry_credentials(
            &args.registry_auth,
            args.registry_auth_file.as_deref(),
        )?,
        cgroup_parent: format!("/berth/{node_name}"),
        exec_dir: args.data_dir.join("exec"),
        image_budget: args.image_budget_mib.map(|m| m * 1024 * 1024),
        log_driver: Some((log_driver_binary()?, args.log_max_bytes)),
    })
    .await?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let config = AgentConfig {
        node_name,
        data_dir: args.data_dir,
        servers: args.servers,
        listen: args.listen,
        advertise,
        join_token,
        join_timeout: AGENT_JOIN_TIMEOUT,
        join_gate: None,
        metrics_public: args.metrics_public,
        cpu: args.cpu.unwrap_or(cpus * 1024),
        memory: args.memory.unwrap_or_else(host_memory_mib),
        attributes: parse_attributes(&args.attributes)?,
        heartbeat_interval: Duration::from_secs(1),
        metrics_interval: args.metrics_interval,
        metrics: berth_agent::Metrics::new(),
    };
    Agent::run(config, Arc::new(runtime), shutdown_signal()).await
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let (socket, _containerd) = match args.containerd {
        Some(socket) => (socket, None),
        None => {
            let c = berth_dev::Containerd::start(&data_dir.join("containerd")).await?;
            tracing::info!(socket = %c.socket.display(), "started containerd");
            (c.socket.clone(), Some(c))
        }
    };
    let mut _registry = None;
    let mut demo = None;
    if !args.no_registry {
        if !berth_dev::registry_ready(args.registry).await {
            match berth_dev::find_program("docker-registry") {
                Some(_) => {
                    _registry = Some(
                        berth_dev::Registry::start(&data_dir.join("registry"), args.registry)
                            .await?,
                    );
                    tracing::info!(address = %args.registry, "started registry");
                }
                None => tracing::warn!("docker-registry is not installed; no local registry"),
            }
        }
        if let Some(busybox) = berth_dev::find_program("busybox") {
            if berth_dev::registry_ready(args.registry).await {
                let reference = format!("{}/demo:latest", args.registry);
                berth_dev::push_busybox_image(&busybox, &reference).await?;
                demo = Some(reference);
            }
        }
    }
    let server = Server::start(ServerConfig::new(
        Some(1),
        data_dir.join("server"),
        args.listen,
    ))
    .await?;
    let server_addr = server.address.to_string();
    // The agent in this process gets its certificate straight from the server's CA.
    let agent_tls = berth_tls::dir::TlsDir::new(&data_dir.join("agent"));
    if agent_tls.load()?.is_none() {
        let material = server
            .local_agent_material("dev", &["127.0.0.1:0".to_owned()])
            .await?;
        agent_tls
            .save(&material)
            .context("write the dev agent's certificate")?;
    }
    tokio::spawn(publish_dev_credentials(data_dir.clone()));
    let runtime = ContainerdRuntime::connect(ContainerdConfig {
        socket,
        namespace: "berth-dev".into(),
        insecure_registries: vec![],
        registry_auth: std::collections::HashMap::new(),
        cgroup_parent: "/berth/dev".into(),
        exec_dir: data_dir.join("agent").join("exec"),
        image_budget: None,
        log_driver: Some((log_driver_binary()?, DEFAULT_LOG_MAX_BYTES)),
    })
    .await?;
    let agent = AgentConfig {
        node_name: "dev".into(),
        data_dir: data_dir.join("agent"),
        servers: vec![server_addr.clone()],
        listen: "127.0.0.1:0".parse()?,
        cpu: std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1024,
        memory: host_memory_mib(),
        attributes: BTreeMap::new(),
        heartbeat_interval: Duration::from_secs(1),
        metrics_interval: Duration::from_secs(5),
        metrics: berth_agent::Metrics::new(),
        // Its certificate is in DATA_DIR/agent/tls already (written above): no token.
        advertise: berth_agent::Advertise::new("127.0.0.1:0".parse()?, None)?,
        join_token: None,
        join_timeout: Duration::from_secs(60),
        join_gate: None,
        metrics_public: false,
    };
    match &demo {
        Some(image) => eprintln!(
            "berth dev is ready at {server_addr}. In another terminal:\n    berth run --wait {image} -- echo hello"
        ),
        None => eprintln!("berth dev is ready at {server_addr}"),
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        Agent::run(agent, Arc::new(runtime), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    let result = server.serve(shutdown_signal()).await;
    stop_tx.send_replace(true);
    let _ = agent_task.await;
    result
}

/// Copies the admin credentials the dev server writes to `DATA_DIR/admin.toml` and
/// `~/.config/berth/admin.toml` (0600), where the CLI finds them without flags.
async fn publish_dev_credentials(data_dir: PathBuf) {
    let written = data_dir.join("server").join("admin.toml");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !written.exists() {
        if tokio::time::Instant::now() > deadline {
            tracing::error!(path = %written.display(), "the dev server wrote no admin credentials");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let copy = |to: &std::path::Path| -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&written)
            .with_context(|| format!("read {}", written.display()))?;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        berth_tls::dir::write(to, &text, 0o600).with_context(|| format!("write {}", to.display()))
    };
    let mut targets = vec![data_dir.join("admin.toml")];
    if let Some(home) = std::env::var_os("HOME") {
        targets.push(PathBuf::from(home).join(".config/berth/admin.toml"));
    }
    for to in targets {
        match copy(&to) {
            Ok(()) => tracing::info!(path = %to.display(), "wrote admin credentials"),
            Err(e) => tracing::warn!("admin credentials: {e:#}"),
        }
    }
}

#[tokio::main]
async fn main() {
    let args = match expand_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    let code = match cli.command {
        Role::Server(args) => {
            init_logging("info,openraft=warn", args.daemon.log_format);
            let result = async {
                let server = Server::start(args.config()?).await?;
                server.serve(shutdown_signal()).await
            }
            .await;
            exit_code(result.map(|()| 0))
        }
        Role::Agent(args) => {
            init_logging("info,openraft=warn", args.daemon.log_format);
            exit_code(run_agent(args).await.map(|()| 0))
        }
        Role::Dev(args) => {
            init_logging("info,openraft=warn", args.daemon.log_format);
            exit_code(run_dev(args).await.map(|()| 0))
        }
        Role::LogDriver { spec } => {
            let result = spec
                .split_once(':')
                .and_then(|(max, path)| Some((max.parse::<u64>().ok()?, PathBuf::from(path))))
                .context("log-driver expects MAX_BYTES:PATH")
                .and_then(|(max, path)| {
                    berth_agent::logfile::run_driver(&path, max)
                        .with_context(|| format!("log to {}", path.display()))
                });
            exit_code(result.map(|()| 0))
        }
        Role::Completion { shell } => {
            use clap::CommandFactory as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            0
        }
        Role::CliReference => {
            print!("{}", cli_reference());
            0
        }
        Role::Version => {
            init_logging("warn", LogFormat::Text);
            println!("client: berth {}", env!("CARGO_PKG_VERSION"));
            exit_code(berth_cli::server_version(&cli.global).await.map(|v| {
                println!("server: berth {v}");
                0
            }))
        }
        Role::Client(command) => {
            init_logging("warn", LogFormat::Text);
            exit_code(berth_cli::run(cli.global, command).await)
        }
    };
    std::process::exit(code);
}

/// The help of every visible subcommand, as Markdown.
fn cli_reference() -> String {
    use clap::CommandFactory as _;
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut String) {
        let mut subs: Vec<clap::Command> = cmd
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            .cloned()
            .collect();
        for sub in &mut subs {
            let full = format!("{path} {}", sub.get_name());
            if sub.has_subcommands() {
                walk(sub, &full, out);
                continue;
            }
            let mut sub = sub.clone().bin_name(full.clone()).term_width(0);
            let help = sub.render_help().to_string();
            out.push_str(&format!(
                "#### `{full}`\n\n```text\n{}\n```\n\n",
                help.trim_end()
            ));
        }
    }
    let mut cmd = Cli::command();
    let mut out = String::new();
    walk(&mut cmd, "berth", &mut out);
    out
}

fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_shipped_config_files_parse() {
        use clap::Parser as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config");
        for role in ["server", "agent"] {
            let f = dir.join(format!("{role}.toml")).display().to_string();
            let expanded = super::expand_config(args(&["berth", role, "--config", &f]))
                .unwrap_or_else(|e| panic!("{role}: {e:#}"));
            super::Cli::try_parse_from(&expanded).unwrap_or_else(|e| panic!("{role}: {e}"));
        }
    }

    #[test]
    fn a_config_file_becomes_flags_that_the_command_line_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "data-dir = \"/var/lib/berth\"\nservers = \"10.0.0.1:7400,10.0.0.2:7400\"\nattr = [\"zone=a\", \"disk=ssd\"]\ncpu = 2048\ninsecure-registry = []\n",
        )
        .expect("write");
        let f = file.display().to_string();
        let expanded =
            super::expand_config(args(&["berth", "agent", "--config", &f, "--cpu", "512"]))
                .expect("expands");
        let expanded: Vec<String> = expanded
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            expanded,
            [
                "berth",
                "agent",
                "--attr",
                "zone=a",
                "--attr",
                "disk=ssd",
                "--cpu",
                "2048",
                "--data-dir",
                "/var/lib/berth",
                "--servers",
                "10.0.0.1:7400,10.0.0.2:7400",
                "--config",
                &f,
                "--cpu",
                "512",
            ]
        );
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from(&expanded).expect("parses");
        let super::Role::Agent(a) = cli.command else {
            panic!("agent")
        };
        assert_eq!(a.cpu, Some(512), "the command line wins");
        std::fs::write(&file, "cpus = 4\n").expect("write");
        let err = super::expand_config(args(&["berth", "agent", "--config", &f])).unwrap_err();
        assert!(err.to_string().contains("unknown option \"cpus\""), "{err}");
    }

    /// README.md's CLI reference is generated from the clap definitions; keep it current with
    /// `BERTH_UPDATE_GOLDEN=1 cargo test -p berth`.
    #[test]
    fn the_readme_carries_the_current_cli_reference() {
        const START: &str = "<!-- cli-reference:start -->\n";
        const END: &str = "<!-- cli-reference:end -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let (head, rest) = readme
            .split_once(START)
            .expect("README.md has the start marker");
        let (current, tail) = rest.split_once(END).expect("README.md has the end marker");
        let generated = super::cli_reference();
        if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, format!("{head}{START}{generated}{END}{tail}"))
                .expect("write README.md");
            return;
        }
        assert!(
            current == generated,
            "README.md's CLI reference is stale; run BERTH_UPDATE_GOLDEN=1 cargo test -p berth"
        );
    }
}
