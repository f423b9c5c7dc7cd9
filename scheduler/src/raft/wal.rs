//! The Raft log on disk: segment files that are only ever appended to, one
//! record per write, one `fdatasync` per write.
//!
//! A redb commit in two phases (two fsyncs and five page writes) cost a
//! quarter of a millisecond of CPU; with a thousand writes a second on
//! each server, the three servers' persist threads took a quarter of the
//! machine. A record here is one `pwrite` and one `fdatasync`. redb keeps
//! what changes rarely (the snapshot's metadata, the compaction mark, and
//! which segment the log starts at).
//!
//! A record is `[length u32][CRC-32 u32][items]`, an item `[tag u8][length
//! u32][protobuf]`: an entry or the hard state. Replaying entries in order
//! rebuilds the log, since a later entry at an index replaces everything
//! from that index on (a new leader's log winning a conflict). A record cut
//! short at the end of the newest segment is a write that never finished,
//! so never acknowledged, and is cut off; a whole record that fails its
//! checksum, or damage anywhere else, refuses the file by name, as a
//! damaged redb file is refused: dropping it could forget entries or a vote
//! already promised to a peer.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use super::checksum::Crc32;
use super::log_write::LogWrite;
use super::storage::StorageError;

/// Where the segments are, inside the data dir.
const DIR: &str = "raft-log";
/// A segment past this size is closed and the next write starts a new
/// one, so that compaction can remove the old ones whole.
const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
const ENTRY: u8 = 1;
const HARD_STATE: u8 = 2;

/// What a record holds, handed to whoever replays the log.
pub(super) enum WalItem {
    Entry(Entry),
    HardState(HardState),
}

/// One segment file and the highest index of an entry written to it
/// (0 for none): once compaction passes it, the file can go.
#[derive(Debug)]
struct Segment {
    number: u64,
    last_index: u64,
}

pub(super) struct Wal {
    dir: PathBuf,
    /// Every segment kept, oldest first; the last is written to.
    segments: Vec<Segment>,
    /// The last segment, open for writing.
    file: File,
    /// Its length: where the next record goes.
    length: u64,
}

fn segment_name(number: u64) -> String {
    format!("{number:020}.wal")
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".wal").filter(|n| n.len() == 20)?.parse().ok()
}

impl Wal {
    /// Opens the segments in `data_dir` from `first` on (older ones were
    /// left by a crash between a snapshot's install and their removal, and
    /// go now) and replays each item to `replay`, oldest first.
    pub(super) fn open(
        data_dir: &Path,
        first: u64,
        mut replay: impl FnMut(WalItem) -> Result<(), StorageError>,
    ) -> Result<Wal, StorageError> {
        let dir = data_dir.join(DIR);
        let open_error = |reason: String| StorageError::Open { path: dir.clone(), reason };
        std::fs::create_dir_all(&dir).map_err(|e| open_error(e.to_string()))?;
        let mut numbers = Vec::new();
        for item in std::fs::read_dir(&dir).map_err(|e| open_error(e.to_string()))? {
            let path = item.map_err(|e| open_error(e.to_string()))?.path();
            if let Some(number) = segment_number(&path) {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        let mut segments = Vec::new();
        for (at, &number) in numbers.iter().enumerate() {
            let path = dir.join(segment_name(number));
            if number < first {
                std::fs::remove_file(&path).map_err(|e| open_error(e.to_string()))?;
                continue;
            }
            let newest = at + 1 == numbers.len();
            let last_index = replay_segment(&path, newest, &mut replay)?;
            segments.push(Segment { number, last_index });
        }
        if segments.is_empty() {
            let number = first.max(1);
            create_segment(&dir, number)?;
            segments.push(Segment { number, last_index: 0 });
        }
        let newest = segments.last().map_or(1, |s| s.number);
        let path = dir.join(segment_name(newest));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::Open { path: path.clone(), reason: e.to_string() })?;
        let length = file.metadata().map_err(|e| StorageError::Open { path, reason: e.to_string() })?.len();
        Ok(Wal { dir, segments, file, length })
    }

    fn path_of(&self, number: u64) -> PathBuf {
        self.dir.join(segment_name(number))
    }

    fn current(&self) -> u64 {
        self.segments.last().map_or(1, |s| s.number)
    }

    fn write_error(&self, number: u64, error: impl std::fmt::Display) -> StorageError {
        StorageError::Write { path: self.path_of(number), reason: error.to_string() }
    }

    /// Makes `writes` durable, in order, as one record: one `fdatasync`
    /// for all of them. Only the last hard state is kept: it is the one in
    /// force after them all.
    pub(super) fn append<'a>(
        &mut self,
        writes: impl IntoIterator<Item = &'a LogWrite>,
    ) -> Result<(), StorageError> {
        let mut record = vec![0; HEADER];
        let mut hard_state = None;
        let mut last_index = 0;
        for write in writes {
            for entry in &write.entries {
                encode_item(&mut record, ENTRY, entry).map_err(|e| self.write_error(self.current(), e))?;
                last_index = entry.index;
            }
            hard_state = Some(&write.hard_state);
        }
        if let Some(hs) = hard_state {
            encode_item(&mut record, HARD_STATE, hs).map_err(|e| self.write_error(self.current(), e))?;
        }
        if record.len() == HEADER {
            return Ok(());
        }
        if self.length >= SEGMENT_BYTES {
            self.roll()?;
        }
        self.write_record(record)?;
        if let Some(segment) = self.segments.last_mut() {
            segment.last_index = segment.last_index.max(last_index);
        }
        Ok(())
    }

