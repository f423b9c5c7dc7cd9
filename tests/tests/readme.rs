//! The README cannot drift from what works: its tour runs here, command by
//! command, and its first command (`flotilla dev examples/hello.yaml`)
//! brings up a cluster whose hello example answers on its port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::flotilla_binary;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository root").to_path_buf()
}

/// The shell lines of the README block that follows `<!-- tour -->`.
fn tour() -> Vec<String> {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let start = readme.find("<!-- tour -->").expect("the README marks its tour");
    let block = &readme[start..];
    let body = block.split("```sh\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a sh block");
    body.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

fn docker_leftovers(label: &str) -> String {
    let containers =
        Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={label}")]).output();
    containers.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

#[test]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
fn the_readme_tour_runs_as_written() {
    let home = tempfile::tempdir().expect("temp dir");
    let bin = flotilla_binary();
    let path =
        format!("{}:{}", bin.parent().expect("bin dir").display(), std::env::var("PATH").unwrap_or_default());
    let lines = tour();
    assert!(lines.len() >= 10, "the tour has its commands: {lines:?}");
    let script = format!(
        "set -euo pipefail\n{}\n",
        lines.iter().map(|l| format!("echo '+ {l}'\n{l}")).collect::<Vec<_>>().join("\n")
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(repository())
        .env("PATH", path)
        .env("XDG_DATA_HOME", home.path())
        .env_remove("FLOTILLA_ADDR")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // Leave nothing behind even when a step failed.
        let _ = Command::new(&bin).args(["cluster", "down"]).env("XDG_DATA_HOME", home.path()).output();
        panic!("the tour failed:\n{stdout}\n{stderr}");
    }
    assert!(stderr.contains("rollout complete"), "{stderr}");
    assert!(stdout.contains("workload/web scaled to 5 replicas"), "{stdout}");
    assert!(stdout.contains("cluster `local` is down"), "{stdout}");
    for agent in 1..=3 {
        assert_eq!(
            docker_leftovers(&format!("flotilla.node=local-agent-{agent}")),
            "",
            "containers left behind"
        );
    }
}

fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
fn flotilla_dev_serves_the_hello_example_and_cleans_up_on_ctrl_c() {
    let mut dev = Command::new(flotilla_binary())
        .args([
            "dev",
            "examples/hello.yaml",
            "--listen",
            &format!("127.0.0.1:{}", flotilla_tests::free_port()),
        ])
        .current_dir(repository())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla dev starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if let Some(response) = http_get(8080).filter(|r| r.contains("hello from flotilla")) {
            break Some(response);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill").args(["-INT", &dev.id().to_string()]).status();
    let status = dev.wait().expect("flotilla dev exits");
    let mut stderr = String::new();
    if let Some(mut pipe) = dev.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(answer.is_some(), "hello answered on 8080:\n{stderr}");
    assert!(
        stderr.contains("hello (http): http://127.0.0.1:8080"),
        "the service's address is shown:\n{stderr}"
    );
    assert!(status.success(), "a clean exit:\n{stderr}");
    assert_eq!(docker_leftovers("flotilla.node=dev"), "", "Ctrl-C stopped the containers:\n{stderr}");
}
