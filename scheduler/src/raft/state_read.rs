//! A read of the replicated state that says so when it holds the state
//! long. The Raft thread applies under the write lock: it waits a little
//! for the readers already in (holding back every reader after them), then
//! leaves its entries for a later turn, so a reader that keeps the state
//! for a second keeps this server's applies, and the answers to its
//! writes, back for a second. The warning names the reader's line.

use parking_lot::RwLockReadGuard;
use std::ops::Deref;
use std::panic::Location;
use std::time::{Duration, Instant};

use crate::state::ClusterState;

/// Half a heartbeat interval: a read held longer delays applies enough to
/// be worth finding.
const SLOW_READ: Duration = Duration::from_millis(50);

/// The applied state, read-locked until this is dropped.
pub struct StateRead<'a> {
    guard: RwLockReadGuard<'a, ClusterState>,
    /// When the lock was taken, to tell how long it was held.
    since: Instant,
    /// Whose read it is, for the warning.
    caller: &'static Location<'static>,
}

impl<'a> StateRead<'a> {
    pub(super) fn new(guard: RwLockReadGuard<'a, ClusterState>, caller: &'static Location<'static>) -> Self {
        StateRead { guard, since: Instant::now(), caller }
    }
}

impl Deref for StateRead<'_> {
    type Target = ClusterState;

    fn deref(&self) -> &ClusterState {
        &self.guard
    }
}

impl Drop for StateRead<'_> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        if held > SLOW_READ {
            tracing::warn!(
                reader = %self.caller,
                held_ms = held.as_millis() as u64,
                "a read of the state held it long enough to delay applying entries"
            );
        }
    }
}
