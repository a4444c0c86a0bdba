//! Service discovery on a node, as Swarm's routing mesh does it: tasks resolve
//! `SERVICE.NAMESPACE.berth.internal` (and `SERVICE`, through their resolv.conf's search
//! domain) at a small DNS responder on the bridge's address, which answers with an address the
//! node gives each discoverable service (from the top of its task subnet, on the bridge); a
//! proxy listening there on each port the service publishes forwards connections to the
//! service's endpoints — on any node, at the node's address and the task's published port.
//!
//! The endpoints come from the servers (pushed over the agent's stream whenever they change):
//! a task is one while RUNNING, wanted RUNNING and healthy, so it leaves as soon as it is asked
//! to stop, before its SIGTERM (see the deregistration delay), or turns unhealthy.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use berth_ingress::{Backend, Balancer, Metrics, Proxy, RouteTable, ServiceKey, TcpRoute};
use berth_model::ServiceEndpoints;
use tokio::sync::watch;

use crate::cni::Subnet;
use crate::dns::{self, Lookup};

/// Where a node's service discovery lives.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The node's bridge; it gets the gateway address and one address per service.
    pub bridge: String,
    pub subnet: Subnet,
    /// Where the resolv.conf files of tasks are written (one per namespace).
    pub dir: PathBuf,
    /// Name servers listed after the node's own (for names outside `berth.internal`).
    pub upstream: Vec<Ipv4Addr>,
}

/// A node's service discovery: the endpoints the servers sent, the address of each service on
/// this node, and what answers on them.
pub struct Discovery {
    config: DiscoveryConfig,
    endpoints: watch::Sender<Arc<Vec<ServiceEndpoints>>>,
    /// `(namespace, service)` -> its address on this node.
    addresses: Mutex<HashMap<(String, String), Ipv4Addr>>,
}

/// The name servers of the host that a task can reach: those of /etc/resolv.conf that are not
/// loopback addresses, or, when it names only such a stub (systemd-resolved), the ones the stub
/// forwards to.
pub fn host_nameservers() -> Vec<Ipv4Addr> {
    let read = |path: &str| -> Vec<Ipv4Addr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
            .filter(|a| !a.is_loopback())
            .collect()
    };
    let found = read("/etc/resolv.conf");
    if found.is_empty() {
        read("/run/systemd/resolve/resolv.conf")
    } else {
        found
    }
}

