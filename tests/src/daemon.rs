//! A `flotilla` daemon process (server or agent) that a test may kill,
//! restart or wait on. Each run's output is appended to one log file.

use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::binary::flotilla_binary;

pub struct Daemon {
    pub log: PathBuf,
    /// Everything after the binary: the verb and its flags.
    args: Vec<OsString>,
    child: Option<Child>,
    /// The network namespace it runs in (`ip netns exec`), if not the test's.
    namespace: Option<String>,
    /// Another `flotilla` binary than the one under test, if set.
    binary: Option<PathBuf>,
}

impl Daemon {
    pub fn new(log: PathBuf, args: Vec<OsString>) -> Self {
        Daemon { log, args, child: None, namespace: None, binary: None }
    }

    /// Runs it, from its next start, in network namespace `namespace`.
    pub fn set_namespace(&mut self, namespace: &str) {
        self.namespace = Some(namespace.to_owned());
    }

    /// Runs `binary` from its next start instead of the binary under test.
    pub fn set_binary(&mut self, binary: PathBuf) {
        self.binary = Some(binary);
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.log.display());
        let log = File::options().create(true).append(true).open(&self.log).expect("log file");
        // `ip netns exec` execs the daemon in the namespace: its pid is the daemon's.
        let binary = self.binary.clone().unwrap_or_else(flotilla_binary);
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace.as_str()]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(&self.args)
            .env("FLOTILLA_LOG", "info,raft=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("flotilla starts");
        self.child = Some(child);
    }

    pub fn set_args(&mut self, args: Vec<OsString>) {
        self.args = args;
    }

    /// The process id while it runs, for reading its memory use.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it was started and has since exited on its own (a crash, a
    /// refusal to go on); it is then no longer counted as running.
    pub fn exited(&mut self) -> bool {
        let gone = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if gone {
            self.child = None;
        }
        gone
    }

    /// kill -9: no shutdown, no flush; what was not fsynced is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies of SIGKILL all the same; SIGCONT is for tidiness.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: it holds its sockets and its state, and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after a pause.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
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

    /// SIGTERM, and how it exited (`None`: still running after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("-TERM");
        self.wait_for_exit(timeout)
    }

    /// Waits for a process that is expected to exit on its own (refusing to start).
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
