//! `berth get endpoints [SERVICE]`: where a service's name leads — its tasks that may receive
//! traffic, at the node address and port each publishes (what nodes' service discovery and
//! ingresses route to).

use std::collections::HashMap;

use anyhow::bail;
use berth_model::{published_tcp_ports, service_endpoints, ServiceEndpoints, TaskDefinition};

use crate::output::{render_list, render_table, Format};

/// The zone service names live in (nodes' service discovery answers for it).
const ZONE: &str = "berth.internal";
use crate::{services, taskdefs, tasks, Client, GlobalArgs};

/// The endpoints of `service` (every service's that publishes ports when `None`).
pub async fn get(
    client: &mut Client,
    global: &GlobalArgs,
    service: Option<&str>,
) -> anyhow::Result<Vec<ServiceEndpoints>> {
    let ns = &global.namespace;
    let mut list = services::list(client, global).await?;
    if let Some(name) = service {
        list.retain(|s| s.name == name);
        if list.is_empty() {
            bail!("service {name} not found in namespace {ns}");
        }
    }
    let tasks = tasks::list(client, ns, global.stale, "").await?;
    let mut defs: HashMap<String, TaskDefinition> = HashMap::new();
    let wanted = list
        .iter()
        .map(|s| s.task_definition.to_string())
        .chain(tasks.iter().map(|t| t.task_definition.to_string()));
    for reference in wanted.collect::<std::collections::BTreeSet<_>>() {
        if let Ok(def) = taskdefs::describe(client, ns, &reference, global.stale).await {
            defs.insert(reference, def);
        }
    }
    Ok(list
        .iter()
        .filter_map(|s| {
            let ports = published_tcp_ports(defs.get(&s.task_definition.to_string())?);
            if ports.is_empty() && service.is_none() {
                return None;
            }
            Some(service_endpoints(ns, &s.name, ports, tasks.iter(), |t| {
                defs.get(&t.task_definition.to_string())
            }))
        })
        .collect())
}

pub fn render(format: Format, list: &[ServiceEndpoints], single: bool) -> anyhow::Result<String> {
    render_list(format, list, single, |_| {
        let rows: Vec<Vec<String>> = list
            .iter()
            .flat_map(|s| {
                let name = format!("{}.{}.{ZONE}", s.service, s.namespace);
                let none = (s.endpoints.is_empty()).then(|| {
                    vec![
                        s.service.clone(),
                        name.clone(),
                        "-".into(),
                        "-".into(),
                        join_ports(&s.ports),
                        "-".into(),
                    ]
                });
                s.endpoints
                    .iter()
                    .map(move |e| {
                        vec![
                            s.service.clone(),
                            name.clone(),
                            e.task_id.clone(),
                            e.node.clone(),
                            e.container_port.to_string(),
                            format!("{}:{}", e.bind_ip, e.host_port),
                        ]
                    })
                    .chain(none)
                    .collect::<Vec<_>>()
            })
            .collect();
        render_table(
            &["SERVICE", "NAME", "TASK ID", "NODE", "PORT", "ENDPOINT"],
            &rows,
        )
    })
}

fn join_ports(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    if ports.is_empty() {
        "-".into()
    } else {
        ports.join(",")
    }
}
