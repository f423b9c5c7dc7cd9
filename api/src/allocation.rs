//! Allocations: one replica of one workload, placed on one node.

use serde::{Deserialize, Serialize};

use crate::spec::{Protocol, WorkloadName};

/// Where an allocation is in its life, as its agent last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationState {
    /// Placed; its agent has not said anything of it yet.
    #[default]
    Pending,
    /// Its agent is creating and starting it (pulling, creating, starting).
    Starting,
    Running,
    /// It exited, or failed to start, and its agent starts it again after a
    /// backoff (`next_restart_at_ms`); `message` says why it stopped.
    Restarting,
    /// Exited and will not be restarted by its agent (restart policy).
    Complete,
    /// Failed too often on its agent; the leader places a replacement.
    Failed,
    /// Its node went down; the leader places a replacement.
    Lost,
    /// Stopped by its agent because the servers asked (scale-down, rollout,
    /// delete, drain).
    Stopped,
}

impl AllocationState {
    /// Whether something may run (or be about to run) for it on its node:
    /// it holds its node's resources and its agent still acts on it.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AllocationState::Pending
                | AllocationState::Starting
                | AllocationState::Running
                | AllocationState::Restarting
        )
    }
}

impl std::fmt::Display for AllocationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AllocationState::Pending => "pending",
            AllocationState::Starting => "starting",
            AllocationState::Running => "running",
            AllocationState::Restarting => "restarting",
            AllocationState::Complete => "complete",
            AllocationState::Failed => "failed",
            AllocationState::Lost => "lost",
            AllocationState::Stopped => "stopped",
        })
    }
}

/// Whether a replica serves, by its checks (or, without checks, by running).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet since it (re)started, or its checks have not settled.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// Where a container answers on its own network. Container addresses are
/// only routable from the host of the engine that made them (and from its
/// containers), so the engine's id travels with the address: a mesh on
/// another host uses the node's address and host port instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerAddress {
    /// The Docker engine's id (`docker info`'s `ID`).
    pub engine: String,
    pub ip: std::net::IpAddr,
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
    pub node: crate::NodeName,
    /// The workload version whose spec this allocation runs.
    pub version: u64,
    pub cpu: u64,
    pub memory: u64,
    pub ports: Vec<PortBinding>,
    pub state: AllocationState,
    /// The servers asked its agent to stop it. Until the agent reports it
    /// stopped (or its node is lost) it keeps its CPU, memory and ports, but
    /// no longer counts as a replica.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// When its agent starts it again (ms since the epoch), while restarting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_at_ms: Option<u64>,
    /// The container (or process) id its agent runs it as, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    /// Its own address on its Docker network, for routing meshes that can
    /// reach it there (skipping the host port's extra hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_address: Option<ContainerAddress>,
    /// The image it actually runs, by digest (`repo@sha256:...`), as its
    /// agent found it after pulling: which image each replica runs, whatever
    /// a tag points at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
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
    #[serde(default)]
    pub health: Health,
    /// What the check that last changed its health said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_output: String,
    /// Since when it has been healthy (by the clock of the server that took
    /// the report): a rollout counts it after `min_healthy_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since_ms: Option<u64>,
}

impl Allocation {
    /// Whether it stands for one of its workload's replicas: live, and not
    /// on its way out.
    pub fn is_replica(&self) -> bool {
        self.state.is_live() && !self.stopping
    }
}

/// A state change an agent reported for one of its allocations.
/// An agent's report of changes to its node's allocations. A report the
/// agent gave up on (its answer timed out, its server lost the leader) may
/// still reach the leader after a later one, passed on by a server that was
/// slow; `seq` lets the later one win instead of being undone by it (a
/// replica shown starting again, for good, after it ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationReport {
    /// Higher in each report from one node, also across its agent's
    /// restarts (the agent starts past the node's `report_seq`); a report
    /// at or below the last one applied is refused. 0: no order, applied
    /// whenever it arrives.
    pub seq: u64,
    pub updates: Vec<AllocationUpdate>,
}

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
    /// While restarting: when the agent starts it again (ms since the epoch).
    #[serde(default)]
    pub next_restart_at_ms: Option<u64>,
    /// The container (or process) id it runs as, when the agent has one.
    #[serde(default)]
    pub runtime_id: Option<String>,
    #[serde(default)]
    pub container_address: Option<ContainerAddress>,
    /// The image it runs, by digest, once its agent has started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub health_output: String,
}

impl AllocationUpdate {
    /// "It is stopped": nothing of it runs on its node any more.
    pub fn stopped(id: u64) -> Self {
        AllocationUpdate { state: AllocationState::Stopped, ..AllocationUpdate::running(id) }
    }

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
            next_restart_at_ms: None,
            runtime_id: None,
            container_address: None,
            image_digest: None,
            health: Health::Unknown,
            health_output: String::new(),
        }
    }
}

/// A node's allocations at a state index: the answer to an agent's
/// blocking query, which it repeats with `index` to wait for the next change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAllocations {
    pub index: u64,
    /// Every allocation on the node; or, when `all_ids` is set, only those
    /// changed after the query's index.
    pub allocations: Vec<Allocation>,
    /// Set when the query asked for changes only: the ids of every
    /// allocation on the node, so that the agent forgets those gone. A node
    /// of a hundred replicas placed one plan at a time is then sent each
    /// once, not the whole list again with each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_ids: Option<Vec<u64>>,
    /// The workloads those allocations belong to, with their current specs.
    pub workloads: Vec<crate::model::Workload>,
    /// The values of the secrets the workloads of every allocation on the
    /// node name, by name: sent only to the node's own agent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, crate::SecretValue>,
    /// Slot volumes (Docker names) the node is to remove: their workload
    /// was deleted with its volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_volumes: Vec<String>,
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
    /// Every allocation the agent still has something of (a container or
    /// process, running or being stopped), so that a node that was down is
    /// trusted again only once it runs nothing that was placed elsewhere.
    #[serde(default)]
    pub holding: Vec<u64>,
    /// The agent's own TLS, so that a CA rotation knows when every agent
    /// trusts the new CA and holds a certificate from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::TlsReport>,
}

/// The servers' answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub status: crate::node::NodeStatus,
    /// Allocations this node must stop at once: they were lost while the
    /// node was down and run elsewhere now.
    #[serde(default)]
    pub stop: Vec<u64>,
    /// Set when the agent's TLS differs from the cluster's (a CA rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<crate::TrustAdvice>,
    /// How long the agent waits before its next heartbeat, when the
    /// cluster is large enough that every node beating every second would
    /// pass the leader's budget; `None`: the agent's own interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_in_ms: Option<u64>,
}
