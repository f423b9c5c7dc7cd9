//! Requests waiting on the Raft thread for something to happen (an entry to
//! apply, a read index to be confirmed), each with a deadline, so that a
//! caller never waits longer than the request timeout.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::oneshot;

use super::error::RaftError;

/// Where a request's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

struct Waiting<T> {
    reply: Reply<T>,
    deadline: Instant,
}

/// Waiting requests by request id.
pub(super) struct Pending<T> {
    waiting: HashMap<u64, Waiting<T>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending { waiting: HashMap::new() }
    }
}

impl<T> Pending<T> {
    pub(super) fn insert(&mut self, id: u64, reply: Reply<T>, deadline: Instant) {
        self.waiting.insert(id, Waiting { reply, deadline });
    }

    /// Answers request `id`, if it still waits; false when it does not.
    pub(super) fn answer(&mut self, id: u64, result: Result<T, RaftError>) -> bool {
        match self.waiting.remove(&id) {
            Some(waiting) => {
                let _ = waiting.reply.send(result);
                true
            }
            None => false,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Fails every request whose deadline has passed.
    pub(super) fn expire(&mut self, now: Instant, error: &RaftError) {
        let late: Vec<u64> =
            self.waiting.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            self.answer(id, Err(error.clone()));
        }
    }

    pub(super) fn fail_all(&mut self, error: &RaftError) {
        for (_, waiting) in self.waiting.drain() {
            let _ = waiting.reply.send(Err(error.clone()));
        }
    }
}
