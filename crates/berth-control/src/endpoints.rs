//! The endpoints of every service that publishes ports: what agents resolve service names to
//! (and `berth get endpoints` shows). A service whose task definition publishes no TCP port is
//! not discoverable and costs nothing here.

use std::collections::HashMap;

use berth_model::{published_tcp_ports, service_endpoints, ServiceEndpoints, Task};
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
    let mut tasks: HashMap<(&str, &str), Vec<&Task>> = HashMap::new();
    for t in state.tasks().filter(|t| !t.is_stopped()) {
        if let Some(name) = t.group.as_deref().and_then(|g| g.strip_prefix("service:")) {
            tasks.entry((&t.namespace, name)).or_default().push(t);
        }
    }
    services
        .into_iter()
        .map(|(namespace, name, ports)| {
            let of_service = tasks.get(&(namespace, name)).into_iter().flatten().copied();
            service_endpoints(namespace, name, ports, of_service, |t| {
                state.task_definition(&t.namespace, &t.task_definition)
            })
        })
        .collect()
}
