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

/// A port that was free a moment ago, chosen by the OS.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}
