//! Agents never act on a frozen picture: a server cut off from the majority
//! stops answering agents (503), and they carry on through another server.

use std::time::Duration;

use flotilla_api::AllocationState;
use flotilla_tests::workloads::deploy;
use flotilla_tests::{ClusterOptions, TestCluster, wait_until};

const TICKER: &str = "driver: process\ncommand: [\"sh\", \"-c\", \"sleep 100000 & wait\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_server_cut_off_from_the_majority_stops_serving_agents_and_they_carry_on_elsewhere() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let cut = cluster.servers.iter().map(|s| s.id).find(|id| *id != leader).expect("a follower");
    let agent = cluster
        .add_agent_talking_first_to(
            cut,
            "p",
            &["--driver", "process", "--allow-driver", "process", "--cpu", "2", "--memory", "2Gi"],
        )
        .name
        .clone();
    let client = cluster.client();
    deploy(&client, &format!("name: before\n{TICKER}")).await;
    wait_until(Duration::from_secs(30), "the first workload running", || async {
        let all = client.allocations(Some("before"), None).await.ok()?;
        all.iter().any(|a| a.state == AllocationState::Running).then_some(())
    })
    .await;

    let others: Vec<u64> = cluster.servers.iter().map(|s| s.id).filter(|id| *id != cut).collect();
    cluster.block(cut, &others).await;
    for other in &others {
        cluster.block(*other, &[cut]).await;
    }
    // The cut-off server answers agents 503 once it knows it has no leader.
    let http = cluster.http_as_agent(&agent);
    let url = cluster.url(cut, &format!("/v1/nodes/{agent}/allocations?index=0&wait_ms=1000"));
    let status = wait_until(Duration::from_secs(15), "the cut-off server to refuse agents", || async {
        let response = http.get(&url).timeout(Duration::from_secs(10)).send().await.ok()?;
        (response.status().as_u16() == 503).then_some(response.status())
    })
    .await;
    assert_eq!(status.as_u16(), 503);

    // Work deployed through the majority still reaches the agent.
    let majority = cluster
        .client_for(others.iter().map(|id| cluster.address(*id)), cluster.admin_token())
        .with_retry_for(Duration::from_secs(10));
    deploy(&majority, &format!("name: after\n{TICKER}")).await;
    wait_until(Duration::from_secs(30), "the agent to run the new workload", || async {
        let all = majority.allocations(Some("after"), None).await.ok()?;
        all.iter().any(|a| a.state == AllocationState::Running && a.node == agent).then_some(())
    })
    .await;
    let log = cluster.agents[0].log_text();
    assert!(!log.contains("panicked"), "{log}");
}
