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
    /// A random server killed with SIGKILL and the end of its log's newest
    /// segment torn ([`super::torn_write`]), then started again; one that refuses
    /// its torn file is replaced as an operator would: removed from the
    /// cluster, its data wiped, joined anew.
    TornWrite,
    /// Each fault one of all the above, drawn at random: the long run.
    Mixed,
}

impl Nemesis {
    pub const ALL: [Nemesis; 10] = [
        Nemesis::PartitionLeader,
        Nemesis::PartitionMinority,
        Nemesis::Bridge,
        Nemesis::OneWay,
        Nemesis::PauseLeader,
        Nemesis::Kill,
        Nemesis::LossyNetwork,
        Nemesis::SlowNetwork,
        Nemesis::DiskFull,
        Nemesis::TornWrite,
    ];

    /// The nemesis of the next fault: this one, or for `Mixed` one drawn
    /// from all the others.
    pub fn draw(self, rng: &mut Seeded) -> Nemesis {
        match self {
            Nemesis::Mixed => Nemesis::ALL[rng.below(Nemesis::ALL.len() as u64) as usize],
            one => one,
        }
    }
}

/// A fault in force, to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Network,
    Paused(usize),
    Killed(usize),
    DiskFull(usize),
    Torn(usize),
}

/// What a heal had to do beyond undoing the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aftermath {
    Nothing,
    /// A server had stopped on its own under the fault (a full disk) and
    /// was started again.
    Restarted,
    /// A server refused its torn data file and was replaced.
    Replaced,
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
    match nemesis.draw(rng) {
        Nemesis::Mixed => unreachable!("a drawn nemesis is never the mix itself"),
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
        Nemesis::TornWrite => {
            cluster.servers[random].kill();
            super::torn_write::tear(&super::torn_write::log_file(&cluster.servers[random].data_dir), rng);
            return Injected::Torn(random);
        }
    }
    Injected::Network
}

/// Undoes what `inject` did.
pub async fn heal(cluster: &mut TestCluster, injected: Injected) -> Aftermath {
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
                return Aftermath::Restarted;
            }
        }
        Injected::Torn(index) => {
            cluster.servers[index].start();
            if started_on_its_file(cluster, index).await {
                return Aftermath::Nothing;
            }
            replace(cluster, index).await;
            return Aftermath::Replaced;
        }
    }
    Aftermath::Nothing
}

/// Starts again every server that stopped on its own since the last look
/// (a server stops when its disk is full, perhaps only after the disk was
/// freed); how many. A panic is still caught by the run's log check.
pub fn revive_stopped(cluster: &mut TestCluster) -> u32 {
    let mut revived = 0;
    for server in &mut cluster.servers {
        if server.exited() {
            server.start();
            revived += 1;
        }
    }
    revived
}

/// Whether server `index`, just started on a torn file, came up (it
/// answers) rather than refused the file; a refusal must say why.
async fn started_on_its_file(cluster: &mut TestCluster, index: usize) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let id = cluster.servers[index].id;
    loop {
        if cluster.servers[index].exited() {
            let log = cluster.servers[index].log_text();
            assert!(
                log.contains("corrupted") && log.contains("raft-log") && !log.contains("panicked"),
                "a server that refuses its torn data file says it is corrupted, and does not panic:\n{log}"
            );
            return false;
        }
        if tokio::time::timeout(Duration::from_secs(1), cluster.status_of(id)).await.ok().flatten().is_some()
        {
            return true;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server {id} neither came up nor refused its torn file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces server `index` as an operator would: removed from the cluster
/// by the others, its data wiped, joined anew through one of them.
async fn replace(cluster: &mut TestCluster, index: usize) {
    let id = cluster.servers[index].id;
    let others: Vec<String> =
        cluster.servers.iter().filter(|s| s.id != id).map(|s| s.address.clone()).collect();
    let client =
        cluster.client_for(others.clone(), cluster.admin_token()).with_retry_for(Duration::from_secs(10));
    client.remove_member(id).await.expect("the others remove the server that refused its file");
    let server = &mut cluster.servers[index];
    // Its contents: the data dir may be a small disk's mount point.
    for entry in std::fs::read_dir(&server.data_dir).expect("the refused data dir").flatten() {
        let path = entry.path();
        let wiped = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        wiped.expect("the refused data wiped");
    }
    server.set_args(vec!["--join".to_owned(), others[0].clone()]);
    server.start();
}
