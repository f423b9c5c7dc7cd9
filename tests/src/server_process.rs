//! One `flotilla server` process.

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use flotilla_cli::process_layout::{ServerCa, server_command};

use crate::daemon::Daemon;

pub struct ServerProcess {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    /// Where its TLS comes from.
    ca: ServerCa,
    daemon: Daemon,
}

/// The command line `flotilla cluster up` uses, plus `extra` and fault injection.
fn server_args(id: u64, address: &str, data_dir: &Path, ca: &ServerCa, extra: Vec<String>) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        server_command(id, address, data_dir, ca).into_iter().map(OsString::from).collect();
    args.extend(extra.into_iter().map(OsString::from));
    args.push("--fault-injection".into());
    args
}

impl ServerProcess {
    /// `extra`: how it joins (`--peers ...` or `--join ...`) and tuning flags.
    pub fn new(id: u64, address: String, dir: &Path, ca: ServerCa, extra: Vec<String>) -> Self {
        let data_dir = dir.join(format!("server-{id}"));
        let args = server_args(id, &address, &data_dir, &ca, extra);
        let daemon = Daemon::new(dir.join(format!("server-{id}.log")), args);
        ServerProcess { id, address, data_dir, ca, daemon }
    }

    /// Replaces how the server starts next time (for example `--join` after a wipe).
    pub fn set_args(&mut self, extra: Vec<String>) {
        let args = server_args(self.id, &self.address, &self.data_dir, &self.ca, extra);
        self.daemon.set_args(args);
    }
}

impl Deref for ServerProcess {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}
