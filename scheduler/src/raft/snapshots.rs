//! Snapshots: installing one sent by the leader, and taking one of the
//! applied state to compact the log.
//!
//! Taking one is the only work on a Raft server that grows with the whole
//! state (a million allocations serialize to hundreds of megabytes), so it
//! runs on a thread of its own: the Raft thread goes on ticking, sending
//! heartbeats and persisting entries, and only applying waits, so that the
//! state stays at the snapshot's index until the thread has copied it (a
//! copy that shares the allocations; see `ClusterState::snapshot_copy`).

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::Storage as _;
use raft::eraftpb::{Snapshot, SnapshotMetadata};

use super::apply::corrupt_entry;
use super::handle::Input;
use super::node::Node;
use super::storage::StorageError;
use crate::state::ClusterState;

/// Entries applied since the last snapshot before the log's size alone
/// calls for another.
const MIN_ENTRIES_BETWEEN_SNAPSHOTS: u64 = 16;

/// Snapshots up to this size are taken on the count of entries alone: they
/// are written in a few milliseconds.
const SMALL_SNAPSHOT_BYTES: u64 = 4 << 20;

/// What the log and the last snapshot look like when a snapshot may start.
#[derive(Debug, Clone, Copy)]
struct LogSince {
    /// Entries applied since the last snapshot.
    entries: u64,
    /// Bytes of the entries the log holds.
    log_bytes: u64,
    /// The size of the last snapshot's file.
    snapshot_bytes: u64,
    /// Whether Raft asked for a snapshot newer than the last (a follower
    /// that joined since needs one).
    wanted: bool,
}

/// Whether to take a snapshot now, and if so whether the log's size called
/// for it (the compaction then keeps the log within its size). A snapshot
/// writes the whole state, while the count of entries says nothing of what
/// they hold: past `SMALL_SNAPSHOT_BYTES`, the count calls for one only
/// once the log holds as many bytes as the last snapshot, so that writing
/// snapshots costs no more than writing the log (the rule of Ongaro's
/// dissertation, 5.1.1). At a million allocations a snapshot every 10,000
/// small entries took 29 % of the leader's CPU; at 20,000 workloads
/// (13 MB), one every 0.65 s on each server held applies for 100 ms each
/// time, the write p99.
fn snapshot_due(since: LogSince, every: u64, size_bound: u64) -> Option<bool> {
    let for_size = since.log_bytes > size_bound && since.entries >= MIN_ENTRIES_BETWEEN_SNAPSHOTS;
    let worth_writing =
        since.snapshot_bytes <= SMALL_SNAPSHOT_BYTES || since.log_bytes >= since.snapshot_bytes;
    let by_count = since.entries >= every && worth_writing;
    (for_size || by_count || (since.wanted && since.entries > 0)).then_some(for_size)
}

/// A snapshot being written by its thread.
pub(super) struct SnapshotJob {
    /// The snapshot's index, term and membership: the applied state's when
    /// the job began (applies wait until it ends).
    metadata: SnapshotMetadata,
    /// Whether the log's size called for it: the log then keeps a tail
    /// bounded by size as well as by length.
    for_size: bool,
    /// When it began, for the log line that says how long it took.
    started: Instant,
    /// How long the thread took to copy the state, once it has: applies
    /// wait until then. For the log line too.
    copied_in: Option<Duration>,
    /// Joined once it reports, and on shutdown (a half-written file is
    /// removed on the next start, but a finished one should be whole).
    thread: JoinHandle<()>,
}

impl SnapshotJob {
    pub(super) fn holds_applies(&self) -> bool {
        self.copied_in.is_none()
    }

    pub(super) fn release_applies(&mut self, copied_in: Duration) {
        self.copied_in = Some(copied_in);
    }

    pub(super) fn wait(self) {
        if self.thread.join().is_err() {
            tracing::error!(index = self.metadata.index, "the snapshot thread panicked");
        }
    }
}

