//! The figures the state keeps about its allocations so that reading them
//! costs no scan: each workload's replicas by version, and what each node
//! books. Every place that changes an allocation's workload, version,
//! node, state, stopping flag, restarts or ports takes it out of the
//! tallies before the change and puts it back after; one pair of calls
//! keeps every tally in step.

use flotilla_api::Allocation;

use super::node_bookings::NodeBookings;
use super::replica_counts::ReplicaCounts;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tallies {
    /// For a workload's status and a plan's check of its replica count.
    pub replicas: ReplicaCounts,
    /// For a node's placement view.
    pub bookings: NodeBookings,
}

impl Tallies {
    /// Tallies every allocation afresh, for a restored state.
    pub fn of<'a>(allocations: impl Iterator<Item = &'a Allocation>) -> Self {
        let mut tallies = Tallies::default();
        for allocation in allocations {
            tallies.add(allocation);
        }
        tallies
    }

    /// Counts `allocation` as it is now.
    pub fn add(&mut self, allocation: &Allocation) {
        self.replicas.add(allocation);
        self.bookings.add(allocation);
    }

    /// Stops counting `allocation` as it is now: called before it changes
    /// (and `add` after) or goes.
    pub fn remove(&mut self, allocation: &Allocation) {
        self.replicas.remove(allocation);
        self.bookings.remove(allocation);
    }

    /// Whether these are the tallies of `other`'s allocations too.
    #[cfg(test)]
    pub fn same_as(&self, other: &Tallies) -> bool {
        self.replicas.same_as(&other.replicas) && self.bookings.same_as(&other.bookings)
    }
}
