//! `berth agent`: its flags, the agent over containerd, and hollow agents (many in one process,
//! over an in-memory runtime, for benchmarks of the control plane).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_agent::{Agent, AgentConfig, ContainerdConfig, ContainerdRuntime};

use crate::daemon::{shutdown_signal, DaemonArgs};

/// Container log files rotate at this size by default.
pub(crate) const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// This executable, which containerd's shims start as the log driver.
pub(crate) fn log_driver_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("find the berth executable for the log driver")
}

#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
    /// Run N hollow agents instead (the real agent code over an in-memory runtime, for
    /// control-plane benchmarks), named NODE_NAME-0 … NODE_NAME-(N-1).
    #[arg(long, value_name = "N")]
    pub(crate) hollow: Option<u32>,
    /// Where task logs and agent state live.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Server addresses, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7400")]
    pub(crate) servers: Vec<String>,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub(crate) containerd: PathBuf,
    /// containerd namespace for this agent's containers (default: berth-<node name>).
    #[arg(long)]
    pub(crate) containerd_namespace: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub(crate) node_name: Option<String>,
    /// CPU units offered to tasks (default: 1024 per CPU).
    #[arg(long)]
    pub(crate) cpu: Option<u64>,
    /// MiB offered to tasks (default: the host's memory).
    #[arg(long)]
    pub(crate) memory: Option<u64>,
    /// Node attributes for placement constraints, KEY=VALUE.
    #[arg(long = "attr", value_name = "K=V")]
    pub(crate) attributes: Vec<String>,
    /// Where the agent's API (logs, exec; TLS) listens; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// The address servers dial for logs and exec, HOST[:PORT] (without a port: the API's).
    /// Its host is a name in the agent's certificate. Default: --listen, which then must not
    /// be an unspecified address such as 0.0.0.0 or [::].
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) advertise: Option<String>,
    /// The join token that `berth cluster token create --role agent` printed. Needed on the
    /// first start only: the agent then keeps its certificate in DATA_DIR/tls and renews it.
    /// Prefer --join-token-file, which keeps the token out of the process list.
    #[arg(long, value_name = "TOKEN", conflicts_with = "join_token_file")]
    pub(crate) join_token: Option<String>,
    /// A file holding the join token (surrounding white space is ignored).
    #[arg(long, value_name = "FILE")]
    pub(crate) join_token_file: Option<PathBuf>,
    /// Serve /metrics to callers without a client certificate of the cluster.
    #[arg(long)]
    pub(crate) metrics_public: bool,
    /// How often resource usage of running tasks is sampled and sent to the servers.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub(crate) metrics_interval: Duration,
    /// Disk budget for images in MiB: above it, the least recently pulled images that no
    /// container uses are deleted after each pull. Default: 40% of the filesystem holding
    /// --data-dir; 0: no limit.
    #[arg(long, value_name = "MIB")]
    pub(crate) image_budget_mib: Option<u64>,
    /// Size at which a container's log file rotates (one older file is kept).
    #[arg(long, default_value_t = DEFAULT_LOG_MAX_BYTES)]
    pub(crate) log_max_bytes: u64,
    /// The minimal init containers run under (mounted read-only as /sbin/berth-init): a static
    /// binary, since it runs inside any image. Debian's `tini` package ships this one.
    #[arg(long, default_value = berth_agent::containerd::DEFAULT_INIT)]
    pub(crate) init_path: PathBuf,
    /// The bridge the node's task network hangs off (created when missing). Agents sharing a
    /// host each need their own bridge and subnet.
    #[arg(long, default_value = berth_agent::cni::DEFAULT_BRIDGE, value_parser = berth_agent::cni::bridge_name)]
    pub(crate) bridge: String,
    /// The subnet tasks on this node get their addresses from (the bridge takes the first).
    #[arg(long, default_value = berth_agent::cni::DEFAULT_SUBNET)]
    pub(crate) task_subnet: berth_agent::cni::Subnet,
    /// Give tasks only the node's own name server (service discovery), not the host's name
    /// servers after it: tasks then resolve nothing outside berth.internal.
    #[arg(long)]
    pub(crate) no_host_nameservers: bool,
    /// Where the CNI plugins are (Debian's containernetworking-plugins).
    #[arg(long, default_value = berth_agent::cni::DEFAULT_PLUGIN_DIR)]
    pub(crate) cni_plugin_dir: PathBuf,
    /// How many network namespaces to keep attached to the bridge ahead of any task (each
    /// holds an address of the subnet): a task that takes one starts without waiting for the
    /// CNI plugins. 0 makes each task's when it starts.
    #[arg(long, value_name = "N", default_value_t = berth_agent::cni::DEFAULT_WARM)]
    pub(crate) warm_networks: usize,
    /// Credentials for a registry, HOST=USER:PASSWORD (repeatable; prefer --registry-auth-file,
    /// which keeps passwords out of the process list).
    #[arg(long = "registry-auth", value_name = "HOST=USER:PASSWORD")]
    pub(crate) registry_auth: Vec<String>,
    /// A file of registry credentials, one `HOST USER PASSWORD` per line (# for comments).
    #[arg(long)]
    pub(crate) registry_auth_file: Option<PathBuf>,
    /// Registries (host:port) reached over plain HTTP besides loopback ones.
    #[arg(long = "insecure-registry")]
    pub(crate) insecure_registries: Vec<String>,
    /// The most processes and threads one container may have (its pids cgroup); 0 for no
    /// limit. A fork bomb stops there instead of exhausting the node.
    #[arg(long, value_name = "N", default_value_t = berth_agent::spec::DEFAULT_PIDS_LIMIT as u32)]
    pub(crate) pids_limit: u32,
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

