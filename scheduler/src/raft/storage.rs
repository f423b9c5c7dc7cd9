//! Raft's durable storage: the log and hard state in append-only segment
//! files (`wal.rs`), and in one redb file what changes rarely: the latest
//! snapshot's metadata (which carries the conf state) with the name of the
//! file that holds its data (`snapshot_files`), the compaction mark, and
//! which segment the log starts at.
//!
//! Every stored value is checked when the files are opened, so a corrupted
//! file stops the server with an error that names it instead of feeding
//! damaged entries to Raft. The whole log since the last compaction is also
//! kept in memory: Raft reads it on every append to a follower, and
//! compaction bounds its size.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::checksum::{frame, unframe};
use super::log_write::{LogWrite, LogWriter};
use super::snapshot_files::{SnapshotDir, SnapshotFile};
use super::wal::{Wal, WalItem};

/// The log as data dirs kept it before it had segment files of its own;
/// read once on opening, moved into the segments, and emptied.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The snapshot's metadata and file name, alone in their table: data dirs
/// written before snapshots had files of their own hold the data here too,
/// and redb rewrites (and checksums) a whole leaf when one of its keys
/// changes, so many megabytes beside the keys of `meta` would be copied
/// whenever one of those changed.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// The file holding the snapshot's data, in `snapshot`.
const SNAPSHOT_FILE_KEY: &str = "file";
/// The hard state as of the latest snapshot (or, in data dirs from before
/// segment files, of the latest write); a newer one in the segments wins.
const HARD_STATE_KEY: &str = "hard_state";
/// The number of the segment the log starts at: the segments before it
/// hold the log from before the latest installed snapshot.
const FIRST_SEGMENT_KEY: &str = "first_segment";
/// The snapshot's key, in `snapshot` (and, in data dirs written before the
/// snapshot had its own table, in `meta`).
const SNAPSHOT_KEY: &str = "snapshot";
/// Index and term of the last entry removed from the log by compaction.
const TRUNCATED_KEY: &str = "truncated";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open Raft data file {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "Raft data file {path} is corrupted: {what}; replace this member (remove it, then add it back with an empty data dir)"
    )]
    Corrupted { path: PathBuf, what: String },
    #[error("cannot write Raft data file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What an entry's data and context take.
fn entry_bytes(entry: &Entry) -> u64 {
    (entry.data.len() + entry.context.len()) as u64
}

/// What redb holds, as read on opening.
struct Stored {
    hard_state: HardState,
    snapshot: Snapshot,
    snapshot_file: Option<SnapshotFile>,
    truncated: (u64, u64),
    first_segment: u64,
    /// The log of a data dir from before segment files.
    legacy_log: Vec<Entry>,
}

/// The log as it is rebuilt on opening, entry by entry in the order they
/// were written.
struct ReplayedLog {
    /// Index and term of the last compacted entry: older ones are skipped.
    truncated: (u64, u64),
    entries: Vec<Entry>,
    entry_bytes: u64,
}

impl ReplayedLog {
    /// Takes in the next entry written: it replaces whatever the log held
    /// from its index on (a new leader's log won a conflict), and must not
    /// leave a gap.
    fn replay(&mut self, entry: Entry, path: &Path) -> Result<(), StorageError> {
        if entry.index <= self.truncated.0 {
            // Compacted itself, it still replaced whatever followed it
            // when it was written, and all that was held follows it.
            self.entries.clear();
            self.entry_bytes = 0;
            return Ok(());
        }
        let next = self.truncated.0 + 1 + self.entries.len() as u64;
        if entry.index > next {
            return Err(StorageError::Corrupted {
                path: path.to_path_buf(),
                what: format!("log entry {} is out of place (expected at most {next})", entry.index),
            });
        }
        let keep = (entry.index - self.truncated.0 - 1) as usize;
        self.entry_bytes -= self.entries[keep..].iter().map(entry_bytes).sum::<u64>();
        self.entries.truncate(keep);
        self.entry_bytes += entry_bytes(&entry);
        self.entries.push(entry);
        Ok(())
    }
}

pub struct RaftStorage {
    db: Arc<Database>,
    path: PathBuf,
    /// The log's segment files.
    wal: Arc<Mutex<Wal>>,
    hard_state: HardState,
    /// Latest snapshot's metadata (and, in a data dir from before snapshot
    /// files, its data).
    snapshot: Snapshot,
    /// The file holding the latest snapshot's data.
    snapshot_file: Option<SnapshotFile>,
    /// Where snapshot files are.
    snapshots: SnapshotDir,
    /// The latest snapshot with its data, read from its file when a
    /// follower that fell behind compaction first needs it, and kept while
    /// it is the latest: a lagging follower may ask again.
    sendable: RefCell<Option<Snapshot>>,
    /// Index and term of the entry just before `entries[0]`.
    truncated: (u64, u64),
    entries: Vec<Entry>,
    /// The bytes of `entries`' data, kept up to date with them: the log's
    /// size, which bounds compaction as well as its length does.
    entry_bytes: u64,
    /// Set when Raft asked for a snapshot that does not suit the follower (it
    /// predates that follower's membership); the node takes a fresh one.
    snapshot_wanted: Cell<bool>,
}

