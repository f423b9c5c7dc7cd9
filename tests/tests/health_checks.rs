//! Each kind of check against real replicas: HTTP, TCP and exec checks on
//! processes (reached on loopback, exec beside them with the spec's
//! environment), TCP and exec checks inside containers (`docker exec`),
//! and a Docker image's own HEALTHCHECK when the spec has none.

use std::process::Command;
use std::time::Duration;

use flotilla_api::{Allocation, Client, Health};
use flotilla_tests::workloads::deploy;
use flotilla_tests::{ClusterOptions, TestCluster, free_port, wait_until};

async fn wait_health(client: &Client, workload: &str, health: Health, output: &str) -> Allocation {
    wait_until(Duration::from_secs(60), &format!("{workload} {health}: {output}"), || async {
        let all = client.allocations(Some(workload), None).await.ok()?;
        all.into_iter().find(|a| a.is_replica() && a.health == health && a.health_output.contains(output))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn process_replicas_are_checked_on_loopback_and_exec_checks_run_beside_them() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent(
        "p",
        &["--driver", "process", "--allow-driver", "process", "--cpu", "2", "--memory", "2Gi"],
    );
    let client = cluster.client();
    let port = free_port();
    let www = cluster.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    // The replica runs as nobody: it may pass through the cluster's dir and read www.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(www.join("healthz"), "ok").expect("healthz");
    let www = www.display();
    let spec = format!(
        "name: proc\ndriver: process\ncommand: [busybox, httpd, -f, -p, \"127.0.0.1:{port}\", -h, \"{www}\"]\n\
         env: {{READY_FILE: \"{www}/healthz\"}}\nports: [{{container: {port}}}]\n\
         checks:\n\
         \x20 - {{name: web, http: {{path: /healthz, port: {port}}}, interval: 200ms}}\n\
         \x20 - {{name: socket, tcp: {{port: {port}}}, interval: 200ms}}\n\
         \x20 - {{name: ready, exec: [sh, -c, \"test -f $READY_FILE\"], interval: 200ms, failures: 1}}\n"
    );
    deploy(&client, &spec).await;
    wait_until(Duration::from_secs(30), "all three checks pass", || async {
        let all = client.allocations(Some("proc"), None).await.ok()?;
        all.into_iter().find(|a| a.is_replica() && a.health == Health::Healthy)
    })
    .await;
    std::fs::remove_file(cluster.dir.path().join("www/healthz")).expect("remove the file");
    // Both the HTTP check (404) and the exec check (exit 1) now fail; the
    // exec check, needing one failure, says so first.
    let unhealthy = wait_health(&client, "proc", Health::Unhealthy, "failed check").await;
    assert!(
        unhealthy.health_output.contains("failed check ready: exit 1")
            || unhealthy.health_output.contains("failed check web: GET /healthz -> 404"),
        "{unhealthy:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn containers_are_checked_by_tcp_and_by_exec_inside_them() {
    let cluster = TestCluster::with_agents(&["a"], &["--cpu", "2", "--memory", "2Gi"]).await;
    let client = cluster.client();
    let spec = "name: box\nimage: flotilla/busybox:latest\n\
        command: [sh, -c, \"mkdir -p /tmp && touch /tmp/ready && exec httpd -f -p 9000 -h /tmp\"]\n\
        ports: [{container: 9000}]\n\
        checks:\n\
        \x20 - {name: socket, tcp: {port: 9000}, interval: 200ms}\n\
        \x20 - {name: ready, exec: [test, -f, /tmp/ready], interval: 200ms, failures: 1}\n";
    deploy(&client, spec).await;
    let healthy = wait_health(&client, "box", Health::Healthy, "passed check").await;
    let container = healthy.runtime_id.clone().expect("container");
    let removed =
        Command::new("docker").args(["exec", &container, "rm", "/tmp/ready"]).status().expect("exec");
    assert!(removed.success());
    let unhealthy = wait_health(&client, "box", Health::Unhealthy, "failed check ready: exit 1").await;
    assert_eq!(unhealthy.id, healthy.id);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn an_images_own_healthcheck_is_reported_when_the_spec_has_none() {
    let cluster = TestCluster::with_agents(&["a"], &["--cpu", "2", "--memory", "2Gi"]).await;
    let client = cluster.client();
    let tag = "flotilla/healthcheck-test:latest";
    /// Removes the test's image however the test ends.
    struct RemoveImage(&'static str);
    impl Drop for RemoveImage {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", "-f", self.0]).output();
        }
    }
    let _image = RemoveImage(tag);
    let dockerfile = "FROM flotilla/busybox:latest\n\
        HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD test -f /tmp/ok\n";
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker build");
    use std::io::Write as _;
    build.stdin.take().expect("stdin").write_all(dockerfile.as_bytes()).expect("dockerfile");
    assert!(build.wait().expect("build").success(), "the test image builds");
    deploy(
        &client,
        &format!("name: imaged\nimage: {tag}\ncommand: [sh, -c, \"mkdir -p /tmp && touch /tmp/ok && exec sleep 100000\"]\n"),
    )
    .await;
    let healthy = wait_health(&client, "imaged", Health::Healthy, "image HEALTHCHECK").await;
    let container = healthy.runtime_id.clone().expect("container");
    Command::new("docker").args(["exec", &container, "rm", "/tmp/ok"]).status().expect("exec");
    let unhealthy = wait_health(&client, "imaged", Health::Unhealthy, "image HEALTHCHECK: exit 1").await;
    assert_eq!(unhealthy.id, healthy.id);
}
