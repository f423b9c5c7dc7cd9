//! Exactly-once writes: a write sent again with its idempotency key is
//! answered with what the first did, also when the first crossed a leader
//! kill; a write whose outcome is unknown answers 504, not 503.

use std::time::Duration;

use flotilla_api::{Client, DeployChange, DeployResult, parse_yaml};
use flotilla_tests::{ClusterOptions, TestCluster};

/// A client that asks `first` before the others, as an agent or CLI whose
/// first address happens to be that server.
fn client_starting_at(cluster: &TestCluster, first: u64) -> Client {
    let mut addresses = vec![cluster.address(first)];
    addresses.extend(cluster.servers.iter().filter(|s| s.id != first).map(|s| s.address.clone()));
    cluster.client_for(addresses, cluster.admin_token()).with_retry_for(Duration::from_secs(15))
}

/// Cuts the leader off from the others, so that a write sent to it stays
/// in flight, then kills it once the write is surely under way.
async fn kill_leader_during<T: Send + 'static>(
    cluster: &mut TestCluster,
    leader: u64,
    write: tokio::task::JoinHandle<T>,
) -> T {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!write.is_finished(), "the write cannot finish while its leader is cut off");
    cluster.server(leader).kill();
    let others: Vec<u64> = cluster.servers.iter().map(|s| s.id).filter(|id| *id != leader).collect();
    for other in &others {
        cluster.block(*other, &[]).await;
    }
    write.await.expect("task")
}

async fn cut_off(cluster: &TestCluster, leader: u64) {
    let others: Vec<u64> = cluster.servers.iter().map(|s| s.id).filter(|id| *id != leader).collect();
    cluster.block(leader, &others).await;
    for other in &others {
        cluster.block(*other, &[leader]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_and_a_delete_sent_twice_with_one_key_answer_what_the_first_did_across_leader_kills() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let spec = parse_yaml("name: web\nimage: busybox\nreplicas: 2\n").expect("valid spec");

    // The first deploy goes to the leader, which is killed while it is under way.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let keyed = client_starting_at(&cluster, leader).with_idempotency_key("deploy-web-1");
    cut_off(&cluster, leader).await;
    let write = {
        let (keyed, spec) = (keyed.clone(), spec.clone());
        tokio::spawn(async move { keyed.deploy(&spec, Some(0)).await })
    };
    let first: DeployResult =
        kill_leader_during(&mut cluster, leader, write).await.expect("the first deploy is answered");
    assert_eq!((first.change, first.workload.version), (DeployChange::Created, 1));
    let again = keyed.deploy(&spec, Some(0)).await.expect("the same deploy, same key");
    assert_eq!(again, first, "the repeat answers what the first did");
    let fresh = cluster.client().deploy(&spec, Some(0)).await.expect_err("version 0 means must be new");
    assert_eq!(fresh.code(), Some("conflict"), "without the key the same deploy is refused: {fresh}");
    let other = keyed.deploy(&parse_yaml("name: other\nimage: busybox\n").expect("spec"), None).await;
    assert_eq!(other.expect_err("a key is for one request").code(), Some("conflict"));

    // Bring the killed server back, then the same for a delete.
    cluster.server(leader).start();
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let keyed = client_starting_at(&cluster, leader).with_idempotency_key("delete-web-1");
    cut_off(&cluster, leader).await;
    let write = {
        let keyed = keyed.clone();
        tokio::spawn(async move { keyed.delete("web").await })
    };
    let first = kill_leader_during(&mut cluster, leader, write).await.expect("the first delete is answered");
    assert_eq!(first.spec.name.as_str(), "web");
    let again = keyed.delete("web").await.expect("the same delete, same key, does not answer 404");
    assert_eq!(again, first);
    let fresh = cluster.client().delete("web").await.expect_err("web is gone");
    assert_eq!(fresh.code(), Some("not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_cut_off_with_its_leader_answers_504_and_its_retry_with_the_key_applies_once() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let others: Vec<u64> = cluster.servers.iter().map(|s| s.id).filter(|id| *id != leader).collect();
    cut_off(&cluster, leader).await;
    // Straight to the cut-off leader, with no failover: it takes the write
    // into its log and cannot commit it; when it steps down, nobody knows.
    let response = cluster
        .authorize(cluster.http().post(cluster.url(leader, "/v1/workloads")))
        .header("content-type", "application/yaml")
        .header("Idempotency-Key", "cut-off-1")
        .body("name: cut\nimage: busybox\n")
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("the leader answers");
    assert_eq!(response.status().as_u16(), 504);
    let body: flotilla_api::ApiErrorBody = response.json().await.expect("error body");
    assert_eq!(body.code, "outcome_unknown");
    assert!(body.message.contains("retry with the same idempotency key"), "{}", body.message);

    // Healed, the same write with the same key applies exactly once.
    cluster.block(leader, &[]).await;
    for other in &others {
        cluster.block(*other, &[]).await;
    }
    let client = cluster.client().with_idempotency_key("cut-off-1");
    let spec = parse_yaml("name: cut\nimage: busybox\n").expect("spec");
    let first = client.deploy(&spec, None).await.expect("retried with its key");
    let again = client.deploy(&spec, None).await.expect("and again");
    assert_eq!(first, again);
    assert_eq!(first.workload.version, 1);
}
