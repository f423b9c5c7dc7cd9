//! Images pulled from a real registry on loopback (Debian's
//! docker-registry): once per node for many replicas, as the spec's pull
//! policy says, with the registry's reason when it refuses, and with the
//! credentials of a workload's pull secret for a registry that wants them.

use std::time::Duration;

use flotilla_api::{Allocation, AllocationState, Client};
use flotilla_tests::registry::{Registry, docker};
use flotilla_tests::workloads::{deploy, wait_running};
use flotilla_tests::{TestCluster, wait_until};

const BASE_IMAGE: &str = "flotilla/busybox:latest";
const COMMAND: &str =
    "command: [\"sh\", \"-c\", \"exec sleep 100000\"]\nresources: {cpu: 100m, memory: 32Mi}\n";

/// A cluster of one Docker agent, once the agent has built the base image.
async fn cluster() -> TestCluster {
    let cluster = TestCluster::with_agents(&["a"], &["--cpu", "4", "--memory", "2Gi"]).await;
    wait_until(Duration::from_secs(60), "the agent to build the base image", || async {
        std::process::Command::new("docker")
            .args(["image", "inspect", BASE_IMAGE])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    })
    .await;
    cluster
}

/// The workload's one allocation once its start has failed at least once,
/// with the reason.
async fn failed_start(client: &Client, workload: &str) -> Allocation {
    wait_until(Duration::from_secs(60), &format!("{workload}'s start to fail"), || async {
        let all = client.allocations(Some(workload), None).await.ok()?;
        all.into_iter().find(|a| {
            a.state != AllocationState::Running && !a.message.is_empty() && !a.message.starts_with("pulling")
        })
    })
    .await
}

async fn events(client: &Client) -> Vec<String> {
    client.events(0, Duration::ZERO).await.expect("events").events.into_iter().map(|e| e.message).collect()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_missing_image_is_pulled_once_for_all_replicas_and_each_records_its_digest() {
    let storage = tempfile::tempdir().expect("storage");
    let registry = Registry::start(storage.path(), storage.path(), None);
    let cluster = cluster().await;
    let client = cluster.client();
    let (image, digest) = registry.push(BASE_IMAGE, "flotilla-test/busybox:1");

    deploy(&client, &format!("name: pulled\nimage: {image}\nreplicas: 4\n{COMMAND}")).await;
    let running = wait_running(&client, "pulled", 4, Duration::from_secs(60)).await;
    let expected = format!("{}/flotilla-test/busybox@{digest}", registry.address);
    for allocation in &running {
        assert_eq!(allocation.image_digest.as_deref(), Some(expected.as_str()), "{allocation:?}");
    }
    let pulls: Vec<String> =
        events(&client).await.into_iter().filter(|m| m.contains("pulled image")).collect();
    assert_eq!(pulls.len(), 1, "one pull for four replicas on one node: {pulls:?}");
    assert!(pulls[0].contains(&image) && pulls[0].contains("layers"), "{pulls:?}");
    let ps = cluster.cli(&["ps", "pulled", "-o", "json"]);
    assert!(String::from_utf8_lossy(&ps.stdout).contains(&expected), "ps -o json shows the digest");

    // By digest: honoured as written, and recorded as such.
    let by_digest = format!("{}/flotilla-test/busybox@{digest}", registry.address);
    deploy(&client, &format!("name: pinned\nimage: {by_digest}\npull: always\n{COMMAND}")).await;
    let pinned = wait_running(&client, "pinned", 1, Duration::from_secs(60)).await;
    assert_eq!(pinned[0].image_digest.as_deref(), Some(by_digest.as_str()));

    // A tag the registry does not have: the registry's reason, nothing running.
    deploy(
        &client,
        &format!("name: missing\nimage: {}/flotilla-test/busybox:nope\n{COMMAND}", registry.address),
    )
    .await;
    let failed = failed_start(&client, "missing").await;
    assert!(failed.message.contains("manifest unknown"), "the registry's reason: {}", failed.message);

    // `pull: never` with an image the node lacks: refused, saying why.
    deploy(
        &client,
        &format!("name: never\nimage: {}/flotilla-test/busybox:2\npull: never\n{COMMAND}", registry.address),
    )
    .await;
    let never = failed_start(&client, "never").await;
    assert!(never.message.contains("pull: never"), "{}", never.message);
    for workload in ["missing", "never"] {
        let all = client.allocations(Some(workload), None).await.expect("allocations");
        assert!(all.iter().all(|a| a.state != AllocationState::Running), "{workload}: {all:?}");
        let label = format!("label=flotilla.workload={workload}");
        let running = docker(&["ps", "-q", "--filter", &label, "--filter", "status=running"]);
        assert!(running.trim().is_empty(), "{workload} runs no container: {running}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_private_registry_is_pulled_from_with_the_pull_secret_and_refuses_without_it() {
    let dir = tempfile::tempdir().expect("dir");
    let storage = dir.path().join("storage");
    std::fs::create_dir_all(&storage).expect("storage");
    // One registry to push to, one over the same images that wants a password.
    let open = Registry::start(dir.path(), &storage, None);
    let private = Registry::start(dir.path(), &storage, Some(("deployer", "s3cret")));
    let cluster = cluster().await;
    let client = cluster.client();
    let (pushed, digest) = open.push(BASE_IMAGE, "team/api:4.2");
    let image = pushed.replace(&open.address, &private.address);

    deploy(&client, &format!("name: anonymous\nimage: {image}\n{COMMAND}")).await;
    let anonymous = failed_start(&client, "anonymous").await;
    assert!(anonymous.message.contains("no basic auth credentials"), "{}", anonymous.message);

    let config = |password: &str| {
        format!(
            r#"{{"auths": {{"{}": {{"username": "deployer", "password": "{password}"}}}}}}"#,
            private.address
        )
    };
    client.put_secret("wrong-registry-auth", config("guess").as_bytes()).await.expect("secret");
    deploy(&client, &format!("name: wrong\nimage: {image}\npull_secret: wrong-registry-auth\n{COMMAND}"))
        .await;
    let wrong = failed_start(&client, "wrong").await;
    assert!(wrong.message.contains("unauthorized"), "the registry's reason: {}", wrong.message);

    client.put_secret("registry-auth", config("s3cret").as_bytes()).await.expect("secret");
    deploy(&client, &format!("name: private\nimage: {image}\npull_secret: registry-auth\n{COMMAND}")).await;
    let running = wait_running(&client, "private", 1, Duration::from_secs(60)).await;
    let expected = format!("{}/team/api@{digest}", private.address);
    assert_eq!(running[0].image_digest.as_deref(), Some(expected.as_str()));

    // A secret with no entry for the image's registry says so.
    client
        .put_secret("other-registry-auth", br#"{"auths": {"elsewhere:5000": {"auth": "dTpw"}}}"#)
        .await
        .expect("secret");
    docker(&["rmi", "-f", &image]);
    deploy(&client, &format!("name: elsewhere\nimage: {image}\npull_secret: other-registry-auth\n{COMMAND}"))
        .await;
    let elsewhere = failed_start(&client, "elsewhere").await;
    assert!(
        elsewhere.message.contains(&format!("no credentials for registry {}", private.address)),
        "{}",
        elsewhere.message
    );
}
