//! A torn write: the end of a killed server's data file as a write that
//! reached the disk only in part would leave it. Zeros from a point in the
//! file's last pages to its end (what a file being extended held before the
//! write), the length kept. A server must then either start on what it can
//! prove whole, or refuse the file with an error that says it is corrupted,
//! never run on a state it cannot trust.

use std::path::Path;

use super::nemesis::Seeded;

/// The file a server's writes land in: the newest segment of its Raft log.
pub fn log_file(data_dir: &Path) -> std::path::PathBuf {
    let segments = std::fs::read_dir(data_dir.join("raft-log")).expect("the server's log segments");
    let mut paths: Vec<_> = segments.map(|item| item.expect("a segment").path()).collect();
    paths.sort();
    paths.pop().expect("a log segment")
}

/// How far from the end of the file a tear may start.
const TEAR_WITHIN: u64 = 64 * 1024;

/// Tears the end of `file` in place (on a full disk too); how many bytes
/// it zeroed.
pub fn tear(file: &Path, rng: &mut Seeded) -> u64 {
    use std::os::unix::fs::FileExt as _;
    let data = std::fs::OpenOptions::new().read(true).write(true).open(file).expect("the data file");
    let length = data.metadata().expect("the data file's length").len();
    let from = length - 1 - rng.below(TEAR_WITHIN.min(length));
    let mut torn = vec![0; (length - from) as usize];
    data.read_exact_at(&mut torn, from).expect("the end of the data file");
    let zeroed = torn.iter().filter(|b| **b != 0).count() as u64;
    data.write_all_at(&vec![0; torn.len()], from).expect("the torn end written");
    data.sync_all().expect("the torn end on disk");
    zeroed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tear_zeroes_the_end_and_keeps_the_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("data");
        std::fs::write(&file, vec![0xAB; 200_000]).expect("file");
        let mut rng = Seeded::new(3);
        let zeroed = tear(&file, &mut rng);
        let bytes = std::fs::read(&file).expect("file");
        assert_eq!(bytes.len(), 200_000);
        let from = bytes.iter().position(|b| *b == 0).expect("a tear");
        assert!(from as u64 >= 200_000 - TEAR_WITHIN, "the tear starts in the last pages: {from}");
        assert!(bytes[from..].iter().all(|b| *b == 0) && bytes[..from].iter().all(|b| *b == 0xAB));
        assert_eq!(zeroed, (200_000 - from) as u64);
    }
}
