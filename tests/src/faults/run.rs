//! One fault run: clients working while a nemesis strikes and heals in
//! turns, then the checks: the history is linearizable, every server holds
//! every acknowledged write, and the cluster converges after the last heal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::nemesis::{self, Aftermath, Nemesis, Seeded};
use super::workload::{KEYS, Tally, client_loop, register_of};
use crate::checker::{Recorder, Verdict, WorkloadInput, WorkloadModel, WorkloadOutput, check};
use crate::cluster::TestCluster;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub nemesis: Nemesis,
    pub duration: Duration,
    pub clients: usize,
    pub seed: u64,
    /// How long each fault stays in force, and the calm between faults.
    pub fault_for: Duration,
    pub calm_for: Duration,
}

impl RunConfig {
    /// A run of `nemesis` as long as `FAULT_MINUTES` says (default: a
    /// bounded CI run of 15 s).
    pub fn for_nemesis(nemesis: Nemesis, seed: u64) -> Self {
        let minutes: f64 = std::env::var("FAULT_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(0.25);
        RunConfig {
            nemesis,
            duration: Duration::from_secs_f64(minutes * 60.0),
            clients: 6,
            seed,
            fault_for: Duration::from_secs(3),
            calm_for: Duration::from_secs(2),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct RunReport {
    pub nemesis: Nemesis,
    pub seed: u64,
    pub operations: u64,
    pub acknowledged: u64,
    pub unknown: u64,
    pub failed: u64,
    pub stale_reads_behind: u64,
    /// Leader elections during the run (terms gone by).
    pub elections: u64,
    pub faults: u32,
    /// How many faults each nemesis struck (several in a mixed run).
    pub struck: BTreeMap<String, u32>,
    /// Servers that stopped on their own under a fault (a full disk), and
    /// were started again at the heal.
    pub stopped_by_faults: u32,
    /// Servers that refused a torn data file and were replaced.
    pub replaced: u32,
    pub max_unavailable_ms: u64,
    /// From the last heal to one leader and every server applied alike.
    pub converge_ms: u64,
    /// Keys whose history is not linearizable, with the checker's reason.
    pub violations: Vec<String>,
    /// Keys the checker could not decide within its budget.
    pub undecided: Vec<String>,
    /// Servers whose state differs from the final linearizable reads.
    pub divergent: Vec<String>,
    /// Broken placement invariants once healed: an oversubscribed node, a
    /// replica slot live on two nodes, a workload short of its replicas.
    pub placement: Vec<String>,
    pub writes_per_second: f64,
    /// Acknowledged writes per second while a fault was in force.
    pub writes_per_second_in_faults: f64,
    /// For each fault that took the leader away: how long until the other
    /// servers agreed on a new one (ms); none when the leader survived.
    pub new_leader_ms: Vec<u64>,
}

impl RunReport {
    /// One line for the run's table.
    pub fn row(&self) -> String {
        let mut leader_ms = self.new_leader_ms.clone();
        leader_ms.sort_unstable();
        let new_leader = match (leader_ms.get(leader_ms.len() / 2), leader_ms.last()) {
            (Some(median), Some(max)) => format!("{median}/{max} ms"),
            _ => "-".to_owned(),
        };
        let figures = format!(
            "{:<18} seed {:<20} ops {:>5} acked {:>5} unknown {:>3} failed {:>4} elections {:>2} faults {:>2} stopped {:>2} replaced {:>2} new-leader(median/max) {new_leader:>11} writes/s-in-faults {:>6.1} max-unavailable {:>5} ms converge {:>5} ms writes/s {:>6.1} stale-behind {:>3}",
            format!("{:?}", self.nemesis),
            self.seed,
            self.operations,
            self.acknowledged,
            self.unknown,
            self.failed,
            self.elections,
            self.faults,
            self.stopped_by_faults,
            self.replaced,
            self.writes_per_second_in_faults,
            self.max_unavailable_ms,
            self.converge_ms,
            self.writes_per_second,
            self.stale_reads_behind,
        );
        let verdict = if self.violations.is_empty()
            && self.divergent.is_empty()
            && self.undecided.is_empty()
            && self.placement.is_empty()
        {
            "linearizable, nothing lost, placement sound".to_owned()
        } else {
            format!(
                "VIOLATIONS {:?} {:?} {:?} undecided {:?}",
                self.violations, self.divergent, self.placement, self.undecided
            )
        };
        let mix = if self.struck.len() > 1 {
            let each: Vec<String> = self.struck.iter().map(|(n, c)| format!("{n} {c}")).collect();
            format!(" (faults: {})", each.join(", "))
        } else {
            String::new()
        };
        format!("{figures} verdict {verdict}{mix}")
    }
}

/// The highest of `field` any server reports now (a paused or cut-off
/// server is given a second).
async fn highest(cluster: &TestCluster, field: fn(&flotilla_api::ServerStatus) -> u64) -> u64 {
    let mut highest = 0;
    for server in &cluster.servers {
        if let Ok(Some(status)) =
            tokio::time::timeout(Duration::from_secs(1), cluster.status_of(server.id)).await
        {
            highest = highest.max(field(&status));
        }
    }
    highest
}

/// Waits until every server names one leader and has applied at least
/// `index` (with `index` 0: all have applied the same); how long it waited
/// (`None`: not within `within`). A server that stops on its own meanwhile
/// is started again and counted in `revived`: one whose disk filled stops
/// at its next write, which may come after the heal freed the disk.
async fn converge(
    cluster: &mut TestCluster,
    index: u64,
    within: Duration,
    revived: &mut u32,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        *revived += nemesis::revive_stopped(cluster);
        let mut leaders = Vec::new();
        let mut applied = Vec::new();
        for server in &cluster.servers {
            if let Ok(Some(status)) =
                tokio::time::timeout(Duration::from_secs(1), cluster.status_of(server.id)).await
            {
                leaders.push(status.leader);
                applied.push(status.applied);
            }
        }
        let everyone = leaders.len() == cluster.servers.len();
        let one_leader =
            leaders.first().copied().flatten().is_some() && leaders.windows(2).all(|w| w[0] == w[1]);
        let caught_up = if index == 0 {
            applied.windows(2).all(|w| w[0] == w[1])
        } else {
            applied.iter().all(|a| *a >= index)
        };
        if everyone && one_leader && caught_up {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// How long after a fault until the servers other than the old leader
/// (`old`, an index) agree on another leader; `None` if they keep the old
/// one (the fault spared it) until `deadline`.
async fn new_leader(cluster: &TestCluster, old: usize, deadline: Instant) -> Option<Duration> {
    let start = Instant::now();
    let old_id = cluster.servers[old].id;
    while Instant::now() < deadline {
        let mut leaders = Vec::new();
        for (_, server) in cluster.servers.iter().enumerate().filter(|(i, _)| *i != old) {
            let asked = tokio::time::timeout(Duration::from_millis(500), cluster.status_of(server.id)).await;
            leaders.push(asked.ok().flatten().and_then(|s| s.leader));
        }
        if let Some(Some(leader)) = leaders.first()
            && *leader != old_id
            && leaders.iter().all(|l| *l == Some(*leader))
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Once healed, within `within`: every workload has exactly its replicas,
/// all running, no replica slot live twice, and no node booked past its
/// capacity. What is still broken at the end, if anything.
async fn placement_sound(client: &flotilla_api::Client, within: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let broken = placement_problems(client).await;
        if broken.is_empty() || start.elapsed() >= within {
            return broken;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn placement_problems(client: &flotilla_api::Client) -> Vec<String> {
    let (Ok(workloads), Ok(allocations), Ok(nodes)) =
        (client.list(false).await, client.allocations(None, None).await, client.nodes(false).await)
    else {
        return vec!["the cluster did not answer".to_owned()];
    };
    let mut broken = Vec::new();
    for workload in &workloads {
        // Replicas: live and not being stopped (a replica being stopped
        // still holds its node's resources, counted below).
        let live: Vec<_> =
            allocations.iter().filter(|a| a.workload == workload.spec.name && a.is_replica()).collect();
        let running = live.iter().filter(|a| a.state == flotilla_api::AllocationState::Running).count();
        if live.len() != workload.spec.replicas as usize || running != live.len() {
            broken.push(format!(
                "{} has {} live ({running} running) of {} replicas",
                workload.spec.name,
                live.len(),
                workload.spec.replicas
            ));
        }
        let mut slots = std::collections::BTreeSet::new();
        for allocation in &live {
            if !slots.insert(allocation.replica) {
                broken.push(format!("{} replica {} is live twice", workload.spec.name, allocation.replica));
            }
        }
    }
    for node in &nodes {
        let live = allocations.iter().filter(|a| a.node == node.name && a.state.is_live());
        let (cpu, memory) = live.fold((0, 0), |(c, m), a| (c + a.cpu, m + a.memory));
        if cpu > node.capacity_cpu.0 || memory > node.capacity_memory.0 {
            broken
                .push(format!("node {} is booked past its capacity ({cpu}m CPU, {memory} bytes)", node.name));
        }
    }
    broken
}

pub async fn run(cluster: &mut TestCluster, config: &RunConfig) -> RunReport {
    let mut rng = Seeded::new(config.seed);
    let recorder: Recorder<WorkloadInput, WorkloadOutput> = Recorder::default();
    let tally = Arc::new(Tally::default());
    let values = Arc::new(AtomicU64::new(1));
    let term_before = highest(cluster, |s| s.term).await;
    let start = Instant::now();
    let until = start + config.duration;
    let addresses: Vec<String> = cluster.servers.iter().map(|s| s.address.clone()).collect();
    let mut clients = Vec::new();
    for id in 0..config.clients {
        let mut order = addresses.clone();
        order.rotate_left(id % addresses.len());
        let client = cluster.client_for(order, cluster.admin_token()).with_retry_for(Duration::from_secs(2));
        clients.push(tokio::spawn(client_loop(
            id,
            client,
            recorder.clone(),
            Arc::clone(&tally),
            Arc::clone(&values),
            Seeded::new(rng.next_u64()),
            start,
            until,
        )));
    }
    let mut faults = 0;
    let mut stopped_by_faults = 0;
    let mut replaced = 0;
    let mut struck_by = BTreeMap::new();
    let mut windows = Vec::new();
    let mut new_leader_ms = Vec::new();
    while Instant::now() + config.calm_for + config.fault_for < until {
        tokio::time::sleep(config.calm_for).await;
        stopped_by_faults += nemesis::revive_stopped(cluster);
        let old_leader = nemesis::leader_index(cluster).await;
        let struck = Instant::now();
        let drawn = config.nemesis.draw(&mut rng);
        *struck_by.entry(format!("{drawn:?}")).or_insert(0) += 1;
        let injected = nemesis::inject(cluster, drawn, &mut rng).await;
        faults += 1;
        if let Some(old) = old_leader
            && let Some(waited) = new_leader(cluster, old, struck + config.fault_for).await
        {
            new_leader_ms.push(waited.as_millis() as u64);
        }
        tokio::time::sleep_until((struck + config.fault_for).into()).await;
        match nemesis::heal(cluster, injected).await {
            Aftermath::Nothing => {}
            Aftermath::Restarted => stopped_by_faults += 1,
            Aftermath::Replaced => replaced += 1,
        }
        stopped_by_faults += nemesis::revive_stopped(cluster);
        let window = |at: Instant| at.duration_since(start).as_millis() as u64;
        windows.push((window(struck), window(Instant::now())));
    }
    // After the last heal, while the clients go on: one leader, and every
    // server past what was committed when the heal came.
    let committed = highest(cluster, |s| s.commit).await;
    let converge_ms = converge(cluster, committed.max(1), Duration::from_secs(30), &mut stopped_by_faults)
        .await
        .map_or(u64::MAX, |waited| waited.as_millis() as u64);
    for client in clients {
        let _ = client.await;
    }
    let settled = converge(cluster, 0, Duration::from_secs(30), &mut stopped_by_faults).await.is_some();
    let run_ms = start.elapsed().as_millis() as u64;

    // The final linearizable reads join the history; every server's own
    // state must then be exactly what they read.
    let reader = cluster.client_for(addresses.clone(), cluster.admin_token());
    let mut finals = BTreeMap::new();
    for key in KEYS {
        let pending = recorder.invoke(usize::MAX, key, WorkloadInput::Read);
        match reader.get(key).await {
            Ok(workload) => {
                finals.insert(key, Some(register_of(&workload)));
                recorder.ok(pending, WorkloadOutput::Read(Some(register_of(&workload))));
            }
            Err(e) if e.code() == Some("not_found") => {
                finals.insert(key, None);
                recorder.ok(pending, WorkloadOutput::Read(None));
            }
            Err(e) => panic!("the final read of {key} failed after healing: {e}"),
        }
    }
    let mut divergent = Vec::new();
    if !settled {
        divergent.push("the servers never applied the same index after the clients stopped".to_owned());
    }
    for server in &cluster.servers {
        let listed = cluster.client_of(server.id).list(true).await.unwrap_or_default();
        for key in KEYS {
            let held = listed.iter().find(|w| w.spec.name.as_str() == key).map(register_of);
            if held != finals[key] {
                divergent.push(format!(
                    "server {} holds {key} as {held:?}, the cluster as {:?}",
                    server.id, finals[key]
                ));
            }
        }
    }
    // A node that went down twice in ten minutes gets no new work for 60 s
    // (flap damping): the replicas' return is waited for past that.
    let placement = placement_sound(&reader, Duration::from_secs(90)).await;
    let mut violations = Vec::new();
    let mut undecided = Vec::new();
    for (key, history) in recorder.history() {
        // Long runs have long histories: the budget grows with them.
        let budget = (history.len() as u64 * 200).max(20_000_000);
        match check(&WorkloadModel, &history, budget) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { reason } => violations.push(format!("{key}: {reason}")),
            Verdict::Unknown { steps } => undecided.push(format!("{key} after {steps} steps")),
        }
    }
    let written = tally.acknowledged_writes_ms.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let acknowledged_writes = written.len();
    let in_faults =
        written.iter().filter(|at| windows.iter().any(|(from, to)| (*from..*to).contains(*at))).count();
    let fault_ms: u64 = windows.iter().map(|(from, to)| to - from).sum();
    RunReport {
        nemesis: config.nemesis,
        seed: config.seed,
        operations: tally.invoked.load(Ordering::Relaxed),
        acknowledged: tally.acknowledged.load(Ordering::Relaxed),
        unknown: tally.unknown.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        stale_reads_behind: tally.stale_reads_behind.load(Ordering::Relaxed),
        elections: highest(cluster, |s| s.term).await.saturating_sub(term_before),
        faults,
        stopped_by_faults,
        replaced,
        struck: struck_by,
        max_unavailable_ms: tally.max_unavailable_ms(run_ms),
        converge_ms,
        violations,
        undecided,
        divergent,
        placement,
        writes_per_second: acknowledged_writes as f64 / (run_ms as f64 / 1000.0),
        writes_per_second_in_faults: in_faults as f64 / (fault_ms.max(1) as f64 / 1000.0),
        new_leader_ms,
    }
}
