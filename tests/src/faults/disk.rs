//! Disks that fill up: a server's data dir on a small tmpfs of its own,
//! and a file that takes every byte left on it.

use std::path::Path;
use std::process::Command;

/// The file that fills a disk, beside the server's own files.
const FILLER: &str = "filler";

/// Mounts a tmpfs of `mib` MiB at `dir` (made if missing).
pub fn mount_small_disk(dir: &Path, mib: u64) {
    std::fs::create_dir_all(dir).expect("the data dir");
    let dir = dir.to_str().expect("a UTF-8 path");
    let size = format!("size={mib}m");
    let status =
        Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs", dir]).status().expect("mount");
    assert!(status.success(), "mount a {mib} MiB tmpfs at {dir}");
}

pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

/// Bytes free on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let output = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().expect("df");
    String::from_utf8_lossy(&output.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

/// Takes every byte left on `dir`'s disk.
pub fn fill(dir: &Path) {
    let filler = dir.join(FILLER);
    let mut size = free_bytes(dir);
    while size > 0 {
        let made = Command::new("fallocate").args(["-l", &size.to_string()]).arg(&filler).status();
        if made.is_ok_and(|s| s.success()) {
            return;
        }
        size = size.saturating_sub(64 << 10);
    }
}

/// Gives the space back.
pub fn free(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILLER));
}
