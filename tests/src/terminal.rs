//! A real terminal for the full-screen CLI's tests: a detached tmux
//! session of a chosen size on a tmux server of the test's own (its own
//! socket), read with `capture-pane` and typed into with `send-keys`. The
//! server and what runs in it are killed when the `Terminal` is dropped.

use std::process::{Command, Output};

pub struct Terminal {
    /// The tmux server's socket name (`tmux -L`), unique to this terminal.
    socket: String,
}

impl Terminal {
    /// Runs `program` with `args` and `environment` in a new terminal of
    /// `width` x `height` cells.
    pub fn start(
        program: &str,
        args: &[String],
        environment: &[(String, String)],
        width: u16,
        height: u16,
    ) -> Self {
        let socket = format!("flotilla-test-{}-{}", std::process::id(), crate::binary::free_port());
        let terminal = Terminal { socket };
        let mut command = Command::new("tmux");
        command.args(["-L", &terminal.socket, "new-session", "-d", "-s", "main"]);
        command.args(["-x", &width.to_string(), "-y", &height.to_string()]);
        for (key, value) in environment {
            command.args(["-e", &format!("{key}={value}")]);
        }
        command.arg("--").arg(program).args(args);
        let started = command.output().expect("tmux runs (apt-get install tmux)");
        assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
        terminal
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("tmux runs")
    }

    /// What the terminal shows now, one line per row.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "main"]).stdout).into_owned()
    }

    /// Types `key` (tmux's key names: `q`, `Escape`, `C-c`).
    pub fn press(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "main", key]);
    }

    /// Whether the program still runs (its session ends when it exits).
    pub fn is_running(&self) -> bool {
        self.tmux(&["has-session", "-t", "main"]).status.success()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}
