//! The process runtime: runs a spec's command as a child process, for hosts
//! without Docker. Each allocation gets its own process group, so stopping
//! it kills everything it started; its output goes to a file for `logs`.
//!
//! A record per allocation (`<data>/process/<alloc>.pid`) lets a restarted
//! agent find processes that outlived it; it cannot wait on them (they are
//! not its children), so it polls whether they still exist.
//!
//! Where the agent may manage cgroups (as root), each replica runs in its
//! own (see [`cgroup`]): limited to its CPU and memory requests, OOM-killed
//! past its memory, measured as a whole, and killed as a whole. Elsewhere
//! (an unprivileged `flotilla dev`) replicas run unlimited, as the agent
//! warns when it starts.

mod cgroup;
mod leftovers;
mod logs;
mod usage;

pub use leftovers::remove_node_leftovers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::sync::mpsc;

use super::process_user::ProcessUser;
use super::{Launch, Observed, RuntimeError, RuntimeEvent};

/// Processes share the node's network: clients on the node reach them here.
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// What a replica's environment starts from when its spec sets no PATH:
/// the agent's own environment is never passed on.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A replica's (or its exec check's) command: only its own environment,
/// as the replicas' user.
fn replica_command(
    program: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    user: Option<&ProcessUser>,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.args(args).env_clear().env("PATH", DEFAULT_PATH).envs(env);
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
    command
}

/// What the runtime knows of one process.
#[derive(Debug, Clone)]
struct Tracked {
    allocation: u64,
    node: String,
    exit_code: Option<i64>,
    exited: bool,
    /// Previous CPU reading (nanoseconds, when), for a usage rate.
    last_cpu: Option<(u64, Instant)>,
    /// Its own cgroup, where the host lets the agent make one.
    cgroup: Option<cgroup::ReplicaCgroup>,
    /// The group's OOM kills when this start began: more at its exit
    /// means the kernel killed it for its memory.
    oom_kills_before: u64,
    oom_killed: bool,
}

impl Tracked {
    fn new(allocation: u64, node: &str, cgroup: Option<cgroup::ReplicaCgroup>) -> Self {
        let oom_kills_before = cgroup.as_ref().map_or(0, cgroup::ReplicaCgroup::oom_kills);
        Tracked {
            allocation,
            node: node.to_owned(),
            exit_code: None,
            exited: false,
            last_cpu: None,
            cgroup,
            oom_kills_before,
            oom_killed: false,
        }
    }
}

pub struct ProcessRuntime {
    dir: PathBuf,
    /// Who replicas run as; `None`: the agent's own (non-root) user.
    user: Option<ProcessUser>,
    tracked: Arc<Mutex<HashMap<u32, Tracked>>>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    /// Where replicas' cgroups are made; `None` where the agent may not.
    cgroups: Option<cgroup::Cgroups>,
}

/// Where an allocation's output goes.
fn log_path(dir: &Path, allocation: u64) -> PathBuf {
    dir.join(format!("{allocation}.log"))
}

/// Where the host's cgroup filesystem is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The command run for a replica in `group`: a shell that puts itself in
/// the group's cgroups, then becomes the replica's program (so nothing of
/// the replica ever runs outside them).
fn joining(group: &cgroup::ReplicaCgroup, program: &str, args: &[String]) -> (String, Vec<String>) {
    let procs = group.procs_files();
    let joins: Vec<String> = (1..=procs.len()).map(|i| format!("echo 0 > \"${i}\"")).collect();
    let script = format!("{} && shift {} && exec \"$@\"", joins.join(" && "), procs.len());
    let mut all = vec!["-c".to_owned(), script, "flotilla-cgroup-join".to_owned()];
    all.extend(procs.iter().map(|p| p.display().to_string()));
    all.push(program.to_owned());
    all.extend(args.iter().cloned());
    ("/bin/sh".to_owned(), all)
}

