//! Removing what an agent's process replicas leave on their host once the
//! agent itself is gone for good (`cluster down`, a test's clean-up): a
//! stopped agent leaves its replicas running on purpose, to adopt them
//! when it starts again.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Kills the process groups the agent with `data_dir` recorded and
/// everything in its node's cgroups, then removes those cgroups.
pub fn remove_node_leftovers(data_dir: &Path, node: &str) {
    if let Ok(records) = std::fs::read_dir(data_dir.join("process")) {
        for record in records.flatten().filter(|r| r.path().extension().is_some_and(|e| e == "pid")) {
            let text = std::fs::read_to_string(record.path()).unwrap_or_default();
            let group =
                text.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()).and_then(Pid::from_raw);
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
            }
            let _ = std::fs::remove_file(record.path());
        }
    }
    let Ok(cgroups) = super::cgroup::Cgroups::find(Path::new(super::CGROUP_ROOT), node) else { return };
    for replica in cgroups.replicas() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            replica.kill_all();
            if replica.remove().is_ok() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    cgroups.remove();
}
