//! A copy of the state for a snapshot to write while applies go on.
//!
//! Written under the state's read lock instead, a snapshot of a million
//! allocations (350 MB of JSON) held every apply on its server, and so
//! every answer to a write, for 7.5–10.5 s, once a minute while agents
//! reported. The allocations are shared with the copy (see
//! `allocation_table`), so copying costs pointers for them and a copy of
//! the smaller maps; the derived bookkeeping is not copied at all, since a
//! snapshot does not hold it.

use super::cluster_state::ClusterState;

impl ClusterState {
    /// Everything a snapshot holds, with the allocations shared.
    pub fn snapshot_copy(&self) -> ClusterState {
        ClusterState {
            workloads: self.workloads.clone(),
            members: self.members.clone(),
            nodes: self.nodes.clone(),
            allocations: self.allocations.clone(),
            by_node: self.by_node.clone(),
            by_workload: self.by_workload.clone(),
            next_allocation_id: self.next_allocation_id,
            unplaced: self.unplaced.clone(),
            events: self.events.clone(),
            applied_keys: self.applied_keys.clone(),
            deployments: self.deployments.clone(),
            next_deployment_id: self.next_deployment_id,
            service_ports: self.service_ports.clone(),
            service_port_range: self.service_port_range,
            tokens: self.tokens.clone(),
            acl_bootstrapped: self.acl_bootstrapped,
            secrets: self.secrets.clone(),
            ca: self.ca.clone(),
            volumes: self.volumes.clone(),
            journal: Default::default(),
            node_changes: Default::default(),
            tallies: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::spec::Driver;
    use flotilla_api::{
        AllocationState, AllocationUpdate, CpuMillis, MemoryBytes, NodeRegistration, parse_yaml,
    };

    use super::*;
    use crate::state::{Command, Placement, Plan};

    #[test]
    fn a_snapshot_copy_serializes_as_the_state_did_when_copied_whatever_changes_after() {
        let mut state = ClusterState::default();
        let registration = NodeRegistration {
            name: "n".into(),
            address: String::new(),
            cpu: CpuMillis(4000),
            memory: MemoryBytes(4 << 30),
            labels: Default::default(),
            drivers: [Driver::Docker].into(),
            host_volumes: Default::default(),
        };
        state.apply(1, Command::RegisterNode { registration }).expect("register");
        let spec = parse_yaml("name: web\nimage: x\nreplicas: 2\n").expect("spec");
        state.apply(2, Command::put_workload(spec, 0)).expect("deploy");
        let web = flotilla_api::WorkloadName::parse("web").expect("name");
        let placements = (0..2)
            .map(|replica| Placement {
                workload: web.clone(),
                replica,
                node: "n".into(),
                version: 1,
                cpu: 0,
                memory: 0,
                ports: Vec::new(),
            })
            .collect();
        state.apply(3, Command::ApplyPlan { plan: Plan { placements, ..Plan::default() } }).expect("plan");
        let before = serde_json::to_string(&state).expect("serialize");
        let copy = state.snapshot_copy();
        let ids: Vec<u64> = state.allocations().map(|a| a.id).collect();
        let running = AllocationUpdate { restarts: 1, ..AllocationUpdate::running(ids[0]) };
        let updates = vec![
            running,
            AllocationUpdate { state: AllocationState::Failed, ..AllocationUpdate::running(ids[1]) },
        ];
        state
            .apply(4, Command::UpdateAllocations { node: "n".into(), seq: 0, updates, now_ms: 9 })
            .expect("report");
        assert_ne!(serde_json::to_string(&state).expect("serialize"), before, "the state moved on");
        assert_eq!(serde_json::to_string(&copy).expect("serialize"), before);
    }
}
