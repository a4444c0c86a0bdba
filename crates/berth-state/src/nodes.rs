//! Nodes: registration, loss (DOWN, with their tasks), operators' drain/activate and removal
//! (with their tasks and certificates).

use berth_model::{DesiredStatus, Node, NodeStatus, StopCode, TaskStatus, Timestamp};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

impl State {
    pub(crate) fn register_node(
        &mut self,
        node: Node,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let name = node.name.clone();
        match self.nodes.get_mut(&name) {
            Some(existing) => {
                existing.address = node.address;
                existing.attributes = node.attributes;
                existing.cpu.total = node.cpu.total;
                existing.memory.total = node.memory.total;
                existing.status = NodeStatus::Active;
                existing.down_since = None;
                existing.events.push(at, "agent registered again");
            }
            None => {
                let mut node = node;
                node.registered_at = at;
                node.events.push(at, "agent registered");
                self.nodes.insert(name.clone(), node);
            }
        }
        changed.push(Key::Node(name));
        CommandResult::Done
    }

    pub(crate) fn mark_node_down(
        &mut self,
        node: String,
        reason: String,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        match self.nodes.get_mut(&node) {
            Some(n) if n.status != NodeStatus::Down => {
                n.status = NodeStatus::Down;
                n.down_since = Some(at);
                n.events.push(at, format!("node is DOWN: {reason}"));
                changed.push(Key::Node(node.clone()));
                self.lose_tasks(
                    &node,
                    &format!("node {node} was lost: {reason}"),
                    &format!("node {node} was lost"),
                    at,
                    changed,
                );
                CommandResult::Done
            }
            Some(_) => CommandResult::Done,
            None => CommandResult::Rejected(Rejection::NotFound(format!("node {node} not found"))),
        }
    }

    pub(crate) fn remove_node(
        &mut self,
        node: &str,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if !self.nodes.contains_key(node) && self.node_certificates(node).is_none() {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "node {node} not found; `berth get nodes` lists them"
            )));
        }
        self.lose_tasks(
            node,
            &format!("node {node} was removed by an operator"),
            &format!("node {node} was removed"),
            at,
            changed,
        );
        if self.nodes.remove(node).is_some() {
            changed.push(Key::Node(node.to_owned()));
        }
        self.revoke_certificates(node, changed);
        CommandResult::Done
    }

    /// Every task on `node` that has not stopped becomes STOPPED with stop code NodeLost,
    /// `reason` and an `event`: its node is gone, whatever its agent still runs (the agent
    /// fences itself or removes the containers when it comes back).
    fn lose_tasks(
        &mut self,
        node: &str,
        reason: &str,
        event: &str,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) {
        let on_node: Vec<crate::TaskId> = self
            .live_by_node
            .get(node)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        let metered = self.metered_time(at);
        for id in on_node {
            let Some(task) = self.tasks.get_mut(&*id).map(std::sync::Arc::make_mut) else {
                continue;
            };
            if task.is_stopped() {
                continue;
            }
            task.last_status = TaskStatus::Stopped;
            task.desired_status = DesiredStatus::Stopped;
            task.stop_code = Some(StopCode::NodeLost);
            task.stopped_reason = Some(reason.to_owned());
            task.stopped_at = Some(metered);
            task.events.push(at, event);
            changed.push(Key::Task(task.task_id.clone()));
        }
    }

    pub(crate) fn set_node_status(
        &mut self,
        node: String,
        status: NodeStatus,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        match self.nodes.get_mut(&node) {
            None => CommandResult::Rejected(Rejection::NotFound(format!(
                "node {node} not found; `berth get nodes` lists them"
            ))),
            Some(n) if n.status == NodeStatus::Down || status == NodeStatus::Down => {
                CommandResult::Rejected(Rejection::Invalid(format!(
                    "node {node} is {}; a node becomes DOWN when its agent stops answering and ACTIVE when it registers again",
                    n.status
                )))
            }
            Some(n) => {
                if n.status != status {
                    n.status = status;
                    n.events.push(at, format!("node set to {status} by an operator"));
                    changed.push(Key::Node(node));
                }
                CommandResult::Done
            }
        }
    }
}
