//! Where one turn of the Raft loop spends its time. A turn longer than a
//! heartbeat interval delays the leader's heartbeats, and one longer than
//! an election timeout costs an election no fault caused; etcd warns "apply
//! request took too long" for the same reason. The parts are what can
//! stall: inputs (proposals decoded, peer messages stepped), waiting for
//! the state's write lock behind readers, applying, and the rest of a
//! ready (sending, handing writes to the persist thread, snapshots).

use std::time::{Duration, Instant};

/// The parts of the turn under way.
#[derive(Debug)]
pub(super) struct TurnClock {
    /// When the turn began: after the wait for input, which is idle time.
    started: Instant,
    /// Handling the inputs that woke the loop.
    pub(super) inputs: Duration,
    /// Waiting for the state's write lock while readers held it.
    pub(super) state_lock: Duration,
    /// Readers held the state past the wait: the turn applies nothing
    /// more and goes on to tick and send.
    pub(super) lock_refused: bool,
    /// Applying committed entries, lock held.
    pub(super) apply: Duration,
    /// How many entries were applied: a long apply of one entry is a big
    /// command, of many a backlog.
    pub(super) applied_entries: usize,
}

impl TurnClock {
    pub(super) fn start(now: Instant) -> Self {
        TurnClock {
            started: now,
            inputs: Duration::ZERO,
            state_lock: Duration::ZERO,
            lock_refused: false,
            apply: Duration::ZERO,
            applied_entries: 0,
        }
    }

    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// Ends the turn: its length, and a warning naming the parts when it
    /// was longer than `budget`.
    pub(super) fn finish(&self, now: Instant, budget: Duration) -> Duration {
        let took = now.saturating_duration_since(self.started);
        if took > budget {
            let rest = took.saturating_sub(self.inputs + self.state_lock + self.apply);
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                inputs_ms = self.inputs.as_millis() as u64,
                state_lock_ms = self.state_lock.as_millis() as u64,
                apply_ms = self.apply.as_millis() as u64,
                applied_entries = self.applied_entries,
                rest_ms = rest.as_millis() as u64,
                budget_ms = budget.as_millis() as u64,
                "a turn of the Raft loop took longer than a heartbeat interval"
            );
        }
        took
    }
}
