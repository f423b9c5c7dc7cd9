//! A plan: what the leader's reconciler decided in one pass: placements,
//! stops, and the replicas it could not place and why. One plan travels in
//! one Raft entry, and every server re-checks it when applying it.

use std::collections::BTreeMap;

use flotilla_api::{PortBinding, WorkloadName};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub workload: WorkloadName,
    pub replica: u32,
    pub node: String,
    /// The workload version it was placed for; a plan made against an older
    /// spec is refused.
    pub version: u64,
    pub cpu: u64,
    pub memory: u64,
    pub ports: Vec<PortBinding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub count: u32,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// Allocations to remove: extras on scale-down, old versions replaced by a
    /// rollout, and terminal allocations no longer worth keeping.
    pub stops: Vec<u64>,
    /// Workloads whose unplaced replicas (or their reason) changed, and the
    /// new figures. Only changes travel: a cluster with thousands of pending
    /// workloads does not resend them all with every plan.
    pub unplaced: BTreeMap<WorkloadName, Unplaced>,
    /// Workloads that no longer have unplaced replicas.
    pub no_longer_unplaced: Vec<WorkloadName>,
    /// The leader's clock when it made the plan (ms since the epoch), so the
    /// state machine records ages without reading a clock itself.
    pub now_ms: u64,
}

impl Plan {
    pub fn changes_nothing(&self) -> bool {
        self.placements.is_empty()
            && self.stops.is_empty()
            && self.unplaced.is_empty()
            && self.no_longer_unplaced.is_empty()
    }
}

/// What applying a plan did: placements that no longer fit the latest state
/// are refused, and the reconciler tries again from that state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOutcome {
    pub placed: u32,
    pub refused: u32,
    pub stopped: u32,
}
