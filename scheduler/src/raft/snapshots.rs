//! Snapshots: installing one sent by the leader, and taking one of the
//! applied state to compact the log.

use raft::Storage as _;
use raft::eraftpb::Snapshot;

use super::node::{Node, corrupt_entry};
use super::storage::StorageError;
use crate::state::ClusterState;

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
        if self.applied < self.raw.store().snapshot_index() + every
            && !(wanted && self.applied > self.raw.store().snapshot_index())
        {
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
        let keep_from = index.saturating_sub(every / 2) + 1;
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
