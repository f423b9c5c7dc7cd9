//! Volumes a replica mounts: a named volume of its own replica slot, whose
//! data outlives its containers, or a host volume its node offers.

use serde::{Deserialize, Serialize};

use super::{DnsLabel, WorkloadName, is_default};

/// One volume mounted into each replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// For a named volume, its name within the workload (each replica slot
    /// gets its own: `web-0-data`); for a host volume, the name a node
    /// offers it under (`agent --host-volume NAME=PATH`).
    pub name: DnsLabel,
    /// Where it appears inside the container.
    pub path: String,
    /// A directory of the node's, offered by its agent, rather than a
    /// volume of the replica's own.
    #[serde(default, skip_serializing_if = "is_default")]
    pub host: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
}

/// The name of the Docker volume that holds a named volume of one replica
/// slot on its node: one per slot, so two replicas never share data by
/// accident, and stable across restarts and rollouts. Dots separate the
/// parts because a DNS label has none: no two slots' names meet.
pub fn slot_volume_name(workload: &WorkloadName, slot: u32, volume: &DnsLabel) -> String {
    format!("flotilla-{workload}.{slot}.{volume}")
}
