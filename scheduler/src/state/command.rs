//! Commands: the only way the replicated state changes.

use flotilla_api::{
    AllocationUpdate, DeployResult, Deployment, DeploymentStatus, Node, NodeRegistration, NodeStatus,
    RolloutAction, Workload, WorkloadName, WorkloadSpec,
};
use serde::{Deserialize, Serialize};

use super::plan::{Plan, PlanOutcome};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a workload's spec (apply semantics). With
    /// `expected_version` it is refused unless the stored version matches.
    PutWorkload {
        /// Boxed: a spec is much larger than any other command.
        spec: Box<WorkloadSpec>,
        expected_version: Option<u64>,
        /// The proposing server's clock: when the new version's rollout starts.
        #[serde(default)]
        now_ms: u64,
        /// The proposing server's range for service ports (`--service-ports`).
        #[serde(default)]
        service_ports: Option<super::services::ServicePortRange>,
    },
    ScaleWorkload {
        name: WorkloadName,
        replicas: u32,
    },
    /// With `volumes`, the workload's slot volumes go too (its agents remove
    /// them); without, they are kept for a workload of the same name.
    DeleteWorkload {
        name: WorkloadName,
        #[serde(default)]
        volumes: bool,
    },
    /// `volumes rm`: the slot volumes a deleted workload left go.
    RemoveVolumes {
        workload: WorkloadName,
    },
    /// A node's agent removed these slot volumes (Docker names), as asked.
    VolumesRemoved {
        node: String,
        volumes: Vec<String>,
    },
    /// Add a node, or update one that registers again (an agent restart).
    RegisterNode {
        registration: NodeRegistration,
    },
    /// An operator's drain (`Draining`) or undrain (`Ready`). `now_ms`: the
    /// proposing server's clock, for the event it records.
    SetNodeStatus {
        name: String,
        status: NodeStatus,
        now_ms: u64,
    },
    /// The leader's decision that a node missed its heartbeats, based on the
    /// node as it stood at `ready_index` (its last registration or return).
    MarkNodeDown {
        name: String,
        ready_index: u64,
        now_ms: u64,
    },
    /// A down node's agent heartbeats again and holds none of what was
    /// placed elsewhere meanwhile.
    NodeRecovered {
        name: String,
        now_ms: u64,
    },
    /// The autoscaler's decision, with its reason recorded as an event.
    AutoscaleWorkload(AutoscaleDecision),
    ApplyPlan {
        plan: Plan,
    },
    /// The rollout controller's verdict on a deployment (successful, failed,
    /// waiting for promotion), applied only if that deployment is still the
    /// workload's active one. A failure with `auto_revert` deploys the last
    /// good version in the same entry.
    SetDeploymentStatus {
        name: WorkloadName,
        deployment: u64,
        status: DeploymentStatus,
        reason: Option<String>,
        now_ms: u64,
    },
    /// `rollout promote|pause|resume`.
    Rollout {
        name: WorkloadName,
        action: RolloutAction,
        now_ms: u64,
    },
    /// `rollout undo`: deploys an earlier version's spec as a new version.
    UndoRollout {
        name: WorkloadName,
        to_version: Option<u64>,
        now_ms: u64,
    },
    /// What a node's agent did on its own (it removed an orphan), as events.
    RecordNodeEvents {
        node: String,
        messages: Vec<String>,
        now_ms: u64,
    },
    /// A new API or join token (its hash; the secret never enters the log).
    CreateToken {
        token: super::tokens::StoredToken,
    },
    RevokeToken {
        id: String,
    },
    /// A secret's new value, sealed with the cluster key by the server
    /// that took it (the log never holds a value).
    PutSecret {
        name: String,
        sealed: String,
        size: u64,
        now_ms: u64,
    },
    DeleteSecret {
        name: String,
    },
    /// `ca rotate`: a new CA joins the trusted ones (its key sealed by the
    /// server that made it); the current one still issues.
    StartCaRotation {
        rotation: super::certificate_authority::CaRotation,
    },
    /// Every server and agent trusts the rotation's new CA: it issues now.
    ReissueFromNewCa {
        to_digest: String,
        now_ms: u64,
    },
    /// Every certificate is from the new CA: the old one is trusted no more.
    FinishCaRotation {
        to_digest: String,
        now_ms: u64,
    },
    /// The management token, accepted once in the cluster's life.
    BootstrapAcl {
        token: super::tokens::StoredToken,
    },
    /// The service ports a node's mesh cannot serve, replacing what it said before.
    SetUnservedPorts {
        node: String,
        ports: Vec<flotilla_api::UnservedPort>,
    },
    /// State changes an agent reported; `now_ms` is the receiving server's
    /// clock, recorded as the time an allocation finished.
    UpdateAllocations {
        node: String,
        /// The report's place in its node's order (`AllocationReport`); 0
        /// in entries written before reports were ordered.
        #[serde(default)]
        seq: u64,
        updates: Vec<AllocationUpdate>,
        now_ms: u64,
    },
}

impl Command {
    /// A deploy of `spec` with no version check and the default service
    /// port range, as tests, benchmarks and tools make them.
    pub fn put_workload(spec: WorkloadSpec, now_ms: u64) -> Self {
        Command::PutWorkload { spec: Box::new(spec), expected_version: None, now_ms, service_ports: None }
    }
}

