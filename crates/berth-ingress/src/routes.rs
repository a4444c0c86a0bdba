//! The route table and the load balancer: which service a request or connection goes to, and
//! which of its tasks takes it. Pure: no IO; the balancer's clock is passed in (`*_at`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a backend that could not be reached is avoided.
pub const FAILURE_COOLDOWN: Duration = Duration::from_secs(1);

/// A service, named within its namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The namespace the service belongs to.
    pub namespace: String,
    /// The service's name.
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One task of a service, where the ingress reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The task's ID: the balancer's key for it.
    pub task_id: String,
    /// The address the task's port answers on.
    pub addr: SocketAddr,
}

/// HTTP requests for a host and a path prefix, sent to a service's tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// The service the requests go to.
    pub service: ServiceKey,
    /// The host, lowercase, without a port; `*` matches any host.
    pub host: String,
    /// The path prefix, starting with `/`, matched on segment boundaries (Kubernetes' `Prefix`).
    pub path_prefix: String,
    /// The tasks that may take the requests; empty when none is healthy.
    pub backends: Vec<Backend>,
    /// For a service that scales to zero: how long a request may wait for it to wake.
    pub activation_timeout: Option<Duration>,
}

/// TCP connections to one ingress port, sent to a service's tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRoute {
    /// The service the connections go to.
    pub service: ServiceKey,
    /// The port the ingress listens on for this route.
    pub port: u16,
    /// The tasks that may take the connections; empty when none is healthy.
    pub backends: Vec<Backend>,
}

/// Every route of the ingress, indexed for lookups. Replaced as a whole when the cluster changes.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Routes by normalised host (`*` included), longest prefix first.
    http: HashMap<String, Vec<HttpRoute>>,
    tcp: HashMap<u16, TcpRoute>,
}

impl RouteTable {
    /// Indexes the routes. Hosts are normalised like request hosts (lowercase, no port). When two
    /// routes share a host and prefix, or two TCP routes a port, the first one given wins.
    pub fn new(http: Vec<HttpRoute>, tcp: Vec<TcpRoute>) -> Self {
        let mut by_host: HashMap<String, Vec<HttpRoute>> = HashMap::new();
        for mut route in http {
            route.host = normalize_host(&route.host).to_ascii_lowercase();
            by_host.entry(route.host.clone()).or_default().push(route);
        }
        for routes in by_host.values_mut() {
            // Stable: among equal prefixes the first route given stays first.
            routes.sort_by_key(|r| std::cmp::Reverse(trim_prefix(&r.path_prefix).len()));
        }
        let mut by_port = HashMap::new();
        for route in tcp {
            by_port.entry(route.port).or_insert(route);
        }
        Self {
            http: by_host,
            tcp: by_port,
        }
    }

    /// The route for a request: `host` is the Host header's value (any case, with or without a
    /// port), `path` the request's path without its query. Routes naming the host exactly win
    /// over `*` ones, even when none of their prefixes matches the path; among the routes of
    /// that host the longest matching prefix wins.
    pub fn http_route(&self, host: &str, path: &str) -> Option<&HttpRoute> {
        let host = normalize_host(host).to_ascii_lowercase();
        let routes = self.http.get(&host).or_else(|| self.http.get("*"))?;
        routes
            .iter()
            .find(|route| prefix_matches(&route.path_prefix, path))
    }

    /// The route of an ingress TCP port.
    pub fn tcp_route(&self, port: u16) -> Option<&TcpRoute> {
        self.tcp.get(&port)
    }

    /// The ports TCP routes listen on, in order.
    pub fn tcp_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.tcp.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// The services with an HTTP route, each once.
    pub fn services(&self) -> Vec<ServiceKey> {
        let mut services: Vec<ServiceKey> = self
            .http
            .values()
            .flatten()
            .map(|r| r.service.clone())
            .collect();
        services.sort();
        services.dedup();
        services
    }

