//! A change to the Raft log on disk, described apart from the write that
//! makes it durable: the Raft thread makes the change in memory at once
//! (raft-rs reads entries from storage before they are durable) and the
//! persist thread writes it, many changes to one record of the log
//! (`wal.rs`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use raft::eraftpb::{Entry, HardState};
use redb::Database;

use super::storage::StorageError;
use super::wal::Wal;

/// What one ready changed in the log and hard state.
#[derive(Debug)]
pub(super) struct LogWrite {
    /// Entries from the first one's index on; any already on disk from
    /// that index (a new leader's log won a conflict) are replaced, which
    /// the log's replay does when it meets them.
    pub(super) entries: Vec<Entry>,
    /// The hard state as it stands after this change.
    pub(super) hard_state: HardState,
}

/// Writes log changes to the log's segments, and what changes rarely to
/// the redb file; shared by the Raft thread (for writes that must be
/// durable before it goes on) and the persist thread.
#[derive(Clone)]
pub(super) struct LogWriter {
    pub(super) db: Arc<Database>,
    pub(super) path: PathBuf,
    pub(super) wal: Arc<Mutex<Wal>>,
}

impl LogWriter {
    /// A redb write that commits in two phases: the new state and its
    /// commit slot are fsynced before the slot becomes the one in force. A
    /// crash mid-commit then leaves the last commit whole, and a commit
    /// torn after it was made is refused as corrupted on opening. With one
    /// phase, redb would instead fall back to the commit before it without
    /// a word: a server that forgot a snapshot it had told the leader of.
    pub(super) fn begin(&self) -> Result<redb::WriteTransaction, StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_two_phase_commit(true);
        Ok(txn)
    }

    pub(super) fn error(&self, error: impl std::fmt::Display) -> StorageError {
        StorageError::Write { path: self.path.clone(), reason: error.to_string() }
    }

    /// The log's segments; the lock is never contended for long (the Raft
    /// thread takes it only once the persist thread has nothing in flight).
    pub(super) fn wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `writes` durable, in order, with one `fdatasync` for all of them.
    pub(super) fn write<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a LogWrite>,
    ) -> Result<(), StorageError> {
        self.wal().append(writes)
    }
}
