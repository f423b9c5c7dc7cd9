//! `flotilla agent --driver sim --fleet N`: N simulated nodes in one
//! process, each registering (with a certificate of its own), heartbeating,
//! long-polling and reporting as an agent does, so that a scale test can
//! stand up thousands of nodes on one machine.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_api::{AllocationState, AllocationUpdate, AllocationUsage, Heartbeat, NodeStatus, parse_yaml};
use flotilla_tests::process_connections::established_to;
use flotilla_tests::{ClusterOptions, TestCluster, flotilla_binary, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_of_simulated_nodes_runs_replicas_as_agents_do() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let fleet = ["--driver", "sim", "--fleet", "25", "--cpu", "1", "--memory", "1Gi"];
    let prefix = format!("{}-", cluster.add_agent("fleet", &fleet).name);
    let client = cluster.client();
    let members = |nodes: Vec<flotilla_api::Node>| -> BTreeSet<String> {
        nodes
            .into_iter()
            .filter(|n| n.name.starts_with(&prefix) && n.status == NodeStatus::Ready)
            .map(|n| n.name)
            .collect()
    };
    let ready = wait_until(Duration::from_secs(60), "25 fleet nodes ready", || async {
        let ready = members(client.nodes(false).await.ok()?);
        (ready.len() == 25).then_some(ready)
    })
    .await;
    let expected: BTreeSet<String> = (1..=25).map(|i| format!("{prefix}{i}")).collect();
    assert_eq!(ready, expected, "named NAME-1 to NAME-N");

    // 100 replicas of 200m: at most five fit a node, so at least 20 nodes run them.
    let spec = parse_yaml("name: spread\nimage: x\nreplicas: 100\nresources: {cpu: 200m, memory: 64Mi}\n")
        .expect("spec");
    client.deploy(&spec, None).await.expect("deploy");
    let running = |wanted: usize| {
        let client = client.clone();
        async move {
            wait_until(Duration::from_secs(60), &format!("{wanted} replicas running"), || async {
                let allocations = client.allocations(Some("spread"), None).await.ok()?;
                let live: Vec<_> = allocations.into_iter().filter(|a| a.is_replica()).collect();
                let all_running = live.iter().all(|a| a.state == AllocationState::Running);
                (live.len() == wanted && all_running).then_some(live)
            })
            .await
        }
    };
    let live = running(100).await;
    let nodes: BTreeSet<&str> = live.iter().map(|a| a.node.as_str()).collect();
    assert!(nodes.len() >= 20 && nodes.iter().all(|n| expected.contains(*n)), "{nodes:?}");
    assert!(
        live.iter().all(|a| a.runtime_id.is_some()),
        "each replica reported with its (simulated) container"
    );

    // Each node's registration, heartbeats, long-poll and reports share one
    // HTTP/2 connection, as a real agent's do: 25 nodes, 25 connections
    // (over HTTP/1.1 a node held one per call in flight).
    let ports = cluster.server_ports();
    let pid = cluster.agent("fleet").pid().expect("the fleet runs");
    wait_until(Duration::from_secs(20), "one connection per fleet node", || async {
        (established_to(pid, &ports) == 25).then_some(())
    })
    .await;

    // Scaled down, the nodes report the stopped replicas as agents do.
    client.scale("spread", 10).await.expect("scale");
    running(10).await;
    wait_until(Duration::from_secs(30), "the 90 stopped replicas reported stopped", || async {
        let allocations = client.allocations(Some("spread"), None).await.ok()?;
        allocations.iter().all(|a| !a.stopping || !a.state.is_live()).then_some(())
    })
    .await;

    let agent = cluster.agent("fleet");
    let status = agent.terminate(Duration::from_secs(20)).expect("the fleet stops when told");
    assert!(status.success(), "the fleet stops cleanly: {}", agent.log_text());
}

#[test]
fn only_simulated_nodes_come_in_fleets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(flotilla_binary())
        .args(["agent", "--insecure", "--driver", "process", "--fleet", "3", "--name", "f", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("flotilla runs");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("--fleet: only simulated nodes come in fleets; add --driver sim"), "{said}");
}

