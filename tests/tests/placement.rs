//! Placement and reconciliation on a three-server cluster with simulated
//! nodes: deploy, scale, delete, rolling replacement, pending reasons, and a
//! leader killed in the middle of a large deploy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_api::{Client, Workload, parse_yaml};
use flotilla_tests::simulated_nodes::{act_as_agents, register_nodes};
use flotilla_tests::{ClusterOptions, TestCluster, wait_until};

const GI: u64 = 1 << 30;

async fn wait_for_status(
    client: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&Workload) -> bool,
) -> Workload {
    wait_until(Duration::from_secs(20), what, || async { client.get(name).await.ok().filter(|w| check(w)) })
        .await
}

async fn deploy(client: &Client, yaml: &str) {
    client.deploy(&parse_yaml(yaml).expect("valid spec"), None).await.expect("deploy");
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_scale_up_scale_down_and_delete() {
    let cluster = TestCluster::start(ClusterOptions::default().without_node_health()).await;
    let client = cluster.client();
    register_nodes(&cluster, "node", 3, 2000, 2 * GI, &[("zone", "a")]).await;
    deploy(&client, "name: web\nimage: busybox\nreplicas: 6\nresources: {cpu: 250m, memory: 256Mi}\n").await;
    wait_for_status(&client, "web", "6 placed", |w| w.status.placed == 6).await;
    let per_node: BTreeMap<String, usize> =
        client.allocations(Some("web"), None).await.expect("ps").into_iter().fold(
            BTreeMap::new(),
            |mut m, a| {
                *m.entry(a.node.to_string()).or_default() += 1;
                m
            },
        );
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "anti-affinity spreads replicas"
    );

    client.scale("web", 9).await.expect("scale up");
    wait_for_status(&client, "web", "9 placed", |w| w.status.placed == 9).await;
    client.scale("web", 2).await.expect("scale down");
    wait_for_status(&client, "web", "2 placed", |w| w.status.placed == 2).await;
    let booked = |client: Client| async move {
        client.nodes(false).await.expect("nodes").iter().map(|n| n.allocated_cpu).sum::<u64>()
    };
    assert_eq!(booked(client.clone()).await, 9 * 250, "replicas being stopped stay booked until stopped");
    act_as_agents(&cluster).await;
    wait_until(Duration::from_secs(10), "the stopped replicas released", || async {
        (booked(client.clone()).await == 500).then_some(())
    })
    .await;

    client.delete("web").await.expect("delete");
    assert_eq!(booked(client.clone()).await, 500, "a deleted workload's replicas stay booked until stopped");
    act_as_agents(&cluster).await;
    wait_until(Duration::from_secs(10), "the deleted workload's allocations gone", || async {
        let gone = client.allocations(Some("web"), None).await.ok()?.is_empty();
        (gone && booked(client.clone()).await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_change_replaces_replicas_one_at_a_time() {
    let cluster = TestCluster::start(ClusterOptions::default().without_node_health()).await;
    let client = cluster.client();
    register_nodes(&cluster, "node", 4, 2000, 2 * GI, &[]).await;
    let update = "update: {min_healthy_time: 200ms}\n";
    deploy(&client, &format!("name: web\nimage: app:v1\nreplicas: 3\n{update}")).await;
    wait_for_status(&client, "web", "3 placed", |w| w.status.placed == 3).await;
    act_as_agents(&cluster).await;
    wait_for_status(&client, "web", "3 running", |w| w.status.running == 3).await;

    deploy(&client, &format!("name: web\nimage: app:v2\nreplicas: 3\n{update}")).await;
    let most_live = std::sync::atomic::AtomicUsize::new(0);
    wait_until(Duration::from_secs(30), "the rollout to finish", || async {
        let allocations = client.allocations(Some("web"), None).await.ok()?;
        let live: Vec<_> = allocations.iter().filter(|a| a.is_replica()).collect();
        let running = live.iter().filter(|a| a.state == flotilla_api::AllocationState::Running).count();
        most_live.fetch_max(live.len(), std::sync::atomic::Ordering::Relaxed);
        assert!(running >= 3, "a rollout never drops below the wanted replicas running");
        if live.len() == 3 && live.iter().all(|a| a.version == 2) && running == 3 {
            return Some(());
        }
        act_as_agents(&cluster).await;
        None
    })
    .await;
    assert_eq!(most_live.into_inner(), 4, "one extra replica at most");
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_that_fit_nowhere_stay_pending_with_a_reason() {
    let cluster = TestCluster::start(ClusterOptions::default().without_node_health()).await;
    let client = cluster.client();
    register_nodes(&cluster, "a", 2, 1000, GI, &[("zone", "a")]).await;
    register_nodes(&cluster, "b", 1, 4000, 8 * GI, &[("zone", "b")]).await;
    // Node b fits two of these; the a nodes none.
    deploy(&client, "name: big\nimage: x\nreplicas: 3\nresources: {cpu: 500m, memory: 3Gi}\nconstraints: [\"zone in (a, b)\"]\n").await;
    let workload = wait_for_status(&client, "big", "2 placed, 1 pending", |w| w.status.placed == 2).await;
    assert_eq!(workload.status.unplaced, 1);
    assert_eq!(
        workload.status.unplaced_reason.as_deref(),
        Some("needs 500m CPU and 3Gi memory: 3 nodes have too little memory")
    );
    deploy(
        &client,
        "name: picky\nimage: x\nresources: {cpu: 100m, memory: 64Mi}\nconstraints: [\"zone == c\"]\n",
    )
    .await;
    let picky = wait_for_status(&client, "picky", "a pending reason", |w| w.status.unplaced == 1).await;
    assert_eq!(
        picky.status.unplaced_reason.as_deref(),
        Some("needs 100m CPU and 64Mi memory: 3 nodes fail constraint zone == c")
    );
    // The CLI shows it.
    let output = cluster.cli(&["get", "picky"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("3 nodes fail constraint zone == c"), "{stdout}");
    // A node that fits arrives: the pending replica is placed.
    register_nodes(&cluster, "c", 1, 1000, GI, &[("zone", "c")]).await;
    wait_for_status(&client, "picky", "placement on the new node", |w| {
        w.status.placed == 1 && w.status.unplaced == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_finishes_a_large_deploy_without_oversubscribing_or_doubling() {
    let mut cluster = TestCluster::start(ClusterOptions::default().without_node_health()).await;
    let client = cluster.client();
    register_nodes(&cluster, "node", 60, 4000, 8 * GI, &[]).await;
    let workloads = 30;
    let replicas = 100;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    for i in 0..workloads {
        deploy(
            &client,
            &format!("name: w{i}\nimage: x\nreplicas: {replicas}\nresources: {{cpu: 70m, memory: 128Mi}}\n"),
        )
        .await;
        if i == workloads / 2 {
            cluster.server(leader).kill();
        }
    }
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    wait_until(Duration::from_secs(60), "every replica placed", || async {
        let list = client.list(false).await.ok()?;
        (list.len() == workloads && list.iter().all(|w| w.status.placed == replicas)).then_some(())
    })
    .await;
    let allocations = client.allocations(None, None).await.expect("ps");
    assert_eq!(allocations.len(), workloads * replicas as usize, "no replica lost or doubled");
    let ids: BTreeSet<u64> = allocations.iter().map(|a| a.id).collect();
    assert_eq!(ids.len(), allocations.len());
    for node in client.nodes(false).await.expect("nodes") {
        assert!(node.allocated_cpu <= node.capacity_cpu.0, "{} cpu oversubscribed", node.name);
        assert!(node.allocated_memory <= node.capacity_memory.0, "{} memory oversubscribed", node.name);
        let on_node: u64 = allocations.iter().filter(|a| a.node == node.name).map(|a| a.cpu).sum();
        assert_eq!(on_node, node.allocated_cpu);
    }
    cluster.server(leader).start();
}
