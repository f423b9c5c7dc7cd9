//! Each registered node's status as this server applied it, kept beside the
//! state for the one hot path that needs nothing else: an agent's
//! heartbeat, ten thousand of them every few seconds. Reading it never
//! waits for the state's lock, which the Raft thread takes to apply and a
//! reconciler pass holds to read; a heartbeat handler that waited there
//! held a runtime worker with it, and with two workers a long pass stopped
//! every connection's heartbeats until the agents gave up on them.
//!
//! The Raft thread keeps it current from the change journal (the nodes
//! each applied command touched) while it still holds the write lock, so
//! the directory and the state agree at every applied index.

use std::collections::HashMap;
use std::sync::Mutex;

use flotilla_api::NodeStatus;

use crate::state::ClusterState;

#[derive(Debug, Default)]
pub(crate) struct NodeDirectory {
    inner: Mutex<Directory>,
}

#[derive(Debug, Default)]
struct Directory {
    statuses: HashMap<String, NodeStatus>,
    /// The journal's latest index this directory has taken in.
    through: u64,
}

impl NodeDirectory {
    /// A directory of every node in `state`.
    pub(super) fn of(state: &ClusterState) -> Self {
        let directory = NodeDirectory::default();
        directory.rebuild(state);
        directory
    }

    pub(crate) fn status(&self, node: &str) -> Option<NodeStatus> {
        self.lock().statuses.get(node).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().statuses.len()
    }

    /// Takes in what the commands applied since the last call did to
    /// nodes; everything again if the journal forgot that far back.
    pub(super) fn follow(&self, state: &ClusterState) {
        let mut directory = self.lock();
        let journal = state.journal();
        let Some(touched) = journal.nodes_after(directory.through) else {
            drop(directory);
            self.rebuild(state);
            return;
        };
        for name in touched {
            match state.node(name) {
                Some(node) => directory.statuses.insert(name.to_owned(), node.status),
                None => directory.statuses.remove(name),
            };
        }
        directory.through = journal.latest();
    }

    /// Every node again: at start, after a snapshot replaced the state, or
    /// when the journal no longer reaches back to what was taken in.
    pub(super) fn rebuild(&self, state: &ClusterState) {
        let statuses = state.nodes().map(|node| (node.name.clone(), node.status)).collect();
        *self.lock() = Directory { statuses, through: state.journal().latest() };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::{CpuMillis, MemoryBytes, NodeRegistration};

    use super::*;
    use crate::state::Command;

    fn register(state: &mut ClusterState, index: u64, name: &str) {
        let registration = NodeRegistration {
            name: name.into(),
            address: String::new(),
            cpu: CpuMillis(1000),
            memory: MemoryBytes(1 << 30),
            labels: BTreeMap::new(),
            drivers: Default::default(),
            host_volumes: Default::default(),
        };
        state.apply(index, Command::RegisterNode { registration }).expect("register");
    }

    #[test]
    fn the_directory_follows_registrations_drains_downs_and_returns() {
        let mut state = ClusterState::default();
        register(&mut state, 1, "a");
        let directory = NodeDirectory::of(&state);
        assert_eq!((directory.status("a"), directory.len()), (Some(NodeStatus::Ready), 1));

        register(&mut state, 2, "b");
        let drain = Command::SetNodeStatus { name: "a".into(), status: NodeStatus::Draining, now_ms: 3 };
        state.apply(3, drain).expect("drain");
        directory.follow(&state);
        assert_eq!(directory.status("a"), Some(NodeStatus::Draining));
        assert_eq!((directory.status("b"), directory.len()), (Some(NodeStatus::Ready), 2));

        let ready_index = state.node("b").expect("b").ready_index;
        state.apply(4, Command::MarkNodeDown { name: "b".into(), ready_index, now_ms: 4 }).expect("down");
        directory.follow(&state);
        assert_eq!(directory.status("b"), Some(NodeStatus::Down));
        state.apply(5, Command::NodeRecovered { name: "b".into(), now_ms: 5 }).expect("back");
        directory.follow(&state);
        assert_eq!(directory.status("b"), Some(NodeStatus::Ready));
        assert_eq!(directory.status("c"), None, "never registered");
    }

    #[test]
    fn a_directory_behind_a_forgetful_journal_reads_every_node_again() {
        let mut state = ClusterState::default();
        register(&mut state, 1, "a");
        let directory = NodeDirectory::of(&state);
        let drain = Command::SetNodeStatus { name: "a".into(), status: NodeStatus::Draining, now_ms: 2 };
        state.apply(2, drain).expect("drain");
        // A hundred thousand and more nodes touched since: the journal
        // keeps only the latest, and the drain of `a` is among the dropped.
        for index in 3..100_010 {
            register(&mut state, index, &format!("n{}", index % 10));
        }
        directory.follow(&state);
        assert_eq!(directory.status("a"), Some(NodeStatus::Draining));
        assert_eq!(directory.len(), 11);
    }
}
