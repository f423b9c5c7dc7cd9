//! `flotilla cluster up|down|env`: three servers and three agents as
//! processes, and as containers on a private Docker network; `down` leaves
//! nothing behind.

use std::process::{Command, Output};

use flotilla_tests::flotilla_binary;

fn flotilla(home: &std::path::Path, args: &[&str], addr: Option<&str>) -> Output {
    let mut command = Command::new(flotilla_binary());
    command.args(args).env("XDG_DATA_HOME", home).env_remove("FLOTILLA_ADDR");
    if let Some(addr) = addr {
        command.env("FLOTILLA_ADDR", addr);
    }
    command.output().expect("flotilla runs")
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn docker_ids(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Ups a cluster, deploys and checks it, downs it, and checks nothing is left.
fn up_use_down(name: &str, docker: bool) {
    let home = tempfile::tempdir().expect("temp dir");
    let mut up = vec!["cluster", "up", "--name", name, "--servers", "3", "--agents", "3"];
    if docker {
        up.push("--docker");
    } else {
        up.extend(["--agent-cpu", "1", "--agent-memory", "1Gi"]);
    }
    let result = std::panic::catch_unwind(|| {
        let out = ok(flotilla(home.path(), &up, None), "cluster up");
        assert!(out.contains(&format!("cluster `{name}` is up: 3 servers, 3 agents")), "{out}");
        let env = ok(flotilla(home.path(), &["cluster", "env", "--name", name], None), "cluster env");
        let addr = env.trim().strip_prefix("export FLOTILLA_ADDR=").expect("an export line").to_owned();
        let status: serde_json::Value = serde_json::from_str(&ok(
            flotilla(home.path(), &["cluster", "status", "-o", "json"], Some(&addr)),
            "status",
        ))
        .expect("json");
        let members = status["members"].as_array().expect("members");
        assert_eq!(members.len(), 3);
        assert!(
            members.iter().all(|m| m["status"]["applied"].as_u64().is_some()),
            "every member answers: {status}"
        );
        let nodes: serde_json::Value =
            serde_json::from_str(&ok(flotilla(home.path(), &["nodes", "-o", "json"], Some(&addr)), "nodes"))
                .expect("json");
        assert_eq!(nodes.as_array().map(Vec::len), Some(3));
        // The rollout succeeds only once every replica passes its HTTP
        // check, which the agents (processes, or containers on the
        // cluster's network) make the way a client on the node would.
        let spec = home.path().join("web.yaml");
        std::fs::write(
            &spec,
            "name: web\nimage: flotilla/busybox:latest\n\
             command: [sh, -c, \"mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www\"]\n\
             replicas: 3\nresources: {cpu: 50m, memory: 16Mi}\nports: [{container: 80}]\n\
             checks: [{name: web, http: {path: /index.html, port: 80}, interval: 500ms}]\n\
             update: {min_healthy_time: 1s}\n",
        )
        .expect("spec");
        let deploy = ["deploy", "-f", spec.to_str().expect("path"), "--wait", "--timeout", "60"];
        ok(flotilla(home.path(), &deploy, Some(&addr)), "deploy --wait");
        let ps: serde_json::Value =
            serde_json::from_str(&ok(flotilla(home.path(), &["ps", "web", "-o", "json"], Some(&addr)), "ps"))
                .expect("json");
        let healthy = ps
            .as_array()
            .expect("allocations")
            .iter()
            .filter(|a| {
                a["health"] == "healthy" && a["health_output"] == "passed check web: GET /index.html -> 200"
            })
            .count();
        assert_eq!(healthy, 3, "{ps}");
    });
    let down = flotilla(home.path(), &["cluster", "down", "--name", name], None);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    ok(down, "cluster down");
    assert!(!home.path().join("flotilla/clusters").join(name).exists(), "its directory is gone");
    for agent in 1..=3 {
        assert_eq!(
            docker_ids(&["ps", "-aq", "--filter", &format!("label=flotilla.node={name}-agent-{agent}")]),
            ""
        );
    }
    assert_eq!(docker_ids(&["ps", "-aq", "--filter", &format!("label=flotilla.cluster={name}")]), "");
    assert_eq!(
        docker_ids(&["network", "ls", "-q", "--filter", &format!("label=flotilla.cluster={name}")]),
        ""
    );
    let leftover =
        Command::new("pgrep").args(["-f", "--", &format!("--name {name}-agent")]).output().expect("pgrep");
    assert!(leftover.stdout.is_empty(), "no agent process left");
}

#[test]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
fn cluster_up_and_down_with_processes() {
    up_use_down(&format!("proc-{}", std::process::id()), false);
}

#[test]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
fn cluster_up_and_down_with_docker() {
    up_use_down(&format!("dock-{}", std::process::id()), true);
}
