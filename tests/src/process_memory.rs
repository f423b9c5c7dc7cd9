//! What a process holds in memory, as benchmarks report it.

/// A field of /proc/<pid>/status in KiB (`VmRSS:`, `VmHWM:`); `pid` may be
/// `self`. 0 when the process or the field is not there.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// A process's resident memory in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:")
}
