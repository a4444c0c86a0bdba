//! What `get` and `describe` print for tasks, task definitions, nodes and the cluster, in every
//! output format (services: `services::render`). Renderers return strings and take the clock,
//! so `golden.rs` can compare them with files.

use std::collections::BTreeMap;

use berth_model::{ClusterStatus, Node, Task, TaskDefinition};
use serde::Serialize;

use crate::output::{age, now_ms, render_list, render_structured, render_table, Format};

pub fn print_tasks(format: Format, tasks: &[Task], single: bool) -> anyhow::Result<()> {
    print!("{}", render_tasks(format, tasks, single, now_ms())?);
    Ok(())
}

pub fn render_tasks(
    format: Format,
    tasks: &[Task],
    single: bool,
    now: u64,
) -> anyhow::Result<String> {
    render_list(format, tasks, single, |wide| {
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                let mut row = vec![
                    t.task_id.clone(),
                    t.task_definition.to_string(),
                    t.last_status.to_string(),
                    t.desired_status.to_string(),
                    t.node.clone().unwrap_or_else(|| "-".into()),
                    age(t.created_at, now),
                ];
                if wide {
                    row.push(t.ip_address.map_or("-".into(), |ip| ip.to_string()));
                    row.push(ports_cell(t));
                    row.push(t.exit_code().map_or("-".into(), |c| c.to_string()));
                    row.push(t.stop_code.map_or("-".into(), |c| c.to_string()));
                    row.push(t.stopped_reason.clone().unwrap_or_else(|| "-".into()));
                }
                row
            })
            .collect();
        let mut header = vec![
            "TASK ID",
            "TASK DEFINITION",
            "STATUS",
            "DESIRED",
            "NODE",
            "AGE",
        ];
        if wide {
            header.extend(["IP", "PORTS", "EXIT", "STOP CODE", "REASON"]);
        }
        render_table(&header, &rows)
    })
}

/// A task's published ports as Docker shows them: `10.0.0.5:49153->8080/tcp`, comma separated.
fn ports_cell(t: &Task) -> String {
    let ports: Vec<String> = t
        .containers
        .iter()
        .flat_map(|c| &c.network_bindings)
        .map(binding)
        .collect();
    if ports.is_empty() {
        "-".into()
    } else {
        ports.join(",")
    }
}

fn binding(b: &berth_model::NetworkBinding) -> String {
    format!(
        "{}:{}->{}/{}",
        b.bind_ip, b.host_port, b.container_port, b.protocol
    )
}

pub fn print_taskdefs(format: Format, defs: &[TaskDefinition], single: bool) -> anyhow::Result<()> {
    print!("{}", render_taskdefs(format, defs, single, now_ms())?);
    Ok(())
}

pub fn render_taskdefs(
    format: Format,
    defs: &[TaskDefinition],
    single: bool,
    now: u64,
) -> anyhow::Result<String> {
    render_list(format, defs, single, |_| {
        let rows: Vec<Vec<String>> = defs
            .iter()
            .map(|d| {
                vec![
                    d.family.clone(),
                    d.revision.to_string(),
                    d.status.to_string(),
                    d.cpu.to_string(),
                    d.memory.to_string(),
                    d.containers
                        .iter()
                        .map(|c| c.image.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    age(d.registered_at, now),
                ]
            })
            .collect();
        render_table(
            &[
                "FAMILY", "REVISION", "STATUS", "CPU", "MEMORY", "IMAGES", "AGE",
            ],
            &rows,
        )
    })
}

/// A node as JSON and YAML show it: without its events.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson<'a> {
    name: &'a str,
    address: &'a str,
    status: berth_model::NodeStatus,
    attributes: &'a BTreeMap<String, String>,
    cpu: berth_model::Resources,
    memory: berth_model::Resources,
}

fn node_json(n: &Node) -> NodeJson<'_> {
    NodeJson {
        name: &n.name,
        address: &n.address,
        status: n.status,
        attributes: &n.attributes,
        cpu: n.cpu,
        memory: n.memory,
    }
}

pub fn print_nodes(format: Format, nodes: &[Node], single: bool) -> anyhow::Result<()> {
    print!("{}", render_nodes(format, nodes, single)?);
    Ok(())
}

pub fn render_nodes(format: Format, nodes: &[Node], single: bool) -> anyhow::Result<String> {
    let json: Vec<NodeJson> = nodes.iter().map(node_json).collect();
    render_list(format, &json, single, |_| {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.status.to_string(),
                    n.address.clone(),
                    format!("{}/{}", n.cpu.allocated, n.cpu.total),
                    format!("{}/{} MiB", n.memory.allocated, n.memory.total),
                    n.attributes
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        render_table(
            &["NAME", "STATUS", "ADDRESS", "CPU", "MEMORY", "ATTRIBUTES"],
            &rows,
        )
    })
}

/// `berth cluster status`: a summary line and the members, or the whole status as JSON/YAML.
pub fn render_cluster_status(format: Format, s: &ClusterStatus) -> anyhow::Result<String> {
    if let Format::Json | Format::Yaml = format {
        return render_structured(format, s);
    }
    let leader = s.leader.map_or("none".to_owned(), |l| l.to_string());
    let summary = format!(
        "leader: {leader}   term: {}   commit index: {}   applied index: {}   (as server {} sees it)\n\n",
        s.term, s.commit_index, s.applied_index, s.id
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.address.clone(),
                m.role.to_string(),
                m.match_index.map_or("-".to_owned(), |i| i.to_string()),
            ]
        })
        .collect();
    Ok(summary + &render_table(&["ID", "ADDRESS", "ROLE", "MATCH INDEX"], &rows))
}

