//! C1M on one machine: a fleet of simulated nodes (`flotilla agent
//! --driver sim --fleet N`, each registering, heartbeating, long-polling
//! and reporting as an agent does) under three servers on loopback, and a
//! million replicas deployed by 64 clients. Prints the time until every
//! replica is placed, committed and reported running, the leader's memory,
//! the snapshot's size and the time a restarted server takes to restore
//! it, failover with that state, and node loss at scale (1 % of the nodes
//! killed at once, their replicas re-placed).
//!
//! `cargo bench -p flotilla-tests --bench c1m`; FLOTILLA_C1M_NODES and
//! FLOTILLA_C1M_REPLICAS scale it down (defaults 10,000 and 1,000,000).

use std::time::{Duration, Instant};

use flotilla_api::{Client, WorkloadSpec, parse_yaml};
use flotilla_tests::process_memory::rss_kib;
use flotilla_tests::{ClusterOptions, TestCluster};

/// Replicas per workload: a million replicas are a thousand workloads.
const REPLICAS_PER_WORKLOAD: u64 = 1000;
const CLIENTS: u64 = 64;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn spec(name: &str, replicas: u64) -> WorkloadSpec {
    let yaml =
        format!("name: {name}\nimage: x\nreplicas: {replicas}\nresources: {{cpu: 10m, memory: 16Mi}}\n");
    parse_yaml(&yaml).expect("valid spec")
}

fn rss_mib(pid: Option<u32>) -> f64 {
    pid.map_or(0, rss_kib) as f64 / 1024.0
}

fn dir_mib(path: &std::path::Path) -> f64 {
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total as f64 / (1 << 20) as f64
}

/// Sums of placed and running replicas over the workloads named `c1m-*`.
async fn tally(client: &Client) -> Option<(u64, u64)> {
    let workloads = client.list(false).await.ok()?;
    let ours = workloads.iter().filter(|w| w.spec.name.as_str().starts_with("c1m-"));
    Some(ours.fold((0, 0), |(placed, running), w| {
        (placed + u64::from(w.status.placed), running + u64::from(w.status.running))
    }))
}

