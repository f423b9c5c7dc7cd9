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
    /// Handles one ready. Its log change is made in memory at once and
    /// written by the persist thread; the messages that may only leave once
    /// it is durable (a follower's acknowledgement, a vote) wait for that
    /// in `persisting`.
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
        let with_snapshot = !ready.snapshot().is_empty();
        if with_snapshot {
            // The snapshot replaces the log that the writes in flight extend.
            self.wait_until_persisted()?;
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for read in ready.take_read_states() {
            let id = read.request_ctx.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0);
            self.reads.confirm(id, read.index);
        }
        self.apply_committed(ready.take_committed_entries())?;
        if let Some(last) = ready.entries().last()
            && self.raw.raft.state == StateRole::Leader
        {
            self.commit_clock.appended(last.index, Instant::now());
        }
        let number = ready.number();
        let held = ready.take_persisted_messages();
        if with_snapshot {
            // Rare: written here, so that Raft learns of the snapshot and
            // the entries after it together.
            self.raw.mut_store().persist(ready.entries(), ready.hs())?;
            self.raw.advance_append_async(ready);
            self.raw.on_persist_ready(number);
            self.transport.send(held);
        } else if ready.must_sync() {
            let write = self.raw.mut_store().append(ready.entries(), ready.hs());
            self.persister.submit(number, write)?;
            self.persisting.push_back((number, held));
            self.raw.advance_append_async(ready);
        } else {
            // Nothing to write but, perhaps, a newer commit index, which
            // need not be durable: it reaches disk with the next write, and
            // a server that lost it learns it again from the leader.
            if let Some(hs) = ready.hs() {
                self.raw.mut_store().set_commit(hs.commit);
            }
            self.raw.advance_append_async(ready);
            if self.persisting.is_empty() {
                self.raw.on_persist_ready(number);
                self.transport.send(held);
            } else if !held.is_empty() {
                // Behind writes still in flight, which these messages may
                // speak for.
                self.persisting.push_back((self.persister.submitted(), held));
            }
        }
        self.applied_moved();
        self.time_commits();
        Ok(())
    }

    /// Tells Raft what the persist thread has made durable since the last
    /// turn, and sends the messages that waited for it.
    pub(super) fn take_persisted(&mut self) -> Result<(), StorageError> {
        let durable = self.persister.durable()?;
        self.persisted(durable);
        Ok(())
    }

    /// Waits for every write handed to the persist thread: before the log
    /// is replaced or compacted under it.
    pub(super) fn wait_until_persisted(&mut self) -> Result<(), StorageError> {
        let durable = self.persister.wait_for_all()?;
        self.persisted(durable);
        Ok(())
    }

    fn persisted(&mut self, durable: u64) {
        if self.persisting.front().is_none_or(|(number, _)| *number > durable) {
            return;
        }
        self.raw.on_persist_ready(durable);
        while let Some((number, _)) = self.persisting.front()
            && *number <= durable
        {
            if let Some((_, messages)) = self.persisting.pop_front()
                && !messages.is_empty()
            {
                self.transport.send(messages);
            }
        }
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
