//! One `flotilla server` process, which a test may kill, restart or corrupt.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::binary::flotilla_binary;

pub struct ServerProcess {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    /// Each run's output is appended here, for the test's failure message.
    pub log: PathBuf,
    /// How the server is started: `--peers ...` or `--join ...` and tuning flags.
    args: Vec<String>,
    child: Option<Child>,
}

impl ServerProcess {
    pub fn new(id: u64, address: String, dir: &Path, args: Vec<String>) -> Self {
        ServerProcess {
            id,
            address,
            data_dir: dir.join(format!("server-{id}")),
            log: dir.join(format!("server-{id}.log")),
            args,
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "server {} is already running", self.id);
        let log = File::options().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(flotilla_binary())
            .arg("server")
            .args(["--id", &self.id.to_string(), "--listen", &self.address])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .arg("--fault-injection")
            .env("FLOTILLA_LOG", "info,raft=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("flotilla server starts");
        self.child = Some(child);
    }

    /// The process id while it runs, for reading its memory use.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9: no shutdown, no flush; what was not fsynced is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit (kill -9 after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for a server that is expected to exit on its own (refusing to start).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Replaces how the server starts next time (for example `--join` after a wipe).
    pub fn set_args(&mut self, args: Vec<String>) {
        self.args = args;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