pub(crate) fn host_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(1024, |kb| kb / 1024)
}

/// Registry credentials from `--registry-auth` flags and `--registry-auth-file`.
pub(crate) fn registry_credentials(
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

pub(crate) fn parse_attributes(attrs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
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
pub(crate) const AGENT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Hollow agents of one process join this many at a time …
pub(crate) const HOLLOW_JOINS_AT_ONCE: usize = 32;
/// … and each may take this long once its turn came (a loaded cluster answers slowly).
pub(crate) const HOLLOW_JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// `--hollow N`: N agents in this process, each the real agent code (stream, registration,
/// heartbeats, reports) over an in-memory runtime, named NAME-0 … NAME-(N-1). For benchmarks of
/// the control plane only: nothing runs.
pub(crate) async fn run_hollow(args: AgentArgs, count: u32) -> anyhow::Result<()> {
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
            discovery: None,
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

pub(crate) async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
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
        image_budget: image_budget(args.image_budget_mib, &args.data_dir)?,
        log_driver: Some((log_driver_binary()?, args.log_max_bytes)),
        init: args.init_path,
        network: berth_agent::cni::NetworkSettings {
            bridge: args.bridge.clone(),
            subnet: args.task_subnet,
            plugin_dir: args.cni_plugin_dir,
            state_dir: args.data_dir.join("cni"),
            host_address: match advertise.ip() {
                Some(std::net::IpAddr::V4(ip)) => ip,
                _ => std::net::Ipv4Addr::UNSPECIFIED,
            },
            warm: args.warm_networks,
        },
    })
    .await?
    .with_pids_limit(args.pids_limit);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let dns_dir = args.data_dir.join("dns");
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
        discovery: Some(berth_agent::discovery::DiscoveryConfig {
            bridge: args.bridge,
            subnet: args.task_subnet,
            dir: dns_dir,
            upstream: if args.no_host_nameservers {
                Vec::new()
            } else {
                berth_agent::discovery::host_nameservers()
            },
        }),
    };
    Agent::run(config, Arc::new(runtime), shutdown_signal()).await
}

/// The image budget in bytes: `mib` when given (0: none), else a share of the filesystem
/// holding `data_dir`.
pub(crate) fn image_budget(
    mib: Option<u64>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<u64>> {
    let budget = match mib {
        Some(0) => None,
        Some(mib) => Some(mib.saturating_mul(1024 * 1024)),
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("create {}", data_dir.display()))?;
            let bytes = berth_agent::containerd::default_image_budget(data_dir)
                .with_context(|| format!("size the filesystem holding {}", data_dir.display()))?;
            tracing::info!(
                budget_mib = bytes >> 20,
                "image budget: {}% of the filesystem holding {} (--image-budget-mib sets another)",
                berth_agent::containerd::DEFAULT_IMAGE_SHARE_PERCENT,
                data_dir.display()
            );
            Some(bytes)
        }
    };
    Ok(budget)
}
