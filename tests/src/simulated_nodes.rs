//! Simulated nodes: registered through the same API agents use, with the
//! test standing in for their agents when it reports allocation states.

use std::collections::BTreeMap;

use flotilla_api::spec::Driver;
use flotilla_api::{AllocationState, AllocationUpdate, Client, CpuMillis, MemoryBytes, NodeRegistration};

/// Registers `count` nodes named `{prefix}-{i}` with the given capacity and labels.
pub async fn register_nodes(
    client: &Client,
    prefix: &str,
    count: usize,
    cpu: u64,
    memory: u64,
    labels: &[(&str, &str)],
) {
    for i in 0..count {
        let registration = NodeRegistration {
            name: format!("{prefix}-{i}"),
            address: String::new(),
            cpu: CpuMillis(cpu),
            memory: MemoryBytes(memory),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            drivers: [Driver::Docker, Driver::Process].into(),
        };
        client.register_node(&registration).await.expect("node registers");
    }
}

/// Reports every pending allocation as running, as agents would once their
/// containers start. Returns how many it reported.
pub async fn report_pending_as_running(client: &Client) -> u32 {
    let allocations = client.allocations(None, None).await.expect("allocations");
    let mut by_node: BTreeMap<String, Vec<AllocationUpdate>> = BTreeMap::new();
    for allocation in allocations.into_iter().filter(|a| a.state == AllocationState::Pending) {
        by_node.entry(allocation.node).or_default().push(AllocationUpdate::running(allocation.id));
    }
    let mut reported = 0;
    for (node, updates) in by_node {
        reported += client.report_allocations(&node, &updates).await.expect("report");
    }
    reported
}
