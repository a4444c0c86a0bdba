//! Each task's network: a network namespace (`ip netns`) its containers share, attached by the
//! CNI plugins to the node's bridge with an address from the node's task subnet, with its port
//! mappings published on the node.
//!
//! Host ports are held by the agent while a task publishes them: a bound socket per port, so
//! neither another task (of this agent or of another agent on the host) nor a host process can
//! take a port a task's traffic is forwarded from. Port 0 in a mapping picks a free port from
//! [`DYNAMIC_PORTS`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use berth_model::{PortMapping, Protocol};

use super::ContainerdRuntime;
use crate::cni::{Cni, PortBinding};
use crate::runtime::{RuntimeError, TaskNetwork};

/// Where ports for mappings without a host port come from (ECS's dynamic range).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 49153..=65535;

/// The network namespace of a task, as `ip netns` names it.
fn netns_name(task_id: &str) -> String {
    let id: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    format!("berth-{id}")
}

fn netns_path(task_id: &str) -> String {
    format!("/run/netns/{}", netns_name(task_id))
}

/// The namespace an attachment's record names, or (records from before warm namespaces name
/// none) the one named after `id`.
fn recorded_or_named(recorded: Option<String>, id: &str) -> String {
    recorded
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| netns_path(id))
}

/// Runs `ip ARGS` for a task's namespace.
async fn ip(args: &[&str]) -> Result<(), RuntimeError> {
    crate::iproute::ip(args)
        .await
        .map_err(RuntimeError::io("set up the task's network namespace"))
}

/// A host port held for a task: bound, never listening or read.
#[derive(Debug)]
enum Held {
    #[allow(dead_code)] // held for its binding
    Tcp(tokio::net::TcpSocket),
    #[allow(dead_code)]
    Udp(std::net::UdpSocket),
}

/// Binds `port` on `address` (the node's), if nothing else has it.
fn hold(address: Ipv4Addr, port: u16, protocol: Protocol) -> Option<Held> {
    let addr = SocketAddr::from((address, port));
    match protocol {
        Protocol::Tcp => {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind(addr).ok()?;
            Some(Held::Tcp(socket))
        }
        Protocol::Udp => std::net::UdpSocket::bind(addr).ok().map(Held::Udp),
    }
}

/// Chooses the host port of each mapping and holds it with `try_hold`: the fixed ones as
/// given, the others the first free ones of `range` from `*next` on (wrapping; `*next` moves
/// past what was taken, so a port just released is not reused at once).
fn pick<H>(
    wanted: &[PortMapping],
    range: &RangeInclusive<u16>,
    next: &mut u16,
    mut try_hold: impl FnMut(u16, Protocol) -> Option<H>,
) -> Result<(Vec<PortBinding>, Vec<H>), RuntimeError> {
    let mut bindings = Vec::with_capacity(wanted.len());
    let mut held = Vec::with_capacity(wanted.len());
    let size = u32::from(range.end() - range.start()) + 1;
    for m in wanted {
        let host_port = if m.host_port != 0 {
            let h = try_hold(m.host_port, m.protocol).ok_or(RuntimeError::HostPort {
                port: m.host_port,
                protocol: m.protocol,
                reason: "is in use on this node",
            })?;
            held.push(h);
            m.host_port
        } else {
            let mut found = None;
            for _ in 0..size {
                let port = if range.contains(next) {
                    *next
                } else {
                    *range.start()
                };
                *next = if port == *range.end() {
                    *range.start()
                } else {
                    port + 1
                };
                if let Some(h) = try_hold(port, m.protocol) {
                    found = Some((port, h));
                    break;
                }
            }
            let (port, h) = found.ok_or(RuntimeError::HostPort {
                port: 0,
                protocol: m.protocol,
                reason: "no free port is left in the dynamic range",
            })?;
            held.push(h);
            port
        };
        bindings.push(PortBinding {
            host_port,
            container_port: m.container_port,
            protocol: m.protocol,
        });
    }
    Ok((bindings, held))
}

