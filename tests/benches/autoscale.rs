//! Autoscaling reaction times with default settings, on the real Docker
//! engine: from the moment CPU load starts until the extra replica runs, and
//! from the moment it stops until the workload is scaled back down.
//! Run with `cargo bench -p flotilla-tests --bench autoscale`.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_api::{AllocationState, Client, parse_yaml};
use flotilla_tests::{ClusterOptions, TestCluster, docker_available};

async fn running(client: &Client) -> usize {
    client
        .allocations(Some("burner"), None)
        .await
        .map(|all| all.iter().filter(|a| a.state == AllocationState::Running).count())
        .unwrap_or(0)
}

fn exec_in_all(cluster: &TestCluster, command: &[&str]) {
    for container in cluster.agents[0].containers() {
        Command::new("docker").args(["exec", &container]).args(command).output().expect("docker exec");
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !docker_available("autoscale benchmark") {
        return;
    }
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("a", &["--cpu", "2", "--memory", "2Gi"]);
    let client = cluster.client();
    while client.nodes(false).await.map(|n| n.len()).unwrap_or(0) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Burns CPU while /tmp/busy exists; replicas start idle.
    let spec = parse_yaml(
        "name: burner\nimage: flotilla/busybox:latest\nresources: {cpu: 100m, memory: 32Mi}\n\
         command: [\"sh\", \"-c\", \"mkdir -p /tmp; while true; do if [ -e /tmp/busy ]; then :; else sleep 0.2; fi; done\"]\n\
         autoscale: {min: 1, max: 4, cpu: 50}\n",
    )
    .expect("spec");
    client.deploy(&spec, None).await.expect("deploy");
    while running(&client).await < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the first idle samples arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let load_started = Instant::now();
    exec_in_all(&cluster, &["touch", "/tmp/busy"]);
    while running(&client).await < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scale_up = load_started.elapsed();

    let load_stopped = Instant::now();
    exec_in_all(&cluster, &["rm", "-f", "/tmp/busy"]);
    loop {
        let replicas = client.get("burner").await.map(|w| w.spec.replicas).unwrap_or(0);
        if replicas == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scale_down = load_stopped.elapsed();

    println!("flotilla autoscaling, default settings (1 s samples, 10% tolerance, 30 s scale-down window)");
    println!("{:<52} {:>10} {:>22}", "metric", "flotilla", "Kubernetes HPA default");
    println!(
        "{:<52} {:>10.1} {:>22}",
        "load starts until the extra replica runs (s)",
        scale_up.as_secs_f64(),
        "15 s sync + metrics"
    );
    println!(
        "{:<52} {:>10.1} {:>22}",
        "load stops until scaled down (s)",
        scale_down.as_secs_f64(),
        "300 s window"
    );
}
