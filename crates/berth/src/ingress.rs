//! `berth ingress`: its flags, its identity in the cluster (a certificate naming
//! `berth://ingress/NAME`, from a join token, renewed like an agent's), the Watch that keeps its
//! routes current, and its listeners: HTTP (or HTTPS), one per TCP rule, and metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_ingress::{Balancer, Metrics, Proxy, RouteTable};
use tokio::sync::watch;

use crate::agent::host_name;
use crate::daemon::{shutdown_signal, DaemonArgs};

#[derive(Debug, clap::Args)]
pub(crate) struct IngressArgs {
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
    /// This ingress's name in the cluster, which its certificate carries (default: the host
    /// name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Where the ingress keeps its certificate.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Server addresses, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7400")]
    pub(crate) servers: Vec<String>,
    /// Where requests are served: plain HTTP, or HTTPS with --tls-cert and --tls-key. TCP
    /// rules listen on this address's host, on their own ports.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Where Prometheus metrics are served (plain HTTP: keep it on a loopback or private
    /// address).
    #[arg(long, default_value = "127.0.0.1:9180")]
    pub(crate) metrics_listen: SocketAddr,
    /// A PEM certificate (with its chain) to terminate TLS with.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The join token that `berth cluster token create --role ingress` printed. Needed on the
    /// first start only: the ingress keeps its certificate in DATA_DIR/tls and renews it.
    #[arg(long, value_name = "TOKEN", conflicts_with = "join_token_file")]
    pub(crate) join_token: Option<String>,
    /// A file holding the join token (surrounding white space is ignored).
    #[arg(long, value_name = "FILE")]
    pub(crate) join_token_file: Option<PathBuf>,
}

/// How long joining may take (servers may still be starting).
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The TLS configuration of `--tls-cert` and `--tls-key`, if given.
fn public_tls(args: &IngressArgs) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read =
        |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let credentials = berth_tls::tls::Credentials::new(&read(cert)?, &read(key)?, "")
        .with_context(|| {
            format!(
                "load the certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
    let config = berth_tls::tls::public_server_config(Arc::new(credentials))
        .context("TLS configuration of the ingress listener")?;
    Ok(Some(Arc::new(config)))
}

pub(crate) async fn run_ingress(args: IngressArgs) -> anyhow::Result<()> {
    let tls = public_tls(&args)?;
    let join_token =
        berth_agent::join_token(args.join_token.as_deref(), args.join_token_file.as_deref())?;
    let member = member(
        args.name.clone().unwrap_or_else(host_name),
        args.data_dir.clone(),
        args.servers.clone(),
        join_token,
        args.listen,
    )?;
    let listeners = Listeners {
        listen: args.listen,
        metrics: args.metrics_listen,
        tls,
    };
    serve(member, listeners, shutdown_signal()).await
}

/// Who an ingress is in the cluster. Its certificate names the listener's host (loopback when
/// it listens everywhere): the ingress dials servers, nothing dials it with that identity.
pub(crate) fn member(
    name: String,
    data_dir: PathBuf,
    servers: Vec<String>,
    join_token: Option<berth_tls::JoinToken>,
    listen: SocketAddr,
) -> anyhow::Result<berth_agent::Member> {
    let named = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    };
    Ok(berth_agent::Member {
        role: berth_tls::Role::Ingress,
        name,
        data_dir,
        servers,
        join_token,
        join_timeout: JOIN_TIMEOUT,
        join_gate: None,
        advertise: berth_agent::Advertise::new(named, None)?,
    })
}

/// Where an ingress serves requests (with TLS, or plain) and metrics.
pub(crate) struct Listeners {
    pub(crate) listen: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Runs an ingress until `shutdown`: its certificate (joining when it has none), the Watch of
/// the cluster, and its listeners.
pub(crate) async fn serve(
    member: berth_agent::Member,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let address = member.advertise.address(listeners.listen.port());
    let membership = berth_agent::Membership::establish(&member, &address).await?;

    let (routes_tx, routes) = watch::channel(Arc::new(RouteTable::default()));
    let metrics = Metrics::new();
    let (traffic, activations) = berth_ingress::traffic::Traffic::new();
    let proxy = Arc::new(
        Proxy::new(
            routes.clone(),
            Arc::new(Balancer::default()),
            metrics.clone(),
        )
        .with_traffic(traffic.clone()),
    );
    let listener = tokio::net::TcpListener::bind(listeners.listen)
        .await
        .with_context(|| format!("bind the ingress listener on {}", listeners.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(listeners.metrics)
        .await
        .with_context(|| format!("bind the metrics listener on {}", listeners.metrics))?;
    let scheme = if listeners.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        name = %member.name,
        "berth ingress serving {scheme}"
    );
    let (stop_tx, stop) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let http = tokio::spawn(berth_ingress::serve_http(
        listener,
        listeners.tls,
        proxy.clone(),
        stopped(),
    ));
    let metrics_server = tokio::spawn(berth_ingress::serve_metrics(
        metrics_listener,
        metrics,
        stopped(),
    ));
    // Requests to the leader's autoscaler, and wakes of services at zero.
    let report = berth_ingress::traffic::report(
        member.servers.clone(),
        membership.dialer().clone(),
        traffic.clone(),
        routes.clone(),
    );
    let activate = berth_ingress::traffic::activate(
        member.servers.clone(),
        membership.dialer().clone(),
        traffic.clone(),
        activations,
    );
    let tcp = tcp_listeners(listeners.listen.ip(), routes, proxy, stopped.clone());
    let follow = berth_ingress::cluster::follow(
        member.servers.clone(),
        membership.dialer().clone(),
        routes_tx,
    );
    tokio::select! {
        () = shutdown => {}
        () = follow => {}
        () = report => {}
        () = activate => {}
        () = tcp => {}
        () = membership.keep_renewed(&member, &address) => {}
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    let _ = metrics_server.await;
    Ok(())
}

/// Opens a TCP listener for each TCP rule's port as the routes name them, and closes those no
/// rule names any more. A port that cannot be bound is logged and tried again on the next
/// change of the routes.
async fn tcp_listeners<F, Fut>(
    host: std::net::IpAddr,
    mut routes: watch::Receiver<Arc<RouteTable>>,
    proxy: Arc<Proxy>,
    stopped: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut open: BTreeMap<u16, watch::Sender<bool>> = BTreeMap::new();
    loop {
        let ports = routes.borrow_and_update().tcp_ports();
        open.retain(|port, stop| {
            let keep = ports.contains(port);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for port in ports {
            if open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(host, port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let (stop_tx, mut stop_rx) = watch::channel(false);
                    let outer = stopped();
                    let shutdown = async move {
                        tokio::select! {
                            () = outer => {}
                            _ = stop_rx.wait_for(|s| *s) => {}
                        }
                    };
                    tracing::info!(%addr, "listening for a TCP ingress rule");
                    tokio::spawn(berth_ingress::serve_tcp(
                        listener,
                        port,
                        proxy.clone(),
                        shutdown,
                    ));
                    open.insert(port, stop_tx);
                }
                Err(e) => tracing::warn!(%addr, "listen for a TCP ingress rule: {e}"),
            }
        }
        if routes.changed().await.is_err() {
            return;
        }
    }
}
