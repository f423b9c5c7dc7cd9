//! Whether the Docker suites can run here.

use std::process::Command;

/// True when a Docker engine answers. When it does not, a test skips with
/// a loud message, unless FLOTILLA_REQUIRE_DOCKER=1 (CI), where that fails.
pub fn docker_available(test: &str) -> bool {
    let answers = Command::new("docker").args(["version", "--format", "{{.Server.APIVersion}}"]).output();
    if answers.is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var("FLOTILLA_REQUIRE_DOCKER").as_deref() != Ok("1"),
        "{test}: no Docker engine answers, and FLOTILLA_REQUIRE_DOCKER=1"
    );
    eprintln!("\n!!!! SKIPPED {test}: no Docker engine answers on this machine !!!!\n");
    false
}