impl Node {
    pub(super) fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let index = snapshot.get_metadata().index;
        let mut restored: ClusterState = serde_json::from_slice(&snapshot.data)
            .map_err(|e| corrupt_entry(index, format!("snapshot: {e}")))?;
        restored.restored_at(index);
        self.raw.mut_store().install_snapshot(snapshot)?;
        tracing::info!(index, "installed snapshot from leader");
        self.transport.learn_members(restored.members());
        let mut state = self.state.write();
        *state = restored;
        self.published.node_directory.rebuild(&state);
        drop(state);
        // Raft installs a snapshot only past its commit index, so every
        // entry still waiting to be applied is in it.
        self.unapplied.retain(|entry| entry.index > index);
        self.applied = index;
        self.published.node_watches.publish_all(index);
        Ok(())
    }

    /// Starts a snapshot when the log is long or big enough, or when Raft
    /// asked for a newer one (for a follower that joined since the last).
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), StorageError> {
        if self.snapshot_job.is_some() {
            return Ok(());
        }
        let store = self.raw.store();
        let since = LogSince {
            entries: self.applied.saturating_sub(store.snapshot_index()),
            log_bytes: store.log_bytes(),
            snapshot_bytes: store.snapshot_file_bytes(),
            wanted: store.take_snapshot_request(),
        };
        // Big entries (plans of thousands of placements) bound the log by
        // size before its length: a few entries past the last compaction,
        // so that a tail that stays big does not compact on every one.
        let Some(for_size) = snapshot_due(since, self.config.snapshot_every, self.config.snapshot_bytes)
        else {
            return Ok(());
        };
        let index = self.applied;
        let mut metadata = SnapshotMetadata {
            index,
            term: store.term(index).map_err(|e| corrupt_entry(index, e))?,
            ..SnapshotMetadata::default()
        };
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let dir = store.snapshot_dir().clone();
        let term = metadata.term;
        let state = Arc::clone(&self.state);
        let inputs = self.inputs.clone();
        let spawned = std::thread::Builder::new().name("snapshot".into()).spawn(move || {
            // Applies wait for the copy (the snapshot is of the state at
            // `index`), not for the file: see `ClusterState::snapshot_copy`.
            let copying = Instant::now();
            let copy = state.read().snapshot_copy();
            let _ = inputs.send(Input::SnapshotCopied(copying.elapsed()));
            let written =
                dir.write(index, term, |out| serde_json::to_writer(out, &copy).map_err(io::Error::from));
            let _ = inputs.send(Input::SnapshotWritten(written));
        });
        match spawned {
            Ok(thread) => {
                let started = Instant::now();
                self.snapshot_job =
                    Some(SnapshotJob { metadata, for_size, started, copied_in: None, thread });
            }
            // Nothing is lost without it; the next turn tries again.
            Err(error) => tracing::warn!(%error, index, "cannot start the snapshot thread"),
        }
        Ok(())
    }

    /// Once the snapshot thread reports: records the snapshot, compacts the
    /// log and applies what waited. A snapshot that could not be written
    /// stops the server, as any storage failure does.
    pub(super) fn finish_snapshot(&mut self) -> Result<(), StorageError> {
        let Some(written) = self.snapshot_written.take() else { return Ok(()) };
        let Some(job) = self.snapshot_job.take() else { return Ok(()) };
        let (metadata, for_size, started, copied_in) =
            (job.metadata.clone(), job.for_size, job.started, job.copied_in);
        job.wait();
        let file = written?;
        let index = metadata.index;
        let bytes = file.bytes;
        let store = self.raw.store();
        let mut keep_from = index.saturating_sub(self.config.snapshot_every / 2) + 1;
        if for_size {
            keep_from = keep_from.max(store.keep_within(index, self.config.snapshot_bytes / 2));
        }
        // The compaction's transaction writes the hard state as it stands in
        // memory; the writes in flight go first, so that none lands after it.
        self.wait_until_persisted()?;
        self.raw.mut_store().compact(metadata, file, keep_from)?;
        self.published.metrics.raft_snapshots.inc();
        self.published.metrics.raft_snapshot_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let waited = self.unapplied.len();
        self.apply_committed(Vec::new())?;
        self.applied_moved();
        tracing::info!(
            index,
            keep_from,
            bytes,
            applies_waited = waited,
            copy_ms = copied_in.map(|d| d.as_millis() as u64),
            took_ms = started.elapsed().as_millis() as u64,
            "took snapshot and compacted the log"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_by_count_by_size_or_when_asked_and_a_big_state_waits_for_its_log() {
        const MIB: u64 = 1 << 20;
        let since = |entries, log_bytes, snapshot_bytes, wanted| LogSince {
            entries,
            log_bytes,
            snapshot_bytes,
            wanted,
        };
        // (what, log since the last snapshot, due: None, or Some(for size))
        let table = [
            ("few entries", since(9_999, MIB, MIB, false), None),
            ("the count reached", since(10_000, MIB, MIB, false), Some(false)),
            ("the count reached, the last snapshot small", since(10_000, 1, 4 * MIB, false), Some(false)),
            (
                "the count reached, the log smaller than the state",
                since(10_000, 4 * MIB, 13 * MIB, false),
                None,
            ),
            (
                "the count reached, the state big, the log small",
                since(10_000, 175 * MIB, 700 * MIB, false),
                None,
            ),
            (
                "the count reached, the log as big as the state",
                since(10_000, 13 * MIB, 13 * MIB, false),
                Some(false),
            ),
            ("the log past its size bound", since(20, 300 * MIB, 700 * MIB, false), Some(true)),
            ("past the size bound, too few entries", since(15, 300 * MIB, MIB, false), None),
            ("asked for by Raft", since(1, 1, 700 * MIB, true), Some(false)),
            ("asked for, nothing new", since(0, 0, MIB, true), None),
        ];
        for (what, since, due) in table {
            assert_eq!(snapshot_due(since, 10_000, 256 * MIB), due, "{what}");
        }
    }
}
