//! What must hold of the final state once every fault healed: services converged, every
//! server holding the same tasks, no task running where it cannot, no node over capacity, and
//! no container on the real agent's containerd running a task the cluster does not run there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;

use crate::cluster::Cluster;

/// How long the cluster may take to converge after the last fault.
const CONVERGE: Duration = Duration::from_secs(120);

/// Every violation found, one sentence each.
pub async fn check(cluster: &Cluster) -> Vec<String> {
    let mut violations = Vec::new();
    if let Err(e) = converged(cluster).await {
        violations.push(e);
    }
    match agreed(cluster).await {
        Ok((tasks, nodes)) => {
            violations.extend(placement(&tasks, &nodes));
            match containers_match(cluster).await {
                Ok(n) => println!(
                    "chaos: the real agent runs {n} containers, each a task the cluster runs there"
                ),
                Err(e) => violations.push(e),
            }
        }
        Err(e) => violations.push(e),
    }
    violations
}

/// Every container running in the real agent's containerd is one of a task the cluster runs
/// on that node (within 30 s: a task stopped just now takes its stop timeout to go). One that
/// is not would be a task running twice, or running after the cluster declared it lost.
async fn containers_match(cluster: &Cluster) -> Result<usize, String> {
    let Some((socket, namespace, node)) = cluster.real_agent() else {
        return Ok(0);
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = running_containers(&socket, &namespace).await?;
        let view = tasks(&cluster.servers[0].addr).await?;
        let here: BTreeSet<&str> = view
            .iter()
            .filter(|t| t.node == node && t.status == pb::TaskStatus::Running as i32)
            .map(|t| t.id.as_str())
            .collect();
        let strays: Vec<&String> = running
            .iter()
            .filter(|c| !here.contains(c.strip_suffix("-app").unwrap_or(c)))
            .collect();
        if strays.is_empty() {
            return Ok(running.len());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "containers run on node {node} for tasks the cluster does not run there: {strays:?}"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The containers whose task (containerd's) is RUNNING, read with `ctr tasks list`.
async fn running_containers(
    socket: &std::path::Path,
    namespace: &str,
) -> Result<Vec<String>, String> {
    let out = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", namespace, "tasks", "list"])
        .output()
        .await
        .map_err(|e| format!("run ctr: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ctr tasks list: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(2) == Some(&"RUNNING")).then(|| fields[0].to_owned())
        })
        .collect())
}

async fn api(addr: &str) -> Result<berth_tests::Api, String> {
    let api = tokio::time::timeout(Duration::from_secs(5), berth_tests::api(addr))
        .await
        .map_err(|_| format!("no connection to {addr} within 5 s"))?
        .map_err(|e| format!("connect to {addr}: {e:#}"))?;
    // Every task of a long run, in one answer.
    Ok(api.max_decoding_message_size(256 << 20))
}

/// A call's answer within 10 s.
async fn within<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err("no answer within 10 s".to_owned()),
    }
}

/// Every service runs its desired count, nothing pending, within [`CONVERGE`].
async fn converged(cluster: &Cluster) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match services(cluster).await {
            Ok(lagging) if lagging.is_empty() => return Ok(()),
            Ok(lagging) => last = lagging.join("; "),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "services did not converge within {CONVERGE:?} after the faults healed: {last}"
    ))
}

/// The services not (yet) at their desired count, each with its counts.
async fn services(cluster: &Cluster) -> Result<Vec<String>, String> {
    let mut api = api(&cluster.servers[0].addr).await?;
    let listed = within(api.list_services(pb::ListServicesRequest::default()))
        .await
        .map_err(|e| format!("list services: {e}"))?;
    if listed.services.is_empty() {
        return Ok(vec!["no service is listed".to_owned()]);
    }
    Ok(listed
        .services
        .iter()
        .filter(|s| s.running_count != s.desired_count || s.pending_count != 0)
        .map(|s| {
            format!(
                "{}: desired {}, running {}, pending {}",
                s.name, s.desired_count, s.running_count, s.pending_count
            )
        })
        .collect())
}

/// A task as the invariants look at it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    id: String,
    node: String,
    status: i32,
    cpu: u32,
    memory: u32,
}