/// Waits until `done` holds of the tally, printing progress; the time taken.
async fn until(client: &Client, what: &str, limit: Duration, done: impl Fn(u64, u64) -> bool) -> Duration {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        if let Some((placed, running)) = tally(client).await {
            if done(placed, running) {
                return start.elapsed();
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!("  {what}: {placed} placed, {running} running after {:.0?}", start.elapsed());
                last_print = Instant::now();
            }
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn ready_nodes(client: &Client) -> usize {
    client
        .nodes(false)
        .await
        .map(|nodes| nodes.iter().filter(|n| n.status == flotilla_api::NodeStatus::Ready).count())
        .unwrap_or(0)
}

async fn write_until_acknowledged(cluster: &TestCluster, name: &str) {
    let clients: Vec<Client> = cluster
        .servers
        .iter()
        .map(|s| cluster.client_of(s.id).with_request_timeout(Duration::from_millis(500)))
        .collect();
    loop {
        for client in &clients {
            if client.deploy(&spec(name, 0), None).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let nodes = env_or("FLOTILLA_C1M_NODES", 10_000);
    let replicas = env_or("FLOTILLA_C1M_REPLICAS", 1_000_000);
    let workloads = replicas.div_ceil(REPLICAS_PER_WORKLOAD);
    // 1 % of the nodes in a fleet of their own, to be killed at once.
    let doomed = (nodes / 100).max(1);
    let options = ClusterOptions { insecure: true, ..ClusterOptions::default() };
    let mut cluster = TestCluster::start(options).await;
    let node_flags = |count: u64| -> Vec<String> {
        ["--driver", "sim", "--cpu", "16", "--memory", "64Gi", "--fleet", &count.to_string()]
            .map(str::to_owned)
            .to_vec()
    };
    let first = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let first_term = cluster.status_of(first).await.map_or(0, |s| s.term);
    let started = Instant::now();
    let flags = node_flags(nodes - doomed);
    cluster.add_agent("fleet", &flags.iter().map(String::as_str).collect::<Vec<_>>());
    let flags = node_flags(doomed);
    cluster.add_agent("doomed", &flags.iter().map(String::as_str).collect::<Vec<_>>());
    let client = cluster.client().with_retry_for(Duration::from_secs(30));
    while ready_nodes(&client).await < nodes as usize {
        assert!(started.elapsed() < Duration::from_secs(300), "the fleet did not register in 5 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let registered = started.elapsed();
    eprintln!("{nodes} nodes ready after {registered:.1?}; deploying {replicas} replicas");

    let deploying = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for w in (c..workloads).step_by(CLIENTS as usize) {
                let count = REPLICAS_PER_WORKLOAD.min(replicas - w * REPLICAS_PER_WORKLOAD);
                client.deploy(&spec(&format!("c1m-{w}"), count), None).await.expect("deploy");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let deployed = deploying.elapsed();
    let limit = Duration::from_secs(1800);
    let placed = until(&client, "placing", limit, |placed, _| placed >= replicas).await + deployed;
    let running = until(&client, "starting", limit, |_, running| running >= replicas).await + placed;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let leader_rss = rss_mib(cluster.server(leader).pid());
    let fleet_rss = rss_mib(cluster.agent("fleet").pid());

    // Node loss: the doomed fleet killed at once; its replicas are lost
    // once the nodes miss their heartbeats, and placed on the others.
    let prefix = format!("{}-", cluster.agent("doomed").name);
    let killed = Instant::now();
    cluster.agent("doomed").kill();
    loop {
        let nodes = client.nodes(false).await.unwrap_or_default();
        let down = nodes
            .iter()
            .filter(|n| n.name.starts_with(&prefix) && n.status == flotilla_api::NodeStatus::Down)
            .count();
        if down as u64 == doomed {
            break;
        }
        assert!(killed.elapsed() < limit, "the killed nodes were not marked down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detected = killed.elapsed();
    until(&client, "re-placing", limit, |placed, running| placed >= replicas && running >= replicas).await;
    let replaced = killed.elapsed();

    // Failover with the whole state, then the killed leader restarted
    // from its data dir: the snapshot it restores and the log after it.
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let elections = cluster.status_of(leader).await.map_or(0, |s| s.term.saturating_sub(first_term));
    let follower = cluster.servers.iter().map(|s| s.id).find(|id| *id != leader).expect("a follower");
    let snapshot_mib = dir_mib(&cluster.server(follower).data_dir);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    cluster.server(leader).kill();
    write_until_acknowledged(&cluster, "after-failover").await;
    let failover = killed.elapsed();
    let restarting = Instant::now();
    cluster.server(leader).start();
    let status = cluster.status_of(follower).await.expect("a follower answers");
    loop {
        let back = cluster.status_of(leader).await;
        if back.is_some_and(|s| s.applied >= status.commit && s.leader.is_some()) {
            break;
        }
        assert!(restarting.elapsed() < Duration::from_secs(300), "the restarted server did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restored = restarting.elapsed();

    println!("C1M on one machine: {nodes} simulated nodes, {replicas} replicas, 3 servers on loopback");
    println!("{:<52} {:>12}", "metric", "value");
    println!("{:<52} {:>12.1}", "fleet registered and ready, s", registered.as_secs_f64());
    println!(
        "{:<52} {:>12.1}",
        format!("{workloads} deploys by {CLIENTS} clients, s"),
        deployed.as_secs_f64()
    );
    println!("{:<52} {:>12.1}", "all replicas placed and committed, s", placed.as_secs_f64());
    println!("{:<52} {:>12.1}", "all replicas reported running, s", running.as_secs_f64());
    println!("{:<52} {:>12.0}", "leader RSS, MiB", leader_rss);
    println!("{:<52} {:>12.0}", "fleet RSS, MiB", fleet_rss);
    println!("{:<52} {:>12.0}", "a follower's data dir (snapshot and log), MiB", snapshot_mib);
    println!("{:<52} {:>12.1}", format!("{doomed} nodes killed: marked down, s"), detected.as_secs_f64());
    println!("{:<52} {:>12.1}", "  ... and running elsewhere, s", replaced.as_secs_f64());
    println!("{:<52} {:>12}", "elections before the failover (terms passed)", elections);
    println!("{:<52} {:>12.2}", "leader killed: next write acknowledged, s", failover.as_secs_f64());
    println!("{:<52} {:>12.1}", "killed leader restarted: caught up, s", restored.as_secs_f64());
}
