//! What a process replica uses, for autoscaling and `top`.

use std::time::Instant;

use super::ProcessRuntime;
use crate::runtime::Usage;

impl ProcessRuntime {
    /// CPU and memory of everything in the replica's cgroup (as `docker
    /// stats` counts a container); without one, of its main process alone,
    /// from /proc.
    pub fn usage(&self, handle: &str) -> Option<Usage> {
        let pid: u32 = handle.parse().ok()?;
        let cgroup = self.tracked().get(&pid)?.cgroup.clone();
        let (cpu_ns, memory_bytes) = match cgroup {
            Some(cgroup) => cgroup.usage()?,
            None => main_process_usage(pid)?,
        };
        let now = Instant::now();
        let mut tracked = self.tracked();
        let t = tracked.get_mut(&pid)?;
        let cpu_millis = match t.last_cpu {
            Some((before, when)) => {
                let seconds = now.duration_since(when).as_secs_f64().max(0.001);
                cpu_ns.saturating_sub(before) as f64 / 1e6 / seconds
            }
            None => 0.0,
        };
        t.last_cpu = Some((cpu_ns, now));
        Some(Usage { cpu_millis, memory_bytes })
    }
}

/// CPU time (nanoseconds) and resident memory of one process, from /proc.
fn main_process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    // Linux reports 100 clock ticks a second on every common build.
    Some((ticks * 10_000_000, rss_pages * 4096))
}
