//! Deploying workloads and waiting for their replicas, as the suites do.

use std::time::Duration;

use flotilla_api::{Allocation, AllocationState, Client, parse_yaml};

use crate::wait::wait_until;

/// A spec's fields for a busybox replica that prints `ready` and sleeps.
pub const SLEEPER: &str =
    "image: flotilla/busybox:latest\ncommand: [\"sh\", \"-c\", \"echo ready; exec sleep 100000\"]\n";

pub async fn deploy(client: &Client, yaml: &str) {
    client.deploy(&parse_yaml(yaml).expect("valid spec"), None).await.expect("deploy");
}

/// Allocations that stand for replicas (placed, not being stopped).
pub fn replicas(allocations: &[Allocation]) -> Vec<&Allocation> {
    allocations.iter().filter(|a| a.is_replica()).collect()
}

/// Waits until `workload` has exactly `count` replicas, all running.
pub async fn wait_running(
    client: &Client,
    workload: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Allocation> {
    wait_until(timeout, &format!("{count} running replicas of {workload}"), || async {
        let all = client.allocations(Some(workload), None).await.ok()?;
        let live: Vec<Allocation> = all.into_iter().filter(|a| a.is_replica()).collect();
        (live.len() == count && live.iter().all(|a| a.state == AllocationState::Running)).then_some(live)
    })
    .await
}