    /// Writes a record whose items follow room for its header, and waits
    /// until it is durable.
    fn write_record(&mut self, mut record: Vec<u8>) -> Result<(), StorageError> {
        let items = &record[HEADER..];
        let length = u32::try_from(items.len())
            .map_err(|_| self.write_error(self.current(), "a write of more than 4 GiB"))?;
        let mut crc = Crc32::new();
        crc.update(items);
        let crc = crc.finish();
        record[..4].copy_from_slice(&length.to_le_bytes());
        record[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        let number = self.current();
        self.file.write_all_at(&record, self.length).map_err(|e| self.write_error(number, e))?;
        self.file.sync_data().map_err(|e| self.write_error(number, e))?;
        self.length += record.len() as u64;
        Ok(())
    }

    /// Starts a new segment, which later writes go to; its number. The
    /// older segments are kept until [`Wal::remove_compacted`] or
    /// [`Wal::remove_before`] lets them go.
    pub(super) fn roll(&mut self) -> Result<u64, StorageError> {
        let number = self.current() + 1;
        let file = create_segment(&self.dir, number)?;
        self.file = file;
        self.length = 0;
        self.segments.push(Segment { number, last_index: 0 });
        Ok(number)
    }

    /// Starts a new segment that begins with `hard_state`, so that the
    /// older ones can all go without taking the hard state with them.
    pub(super) fn roll_with(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.roll()?;
        let mut record = vec![0; HEADER];
        encode_item(&mut record, HARD_STATE, hard_state).map_err(|e| self.write_error(self.current(), e))?;
        self.write_record(record)
    }

    /// Removes the segments, oldest first and never the one written to,
    /// whose entries are all at or below `index` (compacted into a snapshot).
    pub(super) fn remove_compacted(&mut self, index: u64) -> Result<(), StorageError> {
        while self.segments.len() > 1 && self.segments[0].last_index <= index {
            self.remove_oldest()?;
        }
        Ok(())
    }

    /// Removes every segment older than `number` (the log from before an
    /// installed snapshot).
    pub(super) fn remove_before(&mut self, number: u64) -> Result<(), StorageError> {
        while self.segments.len() > 1 && self.segments[0].number < number {
            self.remove_oldest()?;
        }
        Ok(())
    }

    fn remove_oldest(&mut self) -> Result<(), StorageError> {
        let oldest = self.segments.remove(0);
        std::fs::remove_file(self.path_of(oldest.number)).map_err(|e| self.write_error(oldest.number, e))
    }

    /// The highest entry index in the oldest segment other than the one
    /// written to, if there is one.
    #[cfg(test)]
    pub(super) fn oldest_last_index(&self) -> Option<u64> {
        (self.segments.len() > 1).then(|| self.segments[0].last_index)
    }

    /// How many segment files there are.
    #[cfg(test)]
    pub(super) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn encode_item(out: &mut Vec<u8>, tag: u8, message: &impl protobuf::Message) -> protobuf::ProtobufResult<()> {
    let bytes = message.write_to_bytes()?;
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Creates an empty segment and makes its name durable in the directory.
fn create_segment(dir: &Path, number: u64) -> Result<File, StorageError> {
    let path = dir.join(segment_name(number));
    let error = |e: std::io::Error| StorageError::Write { path: path.clone(), reason: e.to_string() };
    let file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).map_err(error)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(error)?;
    Ok(file)
}

/// Replays one segment's records; the highest entry index in it. A record
/// cut short at the end of the newest segment is cut off the file.
fn replay_segment(
    path: &Path,
    newest: bool,
    replay: &mut impl FnMut(WalItem) -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let corrupted = |what: String| StorageError::Corrupted { path: path.to_path_buf(), what };
    let bytes = std::fs::read(path).map_err(|e| corrupted(format!("read failed: {e}")))?;
    let mut at = 0;
    let mut last_index = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let whole = rest.split_at_checked(HEADER).and_then(|(header, body)| {
            let length = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
            body.get(..length).map(|items| (crc, items))
        });
        let Some((crc, items)) = whole else {
            if !newest {
                return Err(corrupted(format!("the record at byte {at} is cut short")));
            }
            tracing::warn!(path = %path.display(), at, cut = rest.len(), "cutting off a write that never finished");
            let file =
                std::fs::OpenOptions::new().write(true).open(path).map_err(|e| corrupted(e.to_string()))?;
            file.set_len(at as u64).and_then(|()| file.sync_all()).map_err(|e| corrupted(e.to_string()))?;
            break;
        };
        let mut sum = Crc32::new();
        sum.update(items);
        if items.is_empty() || sum.finish() != crc {
            return Err(corrupted(format!("the record at byte {at} fails its checksum")));
        }
        last_index = last_index.max(replay_items(items, at, &corrupted, replay)?);
        at += HEADER + items.len();
    }
    Ok(last_index)
}

/// Replays one record's items; the highest entry index among them.
fn replay_items(
    mut items: &[u8],
    at: usize,
    corrupted: &impl Fn(String) -> StorageError,
    replay: &mut impl FnMut(WalItem) -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let malformed = || corrupted(format!("the record at byte {at} is malformed"));
    let mut last_index = 0;
    while !items.is_empty() {
        let (&tag, rest) = items.split_first().ok_or_else(malformed)?;
        let (length, rest) = rest.split_at_checked(4).ok_or_else(malformed)?;
        let length = u32::from_le_bytes(length.try_into().map_err(|_| malformed())?) as usize;
        let (payload, rest) = rest.split_at_checked(length).ok_or_else(malformed)?;
        items = rest;
        let item = match tag {
            ENTRY => {
                let entry = Entry::parse_from_bytes(payload).map_err(|_| malformed())?;
                last_index = last_index.max(entry.index);
                WalItem::Entry(entry)
            }
            HARD_STATE => WalItem::HardState(HardState::parse_from_bytes(payload).map_err(|_| malformed())?),
            _ => return Err(malformed()),
        };
        replay(item)?;
    }
    Ok(last_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: format!("entry {index}").into_bytes().into(), ..Entry::default() }
    }

