//! Plain HTTP/1.0 requests, one connection each, and a steady load of them:
//! what the mesh suites count replies and failures with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET /` on a new connection: the body, trimmed, or why it failed.
pub async fn fetch(address: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.map_err(|e| format!("write: {e}"))?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP reply: {text:?}"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("status: {}", head.lines().next().unwrap_or_default()));
        }
        Ok(body.trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "timed out".to_owned())?
}

/// What a load saw: replies by body, and every failure.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub replies: BTreeMap<String, usize>,
    pub failures: Vec<String>,
}

/// `concurrency` clients, each sending one request after another until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(address: SocketAddr, concurrency: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tasks = (0..concurrency)
            .map(|_| {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let result = fetch(address).await;
                        let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                        match result {
                            Ok(body) => *tally.replies.entry(body).or_insert(0) += 1,
                            Err(error) => tally.failures.push(error),
                        }
                    }
                })
            })
            .collect();
        Load { stop, tally, tasks }
    }

    /// Replies and failures so far; `reset` starts a new count.
    pub fn take(&self, reset: bool) -> Tally {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if reset { std::mem::take(&mut *tally) } else { tally.clone() }
    }

    pub async fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        tally.clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
