//! Simulated nodes: registered through the same API agents use, each with
//! a certificate of its own node from the cluster's CA, with the test
//! standing in for their agents when it reports allocation states.

use std::collections::BTreeMap;

use flotilla_api::spec::Driver;
use flotilla_api::{AllocationState, AllocationUpdate, CpuMillis, Health, MemoryBytes, NodeRegistration};

use crate::cluster::TestCluster;

/// Registers `count` nodes named `{prefix}-{i}` with the given capacity and labels.
pub async fn register_nodes(
    cluster: &TestCluster,
    prefix: &str,
    count: usize,
    cpu: u64,
    memory: u64,
    labels: &[(&str, &str)],
) {
    for i in 0..count {
        let registration = registration(&format!("{prefix}-{i}"), cpu, memory, labels);
        let client = cluster.node_client(&registration.name);
        client.register_node(&registration).await.expect("node registers");
    }
}

/// What a simulated node registers with: the capacity and labels given,
/// both drivers, no volumes.
pub fn registration(name: &str, cpu: u64, memory: u64, labels: &[(&str, &str)]) -> NodeRegistration {
    NodeRegistration {
        name: name.to_owned(),
        address: String::new(),
        cpu: CpuMillis(cpu),
        memory: MemoryBytes(memory),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
        drivers: [Driver::Docker, Driver::Process].into(),
        host_volumes: BTreeMap::new(),
    }
}

/// Does what agents do with what the servers ask: reports every pending
/// allocation as running (its container started) and every allocation
/// being stopped as stopped. Returns how many it reported.
pub async fn act_as_agents(cluster: &TestCluster) -> u32 {
    let allocations = cluster.client().allocations(None, None).await.expect("allocations");
    let mut by_node: BTreeMap<String, Vec<AllocationUpdate>> = BTreeMap::new();
    for allocation in allocations {
        let update = if allocation.stopping && allocation.state.is_live() {
            AllocationUpdate::stopped(allocation.id)
        } else if allocation.state == AllocationState::Pending {
            // As a real agent says of a replica without checks.
            let health_output = "running; no checks".to_owned();
            AllocationUpdate {
                health: Health::Healthy,
                health_output,
                ..AllocationUpdate::running(allocation.id)
            }
        } else {
            continue;
        };
        by_node.entry(allocation.node.to_string()).or_default().push(update);
    }
    let mut reported = 0;
    for (node, updates) in by_node {
        reported += cluster.node_client(&node).report_allocations(&node, 0, &updates).await.expect("report");
    }
    reported
}
