//! Deployments: the rollout of one workload version, as Nomad's deployments
//! and Kubernetes' rollouts. Every spec version gets one; the last few are
//! kept as the workload's history, which `rollout undo` returns to.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{WorkloadName, WorkloadSpec};

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Replacing old replicas with new ones.
    Running,
    /// Stopped by `rollout pause`: nothing is replaced until `resume`.
    Paused,
    /// The canaries are healthy; the rest wait for `rollout promote`.
    WaitingForPromotion,
    /// Every replica runs the new version and stayed healthy.
    Successful,
    /// New replicas did not become healthy in time; the old ones keep running.
    Failed,
    /// It failed and the last good version was deployed again (auto_revert).
    Reverted,
    /// A newer version was deployed before it finished.
    Cancelled,
}

impl DeploymentStatus {
    /// Whether the rollout still acts (or waits to act) on the workload.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Running | DeploymentStatus::Paused | DeploymentStatus::WaitingForPromotion
        )
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeploymentStatus::Running => "running",
            DeploymentStatus::Paused => "paused",
            DeploymentStatus::WaitingForPromotion => "waiting for promotion",
            DeploymentStatus::Successful => "successful",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Reverted => "reverted",
            DeploymentStatus::Cancelled => "cancelled",
        })
    }
}

/// The rollout of one version of a workload, and the spec of that version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Unique in the cluster, increasing.
    pub id: u64,
    pub workload: WorkloadName,
    /// The version it replaces; none for a workload's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<u64>,
    pub to_version: u64,
    pub status: DeploymentStatus,
    /// What made it: a deploy, `rollout undo`, or an automatic revert.
    pub cause: String,
    /// Why it failed, was reverted or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Live replicas of the new version.
    pub placed: u32,
    /// Of those, the ones whose checks pass.
    pub healthy: u32,
    /// Of those, the ones whose checks fail.
    pub unhealthy: u32,
    /// Canaries asked for, and whether `rollout promote` let the rest follow.
    #[serde(default)]
    pub canary: u32,
    #[serde(default)]
    pub promoted: bool,
    /// When it started and ended, by the proposing server's clock (ms since the epoch).
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// When `rollout resume` last let it go on: its deadlines count from
    /// then, not from before the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at_ms: Option<u64>,
    /// The spec of `to_version`, which `rollout undo` deploys again.
    pub spec: WorkloadSpec,
}

/// What `rollout promote|pause|resume` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    Promote,
    Pause,
    Resume,
}

impl fmt::Display for RolloutAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutAction::Promote => "promote",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
        })
    }
}

/// The body of `POST /v1/workloads/{name}/rollout/undo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoRequest {
    /// The version to go back to; the one before the current when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<u64>,
}
