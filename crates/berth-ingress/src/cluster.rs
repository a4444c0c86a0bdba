//! What the ingress knows of the cluster, kept current by a Watch of the servers: services,
//! their tasks and task definitions; and the route table made from it (pure: [`route_table`]).
//!
//! A task is routed to while it is RUNNING, wanted RUNNING, and healthy: every container with
//! a health check HEALTHY. A task asked to stop leaves the table as soon as its desired status
//! changes (its agent waits the service's deregistration delay before SIGTERM), and a task
//! that fails a health check leaves it when its node reports that.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_model::{Service, Task, TaskDefinition};
use berth_proto::v1 as pb;
use berth_proto::v1::berth_client::BerthClient;
use berth_tls::net::Dialer;
use tokio::sync::watch;

use crate::routes::{Backend, HttpRoute, RouteTable, ServiceKey, TcpRoute};

/// The part of the cluster routes are made from.
#[derive(Debug, Default)]
pub struct Cluster {
    services: BTreeMap<(String, String), Service>,
    tasks: HashMap<String, Task>,
    /// `(namespace, family:revision)`.
    definitions: HashMap<(String, String), TaskDefinition>,
}

impl Cluster {
    /// Applies one Watch event; answers whether routes may have changed.
    pub fn apply(&mut self, event: pb::WatchEvent) -> bool {
        use pb::watch_event::{Object, Type};
        let ns = event.namespace.clone();
        match (event.r#type(), event.object) {
            (Type::Deleted, _) => match event.kind.as_str() {
                "task" => self.tasks.remove(&event.name).is_some(),
                "service" => self.services.remove(&(ns, event.name)).is_some(),
                "taskdefinition" => self.definitions.remove(&(ns, event.name)).is_some(),
                _ => false,
            },
            (Type::Sync | Type::Put, Some(Object::Task(t))) => match Task::try_from(t) {
                // Only service tasks can be routed to; stopped ones never again.
                Ok(t) if t.group.is_some() && !t.is_stopped() => {
                    self.tasks.insert(t.task_id.clone(), t);
                    true
                }
                Ok(t) => self.tasks.remove(&t.task_id).is_some(),
                Err(e) => {
                    tracing::warn!("ignore a task the servers sent: {e}");
                    false
                }
            },
            (Type::Sync | Type::Put, Some(Object::Service(s))) => match Service::try_from(s) {
                Ok(s) => {
                    self.services
                        .insert((s.namespace.clone(), s.name.clone()), s);
                    true
                }
                Err(e) => {
                    tracing::warn!("ignore a service the servers sent: {e}");
                    false
                }
            },
            (Type::Sync | Type::Put, Some(Object::TaskDefinition(d))) => {
                match TaskDefinition::try_from(d) {
                    Ok(d) => {
                        let key = (d.namespace.clone(), d.reference().to_string());
                        self.definitions.insert(key, d);
                        true
                    }
                    Err(e) => {
                        tracing::warn!("ignore a task definition the servers sent: {e}");
                        false
                    }
                }
            }
            _ => false,
        }
    }

    /// The routes to what the services declare, through the healthy tasks.
    pub fn route_table(&self) -> RouteTable {
        route_table(
            self.services.values(),
            self.tasks.values(),
            |ns, reference| self.definitions.get(&(ns.to_owned(), reference.to_owned())),
        )
    }
}

pub use berth_model::routable;

