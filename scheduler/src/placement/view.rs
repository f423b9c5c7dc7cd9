//! The placement's working copy of the cluster: each node's free capacity,
//! ports and replica counts, updated as a plan places replicas so that one
//! plan never double-books a node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use flotilla_api::spec::{Driver, Protocol};
use flotilla_api::{NodeStatus, WorkloadName};

use super::feasibility::Request;

#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub status: NodeStatus,
    /// Back from flapping (down and up again, repeatedly) and not yet
    /// trusted with new work.
    pub held: bool,
    pub drivers: BTreeSet<Driver>,
    pub labels: BTreeMap<String, String>,
    pub capacity_cpu: u64,
    pub capacity_memory: u64,
    pub used_cpu: u64,
    pub used_memory: u64,
    /// Fixed host ports bound by live allocations.
    pub ports: HashSet<(u16, Protocol)>,
    /// Live replicas per workload, for anti-affinity.
    pub workload_counts: HashMap<WorkloadName, u32>,
    /// Host volumes its agent offers, by name: whether read-only.
    pub host_volumes: BTreeMap<String, bool>,
}

impl NodeView {
    /// The fuller of CPU and memory after adding `cpu` and `memory`, in 0..=1.
    pub fn utilisation_with(&self, cpu: u64, memory: u64) -> f64 {
        let fraction = |used: u64, capacity: u64| {
            if capacity == 0 { 1.0 } else { used as f64 / capacity as f64 }
        };
        fraction(self.used_cpu + cpu, self.capacity_cpu)
            .max(fraction(self.used_memory + memory, self.capacity_memory))
    }

    /// Reserves a replica on this node.
    pub fn assign(&mut self, workload: &WorkloadName, request: &Request) {
        self.book(workload, request.cpu, request.memory, request.host_ports.iter().copied());
    }

    /// Books a replica of `workload` taking `cpu`, `memory` and host `ports`.
    pub fn book(
        &mut self,
        workload: &WorkloadName,
        cpu: u64,
        memory: u64,
        ports: impl IntoIterator<Item = (u16, Protocol)>,
    ) {
        self.used_cpu += cpu;
        self.used_memory += memory;
        self.ports.extend(ports);
        *self.workload_counts.entry(workload.clone()).or_default() += 1;
    }

    /// A replica of `workload` is being stopped here: it no longer counts
    /// for anti-affinity, but its CPU, memory and ports stay booked until
    /// its agent reports it gone (a replacement must not race it for a port).
    pub fn stop_replica(&mut self, workload: &WorkloadName) {
        if let Some(count) = self.workload_counts.get_mut(workload) {
            *count = count.saturating_sub(1);
        }
    }
}

/// All nodes, in a stable order (by name), with an index by name.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    index: HashMap<String, usize>,
    /// The draining nodes, usually none: a replica on one counts as old,
    /// and asking the state about the node of each of a million replicas
    /// (a map of 10,000 names) was a quarter of the leader's time.
    draining: HashSet<String>,
}

impl ClusterView {
    pub fn new(nodes: Vec<NodeView>) -> Self {
        let mut view = ClusterView::default();
        view.refresh(nodes, &BTreeSet::new());
        view
    }

    /// Whether the node of this name is draining.
    pub fn is_draining(&self, name: &str) -> bool {
        !self.draining.is_empty() && self.draining.contains(name)
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeView> {
        self.position(name).map(|i| &mut self.nodes[i])
    }

    /// Puts each of `changed` in place of the view of that name, or in its
    /// place by name if there was none, and drops the views of `gone`
    /// (a view kept from pass to pass is refreshed where nodes changed).
    /// Nodes that came or went cost one sort and one re-index for all of
    /// them: re-indexing per node made a pass after 10,000 registrations
    /// hold the state for 2.6 s.
    pub fn refresh(&mut self, changed: impl IntoIterator<Item = NodeView>, gone: &BTreeSet<String>) {
        let mut reshaped = false;
        for node in changed {
            if node.status == NodeStatus::Draining {
                self.draining.insert(node.name.clone());
            } else {
                self.draining.remove(&node.name);
            }
            match self.position(&node.name) {
                Some(i) => self.nodes[i] = node,
                None => {
                    self.index.insert(node.name.clone(), self.nodes.len());
                    self.nodes.push(node);
                    reshaped = true;
                }
            }
        }
        if gone.iter().any(|name| self.index.contains_key(name)) {
            self.nodes.retain(|n| !gone.contains(&n.name));
            self.draining.retain(|name| !gone.contains(name));
            reshaped = true;
        }
        if reshaped {
            self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        self.index = self.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, used_cpu: u64) -> NodeView {
        NodeView {
            name: name.to_owned(),
            status: NodeStatus::Ready,
            held: false,
            drivers: BTreeSet::new(),
            labels: BTreeMap::new(),
            capacity_cpu: 1000,
            capacity_memory: 1 << 30,
            used_cpu,
            used_memory: 0,
            ports: HashSet::new(),
            workload_counts: HashMap::new(),
            host_volumes: BTreeMap::new(),
        }
    }

    #[test]
    fn refreshes_keep_nodes_in_name_order_and_the_index_true() {
        let mut view = ClusterView::new(vec![node("b", 0), node("d", 0)]);
        let gone: BTreeSet<String> = ["b".to_owned(), "missing".to_owned()].into();
        view.refresh([node("c", 0), node("a", 0), node("d", 500)], &gone);
        let names: Vec<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "d"]);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(view.position(name), Some(i));
        }
        assert_eq!(view.node_mut("d").map(|n| n.used_cpu), Some(500), "replaced, not added");
        assert_eq!(view.position("b"), None);
        let draining = NodeView { status: NodeStatus::Draining, ..node("c", 0) };
        view.refresh([draining], &BTreeSet::new());
        assert!(view.is_draining("c") && !view.is_draining("a"), "a refresh sees a drain");
        view.refresh([node("c", 0)], &BTreeSet::new());
        assert!(!view.is_draining("c"), "and its end");
        view.refresh([node("e", 0), node("e", 700)], &BTreeSet::new());
        assert_eq!(view.nodes.len(), 4, "one view per name, however often it comes");
        assert_eq!(view.node_mut("e").map(|n| n.used_cpu), Some(700), "the latest view");
        view.refresh([node("c", 100)], &BTreeSet::new());
        assert_eq!(view.position("e"), Some(3), "a replacement keeps the order");
    }
}