fn process_error(what: &str, error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Process(format!("{what}: {error}"))
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

impl ProcessRuntime {
    pub fn new(
        data_dir: &Path,
        node: &str,
        user: Option<ProcessUser>,
        events: mpsc::UnboundedSender<RuntimeEvent>,
        log_max_bytes: u64,
    ) -> Result<Self, RuntimeError> {
        let dir = data_dir.join("process");
        std::fs::create_dir_all(&dir).map_err(|e| process_error("cannot create its directory", e))?;
        let cgroups = match cgroup::Cgroups::prepare(Path::new(CGROUP_ROOT), node) {
            Ok(cgroups) => Some(cgroups),
            Err(error) => {
                tracing::warn!(%error, "process replicas run WITHOUT CPU and memory limits: this agent cannot make cgroups");
                None
            }
        };
        let tracked: Arc<Mutex<HashMap<u32, Tracked>>> = Arc::default();
        tokio::spawn(logs::keep_rotating(dir.clone(), Arc::clone(&tracked), log_max_bytes));
        Ok(ProcessRuntime { dir, user, tracked, events, cgroups })
    }

    /// Runs an exec check's command beside the processes, as they run;
    /// killed when it outlasts `timeout`.
    pub async fn exec(
        &self,
        command: &[String],
        env: &std::collections::BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<(i64, String), RuntimeError> {
        let (program, args) =
            command.split_first().ok_or_else(|| RuntimeError::Process("the check has no command".into()))?;
        let child = replica_command(program, args, env, self.user.as_ref())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| process_error(&format!("cannot run `{program}`"), e))?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| RuntimeError::Process(format!("`{program}` did not finish within {timeout:?}")))?
            .map_err(|e| process_error(&format!("`{program}`"), e))?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok((output.status.code().map_or(-1, i64::from), text))
    }

    fn log_path(&self, allocation: u64) -> PathBuf {
        log_path(&self.dir, allocation)
    }

    fn record_path(&self, allocation: u64) -> PathBuf {
        self.dir.join(format!("{allocation}.pid"))
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Tracked>> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn start(&self, launch: Launch<'_>) -> Result<Observed, RuntimeError> {
        let allocation = launch.allocation.id;
        let (program, args) = launch
            .spec
            .command
            .split_first()
            .ok_or_else(|| RuntimeError::Process("the spec has no command".into()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(allocation))
            .map_err(|e| process_error("cannot open its log", e))?;
        let stderr = log.try_clone().map_err(|e| process_error("cannot open its log", e))?;
        let group = self.cgroups.as_ref().map(|c| c.replica(allocation));
        let (program, args) = match &group {
            Some(group) => {
                group
                    .create(launch.allocation.cpu, launch.allocation.memory)
                    .map_err(|e| process_error("cannot make its cgroup", e))?;
                if let Some(user) = &self.user {
                    group
                        .delegate_to(user.uid, user.gid)
                        .map_err(|e| process_error("cannot make its cgroup", e))?;
                }
                joining(group, program, args)
            }
            None => (program.clone(), args.to_vec()),
        };
        let mut child = replica_command(&program, &args, launch.env, self.user.as_ref())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| process_error(&format!("cannot run `{program}`"), e))?;
        let pid = child.id().ok_or_else(|| RuntimeError::Process("the process exited at once".into()))?;
        std::fs::write(self.record_path(allocation), format!("{pid} {}", launch.node))
            .map_err(|e| process_error("cannot record its pid", e))?;
        self.tracked().insert(pid, Tracked::new(allocation, launch.node, group));
        let (tracked, events) = (Arc::clone(&self.tracked), self.events.clone());
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = status.ok().map(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().map(i64::from).or_else(|| s.signal().map(|sig| 128 + i64::from(sig))).unwrap_or(-1)
            });
            exited(&tracked, pid, code).await;
            let _ = events.send(RuntimeEvent::Exited { allocation, exit_code: None });
        });
        Ok(self.observed(pid).unwrap_or(Observed {
            allocation,
            handle: pid.to_string(),
            running: true,
            exit_code: None,
            oom_killed: false,
            ports: launch.allocation.ports.clone(),
            address: Some(LOOPBACK),
            healthcheck: false,
            image: None,
        }))
    }

    fn observed(&self, pid: u32) -> Option<Observed> {
        let tracked = self.tracked();
        let t = tracked.get(&pid)?;
        Some(Observed {
            allocation: t.allocation,
            handle: pid.to_string(),
            running: !t.exited,
            exit_code: t.exit_code,
            oom_killed: t.oom_killed,
            ports: Vec::new(),
            address: Some(LOOPBACK),
            healthcheck: false,
            image: None,
        })
    }

    /// SIGTERM to the whole group, SIGKILL after five seconds.
    pub async fn stop(&self, handle: &str) -> Result<(), RuntimeError> {
        let Ok(pid) = handle.parse::<u32>() else { return Ok(()) };
        let Some(group) = Pid::from_raw(pid as i32) else { return Ok(()) };
        let _ = rustix::process::kill_process_group(group, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
        let stopped = self.tracked().remove(&pid);
        if let Some(stopped) = stopped {
            if let Some(cgroup) = &stopped.cgroup {
                // What left the process group (`setsid`) is still in the cgroup.
                empty_and_remove(cgroup).await;
            }
            let _ = std::fs::remove_file(self.record_path(stopped.allocation));
        }
        Ok(())
    }

    pub fn inspect(&self, handle: &str) -> Option<Observed> {
        self.observed(handle.parse().ok()?)
    }

    /// Processes of `node`: those this agent started, and those a previous
    /// run of it left behind (found from their records and adopted).
    pub fn list(&self, node: &str) -> Vec<Observed> {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "pid") {
                    continue;
                }
                let allocation =
                    path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
                let record = std::fs::read_to_string(&path).unwrap_or_default();
                let (pid, owner) = record.split_once(' ').unwrap_or(("", ""));
                let (Some(allocation), Ok(pid)) = (allocation, pid.parse::<u32>()) else { continue };
                if owner != node || self.tracked().contains_key(&pid) {
                    continue;
                }
                if alive(pid) {
                    self.adopt(pid, allocation, node);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let pids: Vec<u32> =
            self.tracked().iter().filter(|(_, t)| t.node == node).map(|(pid, _)| *pid).collect();
        pids.into_iter().filter_map(|pid| self.observed(pid)).collect()
    }

    fn adopt(&self, pid: u32, allocation: u64, node: &str) {
        let group = self.cgroups.as_ref().map(|c| c.replica(allocation));
        self.tracked().insert(pid, Tracked::new(allocation, node, group));
        let (tracked, events) = (Arc::clone(&self.tracked), self.events.clone());
        tokio::spawn(async move {
            while alive(pid) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            exited(&tracked, pid, None).await;
            let _ = events.send(RuntimeEvent::Exited { allocation, exit_code: None });
        });
    }
}

