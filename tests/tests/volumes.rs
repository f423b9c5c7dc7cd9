//! Volumes on the real engine: a replica slot's named volume keeps its data
//! through a killed container and a rollout, and goes with `delete
//! --volumes`; host volumes are mounted as the node offers them (read-only
//! stays read-only) and only on nodes that offer them.

use std::process::{Command, Output};
use std::time::Duration;

use flotilla_api::{AllocationState, Client};
use flotilla_tests::containers::container_of;
use flotilla_tests::workloads::{deploy, wait_running};
use flotilla_tests::{TestCluster, wait_until};

const BASE_IMAGE: &str = "flotilla/busybox:latest";

/// Agents `suffixes` with `flags` each, once the base image is built.
async fn cluster(agents: &[(&str, Vec<String>)]) -> TestCluster {
    let mut cluster = TestCluster::start(Default::default()).await;
    for (suffix, flags) in agents {
        let mut all: Vec<&str> = vec!["--cpu", "4", "--memory", "2Gi"];
        all.extend(flags.iter().map(String::as_str));
        cluster.add_agent(suffix, &all);
    }
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "every agent registered", || async {
        (client.nodes(false).await.ok()?.len() == agents.len()).then_some(())
    })
    .await;
    wait_until(Duration::from_secs(60), "the agents to build the base image", || async {
        docker(&["image", "inspect", BASE_IMAGE]).status.success().then_some(())
    })
    .await;
    cluster
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

