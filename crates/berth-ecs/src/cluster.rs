//! Clusters and container instances as ECS describes them: a cluster is a namespace, a
//! container instance a node (every node serves every namespace, so each cluster lists each
//! node).

use berth_model::{Node, NodeStatus};
use serde_json::{json, Value};

use crate::arn::Names;
use crate::request::seconds;

/// What a cluster's description counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub running_tasks: usize,
    pub pending_tasks: usize,
    pub active_services: usize,
    pub container_instances: usize,
}

/// A cluster (namespace `name`) as ECS describes one.
pub fn describe(name: &str, counts: Counts, names: &Names) -> Value {
    json!({
        "clusterArn": names.cluster(name),
        "clusterName": name,
        "status": "ACTIVE",
        "registeredContainerInstancesCount": counts.container_instances,
        "runningTasksCount": counts.running_tasks,
        "pendingTasksCount": counts.pending_tasks,
        "activeServicesCount": counts.active_services,
        "statistics": [],
        "tags": [],
        "settings": [],
        "capacityProviders": [],
        "defaultCapacityProviderStrategy": [],
    })
}

fn resources(cpu: u64, memory: u64) -> Value {
    json!([
        {"name": "CPU", "type": "INTEGER", "integerValue": cpu},
        {"name": "MEMORY", "type": "INTEGER", "integerValue": memory},
    ])
}

/// What a container instance's description counts of the tasks on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTasks {
    pub running: usize,
    pub pending: usize,
}

/// A node as ECS describes a container instance of cluster `cluster`.
pub fn describe_instance(node: &Node, tasks: NodeTasks, cluster: &str, names: &Names) -> Value {
    let status = match node.status {
        NodeStatus::Active => "ACTIVE",
        NodeStatus::Draining => "DRAINING",
        NodeStatus::Down => "INACTIVE",
    };
    let attributes: Vec<Value> = node
        .attributes
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    json!({
        "containerInstanceArn": names.container_instance(cluster, &node.name),
        "ec2InstanceId": node.name,
        "status": status,
        "agentConnected": node.status != NodeStatus::Down,
        "runningTasksCount": tasks.running,
        "pendingTasksCount": tasks.pending,
        "registeredResources": resources(node.cpu.total, node.memory.total),
        "remainingResources": resources(
            node.cpu.total.saturating_sub(node.cpu.allocated),
            node.memory.total.saturating_sub(node.memory.allocated),
        ),
        "attributes": attributes,
        "registeredAt": seconds(node.registered_at),
        "tags": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_a_container_instance_of_the_cluster_asked_about() {
        let mut node = Node::new("node-1", "10.0.0.1:7070", 2048, 4096);
        node.cpu.allocated = 512;
        node.status = NodeStatus::Draining;
        let names = Names::new("us-east-1", "000000000000");
        let d = describe_instance(
            &node,
            NodeTasks {
                running: 2,
                pending: 1,
            },
            "team-a",
            &names,
        );
        assert_eq!(
            d["containerInstanceArn"],
            "arn:aws:ecs:us-east-1:000000000000:container-instance/team-a/node-1"
        );
        assert_eq!(d["status"], "DRAINING");
        assert_eq!(d["remainingResources"][0]["integerValue"], 1536);
        assert_eq!(d["runningTasksCount"], 2);
        let c = describe("team-a", Counts::default(), &names);
        assert_eq!(
            c["clusterArn"],
            "arn:aws:ecs:us-east-1:000000000000:cluster/team-a"
        );
    }
}