/// A task's resolv.conf in `namespace`: the node's responder first.
pub fn resolv_conf(gateway: Ipv4Addr, upstream: &[Ipv4Addr], namespace: &str) -> String {
    let mut out = format!(
        "# written by berth: the node's service discovery, then the host's name servers\nnameserver {gateway}\n"
    );
    for ns in upstream {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    out.push_str(&format!("search {namespace}.{}\n", dns::ZONE));
    out
}

impl Discovery {
    pub fn new(config: DiscoveryConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            endpoints: watch::Sender::new(Arc::new(Vec::new())),
            addresses: Mutex::new(HashMap::new()),
        })
    }

    /// The endpoints the servers sent last.
    pub fn update(&self, endpoints: Vec<ServiceEndpoints>) {
        self.endpoints.send_if_modified(|current| {
            let changed = **current != endpoints;
            if changed {
                *current = Arc::new(endpoints);
            }
            changed
        });
    }

    /// The resolv.conf for tasks of `namespace`, written once.
    pub fn resolv_conf(&self, namespace: &str) -> std::io::Result<PathBuf> {
        let path = self.config.dir.join(format!("{namespace}.resolv.conf"));
        let text = resolv_conf(
            self.config.subnet.gateway(),
            &self.config.upstream,
            namespace,
        );
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::create_dir_all(&self.config.dir)?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(path)
    }

    fn lookup(&self, namespace: &str, service: &str) -> Lookup {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(namespace.to_owned(), service.to_owned()))
            .map_or(Lookup::NoSuchName, |a| Lookup::Address(*a))
    }

    /// Runs until the agent stops: the bridge with its address, the DNS responder on it, and
    /// the services' addresses and proxies as the endpoints change.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        // Started again after a failure: what an earlier run served is served afresh.
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let gateway = self.config.subnet.gateway();
        ensure_bridge(&self.config.bridge, gateway, self.config.subnet.prefix).await?;
        // Services' addresses of an earlier run go: they are given out again as endpoints come.
        let pool = self.config.subnet.service_addresses();
        guard_discovery(&self.config.bridge, gateway, &pool).await?;
        for address in bridge_addresses(&self.config.bridge).await? {
            if pool.contains(&u32::from(address)) {
                ip_quiet(&[
                    "addr",
                    "del",
                    &format!("{address}/32"),
                    "dev",
                    &self.config.bridge,
                ])
                .await;
            }
        }
        let socket = tokio::net::UdpSocket::bind(SocketAddr::from((gateway, 53)))
            .await
            .with_context(|| {
                format!("bind the service discovery's DNS responder on {gateway}:53")
            })?;
        tracing::info!(%gateway, bridge = %self.config.bridge, "service discovery answering");
        let responder = self.clone().respond(socket);
        let services = self.clone().serve_services();
        tokio::select! {
            r = responder => r,
            r = services => r,
        }
    }

    async fn respond(self: Arc<Self>, socket: tokio::net::UdpSocket) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 512];
        loop {
            let (n, from) = socket
                .recv_from(&mut buf)
                .await
                .context("receive a DNS query")?;
            let Some(reply) = dns::answer(&buf[..n], |ns, svc| self.lookup(ns, svc)) else {
                continue;
            };
            if let Err(e) = socket.send_to(&reply, from).await {
                tracing::debug!(%from, "answer a DNS query: {e}");
            }
        }
    }

    /// Gives each discoverable service an address on the bridge and proxies on its ports, and
    /// takes them away when it is gone.
    async fn serve_services(self: Arc<Self>) -> anyhow::Result<()> {
        let mut endpoints = self.endpoints.subscribe();
        let metrics = Metrics::new();
        // Freed addresses are given out last, so a name cached by a client does not lead to
        // another service soon after.
        let mut free: std::collections::VecDeque<u32> =
            self.config.subnet.service_addresses().collect();
        let mut served: BTreeMap<(String, String), Served> = BTreeMap::new();
        loop {
            let now = endpoints.borrow_and_update().clone();
            let wanted: BTreeMap<(String, String), &ServiceEndpoints> = now
                .iter()
                .map(|s| ((s.namespace.clone(), s.service.clone()), s))
                .collect();
            // Gone services first: their addresses are free for new ones.
            let gone: Vec<(String, String)> = served
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(s) = served.remove(&key) {
                    self.forget(&key);
                    let _ = s.stop.send(true);
                    ip_quiet(&[
                        "addr",
                        "del",
                        &format!("{}/32", s.address),
                        "dev",
                        &self.config.bridge,
                    ])
                    .await;
                    free.push_back(u32::from(s.address));
                }
            }
            for (key, svc) in wanted {
                let routes = Arc::new(route_table(svc));
                if let Some(s) = served.get(&key) {
                    if s.ports == svc.ports {
                        s.routes.send_replace(routes);
                        continue;
                    }
                    // Its ports changed: serve the new ones.
                    let s = served.remove(&key).expect("present");
                    let _ = s.stop.send(true);
                    free.push_back(u32::from(s.address));
                    ip_quiet(&[
                        "addr",
                        "del",
                        &format!("{}/32", s.address),
                        "dev",
                        &self.config.bridge,
                    ])
                    .await;
                }
                let Some(address) = free.pop_front().map(Ipv4Addr::from) else {
                    tracing::warn!(
                        service = %format!("{}/{}", key.0, key.1),
                        "no address left for another discoverable service on this node; widen --task-subnet"
                    );
                    continue;
                };
                let (routes_tx, routes_rx) = watch::channel(routes);
                // A balancer of its own: a proxy forgets the tasks its routes no longer name.
                let balancer = Arc::new(Balancer::default());
                let proxy = Arc::new(Proxy::new(routes_rx, balancer, metrics.clone()));
                let (stop, _) = watch::channel(false);
                ip_quiet(&[
                    "addr",
                    "add",
                    &format!("{address}/32"),
                    "dev",
                    &self.config.bridge,
                ])
                .await;
                for port in &svc.ports {
                    let at = SocketAddr::from((address, *port));
                    match tokio::net::TcpListener::bind(at).await {
                        Ok(listener) => {
                            let mut stopped = stop.subscribe();
                            tokio::spawn(berth_ingress::serve_tcp(
                                listener,
                                *port,
                                proxy.clone(),
                                async move {
                                    let _ = stopped.wait_for(|s| *s).await;
                                },
                            ));
                        }
                        Err(e) => tracing::warn!(%at, "serve a discovered service: {e}"),
                    }
                }
                self.addresses
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone(), address);
                served.insert(
                    key,
                    Served {
                        address,
                        ports: svc.ports.clone(),
                        routes: routes_tx,
                        stop,
                    },
                );
            }
            if endpoints.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    fn forget(&self, key: &(String, String)) {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// A discoverable service as this node serves it.
struct Served {
    address: Ipv4Addr,
    ports: Vec<u16>,
    routes: watch::Sender<Arc<RouteTable>>,
    stop: watch::Sender<bool>,
}

/// One TCP route per published port of the service, to its endpoints on that port.
pub fn route_table(svc: &ServiceEndpoints) -> RouteTable {
    let service = ServiceKey {
        namespace: svc.namespace.clone(),
        name: svc.service.clone(),
    };
    let tcp = svc
        .ports
        .iter()
        .map(|port| TcpRoute {
            service: service.clone(),
            port: *port,
            backends: svc
                .endpoints
                .iter()
                .filter(|e| e.container_port == *port)
                .filter_map(|e| {
                    Some(Backend {
                        task_id: e.task_id.clone(),
                        addr: SocketAddr::new(e.bind_ip.parse().ok()?, e.host_port),
                    })
                })
                .collect(),
        })
        .collect();
    RouteTable::new(Vec::new(), tcp)
}

/// The bridge exists, is up and holds the gateway address (the CNI bridge plugin makes the
/// same bridge; whichever comes first, the other finds it).
async fn ensure_bridge(bridge: &str, gateway: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    let exists = tokio::process::Command::new("ip")
        .args(["link", "show", bridge])
        .output()
        .await
        .context("run ip (install iproute2)")?
        .status
        .success();
    if !exists {
        // The task network's bridge plugin may make it at the same moment (the agent's warm
        // namespaces): made by either is as good.
        if let Err(e) = ip(&["link", "add", "name", bridge, "type", "bridge"]).await {
            if !e.to_string().contains("File exists") {
                return Err(e);
            }
        }
    }
    ip_quiet(&["addr", "add", &format!("{gateway}/{prefix}"), "dev", bridge]).await;
    ip(&["link", "set", bridge, "up"]).await
}

/// What the node's firewall does for discovery: connections to services' addresses are for
/// their proxies, so portmap's DNAT of published ports (for every local address) must not take
/// one whose port a task publishes (a `nat PREROUTING` rule ahead of it lets them through);
/// and only tasks on the bridge may reach those addresses and the DNS responder (`filter
/// INPUT` drops what comes in on any other interface).
async fn guard_discovery(
    bridge: &str,
    gateway: Ipv4Addr,
    pool: &std::ops::RangeInclusive<u32>,
) -> anyhow::Result<()> {
    let range = format!(
        "{}-{}",
        Ipv4Addr::from(*pool.start()),
        Ipv4Addr::from(*pool.end())
    );
    let gateway = gateway.to_string();
    let comment = [
        "-m",
        "comment",
        "--comment",
        "berth: discovery addresses of services",
    ];
    let in_range = ["-m", "iprange", "--dst-range", range.as_str()];
    let not_bridge = ["!", "-i", bridge];
    let rules: [(&str, Vec<&str>); 3] = [
        (
            "nat",
            [&["PREROUTING"][..], &in_range, &comment, &["-j", "RETURN"]].concat(),
        ),
        (
            "filter",
            [
                &["INPUT"][..],
                &not_bridge,
                &in_range,
                &comment,
                &["-j", "DROP"],
            ]
            .concat(),
        ),
        (
            "filter",
            [
                &["INPUT"][..],
                &not_bridge,
                &["-d", gateway.as_str(), "-p", "udp", "--dport", "53"],
                &comment,
                &["-j", "DROP"],
            ]
            .concat(),
        ),
    ];
    for (table, rule) in rules {
        let run = |op: &'static str| {
            let mut c = tokio::process::Command::new("iptables");
            c.args(["-w", "-t", table, op]).args(&rule);
            c
        };
        let present = run("-C")
            .output()
            .await
            .context("run iptables (install iptables)")?
            .status
            .success();
        if !present {
            let out = run("-I").output().await.context("run iptables")?;
            anyhow::ensure!(
                out.status.success(),
                "iptables -t {table} -I {}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// The IPv4 addresses on `bridge`.
async fn bridge_addresses(bridge: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let out = tokio::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", bridge])
        .output()
        .await
        .context("run ip (install iproute2)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    Ok(crate::iproute::ip(args).await?)
}

/// `ip ARGS` where "already so" is fine (an address that exists, or is gone).
async fn ip_quiet(args: &[&str]) {
    if let Err(e) = ip(args).await {
        let text = e.to_string();
        if !text.contains("File exists") && !text.contains("Cannot assign") {
            tracing::warn!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_model::Endpoint;

    use super::*;

    #[test]
    fn a_task_resolves_the_node_first_and_its_namespace_by_short_name() {
        let text = resolv_conf(
            Ipv4Addr::new(10, 220, 0, 1),
            &[Ipv4Addr::new(192, 0, 2, 53)],
            "prod",
        );
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "nameserver 10.220.0.1",
                "nameserver 192.0.2.53",
                "search prod.berth.internal"
            ]
        );
    }

    #[test]
    fn each_published_port_routes_to_the_endpoints_on_it() {
        let endpoint = |task: &str, port: u16, host_port: u16| Endpoint {
            task_id: task.into(),
            node: "n1".into(),
            container_name: "app".into(),
            container_port: port,
            bind_ip: "10.0.0.5".into(),
            host_port,
        };
        let svc = ServiceEndpoints {
            namespace: "default".into(),
            service: "web".into(),
            ports: vec![80, 9090],
            endpoints: vec![
                endpoint("t1", 80, 49153),
                endpoint("t1", 9090, 49154),
                endpoint("t2", 80, 49155),
            ],
        };
        let table = route_table(&svc);
        let backends = |port| -> Vec<String> {
            table
                .tcp_route(port)
                .map(|r| r.backends.iter().map(|b| b.addr.to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(backends(80), ["10.0.0.5:49153", "10.0.0.5:49155"]);
        assert_eq!(backends(9090), ["10.0.0.5:49154"]);
        assert!(table.tcp_route(81).is_none());
    }
}
