//! Applying what changes nodes: registrations and status changes.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::{AllocationState, Node, NodeRegistration, NodeStatus};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

impl ClusterState {
    pub(super) fn register_node(&mut self, registration: NodeRegistration) -> Node {
        let node = self.nodes.entry(registration.name.clone()).or_insert_with(|| Node {
            name: registration.name.clone(),
            address: String::new(),
            capacity_cpu: registration.cpu,
            capacity_memory: registration.memory,
            labels: BTreeMap::new(),
            drivers: BTreeSet::new(),
            status: NodeStatus::Ready,
            allocated_cpu: 0,
            allocated_memory: 0,
            allocations: 0,
        });
        node.address = registration.address;
        node.capacity_cpu = registration.cpu;
        node.capacity_memory = registration.memory;
        node.labels = registration.labels;
        node.drivers = registration.drivers;
        if node.status == NodeStatus::Down {
            node.status = NodeStatus::Ready;
        }
        node.clone()
    }

    pub(super) fn set_node_status(
        &mut self,
        index: u64,
        name: &str,
        status: NodeStatus,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status == NodeStatus::Down && status == NodeStatus::Draining {
            return Err(Rejection::NodeDown(name.to_owned()));
        }
        node.status = status;
        if status == NodeStatus::Down {
            let live: Vec<u64> = self
                .by_node
                .get(name)
                .into_iter()
                .flatten()
                .filter(|id| self.allocations.get(id).is_some_and(|a| a.state.is_live()))
                .copied()
                .collect();
            for id in live {
                self.set_allocation_state(index, id, AllocationState::Lost);
            }
        }
        let node = self.nodes.get(name).cloned().ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        Ok(CommandOutput::Node(node))
    }
}
