//! Nodes: the hosts agents run on, as the scheduler sees them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::quantity::{CpuMillis, MemoryBytes};
use crate::spec::Driver;

/// A node's name as allocations carry it: shared, not copied. Each of a
/// million allocations named its node with a string of its own (and each
/// copy of one, in an agent's answer or a snapshot's copy, another); the
/// servers' state hands every allocation on a node the one name it holds
/// for that node, and a clone is a reference count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName(std::sync::Arc<str>);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for NodeName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by node name be searched with a plain `&str`; sound
/// because the derived `Ord` and `Hash` are those of the inner string.
impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeName {
    fn from(name: &str) -> Self {
        NodeName(name.into())
    }
}

impl From<String> for NodeName {
    fn from(name: String) -> Self {
        NodeName(name.into())
    }
}

/// Compared with the names requests and reports carry.
impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for NodeName {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<NodeName> for String {
    fn eq(&self, other: &NodeName) -> bool {
        **self == *other.0
    }
}

/// Whether the scheduler may place work on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Ready,
    /// Missed its heartbeats; its allocations are re-placed elsewhere.
    Down,
    /// Taken out of service by an operator; its allocations move away.
    Draining,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
            NodeStatus::Draining => "draining",
        })
    }
}

/// A directory of its host that an agent offers replicas as a volume
/// (`agent --host-volume NAME=PATH[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostVolume {
    /// Where it is on the host: shown to operators; the agent mounts it.
    pub path: String,
    /// Offered read-only: a replica that would write to it cannot go here.
    #[serde(default)]
    pub read_only: bool,
}

/// What an agent tells the servers about its host when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// Unique name of the node; agents default to the host name.
    pub name: String,
    /// `host:port` of the agent's own API (logs), empty if it has none.
    #[serde(default)]
    pub address: String,
    pub cpu: CpuMillis,
    pub memory: MemoryBytes,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub drivers: BTreeSet<Driver>,
    /// Host volumes the agent offers, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_volumes: BTreeMap<String, HostVolume>,
}

impl NodeRegistration {
    /// Checks what the type cannot: a usable name and label syntax.
    pub fn validate(&self) -> Result<(), String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        };
        if !valid(&self.name) {
            return Err(format!(
                "field `name`: `{}` must be letters, digits, '.', '_', '-' or '/'",
                self.name
            ));
        }
        for (key, value) in &self.labels {
            if !valid(key) || !valid(value) {
                return Err(format!(
                    "field `labels.{key}`: keys and values are letters, digits, '.', '_', '-' or '/'"
                ));
            }
        }
        if self.host_volumes.len() > 256 {
            return Err("field `host_volumes`: a node offers at most 256 host volumes".into());
        }
        for (name, volume) in &self.host_volumes {
            crate::spec::DnsLabel::parse(name)
                .map_err(|reason| format!("field `host_volumes.{name}`: {reason}"))?;
            if !volume.path.starts_with('/') || volume.path.contains('\0') || volume.path.len() > 4096 {
                return Err(format!("field `host_volumes.{name}.path`: must be an absolute path"));
            }
        }
        if self.drivers.is_empty() {
            return Err("field `drivers`: a node offers at least one driver".into());
        }
        Ok(())
    }
}

/// The servers' answer to a registration: the node as stored and, as
/// Nomad's registration answers with the heartbeat TTL, how often to beat.
/// An agent learned the interval only from its first answered heartbeat,
/// so ten thousand starting together all beat every second until then,
/// and answers slowed by that very flood came too late to teach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistered {
    #[serde(flatten)]
    pub node: Node,
    /// As a heartbeat's `next_in_ms`: `None` is the agent's own interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_every_ms: Option<u64>,
}

/// A node as stored, with what is allocated on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub address: String,
    pub capacity_cpu: CpuMillis,
    pub capacity_memory: MemoryBytes,
    pub labels: BTreeMap<String, String>,
    pub drivers: BTreeSet<Driver>,
    /// Host volumes its agent offers, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_volumes: BTreeMap<String, HostVolume>,
    pub status: NodeStatus,
    /// Sum of the requests of the allocations placed on it.
    pub allocated_cpu: u64,
    pub allocated_memory: u64,
    pub allocations: u32,
    /// Raft index of its last registration or return from down. The leader
    /// marks a node down on what it knew at some index; an older decision
    /// is refused, so a node that came back is not put down by a stale one.
    #[serde(default)]
    pub ready_index: u64,
    /// When it went down lately (ms since the epoch), for flap detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_downs_ms: Vec<u64>,
    /// A node that keeps going down and coming back gets no new work before
    /// this time (ms since the epoch); 0: no such wait.
    #[serde(default)]
    pub eligible_at_ms: u64,
    /// Service ports its mesh cannot serve, as its agent last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unserved_ports: Vec<crate::UnservedPort>,
    /// The `seq` of the last allocation report applied from its agent,
    /// which a restarted agent starts past (`AllocationReport`).
    #[serde(default)]
    pub report_seq: u64,
}

impl Node {
    /// Whether its allocations book more than it now offers (it registered
    /// again, smaller); the reconciler moves the excess away.
    pub fn is_overcommitted(&self) -> bool {
        self.allocated_cpu > self.capacity_cpu.0 || self.allocated_memory > self.capacity_memory.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusRequest {
    pub status: NodeStatus,
}