/// The node's task network: the CNI plugins, the host ports tasks hold, and the namespaces
/// kept attached ahead of any task (`--warm-networks`).
pub(super) struct TaskNetworks {
    cni: Cni,
    ports: std::sync::Mutex<Ports>,
    /// The node's address published ports are held on.
    host_address: Ipv4Addr,
    /// Warm namespaces ready for a task, oldest first.
    warm: std::sync::Mutex<VecDeque<Warm>>,
    /// How many to keep ready.
    wanted: usize,
    /// Wakes [`TaskNetworks::keep_warm`] when one was taken, or when this goes.
    refill: Arc<tokio::sync::Notify>,
    /// When a task last started (and took one if one was ready): the next is made once
    /// starts have been quiet for [`WARM_QUIET`].
    last_taken: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// A namespace attached to the node's bridge before any task wanted it: a task that takes
/// it starts without waiting for the CNI plugins (only for portmap, when it publishes ports).
#[derive(Debug)]
struct Warm {
    /// Its attachment's ID (`warm-…`), which the plugins keep knowing it by.
    id: String,
    netns: String,
    address: Ipv4Addr,
}

#[derive(Default)]
struct Ports {
    /// Task ID -> its held ports.
    held: HashMap<String, Vec<Held>>,
    /// Where the search for a dynamic port starts.
    next: u16,
}

/// What [`TaskNetworks::keep_warm`] does next.
enum Next {
    /// Wait until a task takes one.
    Taken,
    /// Wait for starts to be quiet this long.
    Quiet(Duration),
    /// One was made (or not).
    Made(Result<(), RuntimeError>),
}

/// How long a failed try to make a warm namespace waits before the next.
const WARM_RETRY: Duration = Duration::from_secs(30);

/// How long after a task took a warm namespace the next is made: the plugins' processes
/// (tens of milliseconds of CPU) would otherwise compete with the starts of a burst, which
/// make their namespaces beside their containers' creation anyway.
const WARM_QUIET: Duration = Duration::from_secs(1);

impl TaskNetworks {
    pub(super) fn new(cni: Cni, settings: &crate::cni::NetworkSettings) -> Self {
        Self {
            cni,
            ports: std::sync::Mutex::new(Ports {
                held: HashMap::new(),
                next: *DYNAMIC_PORTS.start(),
            }),
            host_address: settings.host_address,
            warm: std::sync::Mutex::new(VecDeque::new()),
            wanted: settings.warm,
            refill: Arc::new(tokio::sync::Notify::new()),
            last_taken: std::sync::Mutex::new(None),
        }
    }

