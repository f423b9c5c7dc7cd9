//! The process runtime, for hosts without Docker: replicas run as child
//! processes in their own process groups, are restarted when killed, stream
//! their output through `flotilla logs`, and are killed with their group.

use std::process::Command;
use std::time::Duration;

use flotilla_api::{Allocation, AllocationState, parse_yaml};
use flotilla_tests::{ClusterOptions, TestCluster, flotilla_binary, wait_until};

fn pid_of(cluster: &TestCluster, allocation: &Allocation) -> u32 {
    let agent = cluster.agents.iter().find(|a| a.name == allocation.node).expect("agent");
    let record =
        std::fs::read_to_string(agent.data_dir.join("process").join(format!("{}.pid", allocation.id)))
            .expect("the runtime records the pid");
    record.split_whitespace().next().and_then(|p| p.parse().ok()).expect("a pid")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_runtime_runs_restarts_logs_and_stops_processes() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent(
        "p",
        &["--driver", "process", "--allow-driver", "process", "--cpu", "2", "--memory", "2Gi"],
    );
    let client = cluster.client();
    let spec = "name: proc\ndriver: process\nreplicas: 2\ncommand: [\"sh\", \"-c\", \"echo started; sleep 100000 & wait\"]\n";
    client.deploy(&parse_yaml(spec).expect("valid"), None).await.expect("deploy");
    let running = wait_until(Duration::from_secs(30), "two running processes", || async {
        let all = client.allocations(Some("proc"), None).await.ok()?;
        (all.len() == 2 && all.iter().all(|a| a.state == AllocationState::Running)).then_some(all)
    })
    .await;

    let output = cluster.cli(&["logs", &running[0].id.to_string()]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "started");

    let victim = &running[0];
    let pid = pid_of(&cluster, victim);
    Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    let restarted = wait_until(Duration::from_secs(20), "the killed process to be restarted", || async {
        let all = client.allocations(Some("proc"), None).await.ok()?;
        all.into_iter().find(|a| a.id == victim.id && a.restarts == 1 && a.state == AllocationState::Running)
    })
    .await;
    assert_eq!(restarted.exit_code, Some(137), "killed by SIGKILL");
    let new_pid = pid_of(&cluster, victim);
    assert_ne!(new_pid, pid);

    // Its child (the sleep) is in its process group and dies with it.
    let children =
        std::fs::read_to_string(format!("/proc/{new_pid}/task/{new_pid}/children")).unwrap_or_default();
    let child: Option<u32> = children.split_whitespace().next().and_then(|c| c.parse().ok());
    client.delete("proc").await.expect("delete");
    wait_until(Duration::from_secs(20), "the processes to be stopped", || async {
        (!alive(new_pid) && child.is_none_or(|c| !alive(c))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_failing_too_often_is_failed_and_replaced_on_another_node() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let flags = [
        "--driver",
        "process",
        "--allow-driver",
        "process",
        "--cpu",
        "1",
        "--memory",
        "1Gi",
        "--restart-backoff-ms",
        "50",
        "--max-failures",
        "2",
    ];
    cluster.add_agent("x", &flags);
    cluster.add_agent("y", &flags);
    let client = cluster.client();
    wait_until(Duration::from_secs(20), "both agents registered", || async {
        (client.nodes(false).await.ok()?.len() == 2).then_some(())
    })
    .await;
    let spec = "name: doomed\ndriver: process\ncommand: [\"sh\", \"-c\", \"exit 7\"]\n";
    client.deploy(&parse_yaml(spec).expect("valid"), None).await.expect("deploy");
    let (failed, replacement) =
        wait_until(Duration::from_secs(30), "a failed replica replaced elsewhere", || async {
            let all = client.allocations(Some("doomed"), None).await.ok()?;
            let failed = all.iter().find(|a| a.state == AllocationState::Failed)?.clone();
            let replacement = all.iter().find(|a| a.id > failed.id)?.clone();
            Some((failed, replacement))
        })
        .await;
    assert_eq!(failed.exit_code, Some(7));
    assert_eq!(failed.restarts, 2, "restarted up to the limit first");
    assert_ne!(replacement.node, failed.node, "the replacement prefers another node");
    let events = client.events(0, Duration::ZERO).await.expect("events");
    assert!(
        events.events.iter().any(|e| e.message.starts_with(&format!("allocation {} failed", failed.id))),
        "{:?}",
        events.events
    );
}

#[test]
fn an_agent_refuses_to_offer_the_process_driver_unless_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("agent");
    let output = Command::new(flotilla_binary())
        .args(["agent", "--servers", "127.0.0.1:9", "--data-dir", data.to_str().expect("path")])
        .args(["--driver", "process", "--mesh-listen", "none"])
        .output()
        .expect("flotilla agent runs");
    assert!(!output.status.success(), "the agent must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("start the agent with --allow-driver process"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_agent_offers_docker_only_and_an_allowed_one_runs_replicas_as_nobody_with_their_own_environment()
 {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("d", &["--cpu", "1", "--memory", "1Gi"]);
    cluster.add_agent(
        "p",
        &["--driver", "process", "--allow-driver", "process", "--cpu", "1", "--memory", "1Gi"],
    );
    let client = cluster.client();
    let nodes = wait_until(Duration::from_secs(20), "both agents registered", || async {
        let nodes = client.nodes(false).await.ok()?;
        (nodes.len() == 2).then_some(nodes)
    })
    .await;
    let default = nodes.iter().find(|n| n.name.ends_with("-d")).expect("the default agent");
    assert!(
        !default.drivers.contains(&flotilla_api::spec::Driver::Process),
        "a default agent does not offer the process driver: {:?}",
        default.drivers
    );

    let spec = "name: who\ndriver: process\nenv: {GREETING: hi}\n\
                command: [\"sh\", \"-c\", \"id -u; env; sleep 100000 & wait\"]\n";
    client.deploy(&parse_yaml(spec).expect("valid"), None).await.expect("deploy");
    let running = wait_until(Duration::from_secs(30), "the replica runs", || async {
        let all = client.allocations(Some("who"), None).await.ok()?;
        all.into_iter().find(|a| a.state == AllocationState::Running)
    })
    .await;
    let agent = cluster.agents.iter().find(|a| a.name == running.node).expect("its agent");
    let log_path = agent.data_dir.join("process").join(format!("{}.log", running.id));
    let output = wait_until(Duration::from_secs(10), "the replica's output", || async {
        let text = std::fs::read_to_string(&log_path).ok()?;
        text.contains("GREETING=").then_some(text)
    })
    .await;
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.first().copied(), Some("65534"), "it runs as nobody: {output}");
    assert!(lines.contains(&"GREETING=hi"), "the spec's environment: {output}");
    assert!(lines.iter().any(|l| l.starts_with("FLOTILLA_ALLOCATION_ID=")), "{output}");
    assert!(
        !lines.iter().any(|l| l.starts_with("FLOTILLA_LOG=") || l.starts_with("CARGO")),
        "nothing of the agent's own environment: {output}"
    );
}