    /// The IDs of every task some route sends to.
    pub fn task_ids(&self) -> HashSet<String> {
        let http = self.http.values().flatten().flat_map(|r| &r.backends);
        let tcp = self.tcp.values().flat_map(|r| &r.backends);
        http.chain(tcp).map(|b| b.task_id.clone()).collect()
    }
}

/// A Host header's host: without its port or the brackets of an IPv6 address, and without a
/// trailing dot. Case is left to the caller.
fn normalize_host(host: &str) -> &str {
    let host = host.trim();
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// A prefix without its trailing slashes: `/` becomes empty and matches every path.
fn trim_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Whether `path` is `prefix` or below it, segment by segment.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = trim_prefix(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// Picks the task each request goes to: the one with the fewest requests in flight, ties taken
/// in turn. Shared by every listener and kept across route table rebuilds (state is keyed by
/// task ID); [`Balancer::forget`] drops the state of tasks that are gone.
#[derive(Debug, Default)]
pub struct Balancer {
    tasks: Mutex<Tasks>,
}

#[derive(Debug, Default)]
struct Tasks {
    by_id: HashMap<String, TaskState>,
    /// Counts picks, to order the tasks by when they were last picked.
    picks: u64,
}

#[derive(Debug, Default)]
struct TaskState {
    in_flight: Arc<AtomicUsize>,
    /// The value of `picks` when this task was last picked; 0 if never.
    last_pick: u64,
    failed_until: Option<Instant>,
}

/// A request or connection in flight to a task: counted until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// [`Balancer::pick_at`] now.
    pub fn pick(&self, backends: &[Backend], exclude: &[&str]) -> Option<(Backend, InFlight)> {
        self.pick_at(backends, exclude, Instant::now())
    }

    /// The backend to send the next request to, among `backends` not in `exclude` (task IDs
    /// already tried): the one with the fewest requests in flight, ties going to the one picked
    /// least recently. Backends that failed within [`FAILURE_COOLDOWN`] of `now` are avoided
    /// unless all of them did. `None` when no backend is left.
    pub fn pick_at(
        &self,
        backends: &[Backend],
        exclude: &[&str],
        now: Instant,
    ) -> Option<(Backend, InFlight)> {
        let mut tasks = self.tasks.lock().expect("balancer lock poisoned");
        let candidates: Vec<&Backend> = backends
            .iter()
            .filter(|b| !exclude.contains(&b.task_id.as_str()))
            .collect();
        let healthy = |b: &&Backend| {
            tasks
                .by_id
                .get(&b.task_id)
                .and_then(|t| t.failed_until)
                .is_none_or(|until| until <= now)
        };
        let any_healthy = candidates.iter().any(healthy);
        let chosen = candidates
            .into_iter()
            .filter(|b| !any_healthy || healthy(b))
            .min_by_key(|b| match tasks.by_id.get(&b.task_id) {
                Some(t) => (t.in_flight.load(Ordering::Relaxed), t.last_pick),
                None => (0, 0),
            })?
            .clone();
        tasks.picks += 1;
        let picks = tasks.picks;
        let state = tasks.by_id.entry(chosen.task_id.clone()).or_default();
        state.last_pick = picks;
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(Arc::clone(&state.in_flight));
        Some((chosen, guard))
    }

    /// [`Balancer::failed_at`] now.
    pub fn failed(&self, task_id: &str) {
        self.failed_at(task_id, Instant::now());
    }

    /// Records that a task could not be reached at `now`: picks avoid it for
    /// [`FAILURE_COOLDOWN`].
    pub fn failed_at(&self, task_id: &str, now: Instant) {
        let mut tasks = self.tasks.lock().expect("balancer lock poisoned");
        tasks
            .by_id
            .entry(task_id.to_owned())
            .or_default()
            .failed_until = Some(now + FAILURE_COOLDOWN);
    }

    /// Drops the state of every task not in `live` (call it with the tasks of each new route
    /// table), so memory stays bounded by the tasks that exist.
    pub fn forget(&self, live: &HashSet<String>) {
        let mut tasks = self.tasks.lock().expect("balancer lock poisoned");
        tasks.by_id.retain(|id, _| live.contains(id));
    }

    /// How many tasks the balancer keeps state for.
    pub fn tracked(&self) -> usize {
        self.tasks
            .lock()
            .expect("balancer lock poisoned")
            .by_id
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn backend(task: &str, port: u16) -> Backend {
        Backend {
            task_id: task.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn http(name: &str, host: &str, prefix: &str) -> HttpRoute {
        HttpRoute {
            service: service(name),
            host: host.into(),
            path_prefix: prefix.into(),
            backends: vec![],
            activation_timeout: None,
        }
    }

    /// Checks which service each `(host, path)` goes to (`-` for none).
    fn check(routes: Vec<HttpRoute>, cases: &[(&str, &str, &str)]) {
        let table = RouteTable::new(routes, vec![]);
        for (host, path, expected) in cases {
            let got = table
                .http_route(host, path)
                .map_or("-".to_owned(), |r| r.service.name.clone());
            assert_eq!(&got, expected, "host {host:?} path {path:?}");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        check(
            vec![
                http("root", "a.test", "/"),
                http("api", "a.test", "/api"),
                http("v2", "a.test", "/api/v2/"),
            ],
            &[
                ("a.test", "/", "root"),
                ("a.test", "/x", "root"),
                ("a.test", "/api", "api"),
                ("a.test", "/api/", "api"),
                ("a.test", "/api/x", "api"),
                ("a.test", "/apix", "root"),
                ("a.test", "/api/v2", "v2"),
                ("a.test", "/api/v2/users", "v2"),
                ("a.test", "/api/v22", "api"),
            ],
        );
    }

    #[test]
    fn no_route_without_a_matching_prefix() {
        check(
            vec![http("api", "a.test", "/api")],
            &[
                ("a.test", "/apix", "-"),
                ("a.test", "/", "-"),
                ("b.test", "/api", "-"),
            ],
        );
    }

    #[test]
    fn exact_hosts_win_over_the_wildcard_and_ignore_case_and_ports() {
        check(
            vec![
                http("any", "*", "/"),
                http("a", "A.Test", "/"),
                http("v6", "[::1]", "/"),
                http("ip", "127.0.0.1", "/"),
                // Host `b.test` has routes, so its unmatched paths do not fall back to `*`.
                http("b", "b.test", "/only"),
            ],
            &[
                ("a.test", "/x", "a"),
                ("A.TEST:8080", "/x", "a"),
                ("a.test.", "/x", "a"),
                ("[::1]:80", "/", "v6"),
                ("[::1]", "/", "v6"),
                ("127.0.0.1:8443", "/", "ip"),
                ("other.test", "/x", "any"),
                ("", "/x", "any"),
                ("b.test", "/only/x", "b"),
                ("b.test", "/x", "-"),
            ],
        );
    }

    #[test]
    fn the_first_of_two_equal_routes_wins() {
        check(
            vec![
                http("first", "a.test", "/api/"),
                http("second", "a.test", "/api"),
            ],
            &[("a.test", "/api", "first")],
        );
    }

    #[test]
    fn tcp_routes_by_port() {
        let route = |name: &str, port| TcpRoute {
            service: service(name),
            port,
            backends: vec![backend(name, 9000)],
        };
        let table = RouteTable::new(
            vec![],
            vec![route("b", 6379), route("a", 5432), route("c", 5432)],
        );
        assert_eq!(table.tcp_ports(), vec![5432, 6379]);
        assert_eq!(
            table.tcp_route(5432).map(|r| r.service.name.as_str()),
            Some("a")
        );
        assert_eq!(table.tcp_route(1), None);
        let mut ids: Vec<String> = table.task_ids().into_iter().collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
    }

    /// The task IDs of `n` picks, each released before the next.
    fn sequential_picks(
        balancer: &Balancer,
        backends: &[Backend],
        n: usize,
        now: Instant,
    ) -> String {
        (0..n)
            .map(|_| {
                let (b, _guard) = balancer.pick_at(backends, &[], now).expect("a backend");
                b.task_id
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn equal_backends_take_turns() {
        let balancer = Balancer::default();
        let backends = [backend("a", 1), backend("b", 2), backend("c", 3)];
        let now = Instant::now();
        assert_eq!(
            sequential_picks(&balancer, &backends, 7, now),
            "a b c a b c a"
        );
        // A different set (another service) interleaved does not break the turns.
        let other = [backend("x", 4), backend("b", 2)];
        assert_eq!(sequential_picks(&balancer, &other, 1, now), "x");
        assert_eq!(sequential_picks(&balancer, &backends, 2, now), "b c");
    }

    #[test]
    fn the_backend_with_fewest_in_flight_wins() {
        let balancer = Balancer::default();
        let backends = [backend("a", 1), backend("b", 2)];
        let now = Instant::now();
        let (first, held) = balancer.pick_at(&backends, &[], now).expect("a backend");
        assert_eq!(first.task_id, "a");
        // While `a` has a request in flight, `b` takes every new one.
        assert_eq!(sequential_picks(&balancer, &backends, 3, now), "b b b");
        drop(held);
        assert_eq!(sequential_picks(&balancer, &backends, 2, now), "a b");
    }

    #[test]
    fn excluded_backends_are_skipped() {
        let balancer = Balancer::default();
        let backends = [backend("a", 1), backend("b", 2)];
        let now = Instant::now();
        let pick = |exclude: &[&str]| {
            balancer
                .pick_at(&backends, exclude, now)
                .map(|(b, _)| b.task_id)
        };
        assert_eq!(pick(&["a"]), Some("b".into()));
        assert_eq!(pick(&["a"]), Some("b".into()));
        assert_eq!(pick(&["a", "b"]), None);
        assert_eq!(
            balancer.pick_at(&[], &[], now).map(|(b, _)| b.task_id),
            None
        );
    }

    #[test]
    fn failed_backends_are_avoided_until_the_cooldown_ends() {
        let balancer = Balancer::default();
        let backends = [backend("a", 1), backend("b", 2)];
        let t0 = Instant::now();
        balancer.failed_at("a", t0);
        let during = t0 + FAILURE_COOLDOWN - Duration::from_millis(1);
        assert_eq!(sequential_picks(&balancer, &backends, 3, during), "b b b");
        let after = t0 + FAILURE_COOLDOWN;
        assert_eq!(sequential_picks(&balancer, &backends, 2, after), "a b");
    }

    #[test]
    fn when_every_backend_failed_they_are_all_tried() {
        let balancer = Balancer::default();
        let backends = [backend("a", 1), backend("b", 2)];
        let now = Instant::now();
        balancer.failed_at("a", now);
        balancer.failed_at("b", now);
        assert_eq!(sequential_picks(&balancer, &backends, 2, now), "a b");
    }

    #[test]
    fn forget_drops_gone_tasks() {
        let balancer = Balancer::default();
        let backends = [backend("a", 1), backend("b", 2)];
        let now = Instant::now();
        let (_, held) = balancer.pick_at(&backends, &[], now).expect("a backend");
        balancer.failed_at("b", now);
        balancer.failed_at("gone", now);
        assert_eq!(balancer.tracked(), 3);
        balancer.forget(&HashSet::from(["b".to_owned()]));
        assert_eq!(balancer.tracked(), 1);
        // A guard that outlives its task's state is harmless.
        drop(held);
        assert_eq!(sequential_picks(&balancer, &backends, 1, now), "a");
    }
}
