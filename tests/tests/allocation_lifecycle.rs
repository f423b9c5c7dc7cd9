//! What `ps` and `deploy --wait` say is what runs: a replica that cannot
//! start or keeps crashing is not `running`, a rollout whose new replicas
//! fail is reported failed while the old ones keep running, a replica
//! stopped while it is still starting leaves nothing behind, and a
//! container that no allocation owns is removed after the grace period.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_api::AllocationState;
use flotilla_tests::containers::is_running;
use flotilla_tests::workloads::{SLEEPER, deploy, replicas, wait_running};
use flotilla_tests::{TestCluster, wait_until};

const AGENT_FLAGS: [&str; 4] = ["--cpu", "2", "--memory", "2Gi"];

fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    AGENT_FLAGS.iter().copied().chain(extra.iter().copied()).collect()
}

fn flotilla(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    cluster.cli(args)
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_deploy_of_an_image_the_engine_lacks_fails_and_the_old_replicas_keep_running() {
    let cluster = TestCluster::with_agents(&["a", "b"], &flags(&["--restart-backoff-ms", "200"])).await;
    let client = cluster.client();
    deploy(&client, &format!("name: web\n{SLEEPER}replicas: 3\n")).await;
    let old = wait_running(&client, "web", 3, Duration::from_secs(60)).await;
    let old_containers: BTreeSet<String> = old.iter().filter_map(|a| a.runtime_id.clone()).collect();
    assert_eq!(old_containers.len(), 3);

    let spec = cluster.dir.path().join("broken.yaml");
    std::fs::write(
        &spec,
        "name: web\nimage: flotilla/absent:never\npull: never\ncommand: [\"sleep\", \"100000\"]\nreplicas: 3\n",
    )
    .expect("write spec");
    let output =
        flotilla(&cluster, &["deploy", "-f", spec.to_str().expect("path"), "--wait", "--timeout", "60"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "deploy --wait fails: {stderr}");
    assert!(stderr.contains("rollout of web version 2 failed"), "{stderr}");
    assert!(
        stderr.contains(
            "image `flotilla/absent:never` is not on this node and `pull: never` forbids pulling it"
        ),
        "names the reason: {stderr}"
    );
    assert!(!stderr.contains("rollout complete"), "{stderr}");

    // The old replicas still run, in the very same containers.
    let all = client.allocations(Some("web"), None).await.expect("ps");
    let running_old: BTreeSet<String> = replicas(&all)
        .iter()
        .filter(|a| a.version == 1 && a.state == AllocationState::Running)
        .filter_map(|a| a.runtime_id.clone())
        .collect();
    assert_eq!(running_old, old_containers);
    assert!(old_containers.iter().all(|c| is_running(c)), "the old containers run");
    // The new ones are failing to start, and never counted as running.
    let new: Vec<_> = replicas(&all).into_iter().filter(|a| a.version == 2).collect();
    assert!(!new.is_empty());
    assert!(new.iter().all(|a| a.state != AllocationState::Running), "{new:?}");
    let ps = flotilla(&cluster, &["ps", "web"]);
    let table = String::from_utf8_lossy(&ps.stdout);
    let new_rows: Vec<&str> = table.lines().filter(|l| l.contains("not on this node")).collect();
    assert!(!new_rows.is_empty(), "ps shows why the new replica fails: {table}");
    assert!(
        new_rows.iter().all(|l| l.contains("restarting") || l.contains("starting") || l.contains("failed")),
        "{table}"
    );
    let workload = client.get("web").await.expect("get");
    assert!(workload.status.rollout_failure.is_some(), "{:?}", workload.status);
    assert_eq!(workload.status.outdated, 3, "all three old replicas kept");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_crash_looping_replica_is_restarting_between_restarts_and_its_workload_degraded() {
    let cluster = TestCluster::with_agents(&["a"], &flags(&["--restart-backoff-ms", "3000"])).await;
    let client = cluster.client();
    deploy(&client, "name: crashy\nimage: flotilla/busybox:latest\ncommand: [\"sh\", \"-c\", \"exit 3\"]\n")
        .await;
    // The second exit waits 3 s for its restart: long enough to be seen.
    let waiting = wait_until(Duration::from_secs(30), "the replica waiting out a backoff", || async {
        let all = client.allocations(Some("crashy"), None).await.ok()?;
        all.into_iter().find(|a| a.state == AllocationState::Restarting && a.restarts >= 2)
    })
    .await;
    assert_eq!(waiting.exit_code, Some(3));
    assert!(waiting.next_restart_at_ms.is_some(), "says when it restarts: {waiting:?}");
    assert!(waiting.message.contains("restarting in"), "{waiting:?}");
    let ps = flotilla(&cluster, &["ps", "crashy"]);
    let table = String::from_utf8_lossy(&ps.stdout);
    assert!(table.contains("restarting"), "{table}");
    let workload = client.get("crashy").await.expect("get");
    assert_eq!(workload.status.running, 0, "a crash-looping replica is not running");
    assert_eq!(workload.status.restarting, 1);
    let list = flotilla(&cluster, &["list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("degraded"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn replicas_deleted_while_still_starting_leave_no_container() {
    // A long grace: the orphan collector must not be what cleans up here.
    let cluster = TestCluster::with_agents(&["a"], &flags(&["--orphan-grace-ms", "600000"])).await;
    let client = cluster.client();
    deploy(&client, &format!("name: burst\n{SLEEPER}replicas: 16\nresources: {{cpu: 10m, memory: 8Mi}}\n"))
        .await;
    // As soon as the first replica runs, most are still being started.
    let not_yet_running = wait_until(Duration::from_secs(60), "the first replica running", || async {
        let all = client.allocations(Some("burst"), None).await.ok()?;
        let running = all.iter().filter(|a| a.state == AllocationState::Running).count();
        (running > 0).then(|| all.len() - running)
    })
    .await;
    client.delete("burst").await.expect("delete");
    assert!(not_yet_running > 0, "the delete raced starts");
    let agent = &cluster.agents[0];
    wait_until(Duration::from_secs(60), "every container of the deleted workload gone", || async {
        let gone = client.allocations(Some("burst"), None).await.ok()?.is_empty();
        (gone && agent.containers().is_empty()).then_some(())
    })
    .await;
}

/// A container made by hand, removed at the end whatever happens.
struct HandMade(String);

impl HandMade {
    fn run(labels: &[String]) -> Self {
        let mut args = vec!["run".to_owned(), "-d".to_owned()];
        for label in labels {
            args.extend(["--label".to_owned(), label.clone()]);
        }
        args.extend(["flotilla/busybox:latest".to_owned(), "sleep".to_owned(), "100000".to_owned()]);
        let output = Command::new("docker").args(&args).output().expect("docker run");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        HandMade(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn exists(&self) -> bool {
        Command::new("docker").args(["inspect", &self.0]).output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for HandMade {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_container_of_the_node_that_no_allocation_owns_is_removed_after_the_grace_period() {
    let grace = Duration::from_secs(3);
    let cluster = TestCluster::with_agents(&["a"], &flags(&["--orphan-grace-ms", "3000"])).await;
    let client = cluster.client();
    let node = cluster.agents[0].name.clone();
    deploy(&client, &format!("name: kept\n{SLEEPER}")).await;
    let kept = wait_running(&client, "kept", 1, Duration::from_secs(60)).await;
    let created = Instant::now();
    let orphan = HandMade::run(&[format!("flotilla.node={node}"), "flotilla.alloc=987654321".to_owned()]);
    let foreign = HandMade::run(&["flotilla.node=some-other-node".to_owned(), "flotilla.alloc=1".to_owned()]);
    wait_until(Duration::from_secs(30), "the orphan removed", || async { (!orphan.exists()).then_some(()) })
        .await;
    assert!(created.elapsed() >= grace, "removed only after the grace period");
    assert!(foreign.exists(), "another node's container is left alone");
    let container = kept[0].runtime_id.clone().expect("container id");
    assert!(is_running(&container), "an owned container is left alone");
    let events = wait_until(Duration::from_secs(10), "the removal in events", || async {
        let page = client.events(0, Duration::ZERO).await.ok()?;
        page.events.into_iter().find(|e| e.message.contains("no allocation of this node owns it"))
    })
    .await;
    assert_eq!(events.node.as_deref(), Some(node.as_str()));
    assert!(cluster.agents[0].log_text().contains("removing an orphan"));
}
