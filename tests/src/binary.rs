//! Finding the `flotilla` binary under test, and free ports for servers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `flotilla` binary of this build profile, built once per test process
/// (cargo does not build another package's binaries for a test).
pub fn flotilla_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary has a path");
            // target/<profile>/deps/<test> or target/<profile>/<bench>
            let mut dir = exe.parent().expect("test binary directory").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            let release = dir.ends_with("release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", "flotilla-cli", "--bin", "flotilla"]);
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building the flotilla binary failed");
            let binary = dir.join("flotilla");
            assert!(binary.exists(), "{} was not built", binary.display());
            binary
        })
        .clone()
}

/// Where the harness picks its servers' ports: below the services' default
/// range (20000-29999) and the kernel's ephemeral range (32768 and up). A
/// port the OS hands out for `:0` comes from the ephemeral range, where any
/// outgoing connection of a test running alongside can take it before the
/// server binds it (seen in CI: "Address already in use"); below it, only
/// another pick can, and picks are spread at random over ten thousand ports.
const PICKED_PORTS: std::ops::Range<u16> = 10_000..20_000;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    // std's hasher is keyed at random per process: picks differ between
    // test processes, and the counter makes them differ within one.
    static PICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let keys = std::collections::hash_map::RandomState::new();
    let span = u64::from(PICKED_PORTS.end - PICKED_PORTS.start);
    for _ in 0..1000 {
        let mut hasher = keys.build_hasher();
        hasher.write_u64(PICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = PICKED_PORTS.start + (hasher.finish() % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_free_outside_the_ephemeral_and_service_ranges_and_spread() {
        let ports: std::collections::BTreeSet<u16> = (0..200).map(|_| free_port()).collect();
        assert!(ports.len() > 190, "200 picks gave {} ports", ports.len());
        assert!(ports.iter().all(|p| PICKED_PORTS.contains(p)), "{ports:?}");
        let port = free_port();
        TcpListener::bind(("127.0.0.1", port)).expect("a picked port can be bound");
    }
}
