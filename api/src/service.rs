//! Services: workloads with named ports, as the registry shows them: the
//! port every node serves them on, and the replicas behind it.

use serde::{Deserialize, Serialize};

use crate::allocation::{ContainerAddress, Health};
use crate::spec::{Balance, Protocol, SpecDuration, WorkloadName};

/// One named port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    /// The port inside the replicas.
    pub container: u16,
    /// The port the routing mesh serves it on, on every node.
    pub port: u16,
    /// Whether `port` is the spec's `ingress` (else the cluster chose it).
    pub ingress: bool,
}

/// One replica behind a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub allocation: u64,
    pub node: String,
    /// The node's address (host name or IP), where the replica's host ports are.
    pub address: String,
    /// Each named port's host port on the node, by port name.
    pub ports: Vec<(String, u16)>,
    pub health: Health,
    /// Whether it takes new connections: running, healthy, not stopping.
    pub ready: bool,
    /// Its address on its Docker network, where it listens on the
    /// container ports: a mesh on the same engine dials it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_address: Option<ContainerAddress>,
    /// Since when it has been healthy: a mesh re-admits an endpoint it
    /// ejected once this moves on (the replica passed its checks anew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since_ms: Option<u64>,
}

/// A service port a node's mesh cannot serve: another program holds it
/// there. The agent keeps trying, and clears this once it serves the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnservedPort {
    /// The node; filled in by the server from the reporting agent.
    #[serde(default)]
    pub node: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The address the mesh failed to bind.
    pub address: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: WorkloadName,
    pub ports: Vec<ServicePort>,
    pub balance: Balance,
    pub drain: SpecDuration,
    pub endpoints: Vec<Endpoint>,
    /// Nodes whose mesh cannot serve one of its ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unserved: Vec<UnservedPort>,
}

/// Every service at a state index: the answer to `GET /v1/services`, a
/// blocking query like the agents' (`?index=N&wait_ms=M`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePage {
    pub index: u64,
    pub services: Vec<Service>,
}