/// Builds the route table: each ingress rule of each service, with the tasks of the service
/// that may receive traffic as backends, reached at the node address and host port their
/// container publishes the rule's port on.
pub fn route_table<'a>(
    services: impl Iterator<Item = &'a Service>,
    tasks: impl Iterator<Item = &'a Task>,
    definition: impl Fn(&str, &str) -> Option<&'a TaskDefinition>,
) -> RouteTable {
    let mut by_service: HashMap<(&str, &str), Vec<&Task>> = HashMap::new();
    for t in tasks {
        if let Some(name) = t.group.as_deref().and_then(|g| g.strip_prefix("service:")) {
            by_service.entry((&t.namespace, name)).or_default().push(t);
        }
    }
    let mut http = Vec::new();
    let mut tcp = Vec::new();
    for svc in services {
        if svc.ingress.is_empty() {
            continue;
        }
        let key = ServiceKey {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        };
        let tasks = by_service
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        for rule in &svc.ingress {
            let mut backends: Vec<Backend> = tasks
                .iter()
                .filter(|t| routable(t, definition(&t.namespace, &t.task_definition.to_string())))
                .filter_map(|t| {
                    let c = t
                        .containers
                        .iter()
                        .find(|c| c.name == rule.container_name)?;
                    let b = c.network_bindings.iter().find(|b| {
                        b.container_port == rule.container_port
                            && b.protocol == berth_model::Protocol::Tcp
                    })?;
                    let ip = b.bind_ip.parse().ok()?;
                    Some(Backend {
                        task_id: t.task_id.clone(),
                        addr: SocketAddr::new(ip, b.host_port),
                    })
                })
                .collect();
            backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            match (&rule.host, rule.listener_port) {
                (Some(host), _) => http.push(HttpRoute {
                    service: key.clone(),
                    host: host.to_ascii_lowercase(),
                    path_prefix: rule.path().to_owned(),
                    backends,
                    activation_timeout: svc
                        .autoscaling
                        .as_ref()
                        .and_then(|a| a.scale_to_zero)
                        .map(|z| Duration::from_secs(u64::from(z.activation_timeout))),
                }),
                (None, Some(port)) => tcp.push(TcpRoute {
                    service: key.clone(),
                    port,
                    backends,
                }),
                (None, None) => {}
            }
        }
    }
    RouteTable::new(http, tcp)
}