/// Waits until every server answers the same tasks from its own state (`stale`); answers
/// them, with the nodes.
async fn agreed(cluster: &Cluster) -> Result<(Vec<Seen>, Vec<pb::Node>), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut views: Vec<BTreeSet<Seen>> = Vec::new();
        for s in &cluster.servers {
            match tasks(&s.addr).await {
                Ok(view) => views.push(view),
                Err(e) => last = e,
            }
        }
        if views.len() == cluster.servers.len() && views.windows(2).all(|w| w[0] == w[1]) {
            let mut api = api(&cluster.servers[0].addr).await?;
            let nodes = within(api.list_nodes(pb::ListNodesRequest::default()))
                .await
                .map_err(|e| format!("list nodes: {e}"))?
                .nodes;
            return Ok((views.swap_remove(0).into_iter().collect(), nodes));
        }
        if views.len() == cluster.servers.len() {
            let sizes: Vec<String> = views.iter().map(|v| v.len().to_string()).collect();
            last = format!("tasks per server: {}", sizes.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "the servers did not agree on the tasks within 60 s: {last}"
    ))
}

async fn tasks(addr: &str) -> Result<BTreeSet<Seen>, String> {
    let mut api = api(addr).await?;
    let tasks = within(api.list_tasks(pb::ListTasksRequest {
        namespace: String::new(),
        stale: true,
        selector: String::new(),
        ..Default::default()
    }))
    .await
    .map_err(|e| format!("list tasks on {addr}: {e}"))?
    .tasks;
    Ok(tasks
        .into_iter()
        .map(|t| Seen {
            id: t.task_id,
            node: t.node,
            status: t.last_status,
            cpu: t.cpu,
            memory: t.memory,
        })
        .collect())
}

/// No task running on a DOWN node or on none; no node holding more than it offers.
fn placement(tasks: &[Seen], nodes: &[pb::Node]) -> Vec<String> {
    let mut violations = Vec::new();
    let by_name: BTreeMap<&str, &pb::Node> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut used: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for t in tasks {
        let running = t.status == pb::TaskStatus::Running as i32;
        if t.status != pb::TaskStatus::Stopped as i32 && !t.node.is_empty() {
            let u = used.entry(t.node.as_str()).or_default();
            u.0 += u64::from(t.cpu);
            u.1 += u64::from(t.memory);
        }
        if !running {
            continue;
        }
        match by_name.get(t.node.as_str()) {
            None => violations.push(format!(
                "task {} is RUNNING on node {:?}, which the cluster does not know",
                t.id, t.node
            )),
            Some(n) if n.status == pb::NodeStatus::Down as i32 => violations.push(format!(
                "task {} is RUNNING on node {}, which is DOWN",
                t.id, t.node
            )),
            Some(_) => {}
        }
    }
    for (name, (cpu, memory)) in used {
        let Some(n) = by_name.get(name) else {
            continue;
        };
        let (offered_cpu, offered_memory) = (
            n.cpu.as_ref().map_or(0, |r| r.total),
            n.memory.as_ref().map_or(0, |r| r.total),
        );
        if cpu > offered_cpu || memory > offered_memory {
            violations.push(format!(
                "node {name} holds tasks of {cpu} CPU units and {memory} MiB but offers {offered_cpu} and {offered_memory}"
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, node: &str, status: pb::TaskStatus, cpu: u32) -> Seen {
        Seen {
            id: id.into(),
            node: node.into(),
            status: status as i32,
            cpu,
            memory: 16,
        }
    }

    fn node(name: &str, status: pb::NodeStatus, cpu: u64) -> pb::Node {
        pb::Node {
            name: name.into(),
            status: status as i32,
            cpu: Some(pb::Resources {
                total: cpu,
                allocated: 0,
            }),
            memory: Some(pb::Resources {
                total: 1024,
                allocated: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn tasks_within_their_nodes_break_nothing() {
        let tasks = [
            task("t1", "n1", pb::TaskStatus::Running, 64),
            task("t2", "n1", pb::TaskStatus::Stopped, 512),
            task("t3", "", pb::TaskStatus::Pending, 64),
        ];
        let nodes = [node("n1", pb::NodeStatus::Active, 128)];
        assert_eq!(placement(&tasks, &nodes), Vec::<String>::new());
    }

    #[test]
    fn a_task_running_on_a_down_node_is_a_violation() {
        let tasks = [task("t1", "n1", pb::TaskStatus::Running, 64)];
        let nodes = [node("n1", pb::NodeStatus::Down, 128)];
        let found = placement(&tasks, &nodes);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("t1 is RUNNING on node n1, which is DOWN"));
    }

    #[test]
    fn a_node_holding_more_than_it_offers_is_a_violation() {
        let tasks = [
            task("t1", "n1", pb::TaskStatus::Running, 100),
            task("t2", "n1", pb::TaskStatus::Pending, 100),
        ];
        let nodes = [node("n1", pb::NodeStatus::Active, 128)];
        let found = placement(&tasks, &nodes);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("200 CPU units"), "{found:?}");
    }
}
