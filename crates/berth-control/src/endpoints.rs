//! The endpoints of every service that publishes ports: what agents resolve service names to
//! (and `berth get endpoints` shows). A service whose task definition publishes no TCP port is
//! not discoverable and costs nothing here.

use berth_model::{published_tcp_ports, service_endpoints, ServiceEndpoints};
use berth_state::State;

/// Every discoverable service's endpoints, by namespace and name.
pub fn endpoints(state: &State) -> Vec<ServiceEndpoints> {
    let mut services: Vec<(&str, &str, Vec<u16>)> = state
        .services()
        .filter_map(|s| {
            let def = state.task_definition(&s.namespace, &s.task_definition)?;
            let ports = published_tcp_ports(def);
            (!ports.is_empty()).then_some((s.namespace.as_str(), s.name.as_str(), ports))
        })
        .collect();
    if services.is_empty() {
        return Vec::new();
    }
    services.sort();
    services
        .into_iter()
        .map(|(namespace, name, ports)| {
            let of_service = state.live_tasks_of(namespace, &format!("service:{name}"));
            service_endpoints(namespace, name, ports, of_service, |t| {
                state.task_definition(&t.namespace, &t.task_definition)
            })
        })
        .collect()
}
