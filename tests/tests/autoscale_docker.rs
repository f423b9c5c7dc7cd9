//! Autoscaling on the real Docker engine: a CPU-burning workload grows to
//! its maximum and shrinks back after the load stops; a memory-hungry one
//! grows on memory. Events record every decision with its reason.

use std::process::Command;
use std::time::Duration;

use flotilla_api::{AllocationState, Client, parse_yaml};
use flotilla_tests::{ClusterOptions, TestCluster, wait_until};

async fn running(client: &Client, workload: &str) -> usize {
    client
        .allocations(Some(workload), None)
        .await
        .map(|all| all.iter().filter(|a| a.state == AllocationState::Running).count())
        .unwrap_or(0)
}

async fn cluster() -> TestCluster {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("a", &["--cpu", "2", "--memory", "2Gi"]);
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "the agent registered", || async {
        (client.nodes(false).await.ok()?.len() == 1).then_some(())
    })
    .await;
    cluster
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_cpu_burning_workload_scales_up_to_max_and_back_down_after_the_window() {
    let cluster = cluster().await;
    let client = cluster.client();
    let spec = "name: burner\nimage: flotilla/busybox:latest\nresources: {cpu: 100m, memory: 32Mi}\n\
        command: [\"sh\", \"-c\", \"mkdir -p /tmp; touch /tmp/busy; while true; do if [ -e /tmp/busy ]; then :; else sleep 1; fi; done\"]\n\
        autoscale: {min: 1, max: 4, cpu: 50%, scale_down_window: 10}\n";
    client.deploy(&parse_yaml(spec).expect("valid"), None).await.expect("deploy");
    wait_until(Duration::from_secs(60), "scale-up to 4 running replicas", || async {
        let workload = client.get("burner").await.ok()?;
        (workload.spec.replicas == 4 && running(&client, "burner").await == 4).then_some(())
    })
    .await;
    let events = client.events(0, Duration::ZERO).await.expect("events");
    let reasons: Vec<&str> = events.events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("autoscaled: cpu ") && r.contains("% of request > target 50%: 1 → ")),
        "the first step is recorded with its reason: {reasons:?}"
    );

    // The load stops: every replica's flag file goes.
    for container in cluster.agents[0].containers() {
        Command::new("docker")
            .args(["exec", &container, "rm", "-f", "/tmp/busy"])
            .output()
            .expect("docker exec");
    }
    wait_until(Duration::from_secs(60), "scale-down to 1 after the window", || async {
        let workload = client.get("burner").await.ok()?;
        (workload.spec.replicas == 1 && running(&client, "burner").await == 1).then_some(())
    })
    .await;
    let events = client.events(0, Duration::ZERO).await.expect("events");
    assert!(
        events.events.iter().any(|e| e.message.contains("< target 50% for 10s: 4 → ")),
        "{:?}",
        events.events
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_workload_over_its_memory_target_scales_up_on_memory() {
    let cluster = cluster().await;
    let client = cluster.client();
    // Each replica holds about 24 MB in a shell variable: ~40% of its 64Mi request.
    let spec = "name: hoarder\nimage: flotilla/busybox:latest\nresources: {cpu: 50m, memory: 64Mi}\n\
        command: [\"sh\", \"-c\", \"x=$(head -c 24000000 /dev/zero | tr '\\\\0' a); while true; do sleep 3600; done\"]\n\
        autoscale: {min: 1, max: 3, memory: 15%}\n";
    client.deploy(&parse_yaml(spec).expect("valid"), None).await.expect("deploy");
    wait_until(Duration::from_secs(60), "scale-up on memory", || async {
        let workload = client.get("hoarder").await.ok()?;
        (workload.spec.replicas >= 2).then_some(())
    })
    .await;
    let events = client.events(0, Duration::ZERO).await.expect("events");
    assert!(
        events.events.iter().any(|e| e.message.starts_with("autoscaled: memory ")),
        "{:?}",
        events.events
    );
    let utilisation = client.utilisation("hoarder").await.expect("utilisation");
    assert!(utilisation.memory_percent.is_some_and(|m| m > 15.0), "{utilisation:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn replicas_slow_to_start_do_not_feed_the_next_scale_up() {
    let cluster = cluster().await;
    let client = cluster.client();
    // Every replica idles 12 s after it starts, then burns its whole CPU
    // limit (100% of its request; samples jitter a few percent above). One
    // busy replica at a 60% target asks for ceil(100 / 60) = 2 replicas (up
    // to 120% measured), and the second one adds no load for 12 s.
    let spec = "name: slow\nimage: flotilla/busybox:latest\nresources: {cpu: 100m, memory: 32Mi}\n\
        command: [\"sh\", \"-c\", \"sleep 12; while true; do :; done\"]\n\
        autoscale: {min: 1, max: 10, cpu: 60%}\n";
    client.deploy(&parse_yaml(spec).expect("valid"), None).await.expect("deploy");
    wait_until(Duration::from_secs(60), "the first scale-up", || async {
        (client.get("slow").await.ok()?.spec.replicas > 1).then_some(())
    })
    .await;
    let scaled_at = std::time::Instant::now();
    let mut most = 0;
    while scaled_at.elapsed() < Duration::from_secs(8) {
        if let Ok(workload) = client.get("slow").await {
            most = most.max(workload.spec.replicas);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most, 2, "ceil(1 replica × 100% / 60%) = 2, while the new replica adds no load");
    let events = client.events(0, Duration::ZERO).await.expect("events");
    let steps: Vec<&str> = events
        .events
        .iter()
        .filter(|e| e.workload.as_deref() == Some("slow") && e.message.starts_with("autoscaled"))
        .map(|e| e.message.as_str())
        .collect();
    assert!(steps.first().is_some_and(|s| s.ends_with(": 1 → 2")), "{steps:?}");
    assert_eq!(steps.len(), 1, "one decision while the new replica idles: {steps:?}");
}
