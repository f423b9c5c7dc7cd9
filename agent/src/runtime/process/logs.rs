//! A process replica's output, from the file it writes to.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::ProcessRuntime;
use crate::runtime::RuntimeError;

impl ProcessRuntime {
    pub fn logs(&self, handle: &str, follow: bool) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let allocation =
            handle.parse::<u32>().ok().and_then(|pid| self.tracked().get(&pid).map(|t| t.allocation));
        let Some(allocation) = allocation else {
            return Box::pin(futures_util::stream::empty());
        };
        let path = self.log_path(allocation);
        let tracked = Arc::clone(&self.tracked);
        let pid: u32 = handle.parse().unwrap_or(0);
        Box::pin(futures_util::stream::unfold(Some(0u64), move |offset| {
            let (path, tracked) = (path.clone(), Arc::clone(&tracked));
            async move {
                let mut offset = offset?;
                loop {
                    let mut file = tokio::fs::File::open(&path).await.ok()?;
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
        }))
    }
}
