//! Each process replica's own control group, as Docker gives a container:
//! a CPU quota from its request, a memory limit (no swap) whose breach the
//! kernel answers with an OOM kill, usage counted over every process in it,
//! and a way to find and kill all of them, even those that left its process
//! group. cgroup v2 where the host has the unified hierarchy, v1 (the cpu,
//! cpuacct and memory controllers) elsewhere.
//!
//! Groups live at `flotilla/<node>/<allocation>` under each controller, so
//! a restarted agent finds the groups of the processes it adopts, and
//! agents sharing a host keep apart.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The scheduling period a CPU quota is a share of (as Docker's `--cpus`).
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel's smallest quota.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// Which cgroup hierarchy the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    /// One directory per controller under the mount point.
    V1,
    /// The unified hierarchy: every controller in one directory.
    V2,
}

/// Where this agent's replica groups are made.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// `flotilla/<node>` under each controller's root: for v1 the cpu,
    /// cpuacct and memory directories, for v2 one.
    bases: Vec<PathBuf>,
}

/// The groups of one replica (one per v1 controller, or one v2 group).
#[derive(Debug, Clone)]
pub struct ReplicaCgroup {
    version: Version,
    /// v1: cpu, cpuacct, memory, in that order; v2: the one group.
    dirs: Vec<PathBuf>,
}

/// A node name as one path component.
fn component(node: &str) -> String {
    node.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A `key value` line's value in a flat keyed file (`memory.stat`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Cgroups {
    /// Finds the host's hierarchy under `root` (`/sys/fs/cgroup`) and makes
    /// this node's base groups; an error says why replicas cannot be
    /// isolated here (no cgroup filesystem, or not allowed to write it).
    pub fn prepare(root: &Path, node: &str) -> io::Result<Self> {
        let relative = Path::new("flotilla").join(component(node));
        if root.join("cgroup.controllers").exists() {
            let controllers = fs::read_to_string(root.join("cgroup.controllers"))?;
            for needed in ["cpu", "memory"] {
                if !controllers.split_whitespace().any(|c| c == needed) {
                    return Err(io::Error::other(format!("the {needed} controller is not enabled")));
                }
            }
            // v2 hands controllers down level by level.
            let mut dir = root.to_path_buf();
            for part in relative.components() {
                write(&dir.join("cgroup.subtree_control"), "+cpu +memory")?;
                dir.push(part);
                fs::create_dir_all(&dir)?;
            }
            write(&dir.join("cgroup.subtree_control"), "+cpu +memory")?;
            return Ok(Cgroups { version: Version::V2, bases: vec![dir] });
        }
        let mut bases = Vec::new();
        for controller in ["cpu", "cpuacct", "memory"] {
            let mount = root.join(controller);
            if !mount.join("cgroup.procs").exists() {
                return Err(io::Error::other(format!(
                    "no cgroup v1 {controller} controller at {}",
                    mount.display()
                )));
            }
            let base = mount.join(&relative);
            fs::create_dir_all(&base)?;
            bases.push(base);
        }
        Ok(Cgroups { version: Version::V1, bases })
    }

    /// This node's base groups as an earlier agent made them, to clean up;
    /// makes nothing.
    pub fn find(root: &Path, node: &str) -> io::Result<Self> {
        let relative = Path::new("flotilla").join(component(node));
        let (version, mounts) = if root.join("cgroup.controllers").exists() {
            (Version::V2, vec![root.to_path_buf()])
        } else {
            (Version::V1, ["cpu", "cpuacct", "memory"].iter().map(|c| root.join(c)).collect())
        };
        let bases: Vec<PathBuf> = mounts.iter().map(|m| m.join(&relative)).collect();
        if !bases.iter().any(|b| b.is_dir()) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "this node has no cgroups"));
        }
        Ok(Cgroups { version, bases })
    }

    /// The replica groups that exist under this node's.
    pub fn replicas(&self) -> Vec<ReplicaCgroup> {
        let mut allocations: Vec<u64> = self
            .bases
            .iter()
            .filter_map(|base| fs::read_dir(base).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        allocations.sort_unstable();
        allocations.dedup();
        allocations.into_iter().map(|a| self.replica(a)).collect()
    }

    /// Removes this node's base groups (once their replicas' are gone).
    pub fn remove(&self) {
        for base in &self.bases {
            let _ = fs::remove_dir(base);
        }
    }

    /// The group of one allocation (made by [`ReplicaCgroup::create`]).
    pub fn replica(&self, allocation: u64) -> ReplicaCgroup {
        let dirs = self.bases.iter().map(|base| base.join(allocation.to_string())).collect();
        ReplicaCgroup { version: self.version.clone(), dirs }
    }
}

impl ReplicaCgroup {
    fn memory_dir(&self) -> &Path {
        self.dirs.last().map_or(Path::new("/nonexistent"), PathBuf::as_path)
    }

