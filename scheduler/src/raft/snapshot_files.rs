//! Snapshot data in files of their own beside `raft.redb`, which keeps only
//! the latest snapshot's metadata and which file holds its data.
//!
//! The state of a big cluster serializes to hundreds of megabytes. Kept in
//! redb, every snapshot was built as one buffer, copied into a transaction
//! and fsynced by the Raft thread, which sent no heartbeat meanwhile, so
//! followers elected another leader. A file is instead streamed by the
//! thread that takes the snapshot, checksummed as it goes, made durable
//! before redb names it, and read back as a stream on restart.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::checksum::Crc32;
use super::storage::StorageError;

/// Where a snapshot's data is and how to know it whole: stored in redb in
/// the same transaction as the snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotFile {
    /// The file's name inside the snapshot directory.
    pub name: String,
    /// Its length: a file cut short is refused by its size before its
    /// bytes are read.
    pub bytes: u64,
    /// CRC-32 of its bytes, checked whenever it is read back.
    pub crc32: u32,
}

/// A snapshot written under this suffix is not yet durable; one left by a
/// crash is removed when the directory is opened.
const PARTIAL_SUFFIX: &str = ".partial";

/// Buffers between serde and the file: large enough that the state's
/// serializer makes few system calls.
const BUFFER_BYTES: usize = 1 << 20;

/// What a snapshot is streamed into: its bytes counted and checksummed on
/// their way to the file.
pub struct SnapshotSink {
    file: File,
    crc: Crc32,
    bytes: u64,
}

impl Write for SnapshotSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.crc.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A snapshot file's bytes as a stream, checked against its size and
/// checksum by [`SnapshotReader::verify`] once all are read.
pub struct SnapshotReader {
    file: BufReader<File>,
    crc: Crc32,
    bytes: u64,
    expected: SnapshotFile,
    path: PathBuf,
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read(buf)?;
        self.crc.update(&buf[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}

impl SnapshotReader {
    /// Whether the bytes read were the whole file as it was written; reads
    /// what the consumer left unread first.
    pub fn verify(mut self) -> Result<(), StorageError> {
        let path = self.path.clone();
        let corrupted = |what: String| StorageError::Corrupted { path: path.clone(), what };
        io::copy(&mut self, &mut io::sink()).map_err(|e| corrupted(format!("read failed: {e}")))?;
        if self.bytes != self.expected.bytes {
            return Err(corrupted(format!(
                "holds {} bytes, not the {} written",
                self.bytes, self.expected.bytes
            )));
        }
        if self.crc.finish() != self.expected.crc32 {
            return Err(corrupted("fails its checksum".into()));
        }
        Ok(())
    }
}

/// The directory of snapshot files, `snapshots` in the Raft data dir.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    path: PathBuf,
}

impl SnapshotDir {
    /// Opens (or creates) the directory and removes what a crash left
    /// half-written.
    pub fn open(raft_dir: &Path) -> Result<Self, StorageError> {
        let path = raft_dir.join("snapshots");
        let open_error = |e: io::Error| StorageError::Open { path: path.clone(), reason: e.to_string() };
        std::fs::create_dir_all(&path).map_err(open_error)?;
        for entry in std::fs::read_dir(&path).map_err(open_error)? {
            let entry = entry.map_err(open_error)?;
            if entry.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                std::fs::remove_file(entry.path()).map_err(open_error)?;
            }
        }
        Ok(SnapshotDir { path })
    }

    pub fn path_of(&self, file: &SnapshotFile) -> PathBuf {
        self.path.join(&file.name)
    }

    /// Streams a snapshot at `index` into a new file through `fill`, then
    /// makes it durable: written under a partial name, fsynced, renamed,
    /// and the directory fsynced. `fill` may hold a lock while it
    /// serializes; the fsync comes after it returns.
    pub fn write(
        &self,
        index: u64,
        term: u64,
        fill: impl FnOnce(&mut BufWriter<SnapshotSink>) -> io::Result<()>,
    ) -> Result<SnapshotFile, StorageError> {
        let name = format!("snapshot-{term:020}-{index:020}.json");
        let partial = self.path.join(format!("{name}{PARTIAL_SUFFIX}"));
        let write_error = |e: io::Error| StorageError::Write { path: partial.clone(), reason: e.to_string() };
        let file = File::create(&partial).map_err(write_error)?;
        let mut out =
            BufWriter::with_capacity(BUFFER_BYTES, SnapshotSink { file, crc: Crc32::new(), bytes: 0 });
        fill(&mut out).map_err(write_error)?;
        let sink = out.into_inner().map_err(|e| write_error(e.into_error()))?;
        sink.file.sync_all().map_err(write_error)?;
        let done = self.path.join(&name);
        std::fs::rename(&partial, &done).map_err(write_error)?;
        File::open(&self.path).and_then(|dir| dir.sync_all()).map_err(write_error)?;
        Ok(SnapshotFile { name, bytes: sink.bytes, crc32: sink.crc.finish() })
    }

