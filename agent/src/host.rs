//! The host's capacity, as the agent offers it to the scheduler.

use flotilla_api::{CpuMillis, MemoryBytes};
use sysinfo::System;

/// What sysinfo sees on this machine: all CPUs and all memory.
pub fn detect() -> Result<(CpuMillis, MemoryBytes), String> {
    let mut system = System::new().map_err(|e| e.to_string())?;
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    system.refresh_memory();
    let cpus = system.cpus().len().max(1) as u64;
    Ok((CpuMillis(cpus * 1000), MemoryBytes(system.total_memory())))
}

/// Capacity to offer: an override if given, else the host's, less a reserve
/// for the system and the agent itself.
pub fn capacity(
    cpu: Option<CpuMillis>,
    memory: Option<MemoryBytes>,
    reserve_cpu: CpuMillis,
    reserve_memory: MemoryBytes,
) -> Result<(CpuMillis, MemoryBytes), String> {
    if let (Some(cpu), Some(memory)) = (cpu, memory) {
        return Ok((cpu, memory));
    }
    let (host_cpu, host_memory) =
        detect().map_err(|e| format!("cannot read the host's capacity ({e}); pass --cpu and --memory"))?;
    let cpu = cpu.unwrap_or(CpuMillis(host_cpu.0.saturating_sub(reserve_cpu.0)));
    let memory = memory.unwrap_or(MemoryBytes(host_memory.0.saturating_sub(reserve_memory.0)));
    Ok((cpu, memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_the_reserve_is_taken_from_the_host() {
        let both =
            capacity(Some(CpuMillis(1500)), Some(MemoryBytes(1 << 30)), CpuMillis(500), MemoryBytes(0));
        assert_eq!(both, Ok((CpuMillis(1500), MemoryBytes(1 << 30))));
        let (host_cpu, host_memory) = detect().expect("sysinfo reads this host");
        assert!(host_cpu.0 >= 1000 && host_memory.0 > 0);
        let (cpu, memory) = capacity(None, None, CpuMillis(500), MemoryBytes(1 << 20)).expect("capacity");
        assert_eq!(cpu.0, host_cpu.0 - 500);
        assert_eq!(memory.0, host_memory.0 - (1 << 20));
    }
}