/// `docker exec CONTAINER sh -c SCRIPT`: its exit status and output.
fn exec(container: &str, script: &str) -> (bool, String) {
    let output = docker(&["exec", container, "sh", "-c", script]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The lines of `/data/starts` in the workload's running replica, once
/// there are `count` (each start of a container appends one).
async fn starts_recorded(cluster: &TestCluster, client: &Client, count: usize) -> Vec<String> {
    wait_until(Duration::from_secs(60), &format!("{count} starts recorded in /data"), || async {
        let running = client.allocations(Some("notes"), None).await.ok()?;
        let allocation = running.iter().find(|a| a.is_replica() && a.state == AllocationState::Running)?;
        let (ok, text) = exec(&container_of(cluster, allocation), "cat /data/starts");
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (ok && lines.len() == count).then_some(lines)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_slot_volume_keeps_its_data_through_a_kill_and_a_rollout_and_goes_with_delete_volumes() {
    let cluster = cluster(&[("a", vec![]), ("b", vec![])]).await;
    let client = cluster.client();
    let spec = |version: u32| {
        format!(
            "name: notes\nimage: {BASE_IMAGE}\ncommand: [sh, -c, 'echo {version} >> /data/starts; exec sleep 100000']\nresources: {{cpu: 100m, memory: 32Mi}}\nplacement: spread\nvolumes: [{{name: data, path: /data}}]\n"
        )
    };
    deploy(&client, &spec(1)).await;
    let first = wait_running(&client, "notes", 1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(starts_recorded(&cluster, &client, 1).await, ["1"]);

    // Killed: its agent starts it again, and it finds what it wrote.
    let container = container_of(&cluster, &first);
    assert!(docker(&["kill", &container]).status.success());
    assert_eq!(starts_recorded(&cluster, &client, 2).await, ["1", "1"]);

    // A rollout replaces the container; the new one mounts the same volume,
    // on the same node although spread would pick the empty one.
    deploy(&client, &spec(2)).await;
    let lines = starts_recorded(&cluster, &client, 3).await;
    assert_eq!(lines, ["1", "1", "2"]);
    let replaced = wait_running(&client, "notes", 1, Duration::from_secs(60)).await.remove(0);
    assert_ne!(replaced.id, first.id, "a new allocation");
    assert_eq!(replaced.node, first.node, "the slot stays with its volume");

    let volumes = client.volumes(Some("notes")).await.expect("volumes");
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!((volumes[0].slot, volumes[0].node.as_str()), (0, first.node.as_str()));
    let listed = String::from_utf8_lossy(&cluster.cli(&["volumes"]).stdout).to_string();
    assert!(
        listed.contains("notes-0") && listed.contains("in use") && listed.contains(first.node.as_str()),
        "{listed}"
    );
    let engine_volumes = || {
        String::from_utf8_lossy(
            &docker(&["volume", "ls", "-q", "--filter", "label=flotilla.workload=notes"]).stdout,
        )
        .to_string()
    };
    assert_eq!(engine_volumes().trim(), volumes[0].docker_name());

    let deleted = cluster.cli(&["delete", "notes", "--volumes"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    wait_until(Duration::from_secs(60), "the volume removed from the engine and the state", || async {
        let left = client.volumes(Some("notes")).await.ok()?;
        (left.is_empty() && engine_volumes().trim().is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn host_volumes_are_mounted_as_offered_and_only_where_offered() {
    let config = tempfile::tempdir().expect("config dir");
    std::fs::write(config.path().join("app.conf"), "greeting = hello\n").expect("write config");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let offer = |name: &str, dir: &tempfile::TempDir, suffix: &str| {
        vec!["--host-volume".to_owned(), format!("{name}={}{suffix}", dir.path().display())]
    };
    let cluster =
        cluster(&[("a", offer("shared-config", &config, ":ro")), ("b", offer("scratch", &scratch, ""))])
            .await;
    let client = cluster.client();
    let node_a = cluster.agents[0].name.clone();
    let node_b = cluster.agents[1].name.clone();
    let sleeper = format!(
        "image: {BASE_IMAGE}\ncommand: [sh, -c, 'exec sleep 100000']\nresources: {{cpu: 100m, memory: 32Mi}}\n"
    );

    deploy(
        &client,
        &format!("name: reader\nreplicas: 2\n{sleeper}volumes: [{{name: shared-config, path: /etc/app, host: true, read_only: true}}]\n"),
    )
    .await;
    let readers = wait_running(&client, "reader", 2, Duration::from_secs(60)).await;
    assert!(readers.iter().all(|a| a.node == node_a), "only a offers shared-config: {readers:?}");
    let container = container_of(&cluster, &readers[0]);
    assert_eq!(exec(&container, "cat /etc/app/app.conf"), (true, "greeting = hello\n".to_owned()));
    let (wrote, why) = exec(&container, "echo changed > /etc/app/app.conf");
    assert!(!wrote && why.contains("Read-only file system"), "{why}");
    assert_eq!(std::fs::read_to_string(config.path().join("app.conf")).expect("read"), "greeting = hello\n");

    deploy(
        &client,
        &format!("name: writer\n{sleeper}volumes: [{{name: scratch, path: /out, host: true}}]\n"),
    )
    .await;
    let writer = wait_running(&client, "writer", 1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(writer.node, node_b);
    assert!(exec(&container_of(&cluster, &writer), "echo from-the-replica > /out/note").0);
    assert_eq!(std::fs::read_to_string(scratch.path().join("note")).expect("read"), "from-the-replica\n");

    // Offered nowhere, or only read-only to a replica that writes: pending, with the reason.
    let pending = |name: &'static str, volumes: &'static str| {
        let yaml = format!("name: {name}\n{sleeper}volumes: [{volumes}]\n");
        let client = client.clone();
        async move {
            deploy(&client, &yaml).await;
            wait_until(Duration::from_secs(30), &format!("{name} pending with a reason"), || async {
                client.get(name).await.ok()?.status.unplaced_reason
            })
            .await
        }
    };
    assert_eq!(
        pending("nowhere", "{name: shared-cache, path: /cache, host: true}").await,
        "no node offers host volume shared-cache"
    );
    let read_only = pending("overwriter", "{name: shared-config, path: /etc/app, host: true}").await;
    assert!(
        read_only.contains("1 node offers host volume shared-config only read-only")
            && read_only.contains("1 node offers no host volume shared-config"),
        "{read_only}"
    );
    assert!(client.allocations(Some("nowhere"), None).await.expect("allocations").is_empty());
}