/// Keeps `routes` current from the servers' Watch, forever: on a broken stream it moves to
/// the next server and starts over (the old table stays in use until the new one is whole).
pub async fn follow(servers: Vec<String>, dialer: Dialer, routes: watch::Sender<Arc<RouteTable>>) {
    let mut attempt = 0usize;
    loop {
        let server = &servers[attempt % servers.len()];
        attempt += 1;
        match follow_one(server, &dialer, &routes).await {
            Ok(()) => tracing::warn!(%server, "the watch of the cluster ended; watching again"),
            Err(e) => tracing::warn!(%server, "watch the cluster: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn follow_one(
    server: &str,
    dialer: &Dialer,
    routes: &watch::Sender<Arc<RouteTable>>,
) -> anyhow::Result<()> {
    let channel = dialer.connect(server).await?;
    let mut stream = BerthClient::new(channel)
        .watch(pb::WatchRequest {
            namespace: String::new(),
            kinds: vec!["task".into(), "service".into(), "taskdefinition".into()],
            from_revision: 0,
        })
        .await?
        .into_inner();
    let mut cluster = Cluster::default();
    let mut synced = false;
    while let Some(event) = stream.message().await? {
        let done_syncing = event.r#type() == pb::watch_event::Type::Synced;
        let changed = cluster.apply(event);
        synced |= done_syncing;
        if synced && (changed || done_syncing) {
            let table = cluster.route_table();
            routes.send_replace(Arc::new(table));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use berth_model::{
        ContainerDefinition, ContainerState, HealthCheck, IngressRule, NetworkBinding, PortMapping,
        Protocol, TaskDefinitionSpec,
    };

    use berth_model::{DesiredStatus, HealthStatus, TaskStatus};

    use super::*;

    fn definition() -> TaskDefinition {
        let mut httpd = ContainerDefinition::new("httpd", "img");
        httpd.port_mappings = vec![PortMapping::tcp(8080)];
        httpd.health_check = Some(HealthCheck::new(vec!["CMD".into(), "true".into()]));
        let spec = TaskDefinitionSpec::new("web", 256, 64, vec![httpd]);
        TaskDefinition {
            namespace: "default".into(),
            family: spec.family,
            revision: 1,
            status: berth_model::TaskDefinitionStatus::Active,
            cpu: spec.cpu,
            memory: spec.memory,
            containers: spec.containers,
            placement: spec.placement,
            ephemeral_storage: None,
            meta: spec.meta,
            registered_at: 0,
            deregistered_at: None,
        }
    }

    fn service(rules: Vec<IngressRule>) -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            task_definition: "web:1".parse().expect("ref"),
            desired_count: 2,
            deployment_configuration: Default::default(),
            placement: Default::default(),
            meta: Default::default(),
            status: berth_model::ServiceStatus::Active,
            running_count: 0,
            pending_count: 0,
            deployments: Vec::new(),
            version: 1,
            created_at: 0,
            last_completed: None,
            backoff: Default::default(),
            autoscaling: None,
            last_scale_out_at: 0,
            last_scale_in_at: 0,
            metrics: Vec::new(),
            events: Default::default(),
            ingress: rules,
            deregistration_delay: 5,
        }
    }

    /// A RUNNING task of the service publishing 8080 on `port`, its container `health`.
    fn task(id: &str, port: u16, health: HealthStatus) -> Task {
        let def = definition();
        let mut t = Task::pending(id.into(), "default", &def, 0);
        t.group = Some("service:web".into());
        t.last_status = TaskStatus::Running;
        t.containers = vec![ContainerState {
            last_status: TaskStatus::Running,
            health_status: health,
            network_bindings: vec![NetworkBinding {
                bind_ip: "10.0.0.5".into(),
                container_port: 8080,
                host_port: port,
                protocol: Protocol::Tcp,
            }],
            ..ContainerState::pending("httpd", "img")
        }];
        t
    }

    fn backends(table: &RouteTable, host: &str) -> Vec<String> {
        table
            .http_route(host, "/")
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| format!("{} {}", b.task_id, b.addr))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn only_running_wanted_and_healthy_tasks_are_routed_to_at_their_published_port() {
        let def = definition();
        let svc = service(vec![IngressRule::http("web.local", "httpd", 8080)]);
        let mut stopping = task("t3", 49155, HealthStatus::Healthy);
        stopping.desired_status = DesiredStatus::Stopped;
        let tasks = [
            task("t1", 49153, HealthStatus::Healthy),
            // Not healthy yet: its container has a health check without a result.
            task("t2", 49154, HealthStatus::Unknown),
            stopping,
            task("t4", 49156, HealthStatus::Unhealthy),
        ];
        let table = route_table([&svc].into_iter(), tasks.iter(), |_, _| Some(&def));
        assert_eq!(backends(&table, "web.local"), ["t1 10.0.0.5:49153"]);
        // Without the definition at hand, UNKNOWN counts as "no health check".
        let table = route_table([&svc].into_iter(), tasks.iter(), |_, _| None);
        assert_eq!(
            backends(&table, "web.local"),
            ["t1 10.0.0.5:49153", "t2 10.0.0.5:49154"]
        );
    }

    #[test]
    fn tcp_rules_and_services_without_rules() {
        let def = definition();
        let tcp = IngressRule {
            host: None,
            listener_port: Some(9000),
            ..IngressRule::http("", "httpd", 8080)
        };
        let svc = service(vec![tcp]);
        let quiet = service(vec![]);
        let tasks = [task("t1", 49153, HealthStatus::Healthy)];
        let table = route_table([&svc, &quiet].into_iter(), tasks.iter(), |_, _| Some(&def));
        assert_eq!(table.tcp_ports(), [9000]);
        let route = table.tcp_route(9000).expect("a TCP route");
        assert_eq!(route.service.to_string(), "default/web");
        assert_eq!(route.backends.len(), 1);
        assert!(table.http_route("web.local", "/").is_none());
    }
}
