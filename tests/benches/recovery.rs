//! Node recovery on the real Docker engine: an agent paused (SIGSTOP) for
//! 6 s, long enough to be marked down and have its replicas placed on the
//! other agent, then resumed (SIGCONT). Measures the time from the resume
//! until its node is ready again, and counts the replicas running twice
//! once it is. The replicas exit on SIGTERM, as a well-behaved server does
//! (one that ignores it costs the 5 s stop grace before SIGKILL, and the node
//! is ready only once its lost replicas are gone).
//! Run with `cargo bench -p flotilla-tests --bench recovery`.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_api::{Client, NodeStatus, parse_yaml};
use flotilla_tests::containers::is_running;
use flotilla_tests::workloads::wait_running;
use flotilla_tests::{TestCluster, docker_available};

const REPLICAS: usize = 10;
const TRIALS: usize = 4;
const PAUSE: Duration = Duration::from_secs(6);

fn signal(pid: u32, signal: &str) {
    Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill runs");
}

async fn status_of(client: &Client, node: &str) -> Option<NodeStatus> {
    client.nodes(false).await.ok()?.into_iter().find(|n| n.name == node).map(|n| n.status)
}

fn running_containers(cluster: &TestCluster) -> usize {
    cluster.agents.iter().flat_map(|a| a.containers()).filter(|c| is_running(c)).count()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !docker_available("recovery benchmark") {
        return;
    }
    // One trial per agent, each paused once: no node flaps, which would
    // hold it back from new work and slow the next trial.
    let cluster = TestCluster::with_agents(&["a", "b", "c", "d"], &["--cpu", "8", "--memory", "8Gi"]).await;
    let client = cluster.client();
    let spec = parse_yaml(&format!(
        "name: web\nimage: flotilla/busybox:latest\ncommand: [sh, -c, \"trap 'exit 0' TERM; sleep 100000 & wait\"]\nreplicas: {REPLICAS}\nplacement: spread\nresources: {{cpu: 100m, memory: 16Mi}}\n"
    ))
    .expect("spec");
    client.deploy(&spec, None).await.expect("deploy");
    wait_running(&client, "web", REPLICAS, Duration::from_secs(60)).await;

    let mut ready_after = Vec::new();
    let mut duplicates = Vec::new();
    for agent in &cluster.agents {
        let pid = agent.pid().expect("agent runs");
        signal(pid, "-STOP");
        tokio::time::sleep(PAUSE).await;
        assert_eq!(
            status_of(&client, &agent.name).await,
            Some(NodeStatus::Down),
            "{} marked down",
            agent.name
        );
        signal(pid, "-CONT");
        let resumed = Instant::now();
        while status_of(&client, &agent.name).await != Some(NodeStatus::Ready) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ready_after.push(resumed.elapsed());
        wait_running(&client, "web", REPLICAS, Duration::from_secs(60)).await;
        // Give a stop that is still under way its grace, then count.
        tokio::time::sleep(Duration::from_secs(6)).await;
        duplicates.push(running_containers(&cluster).saturating_sub(REPLICAS));
    }
    ready_after.sort();
    println!(
        "flotilla node recovery: agent paused {} s with {REPLICAS} replicas, {TRIALS} trials",
        PAUSE.as_secs()
    );
    println!("{:<52} {:>10}", "metric", "value");
    println!(
        "{:<52} {:>10.2}",
        "resume until node ready again, p50 (s)",
        ready_after[TRIALS / 2].as_secs_f64()
    );
    println!(
        "{:<52} {:>10.2}",
        "resume until node ready again, max (s)",
        ready_after[TRIALS - 1].as_secs_f64()
    );
    println!(
        "{:<52} {:>10}",
        "replicas running twice after recovery (all trials)",
        duplicates.iter().sum::<usize>()
    );
}
