//! One `flotilla agent` process. Its node name is unique to the test run,
//! and on drop the containers it started are removed, also when the test
//! failed: agents sharing one engine keep their containers apart by label.

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_cli::process_layout::agent_command;

use crate::daemon::Daemon;

pub struct AgentProcess {
    pub name: String,
    pub data_dir: PathBuf,
    daemon: Daemon,
}

impl AgentProcess {
    /// `join_token`: the cluster's agent join token (`None`: an `--insecure` cluster).
    pub fn new(
        name: String,
        servers: &[String],
        dir: &Path,
        join_token: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let data_dir = dir.join(format!("agent-{name}"));
        let mut args: Vec<OsString> =
            agent_command(servers, &data_dir, &name, join_token).into_iter().map(OsString::from).collect();
        args.extend(extra.iter().map(OsString::from));
        let daemon = Daemon::new(dir.join(format!("agent-{name}.log")), args);
        AgentProcess { name, data_dir, daemon }
    }

    /// What a `docker ... ls`-like command lists of this agent's node (by
    /// its label), one per line.
    fn labelled(&self, args: &[&str]) -> Vec<String> {
        let output = Command::new("docker")
            .args(args)
            .args(["--filter", &format!("label=flotilla.node={}", self.name)])
            .output();
        output
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Ids of the Docker containers this agent's node runs, running or not.
    pub fn containers(&self) -> Vec<String> {
        self.labelled(&["ps", "-aq", "--no-trunc"])
    }

    /// Kills the process-driver replicas this agent started (killing the
    /// agent leaves them running, for a restarted agent to adopt) and
    /// removes their cgroups.
    pub fn kill_replica_processes(&self) {
        flotilla_cli::process_layout::remove_agent_leftovers(&self.data_dir, &self.name);
    }

    /// Removes this node's containers.
    pub fn remove_containers(&self) {
        let containers = self.containers();
        if !containers.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&containers).output();
        }
    }

    /// Names of the Docker volumes this agent's node made for replica slots.
    pub fn volumes(&self) -> Vec<String> {
        self.labelled(&["volume", "ls", "-q"])
    }

    /// Removes this node's slot volumes (once its containers are gone).
    pub fn remove_volumes(&self) {
        let volumes = self.volumes();
        if !volumes.is_empty() {
            let _ = Command::new("docker").args(["volume", "rm", "-f"]).args(&volumes).output();
        }
    }
}

impl Deref for AgentProcess {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for AgentProcess {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.daemon.kill();
        self.kill_replica_processes();
        self.remove_containers();
        self.remove_volumes();
    }
}
