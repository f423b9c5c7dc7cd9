//! Allocations: one replica of one workload, placed on one node.

use serde::{Deserialize, Serialize};

use crate::spec::{Protocol, WorkloadName};

/// Where an allocation is in its life, as its agent last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationState {
    /// Placed; its agent has not reported it running yet.
    #[default]
    Pending,
    Running,
    /// Exited and will not be restarted by its agent (restart policy).
    Complete,
    /// Failed too often on its agent; the leader places a replacement.
    Failed,
    /// Its node went down; the leader places a replacement.
    Lost,
}

impl AllocationState {
    /// Whether the allocation still stands for a replica (it is not replaced).
    pub fn is_live(self) -> bool {
        matches!(self, AllocationState::Pending | AllocationState::Running)
    }
}

impl std::fmt::Display for AllocationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AllocationState::Pending => "pending",
            AllocationState::Running => "running",
            AllocationState::Complete => "complete",
            AllocationState::Failed => "failed",
            AllocationState::Lost => "lost",
        })
    }
}

/// A container port published on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    pub container: u16,
    /// 0 until the agent reports the free port it chose.
    pub host: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: u64,
    pub workload: WorkloadName,
    /// Which replica of the workload this is (0-based), for people reading `ps`.
    pub replica: u32,
    pub node: String,
    /// The workload version whose spec this allocation runs.
    pub version: u64,
    pub cpu: u64,
    pub memory: u64,
    pub ports: Vec<PortBinding>,
    pub state: AllocationState,
    /// Raft index at which it was placed: its age, without clocks in the state.
    pub created_index: u64,
    pub modified_index: u64,
    /// Wall-clock time of placement (milliseconds since the epoch), taken by
    /// the leader and carried in the plan, so `ps` can show an age.
    pub created_at_ms: u64,
    /// When it became complete, failed or lost, by the same clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A state change an agent reported for one of its allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationUpdate {
    pub id: u64,
    pub state: AllocationState,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub message: String,
    /// Host ports the agent bound, for ports whose host port it chose.
    #[serde(default)]
    pub ports: Vec<PortBinding>,
}

impl AllocationUpdate {
    /// A plain "it runs" report, with nothing else to say.
    pub fn running(id: u64) -> Self {
        AllocationUpdate {
            id,
            state: AllocationState::Running,
            restarts: 0,
            exit_code: None,
            oom_killed: false,
            message: String::new(),
            ports: Vec::new(),
        }
    }
}

/// A node's allocations at a state index: the answer to an agent's
/// blocking query, which it repeats with `index` to wait for the next change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAllocations {
    pub index: u64,
    pub allocations: Vec<Allocation>,
    /// The workloads those allocations belong to, with their current specs.
    pub workloads: Vec<crate::model::Workload>,
}

/// One allocation's resource use, sampled by its agent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AllocationUsage {
    pub id: u64,
    /// CPU in millicores, averaged over the last sample period.
    pub cpu_millis: f64,
    pub memory_bytes: u64,
}

/// What an agent sends every heartbeat: that it lives, and what its
/// allocations use (kept in the leader's memory, not in the Raft log).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub usage: Vec<AllocationUsage>,
}
