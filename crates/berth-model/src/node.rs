use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{EventLog, Timestamp};

/// A host running `berth agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    /// Where the agent's own API (logs) listens, `host:port`.
    pub address: String,
    pub status: NodeStatus,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub cpu: Resources,
    pub memory: Resources,
    #[serde(with = "crate::time::rfc3339")]
    pub registered_at: Timestamp,
    /// When it last became DOWN; none while it is not DOWN. A node DOWN for the node
    /// retention is removed.
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub down_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "EventLog::is_empty")]
    pub events: EventLog,
}

impl Node {
    /// A node as its agent registers it: ACTIVE, offering `cpu` units and `memory` MiB, nothing
    /// allocated, no attributes or events yet (the state machine stamps `registered_at`).
    pub fn new(name: impl Into<String>, address: impl Into<String>, cpu: u64, memory: u64) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            status: NodeStatus::Active,
            attributes: BTreeMap::new(),
            cpu: Resources {
                total: cpu,
                allocated: 0,
            },
            memory: Resources {
                total: memory,
                allocated: 0,
            },
            registered_at: 0,
            down_since: None,
            events: EventLog::default(),
        }
    }
}

/// A resource's capacity on a node and how much of it tasks have reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub total: u64,
    pub allocated: u64,
}

impl Resources {
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.allocated)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    Active,
    Draining,
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Draining => "DRAINING",
            Self::Down => "DOWN",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
