//! Requests per service: counted for the leader (request-based autoscaling, scale to zero),
//! and held, within bounds, while a service at zero wakes. Pure bookkeeping: [`report`] and
//! [`activate`] are the loops that talk to the servers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::berth_client::BerthClient;
use berth_tls::net::Dialer;
use tokio::sync::{mpsc, watch};

use crate::routes::{RouteTable, ServiceKey};

/// At most this many requests wait for one service to wake; more are answered 503 at once.
pub const MAX_HELD: u32 = 1000;
/// How often the ingress reports to the leader.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The longest a report or a wake may take (connecting included) before the next server is
/// tried: a leader that stopped answering must not stall the reports.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The requests this ingress saw, by service, since its last report.
#[derive(Debug)]
pub struct Traffic {
    counters: Mutex<HashMap<ServiceKey, Counters>>,
    /// Services being woken (asked for, the answer not yet in): asked for once.
    waking: Mutex<HashSet<ServiceKey>>,
    /// Services a held request asked to wake, each once while it wakes.
    activations: mpsc::UnboundedSender<ServiceKey>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    /// Arrived since the last report.
    requests: u64,
    /// In flight now (forwarded or held).
    in_flight: u64,
    /// Held now, waiting for the service to wake.
    held: u32,
}

/// What one service received, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCount {
    pub service: ServiceKey,
    pub requests: u64,
    pub in_flight: u64,
}

