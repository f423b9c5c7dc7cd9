//! Handling a `Ready`: what Raft asks of this server after each turn
//! (messages to send, entries to persist, entries to apply), in the order
//! raft-rs requires, and what the leader learns from it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use raft::StateRole;

use super::error::RaftError;
use super::node::Node;
use super::storage::StorageError;
use crate::metrics::ServerMetrics;

impl Node {
    pub(super) fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(soft) = ready.ss() {
            self.on_leader_seen(soft.leader_id);
        }
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for read in ready.take_read_states() {
            let id = read.request_ctx.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0);
            self.reads.confirm(id, read.index);
        }
        self.apply_committed(ready.take_committed_entries())?;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            let started = Instant::now();
            self.raw.mut_store().persist(ready.entries(), ready.hs())?;
            ServerMetrics::observe(&self.published.metrics.raft_persist_seconds, started.elapsed());
        }
        if let Some(last) = ready.entries().last()
            && self.raw.raft.state == StateRole::Leader
        {
            self.commit_clock.appended(last.index, Instant::now());
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply_committed(light.take_committed_entries())?;
        self.applied_moved();
        self.time_commits();
        Ok(())
    }

    /// Records how long the leader's newly committed batches took to commit.
    fn time_commits(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.commit_clock.clear();
            return;
        }
        for waited in self.commit_clock.committed(self.raw.raft.raft_log.committed, Instant::now()) {
            ServerMetrics::observe(&self.published.metrics.raft_commit_seconds, waited);
        }
    }

    /// Tells Raft, blocking queries and waiting reads how far this server
    /// has applied.
    pub(super) fn applied_moved(&mut self) {
        self.raw.advance_apply_to(self.applied);
        if *self.published.applied.borrow() != self.applied {
            self.published.applied.send_replace(self.applied);
        }
        self.reads.answer_applied(self.applied);
    }

    pub(super) fn on_leader_seen(&mut self, leader: u64) {
        if leader == self.leader {
            return;
        }
        tracing::info!(previous = self.leader, leader, term = self.raw.raft.term, "leader changed");
        self.published.metrics.raft_leader_changes.inc();
        if self.leader != raft::INVALID_ID {
            let error = RaftError::LeaderChanged;
            self.proposals.fail_all(&error);
            self.membership.fail_all(&error);
            self.reads.fail_unconfirmed(&error);
        }
        self.leader = leader;
        self.published.leader.store(leader, Ordering::Relaxed);
    }
}
