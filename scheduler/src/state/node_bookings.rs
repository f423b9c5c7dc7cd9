//! What each node's live allocations hold besides CPU and memory (which
//! the node record keeps): the replicas per workload that anti-affinity
//! ranks by, and the fixed host ports a new replica must not take. Kept in
//! step with the allocations as they change, so that a node's placement
//! view is read from these instead of every allocation on the node: at a
//! million replicas on 10,000 nodes, the leader's reconciler refreshed the
//! views of the thousands of nodes each plan and report touched by reading
//! their allocations, a quarter of the machine's two cores.
//! Derived from the allocations: not serialized, rebuilt on restore.

use std::collections::HashMap;

use flotilla_api::spec::Protocol;
use flotilla_api::{Allocation, WorkloadName};

use super::cluster_state::fixed_ports;

/// One node's bookings. Counts, not sets: two allocations may book the
/// same entry (replicas of a workload; a port held by a replica being
/// stopped and by nothing else), and one of them going must not drop it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeBooking {
    /// Live replicas not being stopped, per workload.
    pub replicas: HashMap<WorkloadName, u32>,
    /// Fixed host ports held by live allocations, stopping ones included
    /// (a replacement must not race a stopping replica for its port).
    pub ports: HashMap<(u16, Protocol), u32>,
}

impl NodeBooking {
    fn is_empty(&self) -> bool {
        self.replicas.is_empty() && self.ports.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct NodeBookings {
    /// By node name; nodes that book nothing are dropped.
    by_node: HashMap<flotilla_api::NodeName, NodeBooking>,
}

/// Bookkeeping, not state: two states are equal whatever their bookings.
impl PartialEq for NodeBookings {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl NodeBookings {
    /// Books what `allocation` holds as it is now.
    pub fn add(&mut self, allocation: &Allocation) {
        if !allocation.state.is_live() {
            return;
        }
        let ports = fixed_ports(allocation);
        if allocation.stopping && ports.is_empty() {
            return;
        }
        let booking = match self.by_node.get_mut(&allocation.node) {
            Some(booking) => booking,
            None => self.by_node.entry(allocation.node.clone()).or_default(),
        };
        if !allocation.stopping {
            *booking.replicas.entry(allocation.workload.clone()).or_default() += 1;
        }
        for port in ports {
            *booking.ports.entry(port).or_default() += 1;
        }
    }

    /// Releases what `allocation` holds as it is now: called before it
    /// changes (and `add` after) or goes.
    pub fn remove(&mut self, allocation: &Allocation) {
        if !allocation.state.is_live() {
            return;
        }
        let Some(booking) = self.by_node.get_mut(&allocation.node) else { return };
        if !allocation.stopping {
            release(&mut booking.replicas, &allocation.workload);
        }
        for port in fixed_ports(allocation) {
            release(&mut booking.ports, &port);
        }
        if booking.is_empty() {
            self.by_node.remove(&allocation.node);
        }
    }

    /// What the node of this name books; `None` when nothing.
    pub fn of_node(&self, name: &str) -> Option<&NodeBooking> {
        self.by_node.get(name)
    }

    /// Whether these are the bookings of `other`'s allocations too, for
    /// tests that hold the kept bookings against booking afresh.
    #[cfg(test)]
    pub fn same_as(&self, other: &NodeBookings) -> bool {
        self.by_node == other.by_node
    }
}

/// One fewer of `key`, dropping it at none.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}