impl Traffic {
    /// The counters, and the receiver of the services to wake (for [`activate`]).
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<ServiceKey>) {
        let (activations, rx) = mpsc::unbounded_channel();
        let traffic = Self {
            counters: Mutex::default(),
            waking: Mutex::default(),
            activations,
        };
        (Arc::new(traffic), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceKey, Counters>> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a request for `service`; it is in flight until the guard drops.
    pub fn arrived(self: &Arc<Self>, service: &ServiceKey) -> Arrival {
        let mut counters = self.lock();
        let c = counters.entry(service.clone()).or_default();
        c.requests += 1;
        c.in_flight += 1;
        Arrival {
            traffic: Arc::clone(self),
            service: service.clone(),
            held: false,
        }
    }

    /// Holds the request `counted` while its service wakes, and asks for the wake; `None`
    /// when [`MAX_HELD`] requests already wait for it.
    pub fn hold(&self, counted: &mut Arrival) -> Option<()> {
        let mut counters = self.lock();
        let c = counters.entry(counted.service.clone()).or_default();
        if c.held >= MAX_HELD {
            return None;
        }
        c.held += 1;
        counted.held = true;
        drop(counters);
        let mut waking = self
            .waking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if waking.insert(counted.service.clone()) {
            let _ = self.activations.send(counted.service.clone());
        }
        Some(())
    }

    /// The servers answered the wake of `service` (or failed to): a request held later asks
    /// again.
    fn woken(&self, service: &ServiceKey) {
        self.waking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(service);
    }

    /// The counts since the last call, for every service in `routed` (zeros included: the
    /// leader reads a quiet service from them) and every service with requests in flight;
    /// the arrival counts start again from zero.
    pub fn take(&self, routed: impl IntoIterator<Item = ServiceKey>) -> Vec<ServiceCount> {
        let mut counters = self.lock();
        for service in routed {
            counters.entry(service).or_default();
        }
        let mut counts: Vec<ServiceCount> = counters
            .iter_mut()
            .map(|(service, c)| {
                let count = ServiceCount {
                    service: service.clone(),
                    requests: c.requests,
                    in_flight: c.in_flight,
                };
                c.requests = 0;
                count
            })
            .collect();
        // Services neither routed nor busy any more are forgotten after this report.
        counters.retain(|_, c| c.in_flight > 0);
        counts.sort_by(|a, b| a.service.cmp(&b.service));
        counts
    }
}

/// A request counted in flight (and maybe held) until it drops.
#[derive(Debug)]
pub struct Arrival {
    traffic: Arc<Traffic>,
    service: ServiceKey,
    held: bool,
}

impl Arrival {
    /// The request no longer waits for a wake (it is forwarded, or given up).
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            let mut counters = self.traffic.lock();
            if let Some(c) = counters.get_mut(&self.service) {
                c.held = c.held.saturating_sub(1);
            }
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.release();
        let mut counters = self.traffic.lock();
        if let Some(c) = counters.get_mut(&self.service) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

/// Reports the traffic to the leader every [`REPORT_EVERY`], forever: to the server the last
/// one named as leader, else to the next server. `routes` names the services routed to.
pub async fn report(
    servers: Vec<String>,
    dialer: Dialer,
    traffic: Arc<Traffic>,
    routes: watch::Receiver<Arc<RouteTable>>,
) {
    let mut leader = Leader::new(servers);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the first report covers a whole interval.
    tick.tick().await;
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let routed = routes.borrow().services();
        let counts = traffic.take(routed);
        let interval_ms = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
        last = Instant::now();
        let report = pb::TrafficReport {
            services: counts
                .into_iter()
                .map(|c| pb::ServiceTraffic {
                    namespace: c.service.namespace,
                    name: c.service.name,
                    requests: c.requests,
                    in_flight: c.in_flight,
                    interval_ms,
                })
                .collect(),
        };
        let result = leader
            .call(&dialer, |mut client| {
                let report = report.clone();
                async move { client.report_traffic(report).await.map(|_| ()) }
            })
            .await;
        if let Err(e) = result {
            tracing::debug!("report traffic: {e}");
        }
    }
}

/// Asks the servers to wake each service a held request names, forever; a service being
/// woken is not asked for again until that call ends ([`Traffic::hold`] sends it once).
pub async fn activate(
    servers: Vec<String>,
    dialer: Dialer,
    traffic: Arc<Traffic>,
    mut wanted: mpsc::UnboundedReceiver<ServiceKey>,
) {
    let mut leader = Leader::new(servers);
    while let Some(service) = wanted.recv().await {
        let request = pb::ActivateServiceRequest {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        };
        let result = leader
            .call(&dialer, |mut client| {
                let request = request.clone();
                async move { client.activate_service(request).await.map(|_| ()) }
            })
            .await;
        traffic.woken(&service);
        match result {
            Ok(()) => tracing::info!(%service, "asked the servers to wake the service"),
            Err(e) => tracing::warn!(%service, "wake the service: {e}"),
        }
    }
}

/// The server to call: the one a server last named as leader, else the next in the list;
/// with the channels opened to them, kept while they work.
struct Leader {
    servers: Vec<String>,
    next: usize,
    hint: Option<String>,
    channels: HashMap<String, tonic::transport::Channel>,
}

impl Leader {
    fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            next: 0,
            hint: None,
            channels: HashMap::new(),
        }
    }

    /// Calls `f` on the leader: follows one leader hint, else tries the next server.
    async fn call<F, Fut>(&mut self, dialer: &Dialer, f: F) -> Result<(), String>
    where
        F: Fn(BerthClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::Status>>,
    {
        let mut last_error = String::from("no server");
        for _ in 0..=self.servers.len() {
            let server = match self.hint.clone() {
                Some(h) => h,
                None => {
                    let s = self.servers[self.next % self.servers.len().max(1)].clone();
                    self.next += 1;
                    s
                }
            };
            let channel = match self.channels.get(&server) {
                Some(c) => c.clone(),
                None => match tokio::time::timeout(CALL_TIMEOUT, dialer.connect(&server)).await {
                    Ok(Ok(c)) => {
                        self.channels.insert(server.clone(), c.clone());
                        c
                    }
                    Ok(Err(e)) => {
                        self.hint = None;
                        last_error = format!("{server}: {e}");
                        continue;
                    }
                    Err(_) => {
                        self.hint = None;
                        last_error = format!("{server}: no connection within {CALL_TIMEOUT:?}");
                        continue;
                    }
                },
            };
            let answer = tokio::time::timeout(CALL_TIMEOUT, f(BerthClient::new(channel))).await;
            let Ok(answer) = answer else {
                self.channels.remove(&server);
                self.hint = None;
                last_error = format!("{server}: no answer within {CALL_TIMEOUT:?}");
                continue;
            };
            match answer {
                Ok(()) => {
                    self.hint = Some(server);
                    return Ok(());
                }
                Err(status) => {
                    self.hint = status
                        .metadata()
                        .get(berth_proto::LEADER_HINT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .filter(|h| *h != server);
                    last_error = format!("{server}: {}", status.message());
                    if status.code() != tonic::Code::Unavailable {
                        return Err(last_error);
                    }
                    if self.hint.is_none() {
                        // Unreachable, or no leader: a fresh connection next time.
                        self.channels.remove(&server);
                    }
                }
            }
        }
        Err(last_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn counts_requests_and_in_flight_and_reports_quiet_routed_services() {
        let (traffic, _rx) = Traffic::new();
        let a = traffic.arrived(&key("web"));
        let b = traffic.arrived(&key("web"));
        drop(b);
        let counts = traffic.take([key("web"), key("quiet")]);
        assert_eq!(
            counts,
            [
                ServiceCount {
                    service: key("quiet"),
                    requests: 0,
                    in_flight: 0
                },
                ServiceCount {
                    service: key("web"),
                    requests: 2,
                    in_flight: 1
                },
            ]
        );
        // Arrivals start again from zero; the one still in flight stays counted.
        let counts = traffic.take([]);
        assert_eq!(
            counts,
            [ServiceCount {
                service: key("web"),
                requests: 0,
                in_flight: 1
            }]
        );
        drop(a);
        // Neither routed nor busy: forgotten after one report of zero.
        assert_eq!(traffic.take([]).len(), 1);
        assert!(traffic.take([]).is_empty());
    }

    #[test]
    fn held_requests_are_bounded_and_ask_for_a_wake() {
        let (traffic, mut rx) = Traffic::new();
        let mut held: Vec<Arrival> = Vec::new();
        for _ in 0..MAX_HELD {
            let mut c = traffic.arrived(&key("web"));
            assert!(traffic.hold(&mut c).is_some());
            held.push(c);
        }
        let mut one_more = traffic.arrived(&key("web"));
        assert!(traffic.hold(&mut one_more).is_none(), "the queue is full");
        // One wake asked for all of them, until it is answered.
        assert_eq!(rx.try_recv().ok(), Some(key("web")));
        assert!(rx.try_recv().is_err());
        traffic.woken(&key("web"));
        // Released (forwarded): room again.
        held[0].release();
        assert!(traffic.hold(&mut one_more).is_some());
        assert_eq!(rx.try_recv().ok(), Some(key("web")), "asked again");
    }
}
