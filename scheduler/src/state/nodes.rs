//! Applying what changes nodes: registrations, an operator's drain and
//! undrain, the leader's down decisions and a node's return.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::{AllocationState, Event, Node, NodeRegistration, NodeStatus};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

/// Events one agent report may add: a runaway agent cannot flush the log.
const MAX_EVENTS_PER_REPORT: usize = 100;

/// Downs within this window count toward flapping.
pub const FLAP_WINDOW_MS: u64 = 10 * 60 * 1000;
/// A node back from its second down within the window is flapping.
pub const FLAPS_TO_HOLD: usize = 2;
/// How long a flapping node gets no new work once it is back.
pub const FLAP_HOLD_MS: u64 = 60 * 1000;

impl ClusterState {
    /// Adds a node, or updates one whose agent registered again. A node that
    /// is down stays down: it comes back by heartbeating with nothing of what
    /// was placed elsewhere. A smaller capacity is recorded as it is; the
    /// reconciler moves away what no longer fits.
    pub(super) fn register_node(&mut self, index: u64, registration: NodeRegistration) -> Node {
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
            ready_index: index,
            recent_downs_ms: Vec::new(),
            eligible_at_ms: 0,
        });
        node.address = registration.address;
        node.capacity_cpu = registration.cpu;
        node.capacity_memory = registration.memory;
        node.labels = registration.labels;
        node.drivers = registration.drivers;
        node.ready_index = index;
        node.clone()
    }

    /// An operator's drain or undrain. Neither applies to a node that is
    /// down: only its agent's return makes it ready.
    pub(super) fn set_node_status(
        &mut self,
        index: u64,
        name: &str,
        status: NodeStatus,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status == NodeStatus::Down || status == NodeStatus::Down {
            return Err(Rejection::NodeDown(name.to_owned()));
        }
        node.status = status;
        let node = node.clone();
        self.record_node_event(index, now_ms, name, format!("node is {status}"));
        Ok(CommandOutput::Node(node))
    }

    /// The leader's decision that a node missed its heartbeats, taken on
    /// what it knew of the node at `ready_index`: refused if the node has
    /// registered or come back since, or is already down.
    pub(super) fn mark_node_down(
        &mut self,
        index: u64,
        name: &str,
        ready_index: u64,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status == NodeStatus::Down || node.ready_index != ready_index {
            return Err(Rejection::StaleNodeDecision {
                node: name.to_owned(),
                based_on: ready_index,
                current: node.ready_index,
            });
        }
        node.status = NodeStatus::Down;
        node.recent_downs_ms.retain(|at| now_ms.saturating_sub(*at) < FLAP_WINDOW_MS);
        node.recent_downs_ms.push(now_ms);
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
        let node = self.nodes.get(name).cloned().ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        self.record_node_event(index, now_ms, name, "node is down: it missed its heartbeats".to_owned());
        Ok(CommandOutput::Node(node))
    }

    /// A down node's agent heartbeats again and holds nothing that was
    /// placed elsewhere: it is ready again, after a hold if it flaps.
    pub(super) fn node_recovered(
        &mut self,
        index: u64,
        name: &str,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status != NodeStatus::Down {
            return Ok(CommandOutput::Node(node.clone()));
        }
        node.status = NodeStatus::Ready;
        node.ready_index = index;
        node.recent_downs_ms.retain(|at| now_ms.saturating_sub(*at) < FLAP_WINDOW_MS);
        let flapping = node.recent_downs_ms.len() >= FLAPS_TO_HOLD;
        let message = if flapping {
            node.eligible_at_ms = now_ms + FLAP_HOLD_MS;
            format!(
                "node is ready again, but went down {} times in {} minutes: no new work for {} s",
                node.recent_downs_ms.len(),
                FLAP_WINDOW_MS / 60_000,
                FLAP_HOLD_MS / 1000
            )
        } else {
            "node is ready again".to_owned()
        };
        let node = node.clone();
        self.record_node_event(index, now_ms, name, message);
        Ok(CommandOutput::Node(node))
    }

    pub(super) fn record_node_events(
        &mut self,
        index: u64,
        node: &str,
        messages: Vec<String>,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        if !self.nodes.contains_key(node) {
            return Err(Rejection::NodeNotFound(node.to_owned()));
        }
        let count = messages.len() as u32;
        for message in messages.into_iter().take(MAX_EVENTS_PER_REPORT) {
            self.record_node_event(index, now_ms, node, message);
        }
        Ok(CommandOutput::AllocationsUpdated(count))
    }

    fn record_node_event(&mut self, index: u64, now_ms: u64, node: &str, message: String) {
        self.record(Event { index, at_ms: now_ms, workload: None, node: Some(node.to_owned()), message });
    }
}
