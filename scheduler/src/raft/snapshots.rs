//! Snapshots: installing one sent by the leader, and taking one of the
//! applied state to compact the log.

use raft::Storage as _;
use raft::eraftpb::Snapshot;

use super::node::{Node, corrupt_entry};
use super::storage::StorageError;
use crate::state::ClusterState;

/// Entries applied since the last snapshot before the log's size alone
/// calls for another.
const MIN_ENTRIES_BETWEEN_SNAPSHOTS: u64 = 16;

impl Node {
    pub(super) fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let index = snapshot.get_metadata().index;
        let mut restored: ClusterState = serde_json::from_slice(&snapshot.data)
            .map_err(|e| corrupt_entry(index, format!("snapshot: {e}")))?;
        restored.restored_at(index);
        self.raw.mut_store().install_snapshot(snapshot)?;
        tracing::info!(index, "installed snapshot from leader");
        self.transport.learn_members(restored.members());
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = restored;
        self.applied = index;
        self.node_watches.publish_all(index);
        Ok(())
    }

    pub(super) fn maybe_compact(&mut self) -> Result<(), StorageError> {
        let every = self.config.snapshot_every;
        let wanted = self.raw.store().take_snapshot_request();
        let since = self.applied.saturating_sub(self.raw.store().snapshot_index());
        // Big entries (plans of thousands of placements) bound the log by
        // size before its length: a few entries past the last compaction,
        // so that a tail that stays big does not compact on every one.
        let too_big = self.raw.store().log_bytes() > self.config.snapshot_bytes
            && since >= MIN_ENTRIES_BETWEEN_SNAPSHOTS;
        if since < every && !too_big && !(wanted && since > 0) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let index = self.applied;
        let term = self.raw.store().term(index).map_err(|e| corrupt_entry(index, e))?;
        let data = serde_json::to_vec(&*self.state()).map_err(|e| corrupt_entry(index, e))?;
        let bytes = data.len();
        let serialized_ms = started.elapsed().as_millis() as u64;
        let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let mut keep_from = index.saturating_sub(every / 2) + 1;
        if too_big {
            keep_from = keep_from.max(self.raw.store().keep_within(index, self.config.snapshot_bytes / 2));
        }
        self.raw.mut_store().compact(snapshot, keep_from)?;
        let total_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            index,
            keep_from,
            bytes,
            serialized_ms,
            total_ms,
            "took snapshot and compacted the log"
        );
        Ok(())
    }
}
