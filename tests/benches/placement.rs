//! Placement benchmark: the placement core alone on 5,000 nodes and 100,000
//! replicas in 1,000 workloads, then the same end to end through a
//! three-server Raft cluster on loopback. Run with
//! `cargo bench -p flotilla-tests --bench placement`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_api::spec::Driver;
use flotilla_api::{CpuMillis, MemoryBytes, NodeRegistration, WorkloadSpec, parse_yaml};
use flotilla_scheduler::controllers::reconcile::{ReconcileConfig, reconcile};
use flotilla_scheduler::state::{ClusterState, Command};
use flotilla_tests::process_memory::{rss_kib, status_kib};
use flotilla_tests::{ClusterOptions, TestCluster};

const NODES: usize = 5_000;
const WORKLOADS: usize = 1_000;
const REPLICAS: u32 = 100;

fn workload_spec(i: usize) -> WorkloadSpec {
    let zone = ["a", "b", "c", "d"][i % 4];
    let constraint =
        if i.is_multiple_of(5) { format!("constraints: [\"zone == {zone}\"]\n") } else { String::new() };
    let placement = if i.is_multiple_of(2) { "binpack" } else { "spread" };
    parse_yaml(&format!(
        "name: w{i}\nimage: app:1\nreplicas: {REPLICAS}\nresources: {{cpu: {}m, memory: {}Mi}}\nplacement: {placement}\n{constraint}",
        50 + (i % 4) * 50,
        64 + (i % 3) * 64,
    ))
    .expect("valid spec")
}

fn registration(i: usize) -> NodeRegistration {
    NodeRegistration {
        name: format!("node-{i}"),
        address: String::new(),
        cpu: CpuMillis(16_000),
        memory: MemoryBytes(32 << 30),
        labels: BTreeMap::from([("zone".to_owned(), ["a", "b", "c", "d"][i % 4].to_owned())]),
        drivers: [Driver::Docker].into(),
        host_volumes: Default::default(),
    }
}

fn placement_core() -> (f64, u64, u64) {
    let mut state = ClusterState::default();
    for i in 0..NODES {
        state.apply(1, Command::RegisterNode { registration: registration(i) }).expect("node");
    }
    for i in 0..WORKLOADS {
        state.apply(2, Command::put_workload(workload_spec(i), 0)).expect("workload");
    }
    let before = status_kib("self", "VmRSS:");
    let config = ReconcileConfig { max_placements: usize::MAX, ..ReconcileConfig::default() };
    let start = Instant::now();
    let plan = reconcile(&state, 42, 0, &config);
    let elapsed = start.elapsed();
    let placed = plan.placements.len();
    assert_eq!(placed, WORKLOADS * REPLICAS as usize, "everything fits: {:?}", plan.unplaced.values().next());
    let peak = status_kib("self", "VmHWM:");
    state.apply(3, Command::ApplyPlan { plan }).expect("plan applies");
    (placed as f64 / elapsed.as_secs_f64(), before, peak)
}

async fn end_to_end() -> (f64, Duration, u64) {
    let cluster = TestCluster::start(ClusterOptions::default().without_node_health()).await;
    let client = cluster.client();
    let mut tasks = Vec::new();
    for chunk in 0..32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..NODES).step_by(32) {
                client.register_node(&registration(i)).await.expect("register");
            }
        }));
    }
    for task in tasks {
        task.await.expect("register task");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..WORKLOADS).step_by(16) {
                client.deploy(&workload_spec(i), None).await.expect("deploy");
            }
        }));
    }
    for task in tasks {
        task.await.expect("deploy task");
    }
    let total = WORKLOADS as u32 * REPLICAS;
    loop {
        let placed: u32 = client.list(false).await.expect("list").iter().map(|w| w.status.placed).sum();
        if placed == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let pid = cluster.servers.iter().find(|s| s.id == leader).and_then(|s| s.pid()).expect("leader pid");
    let rss = rss_kib(pid);
    (f64::from(total) / elapsed.as_secs_f64(), elapsed, rss)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (core_rate, rss_before, peak) = placement_core();
    let (e2e_rate, e2e_time, leader_rss) = end_to_end().await;
    println!(
        "flotilla placement: {NODES} nodes, {} replicas in {WORKLOADS} workloads",
        WORKLOADS * REPLICAS as usize
    );
    println!("{:<58} {:>14}", "metric", "value");
    println!("{:<58} {:>14.0}", "placement core: placements/s", core_rate);
    println!("{:<58} {:>14}", "placement core: RSS before placing (MiB)", rss_before / 1024);
    println!("{:<58} {:>14}", "placement core: peak RSS while placing (MiB)", peak / 1024);
    println!("{:<58} {:>14.0}", "end to end (3 servers, Raft, fsync): placements/s", e2e_rate);
    println!("{:<58} {:>14.2}", "end to end: seconds until all placed and committed", e2e_time.as_secs_f64());
    println!("{:<58} {:>14}", "leader RSS holding 100,000 allocations (MiB)", leader_rss / 1024);
}