/// Past the leader's heartbeat budget each node is asked to beat less
/// often, and is given three of its longer intervals before it is marked
/// down: 40 nodes at 10 beats/s beat every 4 s, past the default TTL of
/// 3 s, and none is marked down over three of those intervals.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_fleet_beats_less_often_within_the_leaders_budget_and_stays_ready() {
    let options = ClusterOptions {
        server_args: vec!["--heartbeats-per-second".into(), "10".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = TestCluster::start(options).await;
    let fleet = ["--driver", "sim", "--fleet", "40", "--cpu", "1", "--memory", "1Gi"];
    let prefix = format!("{}-", cluster.add_agent("fleet", &fleet).name);
    let client = cluster.client();
    let ready_indexes = |nodes: Vec<flotilla_api::Node>| -> Option<Vec<(String, u64)>> {
        let fleet: Vec<_> = nodes.into_iter().filter(|n| n.name.starts_with(&prefix)).collect();
        (fleet.len() == 40 && fleet.iter().all(|n| n.status == NodeStatus::Ready))
            .then(|| fleet.into_iter().map(|n| (n.name, n.ready_index)).collect())
    };
    let first = wait_until(Duration::from_secs(60), "40 fleet nodes ready", || async {
        ready_indexes(client.nodes(false).await.ok()?)
    })
    .await;
    let agent = cluster.agent("fleet");
    wait_until(Duration::from_secs(30), "every node told to beat every 4 s", || async {
        let log = agent.log_text();
        let told = log
            .lines()
            .filter(|line| {
                line.contains("heartbeat interval set by the servers") && line.contains("every_ms=4000")
            })
            .count();
        (told == 40).then_some(())
    })
    .await;
    // Three intervals and more: a node the TTL did not stretch for would
    // have been marked down (and its ready index moved on) by now.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(13) {
        let now = client.nodes(false).await.expect("nodes");
        assert_eq!(ready_indexes(now).as_ref(), Some(&first), "a node was marked down");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A node learns the stretched interval from its registration's answer,
/// before its first heartbeat: a fleet starting together learned it only
/// from answered heartbeats, and beat every second until then.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_answers_how_often_a_large_cluster_wants_beats() {
    let options = ClusterOptions {
        server_args: vec!["--heartbeats-per-second".into(), "4".into()],
        ..ClusterOptions::default().without_node_health()
    };
    let cluster = TestCluster::start(options).await;
    let mut answers = Vec::new();
    for i in 0..12 {
        let registration =
            flotilla_tests::simulated_nodes::registration(&format!("n-{i}"), 1000, 1 << 30, &[]);
        let registered = cluster.node_client(&registration.name).register_node(&registration).await;
        answers.push(registered.expect("registers").heartbeat_every_ms);
    }
    assert_eq!(answers[0], None, "one node: the agent's own interval");
    // Twelve nodes within four beats a second: three seconds (the last
    // registration counted, or not yet, by the server that answered).
    let last = answers[11].expect("an interval for twelve nodes");
    assert!((2750..=3000).contains(&last), "{answers:?}");
}

/// An agent's long-poll asks for changes only: the answer carries the
/// allocations changed after the index it holds, and the ids of all, so
/// that a node's replicas are sent once each, not again with every change.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_for_changes_only_carries_what_changed_and_the_ids_of_all() {
    let cluster = TestCluster::start(ClusterOptions::default().without_node_health()).await;
    flotilla_tests::simulated_nodes::register_nodes(&cluster, "only", 1, 4000, 8 << 30, &[]).await;
    let node = cluster.node_client("only-0");
    let client = cluster.client();
    let spec = |replicas: u32| {
        parse_yaml(&format!(
            "name: web\nimage: x\nreplicas: {replicas}\nresources: {{cpu: 100m, memory: 64Mi}}\n"
        ))
        .expect("spec")
    };
    client.deploy(&spec(2), None).await.expect("deploy");
    let whole = wait_until(Duration::from_secs(20), "two replicas placed", || async {
        let answer = node.node_allocations("only-0", 0, Duration::ZERO, true).await.ok()?;
        (answer.allocations.len() == 2).then_some(answer)
    })
    .await;
    assert_eq!(whole.all_ids, None, "index 0: the whole list");
    assert_eq!(whole.workloads.len(), 1);

    client.scale("web", 3).await.expect("scale");
    let changes =
        node.node_allocations("only-0", whole.index, Duration::from_secs(20), true).await.expect("changes");
    let known: BTreeSet<u64> = whole.allocations.iter().map(|a| a.id).collect();
    assert_eq!(changes.allocations.len(), 1, "only the new replica: {:?}", changes.allocations);
    assert!(!known.contains(&changes.allocations[0].id));
    let all: BTreeSet<u64> = changes.all_ids.clone().expect("the ids of all").into_iter().collect();
    assert_eq!(all.len(), 3);
    assert!(known.is_subset(&all));
    assert_eq!(changes.workloads.len(), 1, "the new replica's spec comes with it");

    // Without changes_only the same query answers the whole list.
    let whole_again =
        node.node_allocations("only-0", whole.index, Duration::ZERO, false).await.expect("whole");
    assert_eq!((whole_again.allocations.len(), whole_again.all_ids), (3, None));
}

/// A node of many cores holds thousands of replicas; its heartbeat carries
/// each one's usage and its reports each one's state. Bodies that size were
/// refused (413) as any small request's would be, so a busy node missed
/// its heartbeats and was marked down.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_holding_thousands_of_allocations_heartbeats_and_reports_them_all() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    flotilla_tests::simulated_nodes::register_nodes(&cluster, "big", 1, 64_000, 256 << 30, &[]).await;
    let node = cluster.node_client("big-0");
    let usage: Vec<AllocationUsage> =
        (1..=3000).map(|id| AllocationUsage { id, cpu_millis: 12.5, memory_bytes: 48 << 20 }).collect();
    let heartbeat = Heartbeat { usage, ..Heartbeat::default() };
    assert!(serde_json::to_vec(&heartbeat).expect("encode").len() > 64 * 1024, "past the small-body limit");
    let answer = node.heartbeat("big-0", &heartbeat).await.expect("a heartbeat of 3,000 allocations");
    assert_eq!(answer.status, NodeStatus::Ready);
    let updates: Vec<AllocationUpdate> = (1..=3000).map(AllocationUpdate::running).collect();
    node.report_allocations("big-0", 1, &updates).await.expect("a report of 3,000 allocations");
}

