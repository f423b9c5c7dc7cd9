//! Ports a replica listens on, and how they are published on its node.

use serde::{Deserialize, Serialize};

use super::{DnsLabel, is_default};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port the replica listens on, and optionally the host port it is published on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// A named port makes the workload a service: other workloads reach it
    /// by this name through the routing mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<DnsLabel>,
    /// The port inside the container.
    pub container: u16,
    /// The port on the host; absent or 0 lets the agent choose a free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// Published on every node on this port by the routing mesh (a named
    /// port without it gets a service port from the cluster's range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<u16>,
}
