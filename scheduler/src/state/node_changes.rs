//! For each node, the latest log index at which what its agent is told
//! changed (its allocations, the volumes it is to remove, the secrets its
//! replicas read). An agent's long-poll waits for its own node's mark to
//! pass the index it last saw, so ten thousand waiting agents are not all
//! woken by every write, only the ones a write concerns.
//!
//! An agent's own reports of its allocations do not mark its node: it
//! knows what it reported, and answering each report with the node's whole
//! list again would cost, for a node of a hundred replicas that report one
//! by one, a hundred lists of a hundred.
//!
//! Like the change journal this is derived from the applies, not part of
//! the state's value: a state restored from a snapshot counts every node as
//! changed at the snapshot's index.

use std::collections::HashMap;

use super::cluster_state::ClusterState;

#[derive(Debug, Clone, Default)]
pub struct NodeChanges {
    /// The index of the latest change to each node's agent view.
    marks: HashMap<String, u64>,
    /// A node with no mark of its own last changed here (or earlier): the
    /// index of the snapshot the state was restored from.
    floor: u64,
    /// The index of the command being applied, which every mark takes.
    applying: u64,
    /// Nodes marked since the last `take_recent`, to wake their waiters.
    recent: Vec<String>,
}

/// Bookkeeping, not state: two states are equal whatever their marks.
impl PartialEq for NodeChanges {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl NodeChanges {
    pub(super) fn applying(&mut self, index: u64) {
        self.applying = index;
    }

    pub(super) fn mark(&mut self, node: &str) {
        match self.marks.get_mut(node) {
            Some(mark) if *mark == self.applying => return,
            Some(mark) => *mark = self.applying,
            None => {
                self.marks.insert(node.to_owned(), self.applying);
            }
        }
        self.recent.push(node.to_owned());
    }

    /// The index at which `node`'s agent view last changed.
    pub fn of(&self, node: &str) -> u64 {
        self.marks.get(node).copied().unwrap_or(self.floor)
    }

    /// The nodes marked since the last call, each once, with their marks.
    pub fn take_recent(&mut self) -> Vec<(String, u64)> {
        let mut recent = std::mem::take(&mut self.recent);
        recent.sort_unstable();
        recent.dedup();
        recent
            .into_iter()
            .map(|node| {
                let mark = self.of(&node);
                (node, mark)
            })
            .collect()
    }
}

impl ClusterState {
    /// Counts every node as changed at `index`: the state was restored
    /// from a snapshot taken there, and what changed before is unknown.
    /// What the snapshot does not hold is rebuilt: the tallies, and the
    /// sharing of each node's name by its allocations (read from the file,
    /// each had a copy of its own).
    pub fn restored_at(&mut self, index: u64) {
        self.node_changes = NodeChanges { floor: index, applying: index, ..NodeChanges::default() };
        self.tallies = super::tallies::Tallies::of(self.allocations.values());
        let nodes = &self.nodes;
        self.allocations.for_each_mut(|allocation| {
            if let Some((name, _)) = nodes.get_key_value(allocation.node.as_str()) {
                allocation.node = name.clone();
            }
        });
    }

    pub fn node_changes(&self) -> &NodeChanges {
        &self.node_changes
    }

    pub fn take_recent_node_changes(&mut self) -> Vec<(String, u64)> {
        self.node_changes.take_recent()
    }

    /// Every node's agent view changed (a secret its replicas may read).
    pub(super) fn mark_every_node(&mut self) {
        let names: Vec<flotilla_api::NodeName> = self.nodes.keys().cloned().collect();
        for name in names {
            self.node_changes.mark(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_marked_at_the_index_that_changed_it_and_published_once() {
        let mut changes = NodeChanges::default();
        changes.applying(4);
        changes.mark("a");
        changes.mark("a");
        changes.mark("b");
        changes.applying(6);
        changes.mark("a");
        assert_eq!((changes.of("a"), changes.of("b"), changes.of("c")), (6, 4, 0));
        assert_eq!(changes.take_recent(), [("a".to_owned(), 6), ("b".to_owned(), 4)]);
        assert!(changes.take_recent().is_empty());
    }

    #[test]
    fn a_restored_state_counts_every_node_changed_at_the_snapshot() {
        let mut state = ClusterState::default();
        state.node_changes.applying(3);
        state.node_changes.mark("a");
        state.restored_at(10);
        assert_eq!(state.node_changes().of("a"), 10);
        assert_eq!(state.node_changes().of("never-seen"), 10);
        assert!(state.take_recent_node_changes().is_empty(), "publish_all wakes the waiters instead");
    }
}
