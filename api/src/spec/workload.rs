//! The workload spec itself, and the small choices it is made of.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    Autoscale, Check, EnvValue, PortSpec, Protocol, Resources, SecretMount, ServiceSpec, UpdateStrategy,
    VolumeMount, WorkloadName, is_default,
};
use crate::constraint::Constraint;

/// Which runtime on the agent runs the replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Docker,
    Process,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Docker => "docker",
            Driver::Process => "process",
        })
    }
}

/// When an exited replica is started again (as Docker's and Kubernetes' policies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// How the scheduler ranks nodes that can hold a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// Fill the fullest node that fits first, to keep whole nodes free.
    #[default]
    Binpack,
    /// Prefer the emptiest node, to spread load and blast radius.
    Spread,
}

/// When the agent asks the engine to pull the image (as Kubernetes'
/// `imagePullPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Only when the node does not hold the image.
    #[default]
    IfNotPresent,
    /// Before every new container, so a moved tag is followed.
    Always,
    /// Never: the image must be on the node already.
    Never,
}

fn default_replicas() -> u32 {
    1
}

/// The desired state of one workload, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: WorkloadName,
    #[serde(default, skip_serializing_if = "is_default")]
    pub driver: Driver,
    /// The Docker image; required by the docker driver, refused by the process driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When the image is pulled from its registry.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pull: PullPolicy,
    /// A secret holding a Docker config JSON (`{"auths": {...}}`) with the
    /// credentials for the image's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    /// Program and arguments; for Docker it replaces the image's default command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
    /// Secrets written as files into each replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretMount>,
    /// Named volumes of each replica slot, and host volumes of its node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: PlacementStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// Health checks; all must pass for a replica to be healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// How a changed spec rolls out.
    #[serde(default, skip_serializing_if = "is_default")]
    pub update: UpdateStrategy,
    /// How the routing mesh balances the named ports' traffic.
    #[serde(default, skip_serializing_if = "is_default")]
    pub service: ServiceSpec,
}

impl WorkloadSpec {
    /// The ports that make it a service: those with a name.
    pub fn service_ports(&self) -> impl Iterator<Item = (&super::DnsLabel, &PortSpec)> + '_ {
        self.ports.iter().filter_map(|p| p.name.as_ref().map(|name| (name, p)))
    }

    /// The secrets this workload's replicas need, by name (env and files).
    pub fn secret_names(&self) -> std::collections::BTreeSet<&str> {
        let from_env = self.env.values().filter_map(EnvValue::secret);
        let files = self.secrets.iter().map(|m| m.name.as_str());
        from_env.chain(files).chain(self.pull_secret.as_deref()).collect()
    }

    /// The volumes each replica slot owns (not its node's host volumes):
    /// they pin the slot to the node that holds them.
    pub fn slot_volumes(&self) -> impl Iterator<Item = &VolumeMount> + '_ {
        self.volumes.iter().filter(|v| !v.host)
    }

    /// The host volumes a node must offer to take a replica.
    pub fn host_volumes(&self) -> impl Iterator<Item = &VolumeMount> + '_ {
        self.volumes.iter().filter(|v| v.host)
    }

    /// Host ports this workload's replicas bind, which no two replicas on one node may share.
    pub fn fixed_host_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.ports.iter().filter_map(|p| p.host.filter(|h| *h != 0).map(|h| (h, p.protocol)))
    }
}
