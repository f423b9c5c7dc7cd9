//! How a changed spec rolls out: Nomad's `update` block, with Kubernetes'
//! surge and unavailability bounds.

use serde::{Deserialize, Serialize};

use super::SpecDuration;

/// The rollout strategy. Defaults replace one replica at a time with one
/// extra, never taking a healthy replica away first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStrategy {
    /// New replicas being brought up (placed, not yet healthy) at once.
    #[serde(default = "one")]
    pub max_parallel: u32,
    /// Replicas above `replicas` allowed while a rollout runs.
    #[serde(default = "one")]
    pub max_surge: u32,
    /// Healthy replicas the rollout may take away below `replicas`.
    #[serde(default)]
    pub max_unavailable: u32,
    /// How long a new replica must stay healthy to count.
    #[serde(default = "default_min_healthy_time")]
    pub min_healthy_time: SpecDuration,
    /// A new replica not healthy this long after it was placed has failed.
    #[serde(default = "default_healthy_deadline")]
    pub healthy_deadline: SpecDuration,
    /// No new replica became healthy for this long: the rollout failed.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: SpecDuration,
    /// A failed rollout goes back to the last version whose rollout succeeded.
    #[serde(default)]
    pub auto_revert: bool,
    /// New replicas placed first, beside the old ones; the rest follow on `rollout promote`.
    #[serde(default)]
    pub canary: u32,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            max_parallel: one(),
            max_surge: one(),
            max_unavailable: 0,
            min_healthy_time: default_min_healthy_time(),
            healthy_deadline: default_healthy_deadline(),
            progress_deadline: default_progress_deadline(),
            auto_revert: false,
            canary: 0,
        }
    }
}

fn one() -> u32 {
    1
}

fn default_min_healthy_time() -> SpecDuration {
    SpecDuration::from_secs(10)
}

fn default_healthy_deadline() -> SpecDuration {
    SpecDuration::from_secs(300)
}

fn default_progress_deadline() -> SpecDuration {
    SpecDuration::from_secs(600)
}
