//! On the leader, when each batch of entries was appended to its log, so
//! that their commit by a majority can be timed (`raft_commit_seconds`):
//! the replication and the followers' fsyncs that every write waits for.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most this many batches are remembered: a leader that cannot commit
/// (cut off from its followers) stops timing rather than growing.
const MAX_BATCHES: usize = 65_536;

#[derive(Debug, Default)]
pub(super) struct CommitClock {
    /// The last index of each appended batch and when it was appended, oldest first.
    appended: VecDeque<(u64, Instant)>,
}

impl CommitClock {
    pub(super) fn appended(&mut self, last_index: u64, at: Instant) {
        if self.appended.len() < MAX_BATCHES {
            self.appended.push_back((last_index, at));
        }
    }

    /// How long each batch now committed waited, oldest first.
    pub(super) fn committed(&mut self, commit: u64, now: Instant) -> Vec<Duration> {
        let mut waits = Vec::new();
        while let Some((index, at)) = self.appended.front().copied() {
            if index > commit {
                break;
            }
            self.appended.pop_front();
            waits.push(now.duration_since(at));
        }
        waits
    }

    /// Forgets everything: this server no longer leads, and a batch it
    /// appended may never commit.
    pub(super) fn clear(&mut self) {
        self.appended.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_batch_is_timed_once_when_its_last_entry_commits() {
        let start = Instant::now();
        let mut clock = CommitClock::default();
        clock.appended(5, start);
        clock.appended(9, start + Duration::from_millis(2));
        assert!(clock.committed(4, start).is_empty(), "nothing whole committed yet");
        let later = start + Duration::from_millis(10);
        assert_eq!(clock.committed(7, later), vec![Duration::from_millis(10)]);
        assert_eq!(clock.committed(9, later), vec![Duration::from_millis(8)]);
        assert!(clock.committed(20, later).is_empty(), "never timed twice");
    }

    #[test]
    fn a_deposed_leader_forgets_what_may_never_commit() {
        let mut clock = CommitClock::default();
        clock.appended(3, Instant::now());
        clock.clear();
        assert!(clock.committed(3, Instant::now()).is_empty());
    }
}
