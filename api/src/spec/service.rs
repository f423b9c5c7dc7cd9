//! How a service's traffic is spread over its replicas by the routing mesh.

use serde::{Deserialize, Serialize};

use super::SpecDuration;

/// How the mesh picks a replica for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The replica with the fewest open connections through this node's mesh.
    #[default]
    LeastConnections,
    /// Each replica in turn.
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub balance: Balance,
    /// A stopping replica gets no new connections for this long before it
    /// is signalled, so connections under way can finish.
    #[serde(default = "default_drain")]
    pub drain: SpecDuration,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec { balance: Balance::default(), drain: default_drain() }
    }
}

fn default_drain() -> SpecDuration {
    SpecDuration::from_secs(5)
}
