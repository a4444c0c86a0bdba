//! What the servers want one node to run: the agent protocol's unit of work, as a domain type
//! (berth-control computes it from the state, berth-proto carries it, the agent's engine plans
//! from it).

use crate::{ContainerDefinition, DesiredStatus, TaskDefinitionRef, TaskStatus};

/// One task placed on a node, with everything the node needs to run or stop it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Assignment {
    pub task_id: String,
    pub namespace: String,
    pub task_definition: TaskDefinitionRef,
    pub desired_status: DesiredStatus,
    /// CPU units and MiB reserved for the task.
    pub cpu: u32,
    pub memory: u32,
    pub containers: Vec<ContainerDefinition>,
    /// The task's last status as the servers know it: a task past PENDING that the node has no
    /// container for was lost while its agent was down.
    pub last_status: TaskStatus,
    /// Seconds between the stop request and SIGTERM, while the task is out of routing
    /// (a service's tasks that publish ports; 0 for the others).
    pub deregistration_delay: u32,
    /// The limit on the task's writable storage (its containers' writable layers together).
    pub ephemeral_storage: crate::EphemeralStorage,
    /// The secret values its containers reference, opened by the leader for this node only
    /// (empty while the task is not to run).
    pub secrets: crate::TaskSecrets,
}
