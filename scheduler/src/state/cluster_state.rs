//! The cluster's desired state, and the deterministic `apply` that changes it.

use std::collections::BTreeMap;

use flotilla_api::{DeployChange, DeployResult, Member, Workload, WorkloadName};
use serde::{Deserialize, Serialize};

use super::command::{Command, CommandOutput, Rejection};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    workloads: BTreeMap<WorkloadName, Workload>,
    /// Raft members and their addresses, replicated so that every server,
    /// including one that joins later, knows where its peers listen.
    members: BTreeMap<u64, Member>,
}

impl ClusterState {
    /// The state a new cluster starts from: no workloads, the given voters.
    pub fn bootstrap(voters: &BTreeMap<u64, String>) -> Self {
        let members = voters
            .iter()
            .map(|(id, address)| (*id, Member { id: *id, address: address.clone(), voter: true, matched: None }))
            .collect();
        ClusterState { workloads: BTreeMap::new(), members }
    }

    /// Applies a committed command at log `index`. A rejected command leaves
    /// the state exactly as it was.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<CommandOutput, Rejection> {
        match command {
            Command::PutWorkload { spec, expected_version } => {
                let existing = self.workloads.get(&spec.name);
                if let Some(expected) = expected_version {
                    let actual = existing.map_or(0, |w| w.version);
                    if actual != expected {
                        return Err(Rejection::VersionMismatch { name: spec.name, expected, actual });
                    }
                }
                let (change, workload) = match existing {
                    Some(current) if current.spec == spec => (DeployChange::Unchanged, current.clone()),
                    Some(current) => (
                        DeployChange::Updated,
                        Workload {
                            spec,
                            version: current.version + 1,
                            created_index: current.created_index,
                            modified_index: index,
                        },
                    ),
                    None => (
                        DeployChange::Created,
                        Workload { spec, version: 1, created_index: index, modified_index: index },
                    ),
                };
                self.workloads.insert(workload.spec.name.clone(), workload.clone());
                Ok(CommandOutput::Deployed(DeployResult { change, workload }))
            }
            Command::ScaleWorkload { name, replicas } => {
                let workload = self.workloads.get_mut(&name).ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
                if let Some(auto) = &workload.spec.autoscale
                    && !(auto.min..=auto.max).contains(&replicas)
                {
                    return Err(Rejection::OutsideAutoscaleRange { name, replicas, min: auto.min, max: auto.max });
                }
                if workload.spec.replicas != replicas {
                    workload.spec.replicas = replicas;
                    workload.modified_index = index;
                }
                Ok(CommandOutput::Workload(workload.clone()))
            }
            Command::DeleteWorkload { name } => {
                let workload = self.workloads.remove(&name).ok_or(Rejection::WorkloadNotFound(name))?;
                Ok(CommandOutput::Workload(workload))
            }
        }
    }

    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.get(name)
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Records a member added as a learner (with its address) or promoted to voter.
    pub fn add_member(&mut self, id: u64, address: Option<String>, voter: bool) {
        let entry = self.members.entry(id).or_insert_with(|| Member { id, address: String::new(), voter, matched: None });
        if let Some(address) = address {
            entry.address = address;
        }
        entry.voter = voter;
    }

    pub fn remove_member(&mut self, id: u64) {
        self.members.remove(&id);
    }
}