    fn write(entries: Vec<Entry>, term: u64) -> LogWrite {
        LogWrite { entries, hard_state: HardState { term, ..HardState::default() } }
    }

    /// Entries replayed, as index and term.
    type Positions = Vec<(u64, u64)>;

    /// Everything replayed from `dir`: entries, and hard states' terms.
    fn replayed(dir: &Path, first: u64) -> Result<(Positions, Vec<u64>), StorageError> {
        let (mut entries, mut terms) = (Vec::new(), Vec::new());
        Wal::open(dir, first, |item| {
            match item {
                WalItem::Entry(e) => entries.push((e.index, e.term)),
                WalItem::HardState(hs) => terms.push(hs.term),
            }
            Ok(())
        })?;
        Ok((entries, terms))
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        let mut paths: Vec<PathBuf> =
            std::fs::read_dir(dir.join(DIR)).expect("dir").map(|e| e.expect("entry").path()).collect();
        paths.sort();
        paths.pop().expect("a segment")
    }

    #[test]
    fn writes_replay_in_order_with_one_hard_state_per_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wal = Wal::open(dir.path(), 0, |_| Ok(())).expect("open");
        let (a, b) = (write(vec![entry(1, 1), entry(2, 1)], 1), write(vec![entry(3, 2)], 2));
        wal.append([&a, &b]).expect("append");
        wal.append([&write(vec![entry(2, 3)], 3)]).expect("append");
        drop(wal);
        let (entries, terms) = replayed(dir.path(), 0).expect("replay");
        assert_eq!(entries, vec![(1, 1), (2, 1), (3, 2), (2, 3)]);
        assert_eq!(terms, vec![2, 3], "one hard state per write, the last of it");
    }

    /// Entries 1 and 2 written in two records to `dir`; the segment holding them.
    fn two_records(dir: &Path) -> PathBuf {
        let mut wal = Wal::open(dir, 0, |_| Ok(())).expect("open");
        wal.append([&write(vec![entry(1, 1)], 1)]).expect("append");
        wal.append([&write(vec![entry(2, 1)], 1)]).expect("append");
        drop(wal);
        newest_segment(dir)
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_cut_off_and_the_next_write_follows_the_last_whole_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = two_records(dir.path());
        let length = std::fs::metadata(&path).expect("meta").len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(length - 3).expect("cut");
        let mut wal = Wal::open(dir.path(), 0, |_| Ok(())).expect("a write that never finished is no damage");
        wal.append([&write(vec![entry(2, 2)], 2)]).expect("append");
        drop(wal);
        assert_eq!(replayed(dir.path(), 0).expect("replay").0, vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_whole_record_that_fails_its_checksum_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = two_records(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        // The last record's end zeroed, its length kept: a tear after the
        // write was made durable (and perhaps acknowledged).
        let end = bytes.len();
        bytes[end - 4..].fill(0);
        std::fs::write(&path, bytes).expect("write");
        match replayed(dir.path(), 0) {
            Err(StorageError::Corrupted { path: named, what }) => {
                assert_eq!(named, path);
                assert!(what.contains("checksum"), "{what}");
            }
            other => panic!("expected a refusal, got {:?}", other.map(|r| r.0)),
        }
    }

    #[test]
    fn compaction_removes_the_segments_it_passed_and_keeps_the_hard_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wal = Wal::open(dir.path(), 0, |_| Ok(())).expect("open");
        wal.append([&write((1..=10).map(|i| entry(i, 1)).collect(), 1)]).expect("append");
        wal.roll_with(&HardState { term: 4, ..HardState::default() }).expect("roll");
        wal.append([&write(vec![entry(11, 4)], 4)]).expect("append");
        wal.remove_compacted(9).expect("nothing passed yet");
        assert_eq!(wal.segment_count(), 2, "entry 10 is not compacted");
        wal.remove_compacted(10).expect("remove");
        assert_eq!(wal.segment_count(), 1);
        wal.remove_compacted(u64::MAX).expect("the segment written to stays");
        assert_eq!(wal.segment_count(), 1);
        drop(wal);
        assert_eq!(replayed(dir.path(), 0).expect("replay"), (vec![(11, 4)], vec![4, 4]));
    }

    #[test]
    fn segments_before_the_first_are_removed_on_opening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wal = Wal::open(dir.path(), 0, |_| Ok(())).expect("open");
        wal.append([&write(vec![entry(1, 1)], 1)]).expect("append");
        let fresh = wal.roll().expect("roll");
        drop(wal);
        let (entries, _) = replayed(dir.path(), fresh).expect("replay");
        assert!(entries.is_empty(), "the log from before a snapshot's install is gone: {entries:?}");
        assert_eq!(std::fs::read_dir(dir.path().join(DIR)).expect("dir").count(), 1);
    }
}
