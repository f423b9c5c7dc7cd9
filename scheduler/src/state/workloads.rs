//! Applying what changes workloads: deploys, scales (by hand or by the
//! autoscaler) and deletes.

use flotilla_api::{DeployChange, DeployResult, Event, Workload, WorkloadName, WorkloadSpec, WorkloadStatus};

use super::cluster_state::ClusterState;
use super::command::{AutoscaleDecision, CommandOutput, Rejection};
use super::services::ServicePortRange;

impl ClusterState {
    pub(super) fn put_workload(
        &mut self,
        index: u64,
        spec: WorkloadSpec,
        expected_version: Option<u64>,
        now_ms: u64,
        service_ports: Option<ServicePortRange>,
    ) -> Result<CommandOutput, Rejection> {
        self.check_secrets_exist(&spec)?;
        self.check_no_volumes_removing(&spec.name)?;
        let range = service_ports.unwrap_or(self.service_port_range);
        let chosen = self.choose_service_ports(&spec, range)?;
        let existing = self.workloads.get(&spec.name);
        if let Some(expected) = expected_version {
            let actual = existing.map_or(0, |w| w.version);
            if actual != expected {
                return Err(Rejection::VersionMismatch { name: spec.name, expected, actual });
            }
        }
        let (change, workload) = match existing {
            Some(current) if current.spec == spec => (DeployChange::Unchanged, current.clone()),
            // A change of replicas alone is a scale, not a new version to roll out.
            Some(current) if current.spec == spec_with_replicas(&spec, current.spec.replicas) => {
                (DeployChange::Updated, Workload { spec, modified_index: index, ..current.clone() })
            }
            Some(current) => (
                DeployChange::Updated,
                Workload {
                    spec,
                    version: current.version + 1,
                    created_index: current.created_index,
                    modified_index: index,
                    status: WorkloadStatus::default(),
                },
            ),
            None => (
                DeployChange::Created,
                Workload {
                    spec,
                    version: 1,
                    created_index: index,
                    modified_index: index,
                    status: WorkloadStatus::default(),
                },
            ),
        };
        let from_version = existing.map(|w| w.version);
        self.service_port_range = range;
        self.set_service_ports(&workload.spec.name, chosen);
        self.workloads.insert(workload.spec.name.clone(), workload.clone());
        if from_version != Some(workload.version) {
            self.begin_deployment(index, &workload, from_version, "deploy".into(), now_ms);
        }
        let workload = self.with_status(workload);
        Ok(CommandOutput::Deployed(DeployResult { change, workload }))
    }

    pub(super) fn scale_workload(
        &mut self,
        index: u64,
        name: WorkloadName,
        replicas: u32,
    ) -> Result<CommandOutput, Rejection> {
        let workload =
            self.workloads.get_mut(&name).ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
        if let Some(auto) = &workload.spec.autoscale
            && !(auto.min..=auto.max).contains(&replicas)
        {
            return Err(Rejection::OutsideAutoscaleRange { name, replicas, min: auto.min, max: auto.max });
        }
        if workload.spec.replicas != replicas {
            workload.spec.replicas = replicas;
            workload.modified_index = index;
        }
        let workload = workload.clone();
        Ok(CommandOutput::Workload(self.with_status(workload)))
    }

    /// Removes the workload; its live allocations are stopped by their
    /// agents (holding their resources until then) and then forgotten. With
    /// `volumes`, its slot volumes are removed too.
    pub(super) fn delete_workload(
        &mut self,
        index: u64,
        name: WorkloadName,
        volumes: bool,
    ) -> Result<CommandOutput, Rejection> {
        let workload = self.workloads.remove(&name).ok_or(Rejection::WorkloadNotFound(name.clone()))?;
        if volumes {
            self.remove_workload_volumes(&name);
        }
        for id in self.by_workload.get(&name).cloned().unwrap_or_default() {
            self.stop_allocation(index, id);
        }
        self.unplaced.remove(&name);
        self.deployments.remove(&name);
        self.service_ports.remove(&name);
        Ok(CommandOutput::Workload(workload))
    }

    /// The autoscaler's decision, applied only if the workload is still as
    /// the decision saw it: autoscaled, within bounds, at the same version
    /// and replicas (so it never undoes a deploy or `scale` that came first).
    pub(super) fn autoscale_workload(
        &mut self,
        index: u64,
        decision: AutoscaleDecision,
    ) -> Result<CommandOutput, Rejection> {
        let AutoscaleDecision { name, replicas, based_on_replicas, version, reason, now_ms } = decision;
        let workload =
            self.workloads.get_mut(&name).ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
        let Some(auto) = &workload.spec.autoscale else {
            return Err(Rejection::NotAutoscaled(name));
        };
        if !(auto.min..=auto.max).contains(&replicas) {
            return Err(Rejection::OutsideAutoscaleRange { name, replicas, min: auto.min, max: auto.max });
        }
        if workload.version != version || workload.spec.replicas != based_on_replicas {
            return Err(Rejection::StaleAutoscale {
                name,
                seen: (version, based_on_replicas),
                now: (workload.version, workload.spec.replicas),
            });
        }
        workload.spec.replicas = replicas;
        workload.modified_index = index;
        let workload = workload.clone();
        let message = format!("autoscaled: {reason}");
        self.record(Event { index, at_ms: now_ms, workload: Some(name.to_string()), node: None, message });
        Ok(CommandOutput::Workload(self.with_status(workload)))
    }
}

fn spec_with_replicas(spec: &WorkloadSpec, replicas: u32) -> WorkloadSpec {
    WorkloadSpec { replicas, ..spec.clone() }
}

#[cfg(test)]
mod tests {
    use flotilla_api::parse_yaml;

    use super::*;
    use crate::state::Command;

    #[test]
    fn an_autoscale_decision_applies_only_to_the_workload_it_was_based_on() {
        let auto = "name: w\nimage: x\nreplicas: 2\nautoscale: {min: 1, max: 5, cpu: 50}\n";
        let decision = |replicas, based_on_replicas, version| {
            Command::AutoscaleWorkload(AutoscaleDecision {
                name: WorkloadName::parse("w").expect("name"),
                replicas,
                based_on_replicas,
                version,
                reason: "test".into(),
                now_ms: 0,
            })
        };
        // (what, spec deployed, then a decision: replicas, based on replicas, version; accepted)
        let table = [
            ("as seen", auto, (3, 2, 1), true),
            ("replicas changed since (a scale came first)", auto, (3, 4, 1), false),
            ("another version since", auto, (3, 2, 0), false),
            ("beyond max", auto, (6, 2, 1), false),
            ("autoscale removed", "name: w\nimage: x\nreplicas: 2\n", (3, 2, 1), false),
        ];
        for (what, yaml, (replicas, based_on, version), accepted) in table {
            let mut state = ClusterState::default();
            let spec = parse_yaml(yaml).expect("spec");
            state.apply(1, Command::put_workload(spec, 0)).expect("deploy");
            let before = state.clone();
            let result = state.apply(2, decision(replicas, based_on, version));
            assert_eq!(result.is_ok(), accepted, "{what}: {result:?}");
            if accepted {
                assert_eq!(state.workload("w").map(|w| w.spec.replicas), Some(replicas));
            } else {
                assert_eq!(state, before, "{what}: a refused decision changes nothing");
            }
        }
    }
}