/// `berth describe task`: every field, the containers and the events.
pub fn print_task_details(t: &Task) {
    println!("Task ID:          {}", t.task_id);
    println!("Namespace:        {}", t.namespace);
    println!("Task definition:  {}", t.task_definition);
    println!("Group:            {}", t.group.as_deref().unwrap_or("-"));
    println!("Node:             {}", t.node.as_deref().unwrap_or("-"));
    if let Some(ip) = t.ip_address {
        println!("IP address:       {ip}");
    }
    println!("Desired status:   {}", t.desired_status);
    println!("Last status:      {}", t.last_status);
    println!("CPU / memory:     {} units / {} MiB", t.cpu, t.memory);
    println!(
        "Created:          {}",
        berth_model::format_timestamp(t.created_at)
    );
    if let Some(s) = t.pull_started_at {
        println!("Pull started:     {}", berth_model::format_timestamp(s));
    }
    if let Some(s) = t.started_at {
        println!("Started:          {}", berth_model::format_timestamp(s));
    }
    if let Some(s) = t.stopped_at {
        println!("Stopped:          {}", berth_model::format_timestamp(s));
    }
    if let Some(code) = t.stop_code {
        println!("Stop code:        {code}");
    }
    if let Some(reason) = &t.stopped_reason {
        println!("Stopped reason:   {reason}");
    }
    if let Some(m) = &t.metrics {
        println!(
            "Usage:            CPU {:.0} units ({:.0}% of {}), memory {:.1} MiB ({:.0}% of {} MiB), sampled {}",
            m.cpu_units,
            m.cpu_percent(t.cpu),
            t.cpu,
            m.memory_bytes as f64 / (1024.0 * 1024.0),
            m.memory_percent(t.memory),
            t.memory,
            berth_model::format_timestamp(m.sampled_at)
        );
    }
    println!("Containers:");
    for c in &t.containers {
        println!(
            "  {}  {}  {}  exit={}  health={}{}",
            c.name,
            c.image,
            c.last_status,
            c.exit_code.map_or("-".into(), |e| e.to_string()),
            c.health_status,
            c.reason
                .as_ref()
                .map(|r| format!("  reason={r}"))
                .unwrap_or_default()
        );
        if let Some(d) = &c.image_digest {
            println!("    image digest: {d}");
        }
        if !c.network_bindings.is_empty() {
            let ports: Vec<String> = c.network_bindings.iter().map(binding).collect();
            println!("    ports: {}", ports.join(", "));
        }
    }
    println!("Events:");
    for e in t.events.iter() {
        println!("  {}  {}", berth_model::format_timestamp(e.at), e.message);
    }
}

#[cfg(test)]
mod tests {
    use berth_model::{ClusterMember, MemberRole};

    use super::*;

    fn cluster() -> ClusterStatus {
        ClusterStatus {
            id: 2,
            leader: Some(1),
            term: 3,
            commit_index: 42,
            applied_index: 41,
            snapshot_index: None,
            purged_index: Some(7),
            members: vec![
                ClusterMember {
                    id: 1,
                    address: "127.0.0.1:7400".into(),
                    role: MemberRole::Leader,
                    match_index: Some(42),
                },
                ClusterMember {
                    id: 22,
                    address: "127.0.0.1:7422".into(),
                    role: MemberRole::Learner,
                    match_index: None,
                },
            ],
        }
    }

    #[test]
    fn cluster_status_as_a_table() {
        let text = render_cluster_status(Format::Table, &cluster()).expect("renders");
        assert_eq!(
            text,
            "leader: 1   term: 3   commit index: 42   applied index: 41   (as server 2 sees it)\n\
             \n\
             ID   ADDRESS          ROLE      MATCH INDEX\n\
             1    127.0.0.1:7400   leader    42\n\
             22   127.0.0.1:7422   learner   -\n"
        );
        let no_leader = ClusterStatus {
            leader: None,
            ..cluster()
        };
        let text = render_cluster_status(Format::Wide, &no_leader).expect("renders");
        assert!(text.starts_with("leader: none   term: 3"), "{text}");
    }

    #[test]
    fn cluster_status_as_json_keeps_the_wire_names() {
        let text = render_cluster_status(Format::Json, &cluster()).expect("renders");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            value,
            serde_json::json!({
                "id": 2,
                "leader": 1,
                "term": 3,
                "commitIndex": 42,
                "appliedIndex": 41,
                "snapshotIndex": null,
                "purgedIndex": 7,
                "members": [
                    {"id": 1, "address": "127.0.0.1:7400", "role": "leader", "matchIndex": 42},
                    {"id": 22, "address": "127.0.0.1:7422", "role": "learner", "matchIndex": null},
                ],
            })
        );
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  \"")?.split('"').next())
            .collect();
        assert_eq!(
            keys,
            [
                "id",
                "leader",
                "term",
                "commitIndex",
                "appliedIndex",
                "snapshotIndex",
                "purgedIndex",
                "members"
            ]
        );
    }
}
