//! What one replica asks of its node.

use serde::{Deserialize, Serialize};

use crate::quantity::{CpuMillis, MemoryBytes};

/// What one replica asks of its node; placement reserves exactly this much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default = "default_cpu")]
    pub cpu: CpuMillis,
    #[serde(default = "default_memory")]
    pub memory: MemoryBytes,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu: default_cpu(), memory: default_memory() }
    }
}

fn default_cpu() -> CpuMillis {
    CpuMillis(100)
}

fn default_memory() -> MemoryBytes {
    MemoryBytes(64 << 20)
}
