//! `berth dev`: a server and an agent in one process, with their own containerd and registry,
//! and admin credentials where the CLI finds them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_agent::{Agent, AgentConfig, ContainerdConfig, ContainerdRuntime};
use berth_server::{Server, ServerConfig};

use crate::agent::{host_memory_mib, log_driver_binary, DEFAULT_LOG_MAX_BYTES};
use crate::daemon::{shutdown_signal, DaemonArgs};

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
    /// Where everything (Raft, containerd, registry, logs) lives.
    #[arg(long, default_value = ".berth-dev")]
    pub(crate) data_dir: PathBuf,
    /// The server's listen address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub(crate) listen: SocketAddr,
    /// Use this containerd socket instead of starting one.
    #[arg(long)]
    pub(crate) containerd: Option<PathBuf>,
    /// Where the local registry listens (started from PATH when nothing answers there).
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub(crate) registry: SocketAddr,
    /// Do not start a registry or push the demo image.
    #[arg(long)]
    pub(crate) no_registry: bool,
    /// Where the ingress serves requests for services' ingress rules (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) ingress_listen: SocketAddr,
    /// Where the ingress serves its Prometheus metrics.
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub(crate) ingress_metrics_listen: SocketAddr,
    /// Where the server serves ECS's API (plain HTTP on loopback; access keys from `berth
    /// token create --aws`).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub(crate) ecs_listen: SocketAddr,
}

pub(crate) async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
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
    let mut config = ServerConfig::new(Some(1), data_dir.join("server"), args.listen);
    config.ecs_listen = Some(args.ecs_listen);
    let server = Server::start(config).await?;
    let server_addr = server.address.to_string();
    // The agent in this process gets its certificate straight from the server's CA.
    let agent_tls = berth_tls::dir::TlsDir::new(&data_dir.join("agent"));
    if agent_tls.load()?.is_none() {
        let material = server
            .local_material(berth_tls::Role::Agent, "dev", &["127.0.0.1:0".to_owned()])
            .await?;
        agent_tls
            .save(&material)
            .context("write the dev agent's certificate")?;
    }
    // The ingress in this process too.
    let ingress_dir = data_dir.join("ingress");
    let ingress_tls = berth_tls::dir::TlsDir::new(&ingress_dir);
    if ingress_tls.load()?.is_none() {
        let material = server
            .local_material(
                berth_tls::Role::Ingress,
                "dev",
                &[args.ingress_listen.to_string()],
            )
            .await?;
        ingress_tls
            .save(&material)
            .context("write the dev ingress's certificate")?;
    }
    let ingress_member = crate::ingress::member(
        "dev".into(),
        ingress_dir,
        vec![server.address.to_string()],
        None,
        args.ingress_listen,
    )?;
    let ingress_listeners = crate::ingress::Listeners {
        listen: args.ingress_listen,
        metrics: args.ingress_metrics_listen,
        tls: None,
    };
    tokio::spawn(publish_dev_credentials(data_dir.clone()));
    let runtime = ContainerdRuntime::connect(ContainerdConfig {
        socket,
        namespace: "berth-dev".into(),
        insecure_registries: vec![],
        registry_auth: std::collections::HashMap::new(),
        cgroup_parent: "/berth/dev".into(),
        exec_dir: data_dir.join("agent").join("exec"),
        image_budget: crate::agent::image_budget(None, &data_dir)?,
        log_driver: Some((log_driver_binary()?, DEFAULT_LOG_MAX_BYTES)),
        init: berth_agent::containerd::DEFAULT_INIT.into(),
        network: berth_agent::cni::NetworkSettings {
            bridge: berth_agent::cni::DEFAULT_BRIDGE.into(),
            subnet: berth_agent::cni::DEFAULT_SUBNET.parse()?,
            plugin_dir: berth_agent::cni::DEFAULT_PLUGIN_DIR.into(),
            state_dir: data_dir.join("agent").join("cni"),
            host_address: std::net::Ipv4Addr::LOCALHOST,
            warm: berth_agent::cni::DEFAULT_WARM,
        },
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
        discovery: Some(berth_agent::discovery::DiscoveryConfig {
            bridge: berth_agent::cni::DEFAULT_BRIDGE.into(),
            subnet: berth_agent::cni::DEFAULT_SUBNET.parse()?,
            dir: data_dir.join("agent").join("dns"),
            upstream: berth_agent::discovery::host_nameservers(),
        }),
    };
    let ingress_at = args.ingress_listen;
    match &demo {
        Some(image) => eprintln!(
            "berth dev is ready at {server_addr}, its ingress at http://{ingress_at}. In another terminal:\n    berth run --wait {image} -- echo hello"
        ),
        None => eprintln!("berth dev is ready at {server_addr}, its ingress at http://{ingress_at}"),
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        Agent::run(agent, Arc::new(runtime), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    let mut ingress_stop = stop_tx.subscribe();
    let ingress_task = tokio::spawn(async move {
        let stopped = async move {
            let _ = ingress_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::ingress::serve(ingress_member, ingress_listeners, stopped).await {
            tracing::error!("the dev ingress stopped: {e:#}");
        }
    });
    let result = server.serve(shutdown_signal()).await;
    stop_tx.send_replace(true);
    let _ = agent_task.await;
    let _ = ingress_task.await;
    result
}

/// Copies the admin credentials the dev server writes to `DATA_DIR/admin.toml` and
/// `~/.config/berth/admin.toml` (0600), where the CLI finds them without flags.
pub(crate) async fn publish_dev_credentials(data_dir: PathBuf) {
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
