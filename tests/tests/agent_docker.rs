//! The agent on the real Docker engine: three servers and two agents of
//! overridden capacity, with containers built from the local busybox image.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_api::{Allocation, AllocationState};
use flotilla_tests::containers::{container_of, docker_inspect, is_running};
use flotilla_tests::workloads::{SLEEPER, deploy, replicas, wait_running};
use flotilla_tests::{TestCluster, wait_until};

const AGENT_FLAGS: [&str; 4] = ["--cpu", "2", "--memory", "2Gi"];

async fn cluster_with_agents(extra: &[&str]) -> TestCluster {
    let flags: Vec<&str> = AGENT_FLAGS.iter().chain(extra).copied().collect();
    TestCluster::with_agents(&["a", "b"], &flags).await
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn replicas_run_with_their_limits_and_labels_and_killed_ones_restart() {
    let cluster = cluster_with_agents(&[]).await;
    let client = cluster.client();
    deploy(&client, &format!("name: web\n{SLEEPER}replicas: 5\nresources: {{cpu: 250m, memory: 64Mi}}\n"))
        .await;
    let running = wait_running(&client, "web", 5, Duration::from_secs(60)).await;
    for allocation in &running {
        let container = container_of(&cluster, allocation);
        assert_eq!(docker_inspect(&container, "{{.HostConfig.NanoCpus}}"), "250000000");
        assert_eq!(docker_inspect(&container, "{{.HostConfig.Memory}}"), (64u64 << 20).to_string());
        assert_eq!(docker_inspect(&container, "{{.HostConfig.MemorySwap}}"), (64u64 << 20).to_string());
        assert_eq!(docker_inspect(&container, "{{index .Config.Labels \"flotilla.workload\"}}"), "web");
        assert_eq!(docker_inspect(&container, "{{index .Config.Labels \"flotilla.node\"}}"), allocation.node);
    }
    let nodes: BTreeSet<&str> = running.iter().map(|a| a.node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "replicas are spread over both agents");

    // docker kill one: the agent restarts it in place.
    let victim = &running[0];
    let container = container_of(&cluster, victim);
    Command::new("docker").args(["kill", &container]).output().expect("docker kill");
    let restarted = wait_until(Duration::from_secs(20), "the killed container to be restarted", || async {
        let all = client.allocations(Some("web"), None).await.ok()?;
        all.into_iter().find(|a| a.id == victim.id && a.restarts >= 1 && a.state == AllocationState::Running)
    })
    .await;
    assert_eq!(restarted.exit_code, Some(137));
    assert_eq!(docker_inspect(&container, "{{.State.Running}}"), "true");
    wait_running(&client, "web", 5, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_crash_loop_backs_off_and_an_oom_kill_is_reported() {
    let cluster = cluster_with_agents(&["--restart-backoff-ms", "300", "--max-failures", "50"]).await;
    let client = cluster.client();
    deploy(&client, "name: crashy\nimage: flotilla/busybox:latest\ncommand: [\"sh\", \"-c\", \"exit 3\"]\n")
        .await;
    // Record when the restart count moves, and the delays the agent decided
    // (it reports "restarting in N s" with each exit).
    let mut seen: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut delays: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while seen.len() < 6 && Instant::now() < deadline {
        if let Ok(all) = client.allocations(Some("crashy"), None).await
            && let Some(a) = replicas(&all).first()
        {
            seen.entry(a.restarts).or_insert_with(Instant::now);
            assert!(a.exit_code.is_none() || a.exit_code == Some(3), "exit code 3 is reported: {a:?}");
            if let Some(delay) = a.message.split("restarting in ").nth(1).map(str::to_owned)
                && delays.last() != Some(&delay)
            {
                delays.push(delay);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen.len() >= 6, "restarts happened: {seen:?}");
    // The schedule: at once, then 0.3 s, doubling. Polling may miss a report
    // but never reorders them: what was seen follows the schedule's order.
    let schedule = ["0.0s", "0.3s", "0.6s", "1.2s", "2.4s", "4.8s", "9.6s"];
    let start =
        schedule.iter().position(|d| Some(*d) == delays.first().map(String::as_str)).expect("a known delay");
    assert!(delays.len() >= 3, "the decided delays were reported: {delays:?}");
    assert_eq!(delays, schedule[start..start + delays.len()].to_vec(), "delays follow the backoff schedule");
    // And restarts really waited: from restart 2 to 5 the backoff alone is
    // 0.3 + 0.6 + 1.2 s (without it, three restarts of `exit 3` take about
    // half a second); observing restart 2 late through the API can shave a little.
    let waited = seen[&5].duration_since(seen[&2]).as_secs_f64();
    assert!(waited >= 1.6, "restarts 2 to 5 took {waited:.2}s");

    deploy(
        &client,
        "name: hog\nimage: flotilla/busybox:latest\nrestart: never\nresources: {memory: 16Mi}\ncommand: [\"sh\", \"-c\", \"x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done\"]\n",
    )
    .await;
    let killed = wait_until(Duration::from_secs(30), "the OOM kill to be reported", || async {
        let all = client.allocations(Some("hog"), None).await.ok()?;
        all.into_iter().find(|a| a.oom_killed)
    })
    .await;
    assert_eq!(killed.exit_code, Some(137));
    assert_eq!(killed.state, AllocationState::Complete, "restart: never leaves it stopped");
    let output = cluster.cli(&["ps", "hog"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("OOM-killed"));
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn an_agent_killed_loses_its_replicas_to_the_other_and_a_restarted_agent_adopts_its_containers() {
    let mut cluster = cluster_with_agents(&[]).await;
    let client = cluster.client();
    deploy(&client, &format!("name: web\n{SLEEPER}replicas: 4\nplacement: spread\n")).await;
    let running = wait_running(&client, "web", 4, Duration::from_secs(60)).await;

    // Restart agent a (SIGTERM, then start). Adopted means: the restarted
    // agent reports the very containers that ran (same ids), creates none,
    // restarts none, and supervises them (a container killed later is
    // restarted in place).
    let a_name = cluster.agent("a").name.clone();
    let started_at = |ids: &[String]| -> BTreeMap<String, String> {
        ids.iter().map(|c| (c.clone(), docker_inspect(c, "{{.State.StartedAt}}"))).collect()
    };
    let reported = |all: &[Allocation]| -> BTreeSet<String> {
        all.iter().filter(|a| a.node == a_name).filter_map(|a| a.runtime_id.clone()).collect()
    };
    let before = started_at(&cluster.agent("a").containers());
    assert!(!before.is_empty());
    let reported_before = reported(&running);
    assert_eq!(reported_before, before.keys().cloned().collect(), "the servers know a's container ids");
    let index_before: BTreeMap<u64, u64> = running.iter().map(|a| (a.id, a.modified_index)).collect();
    cluster.agent("a").stop();
    cluster.agent("a").start();
    let again =
        wait_until(Duration::from_secs(20), "the restarted agent to report what it adopted", || async {
            let all = client.allocations(Some("web"), None).await.ok()?;
            let mine: Vec<&Allocation> = all.iter().filter(|a| a.node == a_name).collect();
            let all_reported =
                mine.iter().all(|a| index_before.get(&a.id).is_some_and(|i| a.modified_index > *i));
            (all_reported && replicas(&all).len() == 4).then_some(all)
        })
        .await;
    assert_eq!(
        replicas(&again).iter().map(|a| a.id).collect::<BTreeSet<_>>(),
        running.iter().map(|a| a.id).collect()
    );
    assert_eq!(reported(&again), reported_before, "the restarted agent reports the same container ids");
    let after = started_at(&cluster.agent("a").containers());
    assert_eq!(before, after, "no container created, none restarted");
    let log = cluster.agent("a").log_text();
    assert_eq!(log.matches("adopted a running container").count(), before.len(), "{log}");
    // The adopted containers are supervised: one killed is restarted in place.
    let victim = again.iter().find(|a| a.node == a_name).expect("a replica on a").clone();
    let container = victim.runtime_id.clone().expect("a container id");
    Command::new("docker").args(["kill", &container]).output().expect("docker kill");
    wait_until(Duration::from_secs(20), "the killed adopted container restarted", || async {
        let all = client.allocations(Some("web"), None).await.ok()?;
        let now = all.into_iter().find(|a| a.id == victim.id)?;
        (now.restarts > victim.restarts && now.state == AllocationState::Running && is_running(&container))
            .then_some(())
    })
    .await;
    assert_eq!(cluster.agent("a").containers().len(), before.len(), "still no new container");

    // kill -9 agent b: its replicas move to a.
    let b_name = cluster.agent("b").name.clone();
    cluster.agent("b").kill();
    wait_until(Duration::from_secs(30), "all replicas running on agent a", || async {
        let all = client.allocations(Some("web"), None).await.ok()?;
        let live: Vec<&Allocation> = replicas(&all);
        (live.len() == 4 && live.iter().all(|a| a.node != b_name && a.state == AllocationState::Running))
            .then_some(())
    })
    .await;
    let nodes = client.nodes(false).await.expect("nodes");
    assert_eq!(
        nodes.iter().find(|n| n.name == b_name).map(|n| n.status),
        Some(flotilla_api::NodeStatus::Down)
    );

    // b comes back: it stops the containers that were replaced.
    cluster.agent("b").start();
    wait_until(Duration::from_secs(30), "agent b to stop its replaced containers", || async {
        let b = cluster.agents.iter().find(|a| a.name == b_name)?;
        let running: Vec<String> = b
            .containers()
            .into_iter()
            .filter(|c| docker_inspect(c, "{{.State.Running}}") == "true")
            .collect();
        running.is_empty().then_some(())
    })
    .await;
    wait_until(Duration::from_secs(10), "node b ready again", || async {
        let nodes = client.nodes(false).await.ok()?;
        nodes.iter().any(|n| n.name == b_name && n.status == flotilla_api::NodeStatus::Ready).then_some(())
    })
    .await;
    let total_running: usize = cluster
        .agents
        .iter()
        .flat_map(|a| a.containers())
        .filter(|c| docker_inspect(c, "{{.State.Running}}") == "true")
        .count();
    assert_eq!(total_running, 4, "no more than the desired replicas run");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn drain_moves_replicas_and_logs_stream_output() {
    let mut cluster = cluster_with_agents(&[]).await;
    let client = cluster.client();
    deploy(&client, &format!("name: web\n{SLEEPER}replicas: 2\nplacement: spread\n")).await;
    wait_running(&client, "web", 2, Duration::from_secs(60)).await;

    let a_name = cluster.agent("a").name.clone();
    let output = cluster.cli(&["node", "drain", &a_name]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut fewest_running = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = client.allocations(Some("web"), None).await.expect("ps");
        let live = replicas(&all);
        fewest_running =
            fewest_running.min(live.iter().filter(|a| a.state == AllocationState::Running).count());
        if live.len() == 2 && live.iter().all(|a| a.node != a_name && a.state == AllocationState::Running) {
            break;
        }
        assert!(Instant::now() < deadline, "the drain finishes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fewest_running, 2, "a new replica runs before an old one stops");
    client.set_node_status(&a_name, flotilla_api::NodeStatus::Ready).await.expect("undrain");

    let output = cluster.cli(&["logs", "web"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ready");
}
