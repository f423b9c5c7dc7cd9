//! What the API returns: workloads as stored, and the state of the Raft cluster.

use serde::{Deserialize, Serialize};

use crate::spec::WorkloadSpec;
use crate::spec_error::SpecError;

/// A workload as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub spec: WorkloadSpec,
    /// Bumped on every change of the spec (not on scale), so a deploy can
    /// say `?version=N` to refuse to overwrite a change it has not seen.
    pub version: u64,
    /// Raft index of the command that created it.
    pub created_index: u64,
    /// Raft index of the last command that changed it.
    pub modified_index: u64,
    /// How its replicas stand now; filled in when read, not stored.
    #[serde(default)]
    pub status: WorkloadStatus,
}

/// How a workload's replicas stand, for `flotilla get` and `deploy --wait`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Allocations standing for replicas (placed and not being stopped), of any version.
    pub placed: u32,
    pub running: u32,
    /// Replicas that no node can take right now.
    pub unplaced: u32,
    /// Why they cannot be placed, in words a user can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced_reason: Option<String>,
    /// Live allocations still on an older version (a rollout in progress).
    pub outdated: u32,
    /// Replicas waiting out a restart backoff (crashed, or failing to start):
    /// a workload with any is degraded.
    #[serde(default)]
    pub restarting: u32,
    /// Why the rollout of the current version failed: its new replicas keep
    /// failing, and the old ones are kept running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_failure: Option<String>,
    /// Where the rollout of the current version stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::deployment::DeploymentStatus>,
}

/// What a deploy did, so that `flotilla deploy` can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployChange {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResult {
    pub change: DeployChange,
    pub workload: Workload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMemberRequest {
    pub id: u64,
    /// `host:port` the new server listens on.
    pub address: String,
}

/// A server's role in Raft, as that server sees itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
    /// Receives the log but does not vote: a server being added.
    Learner,
    /// No longer part of the configuration.
    Removed,
}

impl std::fmt::Display for RaftRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RaftRole::Leader => "leader",
            RaftRole::Follower => "follower",
            RaftRole::Candidate => "candidate",
            RaftRole::PreCandidate => "pre-candidate",
            RaftRole::Learner => "learner",
            RaftRole::Removed => "removed",
        })
    }
}

/// A member of the configuration, as the replicated state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub address: String,
    pub voter: bool,
    /// Highest log index known to be on this member (the leader's view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
}

/// One server's own view of the Raft cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: u64,
    pub address: String,
    pub role: RaftRole,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub members: Vec<Member>,
    /// Peers whose Raft messages this server drops (a partition injected
    /// by a test cluster's fault API): faults in force, for the dashboard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_peers: Vec<u64>,
}

/// The JSON body of every error the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Stable machine-readable kind: `invalid_spec`, `not_found`, `conflict`, `no_leader`, ...
    pub code: String,
    pub message: String,
    /// Where a spec was wrong, for `invalid_spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecError>,
}

/// Something the cluster did on its own that a person may want to know:
/// an autoscaling decision, a node lost, a replica failed or OOM-killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The Raft index of the command that caused it: events are ordered by it.
    pub index: u64,
    /// When, by the clock of the server that proposed the command (ms since the epoch).
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

/// Events after an index: the answer to `GET /v1/events?index=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub index: u64,
    pub events: Vec<Event>,
}

/// A workload's resource use against its request, from the leader's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utilisation {
    /// Running replicas with a recent sample.
    pub sampled: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    /// Each sampled replica's use against its own request, for charts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaUtilisation>,
}

/// One replica's CPU and memory use, in percent of what it requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaUtilisation {
    /// The allocation.
    pub id: u64,
    pub replica: u32,
    pub cpu_percent: f64,
    pub memory_percent: f64,
}