#[cfg(test)]
impl Command {
    /// A Docker node registering with `cpu` millicores and `memory` bytes,
    /// for tests that need somewhere to place replicas.
    pub fn register_docker_node(name: &str, address: &str, cpu: u64, memory: u64) -> Self {
        Command::RegisterNode {
            registration: NodeRegistration {
                name: name.into(),
                address: address.into(),
                cpu: flotilla_api::CpuMillis(cpu),
                memory: flotilla_api::MemoryBytes(memory),
                labels: Default::default(),
                drivers: [flotilla_api::spec::Driver::Docker].into(),
                host_volumes: Default::default(),
            },
        }
    }
}

/// What the autoscaler decided, and on what it based the decision: it is
/// refused if the workload has changed since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleDecision {
    pub name: WorkloadName,
    pub replicas: u32,
    /// The replicas the workload had when the decision was taken.
    pub based_on_replicas: u32,
    /// The spec version the decision was taken on.
    pub version: u64,
    pub reason: String,
    pub now_ms: u64,
}

/// A command as it travels in a log entry. The proposing server keeps a
/// reply channel under `(origin, request_id)` and answers it when it applies
/// the entry, whichever server was leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub origin: u64,
    pub request_id: u64,
    pub command: Command,
    /// The client's idempotency key for this write, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once: Option<super::Idempotency>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutput {
    Deployed(DeployResult),
    Workload(Workload),
    Node(Node),
    Planned(PlanOutcome),
    AllocationsUpdated(u32),
    EventsRecorded(u32),
    Deployment(Box<Deployment>),
    Token(flotilla_api::TokenInfo),
    Secret(flotilla_api::SecretInfo),
    CaChanged,
    /// Slot volumes now being removed by the agents holding them.
    VolumesRemoving(u32),
    /// Slot volumes forgotten: no node holds a copy any more.
    VolumesForgotten(u32),
}

/// Why a committed command changed nothing. Deterministic, so every server
/// rejects the same commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("workload `{0}` does not exist")]
    WorkloadNotFound(WorkloadName),
    #[error(
        "{count} volumes of the deleted workload `{name}` are still being removed by their nodes' agents; deploy it again once `flotilla volumes` no longer lists them"
    )]
    VolumesBeingRemoved { name: WorkloadName, count: u32 },
    #[error("workload `{0}` is deployed; `flotilla delete {0} --volumes` removes it with its volumes")]
    WorkloadStillDeployed(WorkloadName),
    #[error("workload `{0}` has no volumes")]
    NoVolumes(WorkloadName),
    #[error("workload `{name}` is at version {actual}, not the expected {expected}")]
    VersionMismatch { name: WorkloadName, expected: u64, actual: u64 },
    #[error(
        "workload `{name}` autoscales between {min} and {max}; {replicas} replicas is outside that range"
    )]
    OutsideAutoscaleRange { name: WorkloadName, replicas: u32, min: u32, max: u32 },
    #[error("node `{0}` does not exist")]
    NodeNotFound(String),
    #[error("node `{node}`: report {seq} arrived after report {last}, which is newer; it was not applied")]
    StaleReport { node: String, seq: u64, last: u64 },
    #[error("workload `{0}` does not autoscale")]
    NotAutoscaled(WorkloadName),
    #[error(
        "workload `{name}` changed since the autoscaling decision (version and replicas {seen:?}, now {now:?})"
    )]
    StaleAutoscale { name: WorkloadName, seen: (u64, u32), now: (u64, u32) },
    #[error("idempotency key `{0}` was used for a different request")]
    IdempotencyKeyReused(String),
    #[error("node `{0}` is down; it becomes ready again when its agent heartbeats again")]
    NodeDown(String),
    #[error("node `{node}` changed since the decision (based on index {based_on}, now {current})")]
    StaleNodeDecision { node: String, based_on: u64, current: u64 },
    #[error("workload `{0}` has no rollout in progress")]
    NoActiveRollout(WorkloadName),
    #[error("rollout of `{name}` cannot {action}: {reason}")]
    RolloutRefused { name: WorkloadName, action: String, reason: String },
    #[error("deployment {deployment} of `{name}` is no longer the active one")]
    StaleDeployment { name: WorkloadName, deployment: u64 },
    #[error("version {version} of `{name}` is not in its history (the last {kept} versions are kept)")]
    VersionNotInHistory { name: WorkloadName, version: u64, kept: usize },
    #[error("field `{field}`: port {port} is already the service port of workload `{owner}`")]
    ServicePortTaken { field: String, port: u16, owner: WorkloadName },
    #[error("every service port from {low} to {high} is taken")]
    NoServicePortLeft { low: u16, high: u16 },
    #[error("token `{0}` does not exist")]
    TokenNotFound(String),
    #[error("a token with id `{0}` exists already")]
    TokenExists(String),
    #[error("the ACL is bootstrapped already; ask an admin for a token")]
    AclAlreadyBootstrapped,
    #[error("field `{field}`: secret `{name}` does not exist (`flotilla secret put {name}` makes it)")]
    SecretNotFound { field: String, name: String },
    #[error("secret `{name}` is in use by workload `{workload}`; change or delete the workload first")]
    SecretInUse { name: String, workload: WorkloadName },
    #[error("a CA rotation to {to} is in progress; `flotilla ca status` shows how far it is")]
    CaRotationInProgress { to: String },
    #[error("there is no CA rotation to {0} in progress")]
    NoCaRotation(String),
    #[error("the CA rotation to {to} is {phase}, not at the step before this one")]
    CaRotationPhase { to: String, phase: flotilla_api::CaRotationPhase },
}
