//! A change to the Raft log on disk, described apart from the write that
//! makes it durable: the Raft thread makes the change in memory at once
//! (raft-rs reads entries from storage before they are durable) and the
//! persist thread writes it, many changes to one transaction.

use std::path::PathBuf;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use redb::Database;

use super::checksum::frame;
use super::storage::{HARD_STATE_KEY, LOG, META, StorageError};

/// What one ready changed in the log and hard state.
#[derive(Debug)]
pub(super) struct LogWrite {
    /// Entries on disk from the first to the last index here were replaced
    /// (a new leader's log won a conflict) and go before `entries` are written.
    pub(super) stale: Option<(u64, u64)>,
    pub(super) entries: Vec<Entry>,
    /// The hard state as it stands after this change.
    pub(super) hard_state: HardState,
}

/// Writes log changes into the Raft file; shared by the Raft thread (for
/// writes that must be durable before it goes on) and the persist thread.
#[derive(Clone)]
pub(super) struct LogWriter {
    pub(super) db: Arc<Database>,
    pub(super) path: PathBuf,
}

impl LogWriter {
    /// A write that commits in two phases: the new state and its commit
    /// slot are fsynced before the slot becomes the one in force. A crash
    /// mid-commit then leaves the last commit whole, and a commit torn
    /// after it was made (and perhaps acknowledged to the leader) is
    /// refused as corrupted on opening. With one phase, redb would instead
    /// fall back to the commit before it without a word: a server that
    /// forgot entries and votes it had acknowledged, which Raft's safety
    /// does not survive.
    pub(super) fn begin(&self) -> Result<redb::WriteTransaction, StorageError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_two_phase_commit(true);
        Ok(txn)
    }

    pub(super) fn error(&self, error: impl std::fmt::Display) -> StorageError {
        StorageError::Write { path: self.path.clone(), reason: error.to_string() }
    }

    /// Makes `writes` durable, in order, in one transaction: one commit's
    /// fsyncs for all of them.
    pub(super) fn write<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a LogWrite>,
    ) -> Result<(), StorageError> {
        let txn = self.begin()?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| self.error(e))?;
            let mut hard_state = None;
            for write in writes {
                if let Some((first, last)) = write.stale {
                    for stale in first..=last {
                        log.remove(stale).map_err(|e| self.error(e))?;
                    }
                }
                for entry in &write.entries {
                    let bytes = entry.write_to_bytes().map_err(|e| self.error(e))?;
                    log.insert(entry.index, frame(&bytes).as_slice()).map_err(|e| self.error(e))?;
                }
                hard_state = Some(&write.hard_state);
            }
            if let Some(hard_state) = hard_state {
                let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
                let hs = hard_state.write_to_bytes().map_err(|e| self.error(e))?;
                meta.insert(HARD_STATE_KEY, frame(&hs).as_slice()).map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }
}
