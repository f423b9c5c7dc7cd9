//! Slot volumes as the servers record them: which node holds each replica
//! slot's named volume, so the slot is placed back beside its data.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::spec::{DnsLabel, WorkloadName, slot_volume_name};

/// One named volume of one replica slot (`web-0`'s `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVolume {
    pub workload: WorkloadName,
    /// The replica slot that owns it: replica `slot` of the workload.
    pub slot: u32,
    /// The volume's name in the spec.
    pub volume: DnsLabel,
    /// The node holding its data now: the slot is placed there while that
    /// node is up.
    pub node: String,
    /// Nodes that hold an earlier copy, left when the slot moved because
    /// its node was down or draining; removed with the workload's volumes.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub stale_nodes: BTreeSet<String>,
    /// `delete --volumes` asked for it to go: the agents holding a copy
    /// remove it and say so, and then it is forgotten.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
    /// When its slot was first placed (ms since the epoch, the leader's clock).
    pub created_at_ms: u64,
}

impl SlotVolume {
    /// The Docker volume that holds it, on every node holding a copy.
    pub fn docker_name(&self) -> String {
        slot_volume_name(&self.workload, self.slot, &self.volume)
    }

    /// Every node holding a copy, current or stale.
    pub fn holders(&self) -> impl Iterator<Item = &str> + '_ {
        std::iter::once(self.node.as_str()).chain(self.stale_nodes.iter().map(String::as_str))
    }
}

/// What an agent removed of the slot volumes it was asked to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesRemoved {
    /// Docker volume names, as [`SlotVolume::docker_name`] gives them.
    pub volumes: Vec<String>,
}
