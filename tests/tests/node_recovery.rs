//! A node that misses its heartbeats is marked down and its replicas run
//! elsewhere; when its agent comes back it stops what was placed elsewhere
//! and its node is ready again, with no replica running twice.

use std::process::Command;
use std::time::Duration;

use flotilla_api::NodeStatus;
use flotilla_tests::containers::is_running;
use flotilla_tests::workloads::{SLEEPER, deploy, wait_running};
use flotilla_tests::{TestCluster, wait_until};

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn an_agent_paused_past_its_heartbeats_comes_back_ready_with_no_duplicates() {
    let mut cluster = TestCluster::with_agents(&["a", "b"], &["--cpu", "2", "--memory", "2Gi"]).await;
    let client = cluster.client();
    deploy(&client, &format!("name: web\n{SLEEPER}replicas: 4\nplacement: spread\n")).await;
    wait_running(&client, "web", 4, Duration::from_secs(60)).await;
    let a_name = cluster.agent("a").name.clone();
    let pid = cluster.agent("a").pid().expect("agent a runs");

    signal(pid, "-STOP");
    let paused = std::time::Instant::now();
    let node_status = |client: flotilla_api::Client, name: String| async move {
        client.nodes(false).await.ok()?.into_iter().find(|n| n.name == name).map(|n| n.status)
    };
    wait_until(Duration::from_secs(10), "node a down", || async {
        (node_status(client.clone(), a_name.clone()).await == Some(NodeStatus::Down)).then_some(())
    })
    .await;
    let moved = wait_running(&client, "web", 4, Duration::from_secs(30)).await;
    assert!(moved.iter().all(|a| a.node != a_name), "every replica runs on b now");
    // The fault: six seconds without a word from the agent.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(paused.elapsed())).await;
    signal(pid, "-CONT");

    wait_until(Duration::from_secs(15), "node a ready again", || async {
        (node_status(client.clone(), a_name.clone()).await == Some(NodeStatus::Ready)).then_some(())
    })
    .await;
    // Exactly the wanted replicas run: a's old containers were stopped.
    let running_containers =
        || -> usize { cluster.agents.iter().flat_map(|a| a.containers()).filter(|c| is_running(c)).count() };
    wait_until(Duration::from_secs(15), "exactly four containers running", || async {
        (running_containers() == 4).then_some(())
    })
    .await;
    let all = wait_running(&client, "web", 4, Duration::from_secs(10)).await;
    assert!(all.iter().all(|a| a.node != a_name));
    let a_running = cluster.agent("a").containers().into_iter().filter(|c| is_running(c)).count();
    assert_eq!(a_running, 0, "nothing lost still runs on a");
    let events = client.events(0, Duration::ZERO).await.expect("events");
    assert!(
        events
            .events
            .iter()
            .any(|e| e.node.as_deref() == Some(&a_name) && e.message == "node is ready again")
    );
}
