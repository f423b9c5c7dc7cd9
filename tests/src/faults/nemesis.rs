//! Nemeses: the faults a run injects into a cluster whose servers live in
//! network namespaces, one at a time, each undone by `heal`.

use std::time::Duration;

use crate::cluster::TestCluster;

/// Runs are replayed from their seed with placement's own generator.
pub use flotilla_scheduler::placement::SplitMix64 as Seeded;

/// The seed of a run: `FAULT_SEED` to replay one, else a fresh one; printed
/// either way, so a failure can be replayed.
pub fn run_seed(test: &str) -> u64 {
    let seed = std::env::var("FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("{test}: FAULT_SEED={seed}");
    seed
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// The leader cut off from every other server.
    PartitionLeader,
    /// A random server cut off from the others.
    PartitionMinority,
    /// Two servers that cannot see each other, and one that sees both.
    Bridge,
    /// The leader hears nothing from the others, which still hear it.
    OneWay,
    /// The leader stopped with SIGSTOP, then resumed.
    PauseLeader,
    /// A random server killed with SIGKILL, then started again.
    Kill,
    /// A tenth of every server's packets to its peers lost.
    LossyNetwork,
    /// Every server's packets to its peers held back 100 ms ± 80 ms, so
    /// they also arrive out of order.
    SlowNetwork,
    /// A random server's disk filled to the last byte, then freed (and the
    /// server started again if it stopped).
    DiskFull,
}

impl Nemesis {
    pub const ALL: [Nemesis; 9] = [
        Nemesis::PartitionLeader,
        Nemesis::PartitionMinority,
        Nemesis::Bridge,
        Nemesis::OneWay,
        Nemesis::PauseLeader,
        Nemesis::Kill,
        Nemesis::LossyNetwork,
        Nemesis::SlowNetwork,
        Nemesis::DiskFull,
    ];
}

/// A fault in force, to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Network,
    Paused(usize),
    Killed(usize),
    DiskFull(usize),
}

/// Where the servers' leader is, as an index into `cluster.servers`.
pub async fn leader_index(cluster: &TestCluster) -> Option<usize> {
    // A paused or cut-off server may not answer: each is given a second.
    for (index, server) in cluster.servers.iter().enumerate() {
        let asked = tokio::time::timeout(std::time::Duration::from_secs(1), cluster.status_of(server.id));
        if let Ok(Some(status)) = asked.await
            && status.role == flotilla_api::RaftRole::Leader
        {
            return Some(index);
        }
    }
    None
}

/// Injects `nemesis`; what it did, to heal.
pub async fn inject(cluster: &mut TestCluster, nemesis: Nemesis, rng: &mut Seeded) -> Injected {
    let count = cluster.servers.len();
    let leader = leader_index(cluster).await.unwrap_or(0);
    let random = rng.below(count as u64) as usize;
    let network = cluster.network.as_mut().expect("a fault run's cluster lives in namespaces");
    let isolate = |victim: usize| {
        for peer in (0..count).filter(|p| *p != victim) {
            network.cut(victim, peer, false);
            network.cut(peer, victim, false);
        }
    };
    match nemesis {
        Nemesis::PartitionLeader => isolate(leader),
        Nemesis::PartitionMinority => isolate(random),
        Nemesis::Bridge => {
            // The leader is the bridge half the time: it keeps a majority
            // through each side while the sides cannot meet.
            let bridge = if rng.below(2) == 0 { leader } else { random };
            let sides: Vec<usize> = (0..count).filter(|i| *i != bridge).collect();
            for (i, a) in sides.iter().enumerate() {
                for b in &sides[i + 1..] {
                    network.cut(*a, *b, false);
                    network.cut(*b, *a, false);
                }
            }
        }
        Nemesis::OneWay => {
            for peer in (0..count).filter(|p| *p != leader) {
                network.cut(leader, peer, true);
            }
        }
        Nemesis::LossyNetwork => {
            for member in 0..count {
                network.lose(member, 10);
            }
        }
        Nemesis::SlowNetwork => {
            for member in 0..count {
                network.delay(member, Duration::from_millis(100), Duration::from_millis(80));
            }
        }
        Nemesis::PauseLeader => {
            cluster.servers[leader].pause();
            return Injected::Paused(leader);
        }
        Nemesis::Kill => {
            cluster.servers[random].kill();
            return Injected::Killed(random);
        }
        Nemesis::DiskFull => {
            super::disk::fill(&cluster.servers[random].data_dir);
            return Injected::DiskFull(random);
        }
    }
    Injected::Network
}

/// Undoes what `inject` did; whether a server had stopped on its own
/// under the fault (and was started again).
pub fn heal(cluster: &mut TestCluster, injected: Injected) -> bool {
    match injected {
        Injected::Network => {
            if let Some(network) = &mut cluster.network {
                network.heal();
            }
        }
        Injected::Paused(index) => cluster.servers[index].resume(),
        Injected::Killed(index) => cluster.servers[index].start(),
        Injected::DiskFull(index) => {
            super::disk::free(&cluster.servers[index].data_dir);
            // A server may stop rather than go on without its disk.
            let server = &mut cluster.servers[index];
            if server.exited() {
                server.start();
                return true;
            }
        }
    }
    false
}