impl RaftStorage {
    /// Opens (or creates) `dir/raft.redb` and the log's segments in
    /// `dir/raft-log`, and checks every value in them.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join("raft.redb");
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Open { path: path.clone(), reason: e.to_string() })?;
        // redb 4.6 checks a torn commit's pages as it recovers, but panics
        // on one it reads first (an unreachable page type in the allocator
        // state's tree): that is a damaged file, reported as one.
        let created =
            std::panic::catch_unwind(|| Database::create(&path)).map_err(|_| StorageError::Corrupted {
                path: path.clone(),
                what: "redb failed to recover the last commit".into(),
            })?;
        let db = created.map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => {
                StorageError::Corrupted { path: path.clone(), what }
            }
            other => StorageError::Open { path: path.clone(), reason: other.to_string() },
        })?;
        let snapshots = SnapshotDir::open(dir)?;
        let Stored { mut hard_state, snapshot, snapshot_file, truncated, first_segment, legacy_log } =
            Self::load_meta(&db, &path, &snapshots)?;
        let mut log = ReplayedLog { truncated, entries: Vec::new(), entry_bytes: 0 };
        let legacy = !legacy_log.is_empty();
        for entry in legacy_log {
            log.replay(entry, &path)?;
        }
        let mut wal_hard_state = None;
        let wal = Wal::open(dir, first_segment, |item| match item {
            WalItem::HardState(hs) => {
                wal_hard_state = Some(hs);
                Ok(())
            }
            WalItem::Entry(entry) => log.replay(entry, &path),
        })?;
        if let Some(newer) = wal_hard_state {
            let commit = hard_state.commit.max(newer.commit);
            hard_state = newer;
            hard_state.commit = commit;
        }
        let mut storage = RaftStorage {
            db: Arc::new(db),
            path,
            wal: Arc::new(Mutex::new(wal)),
            hard_state,
            snapshot,
            snapshot_file,
            snapshots,
            sendable: RefCell::new(None),
            truncated,
            entries: log.entries,
            entry_bytes: log.entry_bytes,
            snapshot_wanted: Cell::new(false),
        };
        if legacy {
            storage.move_legacy_log()?;
        }
        Ok(storage)
    }

    /// Moves a data dir's log from redb (where versions before segment
    /// files kept it) into the segments: written there first, then removed
    /// from redb, so a crash between leaves it in both, which replays the
    /// same.
    fn move_legacy_log(&mut self) -> Result<(), StorageError> {
        let write = LogWrite { entries: self.entries.clone(), hard_state: self.hard_state.clone() };
        let writer = self.log_writer();
        writer.write([&write])?;
        let txn = writer.begin()?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| writer.error(e))?;
            log.retain(|_, _| false).map_err(|e| writer.error(e))?;
        }
        txn.commit().map_err(|e| writer.error(e))
    }

    /// Where log changes are written, from this thread or another.
    pub(super) fn log_writer(&self) -> LogWriter {
        LogWriter { db: Arc::clone(&self.db), path: self.path.clone(), wal: Arc::clone(&self.wal) }
    }

    fn corrupted(&self, what: impl Into<String>) -> StorageError {
        StorageError::Corrupted { path: self.path.clone(), what: what.into() }
    }

    /// What redb holds: the hard state, the snapshot's metadata and file,
    /// the compaction mark, the segment the log starts at, and the log of
    /// a data dir from before segment files.
    fn load_meta(db: &Database, path: &Path, snapshots: &SnapshotDir) -> Result<Stored, StorageError> {
        let corrupted = |what: String| StorageError::Corrupted { path: path.to_path_buf(), what };
        let read_error = |e: &dyn std::fmt::Display| corrupted(format!("read failed: {e}"));
        let txn = db.begin_read().map_err(|e| read_error(&e))?;
        let meta = match txn.open_table(META) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(read_error(&e)),
        };
        let (mut hard_state, mut snapshot, mut truncated, mut first_segment) = (None, None, None, None);
        if let Some(meta) = &meta {
            let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
                let Some(value) = meta.get(key).map_err(|e| read_error(&e))? else {
                    return Ok(None);
                };
                let payload =
                    unframe(value.value()).ok_or_else(|| corrupted(format!("`{key}` fails its checksum")))?;
                Ok(Some(payload.to_vec()))
            };
            hard_state = get(HARD_STATE_KEY)?;
            snapshot = get(SNAPSHOT_KEY)?;
            truncated = get(TRUNCATED_KEY)?;
            first_segment = get(FIRST_SEGMENT_KEY)?;
        }
        let mut snapshot_file = None;
        match txn.open_table(SNAPSHOT) {
            Ok(table) => {
                if let Some(value) = table.get(SNAPSHOT_KEY).map_err(|e| read_error(&e))? {
                    let payload = unframe(value.value())
                        .ok_or_else(|| corrupted("the snapshot fails its checksum".into()))?;
                    snapshot = Some(payload.to_vec());
                }
                if let Some(value) = table.get(SNAPSHOT_FILE_KEY).map_err(|e| read_error(&e))? {
                    let payload = unframe(value.value())
                        .ok_or_else(|| corrupted("the snapshot's file name fails its checksum".into()))?;
                    let file: SnapshotFile = serde_json::from_slice(payload)
                        .map_err(|e| corrupted(format!("the snapshot's file name does not decode: {e}")))?;
                    snapshots.check_present(&file)?;
                    snapshot_file = Some(file);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(read_error(&e)),
        }
        let hard_state = match hard_state {
            Some(bytes) => HardState::parse_from_bytes(&bytes)
                .map_err(|e| corrupted(format!("hard state does not decode: {e}")))?,
            None => HardState::default(),
        };
        let snapshot = match snapshot {
            Some(bytes) => Snapshot::parse_from_bytes(&bytes)
                .map_err(|e| corrupted(format!("snapshot does not decode: {e}")))?,
            None => Snapshot::default(),
        };
        let as_u64 = |b: &[u8]| b.try_into().map(u64::from_le_bytes).ok();
        let truncated = match truncated {
            Some(bytes) => {
                let (index, term) =
                    bytes.split_at_checked(8).ok_or_else(|| corrupted("truncation mark is short".into()))?;
                as_u64(index)
                    .zip(as_u64(term))
                    .ok_or_else(|| corrupted("truncation mark is malformed".into()))?
            }
            None => (0, 0),
        };
        let first_segment = match first_segment {
            Some(bytes) => {
                as_u64(&bytes).ok_or_else(|| corrupted("the first segment's number is malformed".into()))?
            }
            None => 0,
        };
        let mut legacy = Vec::new();
        match txn.open_table(LOG) {
            Ok(log) => {
                for item in log.iter().map_err(|e| read_error(&e))? {
                    let (key, value) = item.map_err(|e| read_error(&e))?;
                    let index = key.value();
                    let payload = unframe(value.value())
                        .ok_or_else(|| corrupted(format!("log entry {index} fails its checksum")))?;
                    let entry = Entry::parse_from_bytes(payload)
                        .map_err(|e| corrupted(format!("log entry {index} does not decode: {e}")))?;
                    if entry.index != index {
                        return Err(corrupted(format!("log entry {index} is out of place")));
                    }
                    legacy.push(entry);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(read_error(&e)),
        }
        Ok(Stored { hard_state, snapshot, snapshot_file, truncated, first_segment, legacy_log: legacy })
    }

    /// Whether this server has ever been part of a configuration. A server
    /// that has not waits for a leader to send it a snapshot.
    pub fn is_initialized(&self) -> bool {
        let cs = self.snapshot.get_metadata().get_conf_state();
        !cs.voters.is_empty() || !cs.learners.is_empty()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// Where the thread that takes snapshots writes them.
    pub fn snapshot_dir(&self) -> &SnapshotDir {
        &self.snapshots
    }

    /// Reads the latest snapshot's state as a stream (never as one buffer),
    /// checked against its file's size and checksum.
    pub fn restore<T: serde::de::DeserializeOwned>(&self) -> Result<T, StorageError> {
        let index = self.snapshot_index();
        let Some(file) = &self.snapshot_file else {
            return serde_json::from_slice(&self.snapshot.data)
                .map_err(|e| self.corrupted(format!("snapshot {index} does not decode: {e}")));
        };
        let mut reader = self.snapshots.reader(file)?;
        let state = serde_json::from_reader(&mut reader);
        // A damaged file is reported as such, even when the damage also
        // broke its JSON.
        reader.verify()?;
        state.map_err(|e| StorageError::Corrupted {
            path: self.snapshots.path_of(file),
            what: format!("snapshot {index} does not decode: {e}"),
        })
    }

    /// The size of the latest snapshot's file; 0 before the first.
    pub fn snapshot_file_bytes(&self) -> u64 {
        self.snapshot_file.as_ref().map_or(0, |file| file.bytes)
    }

    /// The bytes of the log's entries held (since the last compaction).
    pub fn log_bytes(&self) -> u64 {
        self.entry_bytes
    }

    /// The first index of the longest tail of the log up to `upto` whose
    /// entries take at most `budget` bytes: where a compaction for size
    /// keeps the log from.
    pub fn keep_within(&self, upto: u64, budget: u64) -> u64 {
        let mut kept = 0;
        let mut first = upto + 1;
        for entry in self.entries.iter().rev().skip_while(|e| e.index > upto) {
            kept += entry_bytes(entry);
            if kept > budget {
                break;
            }
            first = entry.index;
        }
        first
    }

    /// Whether Raft needs a newer snapshot than the stored one; clears the request.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Appends entries (replacing any conflicting suffix) and records the hard
    /// state, in one fsynced transaction.
    pub fn persist(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), StorageError> {
        let write = self.append(entries, hard_state);
        self.log_writer().write([&write])
    }

    /// Appends entries (replacing any conflicting suffix) and records the hard
    /// state in memory, where Raft reads them; what to write to make that
    /// durable is returned.
    pub(super) fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> LogWrite {
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        if let Some(first_new) = entries.first().map(|e| e.index) {
            let keep = (first_new.saturating_sub(self.truncated.0 + 1) as usize).min(self.entries.len());
            self.entry_bytes -= self.entries[keep..].iter().map(entry_bytes).sum::<u64>();
            self.entries.truncate(keep);
            self.entry_bytes += entries.iter().map(entry_bytes).sum::<u64>();
            self.entries.extend_from_slice(entries);
        }
        LogWrite { entries: entries.to_vec(), hard_state: self.hard_state.clone() }
    }

    /// Records a newer commit index in memory; it reaches disk with the next
    /// write. Losing it in a crash is safe: the leader sends it again.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    /// Installs a snapshot received from the leader (or the one a new
    /// cluster starts from), replacing the whole log: its data goes to a
    /// file, the log to a new segment, then its metadata to redb in one
    /// transaction that also moves the log's start to that segment.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata().clone();
        let (index, term) = (meta.index, meta.term);
        let file = self.snapshots.write(index, term, |out| std::io::Write::write_all(out, &snapshot.data))?;
        self.hard_state.term = self.hard_state.term.max(term);
        self.hard_state.commit = self.hard_state.commit.max(index);
        let first_segment = self.log_writer().wal().roll()?;
        self.write_snapshot(&meta, &file, (index, term), Some(first_segment))?;
        self.log_writer().wal().remove_before(first_segment)?;
        self.snapshot_taken(meta, file);
        self.truncated = (index, term);
        self.entries.clear();
        self.entry_bytes = 0;
        Ok(())
    }

    /// Records a snapshot taken of the local state, its data already in
    /// `file`, and drops the log up to `keep_from - 1`: in one transaction,
    /// then the segments holding only dropped entries are removed. Later
    /// writes go to a new segment, so that this one can go at the next
    /// compaction; it starts with the hard state, which the removed ones
    /// may have held last.
    /// A snapshot no newer than the latest (one from the leader was
    /// installed while it was taken) is dropped.
    pub fn compact(
        &mut self,
        meta: SnapshotMetadata,
        file: SnapshotFile,
        keep_from: u64,
    ) -> Result<(), StorageError> {
        let index = meta.index;
        if index <= self.snapshot_index() {
            self.snapshots.remove_all_but(self.snapshot_file.as_ref());
            return Ok(());
        }
        let keep_from = keep_from.clamp(self.truncated.0 + 1, index + 1);
        let truncate_to = keep_from - 1;
        let term = if truncate_to == index { meta.term } else { self.term_inner(truncate_to)? };
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.write_snapshot(&meta, &file, (truncate_to, term), None)?;
        {
            let writer = self.log_writer();
            let mut wal = writer.wal();
            wal.roll_with(&self.hard_state)?;
            wal.remove_compacted(truncate_to)?;
        }
        let drop = ((truncate_to - self.truncated.0) as usize).min(self.entries.len());
        self.entry_bytes -= self.entries[..drop].iter().map(entry_bytes).sum::<u64>();
        self.entries.drain(..drop);
        self.snapshot_taken(meta, file);
        self.truncated = (truncate_to, term);
        Ok(())
    }

    /// The snapshot just stored becomes the latest; older files go.
    fn snapshot_taken(&mut self, meta: SnapshotMetadata, file: SnapshotFile) {
        self.snapshot = Snapshot::default();
        self.snapshot.set_metadata(meta);
        self.snapshots.remove_all_but(Some(&file));
        self.snapshot_file = Some(file);
        self.sendable.replace(None);
    }

    /// Records a snapshot's metadata, its file, the compaction mark and the
    /// hard state in redb; and, for a snapshot that replaces the whole log,
    /// the segment the log now starts at.
    fn write_snapshot(
        &self,
        meta: &SnapshotMetadata,
        file: &SnapshotFile,
        truncated: (u64, u64),
        first_segment: Option<u64>,
    ) -> Result<(), StorageError> {
        let writer = self.log_writer();
        let txn = writer.begin()?;
        {
            let mut snapshot = Snapshot::default();
            snapshot.set_metadata(meta.clone());
            let snap = snapshot.write_to_bytes().map_err(|e| writer.error(e))?;
            let mut snapshots = txn.open_table(SNAPSHOT).map_err(|e| writer.error(e))?;
            snapshots.insert(SNAPSHOT_KEY, frame(&snap).as_slice()).map_err(|e| writer.error(e))?;
            let file = serde_json::to_vec(file).map_err(|e| writer.error(e))?;
            snapshots.insert(SNAPSHOT_FILE_KEY, frame(&file).as_slice()).map_err(|e| writer.error(e))?;
            let mut meta = txn.open_table(META).map_err(|e| writer.error(e))?;
            meta.remove(SNAPSHOT_KEY).map_err(|e| writer.error(e))?;
            let mut mark = truncated.0.to_le_bytes().to_vec();
            mark.extend_from_slice(&truncated.1.to_le_bytes());
            meta.insert(TRUNCATED_KEY, frame(&mark).as_slice()).map_err(|e| writer.error(e))?;
            let hs = self.hard_state.write_to_bytes().map_err(|e| writer.error(e))?;
            meta.insert(HARD_STATE_KEY, frame(&hs).as_slice()).map_err(|e| writer.error(e))?;
            if let Some(first) = first_segment {
                meta.insert(FIRST_SEGMENT_KEY, frame(&first.to_le_bytes()).as_slice())
                    .map_err(|e| writer.error(e))?;
            }
        }
        txn.commit().map_err(|e| writer.error(e))
    }

    fn last_index_inner(&self) -> u64 {
        self.entries.last().map_or(self.truncated.0, |e| e.index)
    }

    fn term_inner(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        index
            .checked_sub(self.truncated.0 + 1)
            .and_then(|offset| self.entries.get(offset as usize))
            .map(|e| e.term)
            .ok_or_else(|| self.corrupted(format!("no entry at index {index}")))
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let conf_state: ConfState = self.snapshot.get_metadata().get_conf_state().clone();
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index_inner() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let offset = self.truncated.0 + 1;
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.truncated.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        self.term_inner(index).map_err(|_| raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let conf = self.snapshot.get_metadata().get_conf_state();
        let includes_peer = conf.voters.contains(&to) || conf.learners.contains(&to);
        if self.snapshot.get_metadata().index < request_index || !includes_peer {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        let Some(file) = &self.snapshot_file else { return Ok(self.snapshot.clone()) };
        if let Some(sendable) = &*self.sendable.borrow() {
            return Ok(sendable.clone());
        }
        let data = self.snapshots.read_all(file).map_err(|error| {
            tracing::error!(%error, "cannot read the snapshot a follower needs");
            raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable)
        })?;
        let mut sendable = self.snapshot.clone();
        sendable.data = data.into();
        self.sendable.replace(Some(sendable.clone()));
        Ok(sendable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: format!("command {index}").into_bytes().into(), ..Entry::default() }
    }

    /// The redb file of a storage in `dir` that took its first snapshot,
    /// for a test to rewrite as an earlier version would have left it.
    fn bootstrapped_redb(dir: &Path) -> Database {
        let mut storage = RaftStorage::open(dir).expect("open");
        storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
        drop(storage);
        Database::create(dir.join("raft.redb")).expect("db")
    }

    #[test]
    fn a_data_dir_with_the_snapshot_data_beside_the_hard_state_still_opens_and_moves_it_to_a_file_on_compaction()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        // Rewrite it the way the earliest versions stored it: with its data,
        // in `meta`.
        let db = bootstrapped_redb(dir.path());
        let txn = db.begin_write().expect("txn");
        {
            let mut snapshots = txn.open_table(SNAPSHOT).expect("table");
            snapshots.remove(SNAPSHOT_KEY).expect("remove");
            snapshots.remove(SNAPSHOT_FILE_KEY).expect("remove");
            let old = snapshot_at(1, 1).write_to_bytes().expect("encode");
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(SNAPSHOT_KEY, frame(&old).as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        drop(db);
        let mut storage = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!(storage.snapshot_index(), 1, "the snapshot is found where earlier versions kept it");
        assert_eq!(&storage.snapshot(1, 2).expect("sendable").data[..], b"state", "with its data");
        storage.persist(&(2..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).expect("persist");
        compact_at(&mut storage, 8, 1, 5);
        drop(storage);
        let storage = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!(storage.snapshot_index(), 8);
        drop(storage);
        let db = Database::create(dir.path().join("raft.redb")).expect("db");
        let txn = db.begin_read().expect("txn");
        let meta = txn.open_table(META).expect("meta");
        assert!(meta.get(SNAPSHOT_KEY).expect("get").is_none(), "moved out of `meta`");
        let snapshots = txn.open_table(SNAPSHOT).expect("snapshots");
        let stored = snapshots.get(SNAPSHOT_KEY).expect("get").expect("stored");
        let stored = Snapshot::parse_from_bytes(unframe(stored.value()).expect("framed")).expect("decode");
        assert!(stored.data.is_empty(), "redb keeps only the metadata; the data is in its file");
    }

    /// A redb commit torn after it was made (its new pages zeroed, its
    /// commit slot in force) must not open as the commit before it: the
    /// snapshot and compaction mark it recorded were already acted on.
    #[test]
    fn a_torn_commit_is_refused_rather_than_rolled_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        let mut storage = RaftStorage::open(dir.path()).expect("open");
        storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
        storage.persist(&(2..=50).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).expect("persist");
        let before = std::fs::read(&path).expect("file");
        compact_at(&mut storage, 40, 1, 30);
        // As a kill leaves it: not closed, still marked for recovery (a
        // copy, as this process holds the original's lock).
        let mut after = std::fs::read(&path).expect("file");
        let torn_dir = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), torn_dir.path());
        drop(storage);
        let path = torn_dir.path().join("raft.redb");
        const HEADER: usize = 4096;
        let mut torn = 0;
        for (at, byte) in after.iter_mut().enumerate().skip(HEADER) {
            if before.get(at) != Some(byte) {
                *byte = 0;
                torn += 1;
            }
        }
        assert!(torn > 0, "the last commit wrote pages beyond the header");
        std::fs::write(&path, &after).expect("torn file");
        match RaftStorage::open(torn_dir.path()) {
            Err(StorageError::Corrupted { path: named, .. }) => assert_eq!(named, path),
            Err(other) => panic!("refused, but not as corrupted: {other}"),
            Ok(storage) => panic!(
                "opened a torn commit as the one before it (snapshot index {})",
                storage.snapshot_index()
            ),
        }
    }

    /// Copies a data dir's files, one level of directories deep.
    fn copy_dir(from: &Path, to: &Path) {
        for item in std::fs::read_dir(from).expect("dir") {
            let path = item.expect("entry").path();
            let target = to.join(path.file_name().expect("a name"));
            if path.is_dir() {
                std::fs::create_dir_all(&target).expect("dir");
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).expect("copy");
            }
        }
    }

    /// A data dir written before the log had segment files kept it in
    /// redb: it opens with that log, which moves into the segments.
    #[test]
    fn a_log_kept_in_redb_opens_and_moves_into_the_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = bootstrapped_redb(dir.path());
        let txn = db.begin_write().expect("txn");
        {
            let mut log = txn.open_table(LOG).expect("log");
            for i in 2..=6 {
                let bytes = entry(i, 2).write_to_bytes().expect("encode");
                log.insert(i, frame(&bytes).as_slice()).expect("insert");
            }
            let hs = HardState { term: 2, vote: 3, commit: 5, ..HardState::default() };
            let mut meta = txn.open_table(META).expect("meta");
            meta.insert(HARD_STATE_KEY, frame(&hs.write_to_bytes().expect("encode")).as_slice()).expect("hs");
        }
        txn.commit().expect("commit");
        drop(db);
        for opening in ["first", "second"] {
            let storage = RaftStorage::open(dir.path()).expect("reopen");
            assert_eq!(storage.last_index().expect("last"), 6, "{opening} opening");
            assert_eq!(storage.term(6).expect("term"), 2);
            let hs = storage.initial_state().expect("state").hard_state;
            assert_eq!((hs.term, hs.vote, hs.commit), (2, 3, 5), "{opening} opening");
        }
        let db = Database::create(dir.path().join("raft.redb")).expect("db");
        let txn = db.begin_read().expect("txn");
        let log = txn.open_table(LOG).expect("log");
        assert_eq!(
            redb::ReadableTableMetadata::len(&log).expect("len"),
            0,
            "the redb log is emptied once moved"
        );
    }

    /// A snapshot installed from the leader replaces the log, and the log
    /// from before it does not come back on reopening; later writes do.
    #[test]
    fn an_installed_snapshot_replaces_the_log_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = RaftStorage::open(dir.path()).expect("open");
        storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
        storage.persist(&(2..=30).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).expect("persist");
        storage.install_snapshot(snapshot_at(20, 2)).expect("from the leader");
        storage
            .persist(&[entry(21, 2)], Some(&HardState { term: 2, commit: 21, ..HardState::default() }))
            .expect("persist");
        drop(storage);
        let storage = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!((storage.first_index().expect("first"), storage.last_index().expect("last")), (21, 21));
        assert_eq!(storage.term(21).expect("term"), 2);
        assert_eq!(storage.initial_state().expect("state").hard_state.commit, 21);
        let segments = std::fs::read_dir(dir.path().join("raft-log")).expect("dir").count();
        assert_eq!(segments, 1, "the segments from before the snapshot are gone");
    }

    /// Compacts as the node does: the snapshot's data written to its file
    /// first, then recorded.
    fn compact_at(storage: &mut RaftStorage, index: u64, term: u64, keep_from: u64) {
        let snapshot = snapshot_at(index, term);
        let file = storage
            .snapshot_dir()
            .write(index, term, |out| std::io::Write::write_all(out, &snapshot.data))
            .expect("snapshot file");
        storage.compact(snapshot.get_metadata().clone(), file, keep_from).expect("compact");
    }

    #[test]
    fn a_snapshot_is_restored_and_sent_from_its_file_and_a_missing_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = RaftStorage::open(dir.path()).expect("open");
        storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
        storage.persist(&(2..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).expect("persist");
        let state = serde_json::json!({"replicas": 3});
        let file = storage
            .snapshot_dir()
            .write(8, 1, |out| serde_json::to_writer(out, &state).map_err(std::io::Error::from))
            .expect("file");
        storage.compact(snapshot_at(8, 1).get_metadata().clone(), file.clone(), 5).expect("compact");
        drop(storage);
        let storage = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!(storage.restore::<serde_json::Value>().expect("restore"), state);
        let sent = storage.snapshot(8, 2).expect("a follower's snapshot");
        assert_eq!(sent.get_metadata().index, 8);
        assert_eq!(&sent.data[..], serde_json::to_vec(&state).expect("json").as_slice());
        let files = std::fs::read_dir(dir.path().join("snapshots")).expect("dir").count();
        assert_eq!(files, 1, "the bootstrap snapshot's file is gone");
        drop(storage);
        std::fs::remove_file(dir.path().join("snapshots").join(&file.name)).expect("remove");
        match RaftStorage::open(dir.path()) {
            Err(StorageError::Corrupted { path, .. }) => assert!(path.ends_with(&file.name), "{path:?}"),
            Err(other) => panic!("refused, but not as corrupted: {other}"),
            Ok(_) => panic!("opened without its snapshot's data"),
        }
    }

    #[test]
    fn a_snapshot_taken_while_a_newer_one_was_installed_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = RaftStorage::open(dir.path()).expect("open");
        storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
        storage.persist(&(2..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None).expect("persist");
        let stale =
            storage.snapshot_dir().write(8, 1, |out| std::io::Write::write_all(out, b"old")).expect("file");
        storage.install_snapshot(snapshot_at(20, 2)).expect("from the leader");
        storage.compact(snapshot_at(8, 1).get_metadata().clone(), stale.clone(), 5).expect("compact");
        assert_eq!(storage.snapshot_index(), 20);
        assert_eq!(storage.first_index().expect("first"), 21);
        assert!(!storage.snapshot_dir().path_of(&stale).exists(), "its file is removed");
    }

    fn snapshot_at(index: u64, term: u64) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.data = b"state".to_vec().into();
        snap
    }

    #[test]
    fn entries_and_hard_state_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut storage = RaftStorage::open(dir.path()).expect("open");
            storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
            let entries: Vec<Entry> = (2..=10).map(|i| entry(i, 2)).collect();
            let hs = HardState { term: 2, commit: 7, ..HardState::default() };
            storage.persist(&entries, Some(&hs)).expect("persist");
            // A new leader overwrites the uncommitted tail.
            storage.persist(&[entry(9, 3)], None).expect("overwrite");
        }
        let storage = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!(storage.last_index().expect("last"), 9);
        assert_eq!(storage.term(9).expect("term"), 3);
        assert_eq!(storage.term(1).expect("term of the snapshot"), 1);
        assert_eq!(storage.initial_state().expect("state").hard_state.commit, 7);
        assert_eq!(storage.initial_state().expect("state").conf_state.voters, vec![1, 2, 3]);
        let got = storage.entries(2, 10, None, GetEntriesContext::empty(false)).expect("entries");
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn compaction_keeps_a_tail_and_the_term_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = RaftStorage::open(dir.path()).expect("open");
        storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
        let entries: Vec<Entry> = (2..=100).map(|i| entry(i, 2)).collect();
        storage.persist(&entries, None).expect("persist");
        compact_at(&mut storage, 90, 2, 81);
        assert_eq!(storage.first_index().expect("first"), 81);
        assert_eq!(storage.term(80).expect("term"), 2);
        assert!(storage.entries(50, 60, None, GetEntriesContext::empty(false)).is_err());
        drop(storage);
        let storage = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!(storage.first_index().expect("first"), 81);
        assert_eq!(storage.last_index().expect("last"), 100);
        assert_eq!(storage.snapshot_index(), 90);
    }

    /// The bytes the log holds from `first` to `last`, as entries of `entry`.
    fn bytes_of(first: u64, last: u64) -> u64 {
        (first..=last).map(|i| entry_bytes(&entry(i, 2))).sum()
    }

    #[test]
    fn the_log_size_follows_appends_conflicts_compactions_and_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = RaftStorage::open(dir.path()).expect("open");
        storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
        assert_eq!(storage.log_bytes(), 0);
        storage.persist(&(2..=100).map(|i| entry(i, 2)).collect::<Vec<_>>(), None).expect("persist");
        assert_eq!(storage.log_bytes(), bytes_of(2, 100));
        // A new leader's entries from 91 replace the old suffix.
        storage.persist(&(91..=95).map(|i| entry(i, 2)).collect::<Vec<_>>(), None).expect("conflict");
        assert_eq!(storage.log_bytes(), bytes_of(2, 95));
        compact_at(&mut storage, 90, 2, 81);
        assert_eq!(storage.log_bytes(), bytes_of(81, 95));
        drop(storage);
        let mut storage = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!(storage.log_bytes(), bytes_of(81, 95));
        // The longest tail up to 90 within the bytes of entries 86 to 90 starts at 86.
        assert_eq!(storage.keep_within(90, bytes_of(86, 90)), 86);
        assert_eq!(storage.keep_within(90, bytes_of(86, 90) - 1), 87);
        assert_eq!(storage.keep_within(90, 0), 91, "nothing kept up to 90");
        storage.install_snapshot(snapshot_at(200, 3)).expect("install");
        assert_eq!(storage.log_bytes(), 0);
    }

    #[test]
    fn a_flipped_byte_is_reported_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut storage = RaftStorage::open(dir.path()).expect("open");
            storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
            let mut e = entry(2, 2);
            e.data = b"MARKER-PAYLOAD-TO-CORRUPT".to_vec().into();
            storage.persist(&[e], None).expect("persist");
        }
        let segments = dir.path().join("raft-log");
        let path =
            std::fs::read_dir(&segments).expect("dir").next().expect("a segment").expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.windows(6).position(|w| w == b"MARKER").expect("marker on disk");
        bytes[at + 3] ^= 0xFF;
        std::fs::write(&path, bytes).expect("write");
        let error = RaftStorage::open(dir.path()).err().expect("must refuse");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains("corrupted"), "{message}");
    }

    /// A step of what the Raft thread does to its storage.
    #[derive(Debug, Clone)]
    enum Step {
        /// Entries from `back` before the next index (a new leader's log
        /// replacing a suffix when above 0), in a term `bump` newer.
        Append {
            back: u64,
            count: u64,
            bump: u64,
        },
        /// A snapshot at the `at`th entry held, keeping `keep` before it.
        Compact {
            at: u64,
            keep: u64,
        },
        /// A leader's snapshot `ahead` past the log's end.
        Install {
            ahead: u64,
        },
        Reopen,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..5u64, 1..8u64, 0..2u64).prop_map(|(back, count, bump)| Step::Append { back, count, bump }),
            2 => (any::<u64>(), 0..4u64).prop_map(|(at, keep)| Step::Compact { at, keep }),
            1 => (0..3u64).prop_map(|ahead| Step::Install { ahead }),
            2 => Just(Step::Reopen),
        ]
    }

    /// What a reopened storage must give back as it was.
    fn observed(storage: &RaftStorage) -> (u64, u64, Vec<u64>, HardState, u64) {
        let (first, last) = (storage.first_index().expect("first"), storage.last_index().expect("last"));
        let terms = (first - 1..=last).map(|i| storage.term(i).expect("term")).collect();
        let hs = storage.initial_state().expect("state").hard_state;
        (first, last, terms, hs, storage.snapshot_index())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Whatever mix of appends, conflicting suffixes, compactions and
        /// installed snapshots came before, a reopened storage holds the
        /// same log, terms and hard state, and keeps no segment that
        /// compaction passed.
        #[test]
        fn the_log_reopens_as_it_was_written(steps in proptest::collection::vec(step(), 1..30)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut storage = RaftStorage::open(dir.path()).expect("open");
            storage.install_snapshot(snapshot_at(1, 1)).expect("bootstrap");
            let mut term = 1;
            for step in steps {
                let (first, last) = (storage.first_index().expect("first"), storage.last_index().expect("last"));
                match step {
                    Step::Append { back, count, bump } => {
                        term += bump;
                        let from = (last + 1).saturating_sub(back).max(first);
                        let entries: Vec<Entry> = (from..from + count).map(|i| entry(i, term)).collect();
                        // The commit index never goes back.
                        let commit = storage.initial_state().expect("state").hard_state.commit;
                        let hs = HardState { term, vote: term % 3 + 1, commit, ..HardState::default() };
                        storage.persist(&entries, Some(&hs)).expect("persist");
                    }
                    Step::Compact { at, keep } if last >= first => {
                        let index = first + at % (last - first + 1);
                        let keep_from = (index + 1).saturating_sub(keep).max(first);
                        let term = storage.term(index).expect("term");
                        compact_at(&mut storage, index, term, keep_from);
                    }
                    Step::Compact { .. } => {}
                    Step::Install { ahead } => {
                        storage.install_snapshot(snapshot_at(last + 1 + ahead, term)).expect("install");
                    }
                    Step::Reopen => {
                        let before = observed(&storage);
                        drop(storage);
                        storage = RaftStorage::open(dir.path()).expect("reopen");
                        proptest::prop_assert_eq!(observed(&storage), before);
                    }
                }
            }
            let before = observed(&storage);
            let truncated = storage.first_index().expect("first") - 1;
            drop(storage);
            let storage = RaftStorage::open(dir.path()).expect("reopen");
            proptest::prop_assert_eq!(observed(&storage), before);
            let wal = storage.wal.lock().expect("wal");
            proptest::prop_assert!(
                wal.oldest_last_index().is_none_or(|last| last > truncated),
                "a segment whose entries were all compacted is still kept"
            );
        }
    }
}
