//! Applying committed entries to the replicated state, and answering the
//! proposals and membership changes this server made once theirs apply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};

use super::error::RaftError;
use super::membership::ConfChangeContext;
use super::node::Node;
use super::snapshots::SnapshotJob;
use super::storage::StorageError;
use crate::state::{ClusterState, Envelope};

/// How long one turn of the Raft loop applies entries before it lets the
/// loop tick, send heartbeats and take messages: a fifth of a heartbeat
/// interval. Applying a turn's entries in one go held the leader's
/// heartbeats for up to 770 ms at 200,000 allocations.
const APPLY_BUDGET: Duration = Duration::from_millis(20);

/// How long a turn waits for readers of the state to let go before it
/// leaves its entries for the next turn: a tenth of a heartbeat interval.
/// While it waits new readers queue behind it (the lock is fair), so the
/// readers already in are all it waits for; but one of those can hold the
/// state for a second (a list of every workload at a million
/// allocations), and a Raft thread blocked that long kept the leader's
/// heartbeats back until the followers elected another.
const STATE_WAIT: Duration = Duration::from_millis(10);

pub(super) fn corrupt_entry(index: u64, reason: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupted { path: "raft log".into(), what: format!("entry {index}: {reason}") }
}

impl Node {
    /// Applies committed entries, after those that waited, for as long as
    /// one turn of the loop may: what is left waits for the next turn,
    /// which comes at once. While a snapshot copies the state they all wait,
    /// as they do when readers keep the state past [`STATE_WAIT`].
    pub(super) fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if self.snapshot_holds_applies() {
            self.unapplied.extend(entries);
            return Ok(());
        }
        // Without a queue (nearly always) the batch is applied as it came,
        // neither copied nor allocated again.
        let entries = if self.unapplied.is_empty() {
            entries
        } else {
            let mut waited = std::mem::take(&mut self.unapplied);
            waited.extend(entries);
            waited
        };
        if entries.is_empty() {
            return Ok(());
        }
        let state = Arc::clone(&self.state);
        let asked = Instant::now();
        let locked = state.try_write_for(STATE_WAIT);
        let waited = asked.elapsed();
        self.turn.state_lock += waited;
        let Some(mut state) = locked else {
            self.turn.lock_refused = true;
            self.unapplied = entries;
            return Ok(());
        };
        let locked = asked + waited;
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            self.turn.applied_entries += 1;
            self.apply_entry(&mut state, entry)?;
            if locked.elapsed() >= APPLY_BUDGET {
                self.unapplied.extend(entries);
                break;
            }
        }
        let changed = state.take_recent_node_changes();
        self.published.node_directory.follow(&state);
        drop(state);
        self.turn.apply += locked.elapsed();
        self.published.node_watches.publish(changed);
        Ok(())
    }

    /// Whether committed entries wait that a turn may apply.
    pub(super) fn may_apply_more(&self) -> bool {
        !self.snapshot_holds_applies() && !self.unapplied.is_empty()
    }

    fn snapshot_holds_applies(&self) -> bool {
        self.snapshot_job.as_ref().is_some_and(SnapshotJob::holds_applies)
    }

    /// Applies from the backlog in a turn that applied nothing else and
    /// did not already wait for the state.
    pub(super) fn apply_backlog(&mut self) -> Result<(), StorageError> {
        if self.turn.applied_entries > 0 || self.turn.lock_refused || !self.may_apply_more() {
            return Ok(());
        }
        self.apply_committed(Vec::new())?;
        self.applied_moved();
        Ok(())
    }

    fn apply_entry(&mut self, state: &mut ClusterState, entry: Entry) -> Result<(), StorageError> {
        self.applied = entry.index;
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {}
            EntryType::EntryNormal => {
                let envelope: Envelope =
                    serde_json::from_slice(&entry.data).map_err(|e| corrupt_entry(entry.index, e))?;
                let result = state.apply_once(entry.index, envelope.once, envelope.command);
                if envelope.origin == self.config.id {
                    self.proposals.answer(envelope.request_id, result.map_err(RaftError::from));
                }
            }
            EntryType::EntryConfChange => {
                let change =
                    ConfChange::parse_from_bytes(&entry.data).map_err(|e| corrupt_entry(entry.index, e))?;
                if let Err(error) = self.raw.apply_conf_change(&change) {
                    tracing::warn!(%error, index = entry.index, "conf change refused");
                }
            }
            EntryType::EntryConfChangeV2 => {
                let change =
                    ConfChangeV2::parse_from_bytes(&entry.data).map_err(|e| corrupt_entry(entry.index, e))?;
                let context: Option<ConfChangeContext> = serde_json::from_slice(&entry.context).ok();
                let result = self.raw.apply_conf_change(&change);
                if result.is_ok() {
                    for single in change.get_changes() {
                        let address = context.as_ref().and_then(|c| c.address.clone());
                        match single.get_change_type() {
                            ConfChangeType::AddNode => state.add_member(single.node_id, address, true),
                            ConfChangeType::AddLearnerNode => {
                                state.add_member(single.node_id, address, false)
                            }
                            ConfChangeType::RemoveNode => state.remove_member(single.node_id),
                        }
                    }
                    self.transport.learn_members(state.members());
                    tracing::info!(index = entry.index, changes = ?change.get_changes(), "membership changed");
                }
                if let Some(context) = context
                    && context.origin == self.config.id
                {
                    let answer = result.map_err(|e| RaftError::Membership(e.to_string()));
                    self.membership.answer(context.request_id, answer.map(|_| ()));
                }
            }
        }
        Ok(())
    }
}
