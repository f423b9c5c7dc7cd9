//! Linearizable reads (ReadIndex): a read waits until the leader confirms
//! it still leads and names the commit index of that moment, then until
//! this server has applied up to it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::error::RaftError;
use super::pending::{Pending, Reply};

/// How long a read index request goes unanswered before it is asked again.
const READ_AGAIN_AFTER: Duration = Duration::from_millis(100);

/// Reads waiting on the Raft thread, by request id.
#[derive(Default)]
pub(super) struct Reads {
    /// Waiting for the leader to confirm the read index.
    unconfirmed: Pending<()>,
    /// With a confirmed index, waiting for it to be applied here.
    confirmed: Pending<()>,
    /// The read index each confirmed read waits for.
    indexes: HashMap<u64, u64>,
    /// When each unconfirmed read was last asked for, to ask again.
    asked: HashMap<u64, Instant>,
}

impl Reads {
    /// Read `id` waits for its index; the caller asks Raft for it.
    pub(super) fn wait(&mut self, id: u64, reply: Reply<()>, deadline: Instant) {
        self.unconfirmed.insert(id, reply, deadline);
        self.asked.insert(id, Instant::now());
    }

    /// The leader named `index` for read `id`.
    pub(super) fn confirm(&mut self, id: u64, index: u64) {
        if let Some((reply, deadline)) = self.unconfirmed.take(id) {
            self.confirmed.insert(id, reply, deadline);
            self.indexes.insert(id, index);
        }
    }

    /// Answers every read whose index this server has applied.
    pub(super) fn answer_applied(&mut self, applied: u64) {
        let done: Vec<u64> =
            self.indexes.iter().filter(|(_, index)| **index <= applied).map(|(id, _)| *id).collect();
        for id in done {
            self.indexes.remove(&id);
            self.confirmed.answer(id, Ok(()));
        }
    }

    /// Fails every read past its deadline.
    pub(super) fn expire(&mut self, now: Instant, error: &RaftError) {
        self.unconfirmed.expire(now, error);
        self.confirmed.expire(now, error);
        let confirmed = &self.confirmed;
        self.indexes.retain(|id, _| confirmed.contains(*id));
    }

    /// raft-rs drops a read index request that reaches a leader before it
    /// has committed an entry of its term (right after an election), and
    /// one lost with a message: the reads still unconfirmed after a while,
    /// to ask again, so that they wait for the first commit, not for their
    /// timeout.
    pub(super) fn due_again(&mut self, now: Instant) -> Vec<u64> {
        let unconfirmed = &self.unconfirmed;
        self.asked.retain(|id, _| unconfirmed.contains(*id));
        let again: Vec<u64> = self
            .unconfirmed
            .ids()
            .filter(|id| self.asked.get(id).is_some_and(|at| now.duration_since(*at) >= READ_AGAIN_AFTER))
            .collect();
        for id in &again {
            self.asked.insert(*id, now);
        }
        again
    }

    /// Fails the reads no leader has confirmed (the leader changed).
    pub(super) fn fail_unconfirmed(&mut self, error: &RaftError) {
        self.unconfirmed.fail_all(error);
    }

    pub(super) fn fail_all(&mut self, error: &RaftError) {
        self.unconfirmed.fail_all(error);
        self.confirmed.fail_all(error);
    }
}
