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
            .map(|(id, address)| {
                (
                    *id,
                    Member {
                        id: *id,
                        address: address.clone(),
                        voter: true,
                        matched: None,
                    },
                )
            })
            .collect();
        ClusterState {
            workloads: BTreeMap::new(),
            members,
        }
    }

    /// Applies a committed command at log `index`. A rejected command leaves
    /// the state exactly as it was.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<CommandOutput, Rejection> {
        match command {
            Command::PutWorkload {
                spec,
                expected_version,
            } => {
                let existing = self.workloads.get(&spec.name);
                if let Some(expected) = expected_version {
                    let actual = existing.map_or(0, |w| w.version);
                    if actual != expected {
                        return Err(Rejection::VersionMismatch {
                            name: spec.name,
                            expected,
                            actual,
                        });
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
                        Workload {
                            spec,
                            version: 1,
                            created_index: index,
                            modified_index: index,
                        },
                    ),
                };
                self.workloads
                    .insert(workload.spec.name.clone(), workload.clone());
                Ok(CommandOutput::Deployed(DeployResult { change, workload }))
            }
            Command::ScaleWorkload { name, replicas } => {
                let workload = self
                    .workloads
                    .get_mut(&name)
                    .ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
                if let Some(auto) = &workload.spec.autoscale
                    && !(auto.min..=auto.max).contains(&replicas)
                {
                    return Err(Rejection::OutsideAutoscaleRange {
                        name,
                        replicas,
                        min: auto.min,
                        max: auto.max,
                    });
                }
                if workload.spec.replicas != replicas {
                    workload.spec.replicas = replicas;
                    workload.modified_index = index;
                }
                Ok(CommandOutput::Workload(workload.clone()))
            }
            Command::DeleteWorkload { name } => {
                let workload = self
                    .workloads
                    .remove(&name)
                    .ok_or(Rejection::WorkloadNotFound(name))?;
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
        let entry = self.members.entry(id).or_insert_with(|| Member {
            id,
            address: String::new(),
            voter,
            matched: None,
        });
        if let Some(address) = address {
            entry.address = address;
        }
        entry.voter = voter;
    }

    pub fn remove_member(&mut self, id: u64) {
        self.members.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::parse_yaml;
    use proptest::prelude::*;

    fn name(i: u8) -> WorkloadName {
        WorkloadName::parse(&format!("w{}", i % 4)).expect("valid name")
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0..8u8, 0..5u32, proptest::option::of(0..3u64), any::<bool>()).prop_map(
                |(i, replicas, version, auto)| {
                    let autoscale = if auto {
                        "autoscale: {min: 1, max: 3, cpu: 50}\n"
                    } else {
                        ""
                    };
                    let yaml = format!(
                        "name: {}\nimage: img:{}\nreplicas: {replicas}\n{autoscale}",
                        name(i),
                        i % 2
                    );
                    Command::PutWorkload {
                        spec: parse_yaml(&yaml).expect("valid"),
                        expected_version: version,
                    }
                }
            ),
            (0..8u8, 0..6u32).prop_map(|(i, replicas)| Command::ScaleWorkload {
                name: name(i),
                replicas
            }),
            (0..8u8).prop_map(|i| Command::DeleteWorkload { name: name(i) }),
        ]
    }

    proptest! {
        /// Every server applies the same log, so the same commands must give
        /// the same states and answers; a rejected command changes nothing;
        /// and a snapshot restores exactly what was there.
        #[test]
        fn apply_is_deterministic_rejections_change_nothing_and_snapshots_restore(
            commands in proptest::collection::vec(command(), 1..60)
        ) {
            let mut a = ClusterState::bootstrap(&[(1, "127.0.0.1:1".to_owned())].into());
            let mut b = a.clone();
            for (i, command) in commands.into_iter().enumerate() {
                let index = i as u64 + 2;
                let before = a.clone();
                let versions: BTreeMap<_, _> = a.workloads.iter().map(|(n, w)| (n.clone(), w.version)).collect();
                let result_a = a.apply(index, command.clone());
                let result_b = b.apply(index, command);
                prop_assert_eq!(&result_a, &result_b);
                prop_assert_eq!(&a, &b);
                if result_a.is_err() {
                    prop_assert_eq!(&a, &before);
                }
                for (name, version) in versions {
                    if let Some(w) = a.workloads.get(&name) {
                        prop_assert!(w.version >= version, "versions never go back");
                    }
                }
                let snapshot = serde_json::to_vec(&a).expect("snapshot");
                let restored: ClusterState = serde_json::from_slice(&snapshot).expect("restore");
                prop_assert_eq!(&restored, &a);
            }
        }
    }

    #[test]
    fn deploy_reports_created_updated_and_unchanged() {
        let mut state = ClusterState::default();
        let spec = parse_yaml("name: web\nimage: a\n").expect("valid");
        let changed = parse_yaml("name: web\nimage: b\n").expect("valid");
        let table = [
            (spec.clone(), None, Ok((DeployChange::Created, 1))),
            (spec.clone(), None, Ok((DeployChange::Unchanged, 1))),
            (changed.clone(), Some(1), Ok((DeployChange::Updated, 2))),
            (spec.clone(), Some(1), Err(())),
            (spec, Some(2), Ok((DeployChange::Updated, 3))),
        ];
        for (i, (spec, expected_version, want)) in table.into_iter().enumerate() {
            let got = state.apply(
                i as u64 + 1,
                Command::PutWorkload {
                    spec,
                    expected_version,
                },
            );
            let got = match got {
                Ok(CommandOutput::Deployed(r)) => Ok((r.change, r.workload.version)),
                _ => Err(()),
            };
            assert_eq!(got, want, "step {i}");
        }
    }
}
