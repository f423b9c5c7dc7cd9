//! flotilla's contract: the workload spec users write, the models the API
//! returns, and the typed client the CLI, agents and tests use.

pub mod allocation;
pub mod certificate_authority;
pub mod client;
pub mod clock;
pub mod constraint;
pub mod deployment;
pub mod event_stream;
pub mod join;
pub mod model;
pub mod node;
pub mod quantity;
pub mod secret;
pub mod service;
pub mod spec;
pub mod spec_error;
pub mod token;
pub mod volume;

pub use allocation::{
    Allocation, AllocationReport, AllocationState, AllocationUpdate, AllocationUsage, ContainerAddress,
    Health, Heartbeat, HeartbeatAnswer, NodeAllocations, PortBinding,
};
pub use certificate_authority::{
    CaRotationPhase, CaRotationStatus, CaStatus, RotateCaRequest, TlsReport, TrustAdvice, same_cas,
};
pub use client::{Client, ClientError};
pub use clock::now_ms;
pub use constraint::Constraint;
pub use deployment::{Deployment, DeploymentStatus, RolloutAction, UndoRequest};
pub use event_stream::{EventStream, StreamMessage};
pub use model::*;
pub use node::{HostVolume, Node, NodeName, NodeRegistered, NodeRegistration, NodeStatus, NodeStatusRequest};
pub use quantity::{CpuMillis, MemoryBytes};
pub use secret::{MAX_SECRET_BYTES, SecretInfo, SecretValue};
pub use service::{Endpoint, Service, ServicePage, ServicePort, UnservedPort};
pub use spec::{WorkloadName, WorkloadSpec, parse_json, parse_yaml};
pub use spec_error::SpecError;
pub use token::{
    BootstrapAnswer, CreateTokenRequest, CreatedToken, JoinAnswer, JoinRequest, Joiner, RenewRequest,
    TokenInfo,
};
pub use volume::{SlotVolume, VolumesRemoved};