    /// The file's bytes as a stream, to be verified once read.
    pub fn reader(&self, file: &SnapshotFile) -> Result<SnapshotReader, StorageError> {
        let path = self.path_of(file);
        let handle = File::open(&path).map_err(|e| StorageError::Corrupted {
            path: path.clone(),
            what: format!("cannot be opened: {e}"),
        })?;
        Ok(SnapshotReader {
            file: BufReader::with_capacity(BUFFER_BYTES, handle),
            crc: Crc32::new(),
            bytes: 0,
            expected: file.clone(),
            path,
        })
    }

    /// The whole file, checked: what a leader sends a follower that fell
    /// behind its log.
    pub fn read_all(&self, file: &SnapshotFile) -> Result<Vec<u8>, StorageError> {
        let mut reader = self.reader(file)?;
        let mut bytes = Vec::with_capacity(usize::try_from(file.bytes).unwrap_or(0));
        reader.read_to_end(&mut bytes).map_err(|e| StorageError::Corrupted {
            path: self.path_of(file),
            what: format!("read failed: {e}"),
        })?;
        reader.verify()?;
        Ok(bytes)
    }

    /// Whether the file is there at its full size: checked when the data
    /// dir is opened, so a missing snapshot is named at once.
    pub fn check_present(&self, file: &SnapshotFile) -> Result<(), StorageError> {
        let path = self.path_of(file);
        let len = std::fs::metadata(&path)
            .map_err(|e| StorageError::Corrupted {
                path: path.clone(),
                what: format!("cannot be read: {e}"),
            })?
            .len();
        if len != file.bytes {
            return Err(StorageError::Corrupted {
                path,
                what: format!("holds {len} bytes, not the {} written", file.bytes),
            });
        }
        Ok(())
    }

    /// Removes every snapshot file but `keep` (those an older compaction
    /// or a stale snapshot left); a file that cannot be removed only wastes
    /// space, so it is logged, not fatal.
    pub fn remove_all_but(&self, keep: Option<&SnapshotFile>) {
        let Ok(entries) = std::fs::read_dir(&self.path) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kept = keep.is_some_and(|k| k.name == name);
            if !kept
                && !name.ends_with(PARTIAL_SUFFIX)
                && let Err(error) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(%error, file = %entry.path().display(), "cannot remove an old snapshot");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(dir: &SnapshotDir, index: u64, bytes: &[u8]) -> SnapshotFile {
        dir.write(index, 1, |out| out.write_all(bytes)).expect("write")
    }

    #[test]
    fn a_snapshot_streams_to_its_file_and_back_checked() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = SnapshotDir::open(temp.path()).expect("open");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let file = written(&dir, 7, &data);
        assert_eq!(file.bytes, data.len() as u64);
        assert_eq!(dir.read_all(&file).expect("read back"), data);
        let mut reader = dir.reader(&file).expect("reader");
        let mut first = [0u8; 10];
        reader.read_exact(&mut first).expect("read");
        reader.verify().expect("a partly read stream is verified to its end");
    }

    #[test]
    fn a_damaged_or_short_file_is_refused_by_name() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = SnapshotDir::open(temp.path()).expect("open");
        let file = written(&dir, 7, b"the state of the cluster");
        let path = dir.path_of(&file);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[3] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("flip a byte");
        match dir.read_all(&file) {
            Err(StorageError::Corrupted { path: named, what }) => {
                assert_eq!(named, path);
                assert!(what.contains("checksum"), "{what}");
            }
            other => panic!("a flipped byte was not refused: {other:?}"),
        }
        std::fs::write(&path, &bytes[..5]).expect("cut short");
        match dir.check_present(&file) {
            Err(StorageError::Corrupted { what, .. }) => assert!(what.contains("5 bytes"), "{what}"),
            other => panic!("a short file was not refused: {other:?}"),
        }
    }

    #[test]
    fn a_half_written_snapshot_is_removed_on_opening_and_old_ones_on_request() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = SnapshotDir::open(temp.path()).expect("open");
        let old = written(&dir, 7, b"old");
        let new = written(&dir, 9, b"new");
        let partial = temp.path().join("snapshots").join(format!("{}{PARTIAL_SUFFIX}", "snapshot-x"));
        std::fs::write(&partial, b"half").expect("partial");
        let dir = SnapshotDir::open(temp.path()).expect("reopen");
        assert!(!partial.exists(), "what a crash left half-written is gone");
        dir.remove_all_but(Some(&new));
        assert!(!dir.path_of(&old).exists());
        assert!(dir.path_of(&new).exists());
    }
}