/// Found at 10,000 nodes: a report an agent gave up on (its server was slow
/// to pass it on) reached the leader after the agent's next report, and a
/// replica that ran was shown starting from then on. Reports are numbered;
/// the late one is refused, and a re-registering agent learns the number to
/// go on from.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_that_arrives_after_a_later_one_does_not_undo_it() {
    let cluster = TestCluster::start(ClusterOptions::default().without_node_health()).await;
    flotilla_tests::simulated_nodes::register_nodes(&cluster, "late", 1, 4000, 8 << 30, &[]).await;
    let node = cluster.node_client("late-0");
    let client = cluster.client();
    let spec = "name: web\nimage: x\nreplicas: 1\nresources: {cpu: 100m, memory: 64Mi}\n";
    client.deploy(&parse_yaml(spec).expect("spec"), None).await.expect("deploy");
    let id = wait_until(Duration::from_secs(20), "the replica placed", || async {
        let answer = node.node_allocations("late-0", 0, Duration::ZERO, false).await.ok()?;
        answer.allocations.first().map(|a| a.id)
    })
    .await;

    node.report_allocations("late-0", 100, &[AllocationUpdate::running(id)]).await.expect("report 100");
    let starting = AllocationUpdate { state: AllocationState::Starting, ..AllocationUpdate::running(id) };
    let late = node.report_allocations("late-0", 99, std::slice::from_ref(&starting)).await;
    let error = late.expect_err("report 99 after report 100");
    assert_eq!(error.code(), Some("conflict"), "{error}");
    assert!(error.to_string().contains("report 99 arrived after report 100"), "{error}");
    let allocation = client.allocations(Some("web"), None).await.expect("allocations");
    assert_eq!(allocation.iter().map(|a| a.state).collect::<Vec<_>>(), [AllocationState::Running]);

    let registration = flotilla_tests::simulated_nodes::registration("late-0", 4000, 8 << 30, &[]);
    let registered = node.register_node(&registration).await.expect("registers again");
    assert_eq!(registered.node.report_seq, 100, "a restarted agent numbers its reports past this");
    node.report_allocations("late-0", 101, &[starting]).await.expect("a later report is applied");
}

/// A follower passes the heartbeats its nodes send on to the leader through
/// its relay (`/v1/relay/heartbeats`, in batches): nodes that beat only
/// through a follower, all at once, are answered ready and stay ready for
/// twice the TTL, which they could not if their beats stopped there.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_sent_to_a_follower_reach_the_leader_through_its_relay() {
    const NODES: usize = 8;
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let follower = cluster.servers.iter().map(|s| s.id).find(|id| *id != leader).expect("a follower");
    flotilla_tests::simulated_nodes::register_nodes(&cluster, "relayed", NODES, 1000, 1 << 30, &[]).await;
    let names: Vec<String> = (0..NODES).map(|i| format!("relayed-{i}")).collect();
    let through_follower: Vec<_> =
        names.iter().map(|name| cluster.node_client(name).for_server(&cluster.address(follower))).collect();
    let ready_indexes = || async {
        let nodes = cluster.client().nodes(false).await.expect("nodes");
        let ours: Vec<_> = nodes.into_iter().filter(|n| n.name.starts_with("relayed-")).collect();
        assert!(ours.iter().all(|n| n.status == NodeStatus::Ready), "a node was marked down: {ours:?}");
        ours.into_iter().map(|n| (n.name, n.ready_index)).collect::<Vec<_>>()
    };
    let first = ready_indexes().await;
    // Beats every half second for twice the default TTL (3 s).
    let beating = std::time::Instant::now();
    let beat = Heartbeat::default();
    while beating.elapsed() < Duration::from_secs(6) {
        let beats = through_follower.iter().zip(&names).map(|(client, name)| client.heartbeat(name, &beat));
        for answer in futures_util::future::join_all(beats).await {
            assert_eq!(answer.expect("answered through the follower").status, NodeStatus::Ready);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ready_indexes().await, first, "no node was marked down and back");

    let mut relayed = 0.0;
    for server in &cluster.servers {
        let request = cluster.authorize(cluster.http().get(cluster.url(server.id, "/metrics")));
        let text = request.send().await.expect("metrics answer").text().await.expect("metrics body");
        let series =
            r#"flotilla_http_requests_total{route="/v1/relay/heartbeats",method="POST",status="200"} "#;
        relayed += text
            .lines()
            .filter_map(|line| line.strip_prefix(series))
            .filter_map(|v| v.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(relayed >= 1.0, "the leader took relayed batches");
}
