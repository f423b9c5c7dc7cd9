//! A process replica's output: the file it writes to (opened to append, so
//! it survives the agent), rotated when it grows past a bound, as Docker's
//! json-file driver does with `max-size` and `max-file`.
//!
//! Rotation copies the file aside and truncates it in place: the replica
//! keeps its open file, which may be an adopted process's from before the
//! agent restarted, and its appends land at the new end.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ProcessRuntime, Tracked};
use crate::runtime::RuntimeError;

/// Older output kept beside the current file: `.log.1` (newer) and `.log.2`.
const ROTATED_FILES: u32 = 2;

/// How often log sizes are looked at.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Moves a log past `max_bytes` aside (dropping the oldest) and empties
/// it; answers whether it did.
pub(super) fn rotate_if_full(path: &Path, max_bytes: u64) -> io::Result<bool> {
    if std::fs::metadata(path)?.len() <= max_bytes {
        return Ok(false);
    }
    for n in (1..ROTATED_FILES).rev() {
        ignore_missing(std::fs::rename(rotated(path, n), rotated(path, n + 1)))?;
    }
    std::fs::copy(path, rotated(path, 1))?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// Keeps the logs of the running replicas within their bound, for as long
/// as the runtime lives.
pub(super) async fn keep_rotating(dir: PathBuf, tracked: Arc<Mutex<HashMap<u32, Tracked>>>, max_bytes: u64) {
    let mut every = tokio::time::interval(ROTATION_CHECK);
    loop {
        every.tick().await;
        let running: Vec<u64> = tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| !t.exited)
            .map(|t| t.allocation)
            .collect();
        for allocation in running {
            let path = super::log_path(&dir, allocation);
            if let Err(error) = rotate_if_full(&path, max_bytes) {
                tracing::warn!(allocation, %error, "cannot rotate a replica's log");
            }
        }
    }
}

impl ProcessRuntime {
    /// Its output: the rotated files, oldest first, then the current one;
    /// with `follow`, what it writes next (from the top again once the
    /// file is rotated under the reader).
    pub fn logs(&self, handle: &str, follow: bool) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let allocation =
            handle.parse::<u32>().ok().and_then(|pid| self.tracked().get(&pid).map(|t| t.allocation));
        let Some(allocation) = allocation else {
            return Box::pin(futures_util::stream::empty());
        };
        let path = self.log_path(allocation);
        let older: Vec<Result<Bytes, RuntimeError>> = (1..=ROTATED_FILES)
            .rev()
            .filter_map(|n| std::fs::read(rotated(&path, n)).ok())
            .filter(|bytes| !bytes.is_empty())
            .map(|bytes| Ok(Bytes::from(bytes)))
            .collect();
        let tracked = Arc::clone(&self.tracked);
        let pid: u32 = handle.parse().unwrap_or(0);
        let current = futures_util::stream::unfold(Some(0u64), move |offset| {
            let (path, tracked) = (path.clone(), Arc::clone(&tracked));
            async move {
                let mut offset = offset?;
                loop {
                    let mut file = tokio::fs::File::open(&path).await.ok()?;
                    if file.metadata().await.ok()?.len() < offset {
                        offset = 0;
                    }
                    file.seek(std::io::SeekFrom::Start(offset)).await.ok()?;
                    let mut buffer = Vec::new();
                    file.read_to_end(&mut buffer).await.ok()?;
                    if !buffer.is_empty() {
                        offset += buffer.len() as u64;
                        return Some((Ok(Bytes::from(buffer)), Some(offset)));
                    }
                    let exited =
                        tracked.lock().unwrap_or_else(|p| p.into_inner()).get(&pid).is_none_or(|t| t.exited);
                    if !follow || exited {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Box::pin(futures_util::StreamExt::chain(futures_util::stream::iter(older), current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_is_moved_aside_and_only_two_older_files_are_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("7.log");
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open");
        let mut write = |text: &str| io::Write::write_all(&mut writer, text.as_bytes()).expect("write");
        write("first\n");
        assert!(!rotate_if_full(&path, 6).expect("check"), "within the bound");
        for round in ["second\n", "third\n", "fourth\n"] {
            write(round);
            assert!(rotate_if_full(&path, 5).expect("rotate"));
        }
        write("fifth\n");
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(path.clone()), "fifth\n", "the writer's appends land in the emptied file");
        assert_eq!(read(rotated(&path, 1)), "fourth\n");
        assert_eq!(read(rotated(&path, 2)), "third\n");
        assert!(!read(rotated(&path, 2)).contains("first"), "the first rotation held first and second");
        assert!(!rotated(&path, 3).exists(), "the oldest is dropped");
    }
}
