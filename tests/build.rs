//! Decides at build time whether the Docker suites can run here, so that
//! where no engine answers they are compiled as ignored and the test runner
//! reports them as skipped (not as passed). With FLOTILLA_REQUIRE_DOCKER=1
//! (CI) a missing engine fails the build instead.

use std::process::Command;

fn main() {
    cgroups();
    namespaces();
    browser();
    println!("cargo::rustc-check-cfg=cfg(docker)");
    println!("cargo::rerun-if-env-changed=FLOTILLA_REQUIRE_DOCKER");
    println!("cargo::rerun-if-env-changed=DOCKER_HOST");
    println!("cargo::rerun-if-changed=/var/run/docker.sock");
    let answers = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if answers {
        println!("cargo::rustc-cfg=docker");
        return;
    }
    let required = std::env::var("FLOTILLA_REQUIRE_DOCKER").as_deref() == Ok("1");
    assert!(!required, "FLOTILLA_REQUIRE_DOCKER=1 but no Docker engine answers `docker version`");
    println!("cargo::warning=no Docker engine answers: the Docker suites are compiled as ignored (skipped)");
}

/// The process driver's isolation suites need an agent that may make
/// cgroups: one running as root on a host with a cgroup filesystem. CI is
/// such a host, and there (FLOTILLA_REQUIRE_DOCKER=1) their absence fails.
fn cgroups() {
    println!("cargo::rustc-check-cfg=cfg(cgroups)");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.strip_prefix("Uid:").is_some_and(|ids| ids.split_whitespace().next() == Some("0")))
    });
    if root && std::path::Path::new("/sys/fs/cgroup").is_dir() {
        println!("cargo::rustc-cfg=cgroups");
        return;
    }
    let required = std::env::var("FLOTILLA_REQUIRE_DOCKER").as_deref() == Ok("1");
    assert!(!required, "FLOTILLA_REQUIRE_DOCKER=1 but the tests run without root or a cgroup filesystem");
    println!(
        "cargo::warning=not root, or no cgroup filesystem: the process isolation suites are compiled as ignored (skipped)"
    );
}

/// The fault suites put servers in network namespaces: root and `ip`.
fn namespaces() {
    println!("cargo::rustc-check-cfg=cfg(netns)");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.strip_prefix("Uid:").is_some_and(|ids| ids.split_whitespace().next() == Some("0")))
    });
    let ip = Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success());
    if root && ip {
        println!("cargo::rustc-cfg=netns");
        return;
    }
    let required = std::env::var("FLOTILLA_REQUIRE_DOCKER").as_deref() == Ok("1");
    assert!(
        !required,
        "FLOTILLA_REQUIRE_DOCKER=1 but the tests cannot make network namespaces (root and iproute2)"
    );
    println!(
        "cargo::warning=cannot make network namespaces here: the fault suites are compiled as ignored (skipped)"
    );
}

/// The dashboard suites drive Debian's headless chromium through
/// chromedriver (`apt-get install chromium chromium-driver`, which the
/// README's test command and CI run).
fn browser() {
    println!("cargo::rustc-check-cfg=cfg(browser)");
    println!("cargo::rerun-if-changed=/usr/bin/chromium");
    println!("cargo::rerun-if-changed=/usr/bin/chromedriver");
    let installed =
        ["/usr/bin/chromium", "/usr/bin/chromedriver"].iter().all(|p| std::path::Path::new(p).exists());
    if installed {
        println!("cargo::rustc-cfg=browser");
        return;
    }
    let required = std::env::var("FLOTILLA_REQUIRE_DOCKER").as_deref() == Ok("1");
    assert!(!required, "FLOTILLA_REQUIRE_DOCKER=1 but chromium and chromedriver are not installed");
    println!(
        "cargo::warning=no chromium or chromedriver: the dashboard suites are compiled as ignored (skipped)"
    );
}
