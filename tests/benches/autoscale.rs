//! Autoscaling reaction times with default settings, on the real Docker
//! engine: from the moment CPU load starts until the extra replica runs,
//! whether the autoscaler then goes past what the HPA formula asks for, and
//! from the moment load stops until the workload is scaled back down.
//! Run with `cargo bench -p flotilla-tests --bench autoscale`.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_api::{AllocationState, Client, parse_yaml};
use flotilla_tests::latency::percentile;
use flotilla_tests::{ClusterOptions, TestCluster, docker_available};

/// Scale-up trials, each on a workload deployed afresh.
const TRIALS: usize = 7;
/// How long after the scale-up the replicas are watched for an overshoot:
/// several autoscaler passes and samples of the new replica.
const WATCH: Duration = Duration::from_secs(8);

async fn running(client: &Client, name: &str) -> usize {
    client
        .allocations(Some(name), None)
        .await
        .map(|all| all.iter().filter(|a| a.state == AllocationState::Running).count())
        .unwrap_or(0)
}

async fn wait_running(client: &Client, name: &str, at_least: usize) {
    while running(client, name).await < at_least {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn exec_in(containers: &[String], command: &[&str]) {
    for container in containers {
        Command::new("docker").args(["exec", container]).args(command).output().expect("docker exec");
    }
}

/// A replica burns its whole CPU limit (the request, 100m; the engine's
/// quota lets it read a few percent over) while /tmp/busy exists, and
/// starts idle: one busy replica asks the HPA formula for
/// ceil(~105 / 50) = 3 against a 50% target (2 for a sample that caught
/// only part of the load). The new replicas start idle, so the mean falls
/// back under target and nothing more is asked.
fn spec(name: &str) -> flotilla_api::WorkloadSpec {
    parse_yaml(&format!(
        "name: {name}\nimage: flotilla/busybox:latest\nresources: {{cpu: 100m, memory: 32Mi}}\n\
         command: [\"sh\", \"-c\", \"mkdir -p /tmp; while true; do if [ -e /tmp/busy ]; then :; else sleep 0.2; fi; done\"]\n\
         autoscale: {{min: 1, max: 4, cpu: 50}}\n",
    ))
    .expect("spec")
}

/// What one trial saw.
struct Trial {
    /// Load start until the second replica runs.
    scale_up: Duration,
    /// The most the HPA formula asked for on any sample: the first
    /// decision's (from its own words) and, while watching, ceil(the sum of
    /// the replicas' CPU % / target) on the leader's samples (unsampled
    /// replicas count as idle when scaling up, as in the HPA).
    formula: u32,
    /// The most replicas asked for while watching after the scale-up.
    most: u32,
    /// The first replica's container, which carries the load.
    loaded: Vec<String>,
}

/// The formula's answer for a decision that reads "cpu 106% of request >
/// target 50%: 1 → 3" (the percent is rounded, as in the message).
fn formula_of(reason: &str) -> Option<u32> {
    let used: f64 = reason.strip_prefix("autoscaled: cpu ")?.split('%').next()?.parse().ok()?;
    let target: f64 = reason.split("target ").nth(1)?.split('%').next()?.parse().ok()?;
    let current: f64 = reason.rsplit(": ").next()?.split(' ').next()?.parse().ok()?;
    Some((current * used / target).ceil() as u32)
}

async fn trial(cluster: &TestCluster, client: &Client, name: &str) -> Trial {
    let before: Vec<String> = cluster.agents[0].containers();
    client.deploy(&spec(name), None).await.expect("deploy");
    wait_running(client, name, 1).await;
    let first: Vec<String> =
        cluster.agents[0].containers().into_iter().filter(|c| !before.contains(c)).collect();
    // Let idle samples of the first replica arrive.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let load_started = Instant::now();
    exec_in(&first, &["touch", "/tmp/busy"]);
    wait_running(client, name, 2).await;
    let scale_up = load_started.elapsed();
    let watch_until = Instant::now() + WATCH;
    let (mut most, mut formula) = (0, 0);
    while Instant::now() < watch_until {
        most = most.max(client.get(name).await.map(|w| w.spec.replicas).unwrap_or(0));
        if let Ok(utilisation) = client.utilisation(name).await {
            let used: f64 = utilisation.replicas.iter().map(|r| r.cpu_percent).sum();
            formula = formula.max((used / 50.0).ceil() as u32);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = client.events(0, Duration::ZERO).await.map(|p| p.events).expect("events");
    let first_decision = events
        .iter()
        .filter(|e| e.workload.as_deref() == Some(name))
        .find_map(|e| formula_of(&e.message))
        .expect("an autoscale decision among the workload's events");
    let formula = formula.max(first_decision);
    Trial { scale_up, formula, most, loaded: first }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !docker_available("autoscale benchmark") {
        return;
    }
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("a", &["--cpu", "4", "--memory", "4Gi"]);
    let client = cluster.client();
    while client.nodes(false).await.map(|n| n.len()).unwrap_or(0) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut trials = Vec::new();
    for i in 0..TRIALS {
        let name = format!("burner-{i}");
        trials.push(trial(&cluster, &client, &name).await);
        client.delete(&name).await.expect("delete");
    }
    // Scale-down, once: the 30 s window dominates it.
    let last = trial(&cluster, &client, "burner-down").await;
    let load_stopped = Instant::now();
    exec_in(&last.loaded, &["rm", "-f", "/tmp/busy"]);
    while client.get("burner-down").await.map(|w| w.spec.replicas).unwrap_or(0) != 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scale_down = load_stopped.elapsed();

    let mut ups: Vec<Duration> = trials.iter().map(|t| t.scale_up).collect();
    ups.sort();
    let overshoots = trials.iter().filter(|t| t.most > t.formula).count();
    let answers: Vec<String> = trials.iter().map(|t| format!("{}/{}", t.most, t.formula)).collect();
    let secs = |d: Duration| d.as_secs_f64();
    println!("flotilla autoscaling, default settings (1 s samples, 10% tolerance, 30 s scale-down window)");
    println!("{:<56} {:>14} {:>22}", "metric", "flotilla", "Kubernetes HPA default");
    println!(
        "{:<56} {:>14.2} {:>22}",
        format!("load starts until the extra replica runs, p50 s ({TRIALS} trials)"),
        secs(percentile(&ups, 0.5)),
        "15 s sync + metrics"
    );
    println!(
        "{:<56} {:>14} {:>22}",
        "  min / max s",
        format!("{:.2} / {:.2}", secs(ups[0]), secs(ups[ups.len() - 1])),
        ""
    );
    println!(
        "{:<56} {:>14} {:>22}",
        format!("trials asking past the formula's answer, {} s after", WATCH.as_secs()),
        format!("{overshoots} of {TRIALS}"),
        ""
    );
    println!("  most replicas asked / the formula's answer, per trial: {}", answers.join(" "));
    println!("{:<56} {:>14.1} {:>22}", "load stops until scaled down (s)", secs(scale_down), "300 s window");
}
