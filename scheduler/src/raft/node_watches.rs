//! Per-node change notifications for agents' long-polls: the Raft thread
//! publishes the nodes each batch of applied entries changed (the state's
//! `NodeChanges`), and only the long-polls of those nodes wake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::state::ClusterState;

/// One watch per node some agent has waited on, holding its latest mark.
#[derive(Default)]
pub(crate) struct NodeWatches {
    /// Locked around reading a mark from the state and subscribing, and
    /// around publishing: a change applied while an agent subscribes is
    /// either read by it or published to it, never lost between the two.
    senders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl NodeWatches {
    /// A receiver of `node`'s marks, starting at its mark in `state` now.
    pub(super) fn subscribe(&self, node: &str, state: &RwLock<ClusterState>) -> watch::Receiver<u64> {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = senders.get(node) {
            return sender.subscribe();
        }
        let mark = state.read().node_changes().of(node);
        let (sender, receiver) = watch::channel(mark);
        senders.insert(node.to_owned(), sender);
        receiver
    }

    /// Wakes the waiters of the nodes changed. A watch stays when no one
    /// holds it (between an agent's long-polls, nearly always): the next
    /// long-poll then subscribes without reading the state, whose lock it
    /// would wait on, holding the watches' lock and a runtime worker, for
    /// as long as the Raft thread applies. One watch per node that ever
    /// waited: nodes are never removed from the state either.
    pub(super) fn publish(&self, changed: Vec<(String, u64)>) {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        for (node, mark) in changed {
            if let Some(sender) = senders.get(&node) {
                sender.send_replace(mark);
            }
        }
    }

    /// A snapshot replaced the state: every node may have changed.
    pub(super) fn publish_all(&self, index: u64) {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        for sender in senders.values() {
            sender.send_replace(index);
        }
    }

    /// The Raft thread stopped: every waiter learns it now (its watch
    /// closes) instead of waiting out its long-poll, which would hold up
    /// the server's graceful shutdown by as long.
    pub(super) fn close(&self) {
        self.senders.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Shared between the Raft thread and the handle.
pub(crate) type SharedNodeWatches = Arc<NodeWatches>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_learn_at_once_that_the_raft_thread_stopped() {
        let watches = NodeWatches::default();
        let state = RwLock::new(ClusterState::default());
        let mut waiting = watches.subscribe("n1", &state);
        watches.publish(vec![("n1".to_owned(), 7)]);
        waiting.changed().await.expect("a change wakes the waiter");
        assert_eq!(*waiting.borrow(), 7);
        watches.close();
        assert!(waiting.changed().await.is_err(), "a closed watch ends the wait");
    }
}
