//! What a process replica uses, for autoscaling and `top`.

use std::time::Instant;

use super::ProcessRuntime;
use crate::runtime::Usage;

impl ProcessRuntime {
    /// CPU from /proc/<pid>/stat between two samples; memory as resident set.
    pub fn usage(&self, handle: &str) -> Option<Usage> {
        let pid: u32 = handle.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let rss_pages: u64 = fields.get(21)?.parse().ok()?;
        let now = Instant::now();
        let mut tracked = self.tracked();
        let t = tracked.get_mut(&pid)?;
        let cpu_millis = match t.last_cpu {
            Some((before, when)) => {
                let seconds = now.duration_since(when).as_secs_f64().max(0.001);
                // Linux reports 100 clock ticks a second on every common build.
                (ticks.saturating_sub(before) as f64 / 100.0) / seconds * 1000.0
            }
            None => 0.0,
        };
        t.last_cpu = Some((ticks, now));
        Some(Usage { cpu_millis, memory_bytes: rss_pages * 4096 })
    }
}