    /// How long to wait before making a warm namespace: until starts were quiet for
    /// [`WARM_QUIET`].
    fn quiet_for(&self) -> Duration {
        let last = *self
            .last_taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.map_or(Duration::ZERO, |t| WARM_QUIET.saturating_sub(t.elapsed()))
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, Ports> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn warm(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm>> {
        self.warm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release_ports(&self, task_id: &str) {
        self.ports().held.remove(task_id);
    }

    /// Keeps [`Self::wanted`] warm namespaces ready, one at a time, until the networks go.
    /// Started once the sweep at the agent's start removed those of a previous process.
    fn keep_warm(self: &Arc<Self>) {
        if self.wanted == 0 {
            return;
        }
        let networks = Arc::downgrade(self);
        let refill = self.refill.clone();
        tokio::spawn(async move {
            loop {
                let wake = refill.notified();
                let next = {
                    let Some(net) = networks.upgrade() else {
                        return;
                    };
                    let wait = net.quiet_for();
                    if net.warm().len() >= net.wanted {
                        Next::Taken
                    } else if !wait.is_zero() {
                        Next::Quiet(wait)
                    } else {
                        Next::Made(net.make_warm().await)
                    }
                };
                match next {
                    Next::Taken => wake.await,
                    Next::Quiet(wait) => tokio::time::sleep(wait).await,
                    Next::Made(made) => Self::made_warm(made).await,
                }
            }
        });
    }

    /// After a try to make a warm namespace: a failure is logged and waits [`WARM_RETRY`].
    async fn made_warm(made: Result<(), RuntimeError>) {
        if let Err(e) = made {
            tracing::warn!(
                "prepare a warm task network: {}; tasks get theirs when they start meanwhile, \
                 tried again in {}s",
                berth_model::error_chain(&e),
                WARM_RETRY.as_secs()
            );
            tokio::time::sleep(WARM_RETRY).await;
        }
    }

    /// Makes one warm namespace and attaches it; what fails is removed again.
    async fn make_warm(&self) -> Result<(), RuntimeError> {
        let id = format!("warm-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let netns = netns_path(&id);
        let made = match self.create_namespace(&id, &netns, &[]).await {
            Ok(()) => self
                .cni
                .add(&id, &netns, &[])
                .await
                .map_err(RuntimeError::from),
            Err(e) => Err(e),
        };
        match made {
            Ok(address) => {
                self.warm().push_back(Warm { id, netns, address });
                Ok(())
            }
            Err(e) => {
                if let Err(undo) = self.remove(&id).await {
                    tracing::warn!(id, "remove a half-made warm network: {undo}");
                }
                Err(e)
            }
        }
    }

    /// A warm namespace, made `task_id`'s; `None` when none is ready.
    async fn take_warm(&self, task_id: &str) -> Option<Warm> {
        loop {
            // Every start counts, taken or not: a burst that emptied the pool is not quiet.
            *self
                .last_taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(tokio::time::Instant::now());
            let warm = self.warm().pop_front()?;
            self.refill.notify_one();
            match self.cni.adopt(&warm.id, task_id) {
                Ok(()) => return Some(warm),
                Err(e) => {
                    tracing::warn!(id = warm.id, "take a warm task network: {e}");
                    if let Err(undo) = self.remove(&warm.id).await {
                        tracing::warn!(id = warm.id, "remove a warm network: {undo}");
                    }
                }
            }
        }
    }

    /// Records the attachment and creates the namespace, its loopback up.
    async fn create_namespace(
        &self,
        id: &str,
        netns: &str,
        ports: &[PortBinding],
    ) -> Result<(), RuntimeError> {
        // Recorded first: whatever happens next, a later sweep finds it.
        self.cni.prepare(id, netns, ports)?;
        let name = netns_name(id);
        if !std::path::Path::new(netns).exists() {
            ip(&["netns", "add", &name]).await?;
        }
        ip(&["-n", &name, "link", "set", "lo", "up"]).await
    }

    /// The namespace attachment `id` has: its recorded one, else the one named after it.
    fn netns_of(&self, id: &str) -> String {
        recorded_or_named(self.cni.attachment(id).and_then(|a| a.netns), id)
    }

    /// The attachment goes first (the bridge plugin reads the task's address in the namespace
    /// to remove its masquerade rules), then the namespace, and the record of both last: a
    /// crash at any point leaves the record for the next sweep. A DEL that fails keeps the
    /// record too (the namespace and ports go regardless), so the sweep at the next start
    /// tries it again.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let path = self.netns_of(id);
        let detached = self.cni.detach(id, &path).await;
        self.release_ports(id);
        if std::path::Path::new(&path).exists() {
            let name = path.rsplit('/').next().unwrap_or_default();
            ip(&["netns", "delete", name]).await?;
        }
        detached?;
        self.cni.forget(id)?;
        Ok(())
    }
}

impl Drop for TaskNetworks {
    fn drop(&mut self) {
        // The task keeping namespaces warm ends.
        self.refill.notify_one();
    }
}

impl ContainerdRuntime {
    /// The task's network namespace, with its host ports held: a warm one when one is ready
    /// (attached already), else a new one that [`Self::attach_task_network`] attaches.
    pub(super) async fn create_task_network(
        &self,
        task_id: &str,
        wanted: &[PortMapping],
    ) -> Result<TaskNetwork, RuntimeError> {
        let net = &self.networks;
        let ports = {
            let mut book = net.ports();
            let book = &mut *book;
            let address = net.host_address;
            let (bindings, held) = pick(wanted, &DYNAMIC_PORTS, &mut book.next, |port, proto| {
                hold(address, port, proto)
            })?;
            book.held.insert(task_id.to_owned(), held);
            bindings
        };
        if let Some(warm) = net.take_warm(task_id).await {
            return Ok(TaskNetwork {
                netns: warm.netns,
                address: Some(warm.address),
                ports,
            });
        }
        let netns = netns_path(task_id);
        let created = net.create_namespace(task_id, &netns, &ports).await;
        self.undo_on_error(task_id, created).await?;
        Ok(TaskNetwork {
            netns,
            address: None,
            ports,
        })
    }

    /// Attaches the namespace [`Self::create_task_network`] made to the node's bridge (the CNI
    /// plugins' ADD), publishing its ports; a warm one, attached already, gets its ports
    /// published. Answers the task's address.
    pub(super) async fn attach_task_network(
        &self,
        task_id: &str,
        network: &TaskNetwork,
    ) -> Result<Ipv4Addr, RuntimeError> {
        let cni = &self.networks.cni;
        let attached = match network.address {
            Some(address) => cni.publish(task_id, &network.ports).await.map(|()| address),
            None => cni.add(task_id, &network.netns, &network.ports).await,
        };
        self.undo_on_error(task_id, attached.map_err(RuntimeError::from))
            .await
    }

    /// Removes a half-made network when `result` is an error.
    async fn undo_on_error<T>(
        &self,
        task_id: &str,
        result: Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        if result.is_err() {
            if let Err(undo) = self.remove_task_network(task_id).await {
                tracing::warn!(task_id, "remove a half-made task network: {undo}");
            }
        }
        result
    }

    pub(super) async fn find_task_network(&self, task_id: &str) -> Option<TaskNetwork> {
        let attachment = self.networks.cni.attachment(task_id)?;
        // This process did not start it: hold its ports (unless the start-up sweep did).
        self.hold_again(task_id);
        Some(TaskNetwork {
            netns: recorded_or_named(attachment.netns, task_id),
            address: attachment.address,
            ports: attachment.ports,
        })
    }

    /// See [`TaskNetworks::remove`].
    pub(super) async fn remove_task_network(&self, task_id: &str) -> Result<(), RuntimeError> {
        self.networks.remove(task_id).await
    }

    /// Removes the networks of tasks not in `keep` (and the warm ones of the process before),
    /// each on its own (one that fails is logged and left for the next start), and holds the
    /// ports of the kept ones again before any new task can be given them. Then starts
    /// keeping namespaces warm.
    pub(super) async fn remove_stale_task_networks(
        &self,
        keep: &BTreeSet<String>,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        for task_id in self.networks.cni.attached() {
            if keep.contains(&task_id) {
                self.hold_again(&task_id);
                continue;
            }
            match self.remove_task_network(&task_id).await {
                Ok(()) => removed.push(task_id),
                Err(e) => tracing::warn!(
                    task_id,
                    "remove the network of a task that is gone: {}; tried again at the next start",
                    berth_model::error_chain(&e)
                ),
            }
        }
        self.networks.keep_warm();
        Ok(removed)
    }

    /// Holds the recorded ports of a task this process did not start, unless it holds them.
    fn hold_again(&self, task_id: &str) {
        if self.networks.ports().held.contains_key(task_id) {
            return;
        }
        let Some(attachment) = self.networks.cni.attachment(task_id) else {
            return;
        };
        let mut held = Vec::new();
        for p in &attachment.ports {
            match hold(self.networks.host_address, p.host_port, p.protocol) {
                Some(h) => held.push(h),
                None => tracing::warn!(
                    task_id,
                    "host port {}/{} of a re-adopted task is taken by another process",
                    p.host_port,
                    p.protocol
                ),
            }
        }
        self.networks.ports().held.insert(task_id.to_owned(), held);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn mapping(container_port: u16, host_port: u16) -> PortMapping {
        PortMapping {
            container_port,
            host_port,
            protocol: Protocol::Tcp,
        }
    }

    /// Picks from `range` with `taken` ports (of any protocol) unavailable.
    fn check(
        wanted: &[PortMapping],
        taken: &[u16],
        next: &mut u16,
    ) -> Result<Vec<(u16, u16)>, String> {
        let mut busy: HashSet<u16> = taken.iter().copied().collect();
        pick(wanted, &(100..=104), next, |port, _| {
            busy.insert(port).then_some(port)
        })
        .map(|(bindings, held)| {
            assert_eq!(
                held,
                bindings.iter().map(|b| b.host_port).collect::<Vec<_>>()
            );
            bindings
                .iter()
                .map(|b| (b.container_port, b.host_port))
                .collect()
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn fixed_ports_are_held_as_given_and_dynamic_ones_are_the_next_free_ones() {
        let mut next = 100;
        assert_eq!(
            check(
                &[mapping(80, 8080), mapping(81, 0), mapping(82, 0)],
                &[101],
                &mut next
            ),
            Ok(vec![(80, 8080), (81, 100), (82, 102)])
        );
        // The search goes on from there and wraps around.
        assert_eq!(
            check(&[mapping(80, 0), mapping(81, 0)], &[104], &mut next),
            Ok(vec![(80, 103), (81, 100)])
        );
        assert_eq!(next, 101);
    }

    #[test]
    fn a_taken_fixed_port_or_a_full_range_fails_with_what_is_wrong() {
        let mut next = 100;
        assert_eq!(
            check(&[mapping(80, 8080)], &[8080], &mut next),
            Err("host port 8080/tcp is in use on this node".into())
        );
        assert_eq!(
            check(&[mapping(80, 0)], &[100, 101, 102, 103, 104], &mut next),
            Err("host port for a tcp mapping: no free port is left in the dynamic range".into())
        );
    }

    #[test]
    fn namespace_names_fit_and_stay_apart() {
        let name = netns_name("3f0c2a9e-1b7d-4c61-9d0e-5a2b8c7d6e4f");
        assert_eq!(name, "berth-3f0c2a9e1b7d4c619d0e5a2b");
        assert_eq!(netns_path("t-1"), "/run/netns/berth-t1");
    }
}
