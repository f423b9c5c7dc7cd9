//! Failover as a client sees it: the leader is killed -9 and the clock runs
//! until some server acknowledges the next write.

use std::time::{Duration, Instant};

use flotilla_api::{Client, WorkloadSpec, parse_yaml};

use crate::TestCluster;

/// A small workload spec: what the benchmarks write.
pub fn spec(name: &str) -> WorkloadSpec {
    parse_yaml(&format!("name: {name}\nimage: busybox\nreplicas: 2\n")).expect("valid spec")
}

/// Tries every server in a tight loop until one acknowledges the write, as
/// a client with every server's address does.
pub async fn write_until_acknowledged(cluster: &TestCluster, name: &str) {
    let clients: Vec<Client> = cluster.servers.iter().map(|s| cluster.client_of(s.id)).collect();
    loop {
        for client in &clients {
            if client.deploy(&spec(name), None).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `trials` times: kill the leader, time until a write is acknowledged,
/// start it again and wait until it has caught up. Sorted ascending.
pub async fn failover_trials(cluster: &mut TestCluster, trials: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for trial in 0..trials {
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        // Let every follower hear a fresh heartbeat, as in steady state.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed_at = Instant::now();
        cluster.server(leader).kill();
        write_until_acknowledged(cluster, &format!("failover-{trial}")).await;
        times.push(killed_at.elapsed());
        cluster.server(leader).start();
        let everyone = cluster.client();
        let expected = everyone.list(false).await.expect("list").len();
        let back = cluster.client_of(leader);
        let deadline = Instant::now() + Duration::from_secs(20);
        while back.list(true).await.map(|l| l.len()).unwrap_or(0) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    times.sort();
    times
}