    /// Makes the group with its limits: `cpu_millis` of CPU time per
    /// second, `memory` bytes of memory and none of swap. A group left from
    /// an earlier start of the allocation is reused with fresh limits.
    pub fn create(&self, cpu_millis: u64, memory: u64) -> io::Result<()> {
        for dir in &self.dirs {
            fs::create_dir_all(dir)?;
        }
        let quota = (cpu_millis * CPU_PERIOD_US / 1000).max(MIN_CPU_QUOTA_US);
        match self.version {
            Version::V2 => {
                let dir = &self.dirs[0];
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir.join("memory.max"), &memory.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
            }
            Version::V1 => {
                let cpu = &self.dirs[0];
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                let memory_dir = self.memory_dir();
                let swap = memory_dir.join("memory.memsw.limit_in_bytes");
                // The memory+swap limit may never be below the memory limit:
                // lower it last when shrinking, raise it first when growing.
                let current: u64 = fs::read_to_string(memory_dir.join("memory.limit_in_bytes"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                if swap.exists() && memory > current {
                    write(&swap, &memory.to_string())?;
                }
                write(&memory_dir.join("memory.limit_in_bytes"), &memory.to_string())?;
                if swap.exists() {
                    write(&swap, &memory.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The groups' `cgroup.procs` files: the replica's command joins them
    /// itself (a shell writes \"0\" to each, then execs the command), so
    /// everything it ever starts is inside from its first instruction.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|dir| dir.join("cgroup.procs")).collect()
    }

    /// Lets the replicas' user put its own processes in the group (as
    /// systemd delegates a group): it may move only processes of its own
    /// user, so it gains nothing else.
    pub fn delegate_to(&self, uid: u32, gid: u32) -> io::Result<()> {
        for procs in self.procs_files() {
            std::os::unix::fs::chown(&procs, Some(uid), Some(gid))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", procs.display())))?;
        }
        Ok(())
    }

    /// How many times the kernel OOM-killed a process of the group.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        fs::read_to_string(self.memory_dir().join(file)).ok().and_then(|t| keyed(&t, "oom_kill")).unwrap_or(0)
    }

    /// CPU time used by all its processes so far (nanoseconds), and the
    /// memory they use now less the page cache the kernel can drop (as
    /// `docker stats` counts it).
    pub fn usage(&self) -> Option<(u64, u64)> {
        let read = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok();
        let memory_stat = read(self.memory_dir(), "memory.stat")?;
        match self.version {
            Version::V2 => {
                let cpu_ns = keyed(&read(&self.dirs[0], "cpu.stat")?, "usage_usec")? * 1000;
                let current: u64 = read(&self.dirs[0], "memory.current")?.trim().parse().ok()?;
                let inactive = keyed(&memory_stat, "inactive_file").unwrap_or(0);
                Some((cpu_ns, current.saturating_sub(inactive)))
            }
            Version::V1 => {
                let cpu_ns = read(&self.dirs[1], "cpuacct.usage")?.trim().parse().ok()?;
                let usage: u64 = read(self.memory_dir(), "memory.usage_in_bytes")?.trim().parse().ok()?;
                let inactive = keyed(&memory_stat, "total_inactive_file").unwrap_or(0);
                Some((cpu_ns, usage.saturating_sub(inactive)))
            }
        }
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<u32> {
        let text = fs::read_to_string(self.memory_dir().join("cgroup.procs")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// SIGKILLs every process in it, those that left the replica's process
    /// group (`setsid`) included.
    pub fn kill_all(&self) {
        if self.version == Version::V2 && write(&self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Removes the groups once nothing runs in them (the kernel refuses
    /// before); an error names what stayed.
    pub fn remove(&self) -> io::Result<()> {
        for dir in &self.dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_read_by_their_keys() {
        let stat = "cache 4096\ntotal_inactive_file 8192\ninactive_file 12\n";
        assert_eq!(keyed(stat, "total_inactive_file"), Some(8192));
        assert_eq!(keyed(stat, "inactive_file"), Some(12), "a key, not a suffix of another");
        assert_eq!(keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(keyed("usage_usec 10\n", "user_usec"), None);
    }

    #[test]
    fn a_node_name_is_one_path_component() {
        assert_eq!(component("rack-1/host.a b"), "rack-1_host.a_b");
    }

    /// Groups made under a fake v1 mount: the layout and limits the kernel
    /// would get (the real kernel is exercised by the end-to-end tests).
    #[test]
    fn v1_groups_get_a_quota_and_a_memory_limit_without_swap() {
        let root = tempfile::tempdir().expect("dir");
        for controller in ["cpu", "cpuacct", "memory"] {
            fs::create_dir_all(root.path().join(controller)).expect("mount");
            fs::write(root.path().join(controller).join("cgroup.procs"), "").expect("procs");
        }
        let cgroups = Cgroups::prepare(root.path(), "node/1").expect("prepare");
        let replica = cgroups.replica(7);
        replica.create(250, 64 << 20).expect("create");
        let read = |path: &str| fs::read_to_string(root.path().join(path)).expect(path);
        assert_eq!(read("cpu/flotilla/node_1/7/cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu/flotilla/node_1/7/cpu.cfs_period_us"), "100000");
        assert_eq!(read("memory/flotilla/node_1/7/memory.limit_in_bytes"), (64u64 << 20).to_string());
        replica.create(1, 1 << 20).expect("create again, smaller");
        assert_eq!(read("cpu/flotilla/node_1/7/cpu.cfs_quota_us"), "1000", "the kernel's smallest quota");
    }

    #[test]
    fn v2_needs_cpu_and_memory_controllers() {
        let root = tempfile::tempdir().expect("dir");
        fs::write(root.path().join("cgroup.controllers"), "io pids\n").expect("controllers");
        let error = Cgroups::prepare(root.path(), "n").expect_err("no cpu controller");
        assert!(error.to_string().contains("cpu controller"), "{error}");
    }
}