/// A replica's main process ended: whether the kernel killed it for its
/// memory, and, as when a container's first process ends, the end of
/// whatever it left running.
async fn exited(tracked: &Mutex<HashMap<u32, Tracked>>, pid: u32, code: Option<i64>) {
    let cgroup = {
        let mut tracked = tracked.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = tracked.get_mut(&pid) else { return };
        t.exited = true;
        t.exit_code = code;
        if let Some(cgroup) = &t.cgroup {
            t.oom_killed = cgroup.oom_kills() > t.oom_kills_before;
        }
        t.cgroup.clone()
    };
    if let Some(cgroup) = cgroup {
        empty_and_remove(&cgroup).await;
    }
}

/// Kills what is left in a replica's cgroup and removes it, waiting a
/// little for the kernel to reap the killed. A group still busy then (seen
/// after an OOM kill: the kernel took longer than that to reap what was
/// killed) goes on being removed in the background, so that the exit it
/// follows is reported without waiting for it.
async fn empty_and_remove(cgroup: &cgroup::ReplicaCgroup) {
    if remove_within(cgroup, Duration::from_secs(5), Duration::from_millis(50)).await.is_ok() {
        return;
    }
    let cgroup = cgroup.clone();
    tokio::spawn(async move {
        if let Err(error) = remove_within(&cgroup, Duration::from_secs(300), Duration::from_millis(500)).await
        {
            tracing::warn!(%error, "cannot remove a replica's cgroup");
        }
    });
}

/// Kills and tries to remove until the group is gone or `within` passes,
/// `pause` between tries; the last error when it stays.
async fn remove_within(
    cgroup: &cgroup::ReplicaCgroup,
    within: Duration,
    pause: Duration,
) -> std::io::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        cgroup.kill_all();
        match cgroup.remove() {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(pause).await,
        }
    }
}
