//! The reconciler's pass when one workload changed, full against
//! incremental, in states of growing size: nodes and allocations grow
//! tenfold, and the incremental pass should not. Run with
//! `cargo bench -p flotilla-tests --bench reconcile`.
//!
//! Each state: N nodes (16 CPUs, 32 GiB), N/10 workloads of 100 replicas
//! each, all placed and reported running. Then one workload is scaled by
//! one replica and each kind of pass plans for it: the full one (every
//! workload, a view built afresh) and the incremental one (the journal's
//! changes, on the view it keeps). Both plan the same one placement.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_api::spec::Driver;
use flotilla_api::{
    AllocationState, AllocationUpdate, CpuMillis, Health, MemoryBytes, NodeRegistration, WorkloadName,
};
use flotilla_scheduler::controllers::incremental::IncrementalReconciler;
use flotilla_scheduler::controllers::reconcile::{ReconcileConfig, reconcile};
use flotilla_scheduler::state::{ClusterState, Command};

const NOW: u64 = 1_000_000;
const ROUNDS: u32 = 20;

struct Cluster {
    state: ClusterState,
    index: u64,
}

impl Cluster {
    fn apply(&mut self, command: Command) {
        self.index += 1;
        self.state.apply(self.index, command).expect("applies");
    }

    fn run_pending(&mut self) {
        let mut by_node: BTreeMap<String, Vec<AllocationUpdate>> = BTreeMap::new();
        for allocation in self.state.allocations().filter(|a| a.state == AllocationState::Pending) {
            let update =
                AllocationUpdate { health: Health::Healthy, ..AllocationUpdate::running(allocation.id) };
            by_node.entry(allocation.node.to_string()).or_default().push(update);
        }
        for (node, updates) in by_node {
            self.apply(Command::UpdateAllocations { node, seq: 0, updates, now_ms: 0 });
        }
    }
}

fn state_of(nodes: usize) -> Cluster {
    state_with(nodes, nodes / 10, 100)
}

/// `nodes` nodes of 16 CPUs and 32 GiB holding `workloads` workloads of
/// `replicas` replicas each, all placed and reported running.
fn state_with(nodes: usize, workloads: usize, replicas: u32) -> Cluster {
    let mut cluster = Cluster { state: ClusterState::default(), index: 0 };
    for i in 0..nodes {
        let registration = NodeRegistration {
            name: format!("node-{i}"),
            address: String::new(),
            cpu: CpuMillis(16_000),
            memory: MemoryBytes(32 << 30),
            labels: BTreeMap::new(),
            drivers: [Driver::Docker].into(),
            host_volumes: Default::default(),
        };
        cluster.apply(Command::RegisterNode { registration });
    }
    for i in 0..workloads {
        cluster.apply(Command::put_workload(spec_of(&format!("w{i}"), replicas), 0));
    }
    let config = ReconcileConfig::default();
    let mut reconciler = IncrementalReconciler::default();
    loop {
        let plan = reconciler.pass(&cluster.state, cluster.index, NOW, &config);
        if plan.changes_nothing() {
            break;
        }
        cluster.apply(Command::ApplyPlan { plan });
        cluster.run_pending();
    }
    cluster
}

fn spec_of(name: &str, replicas: u32) -> flotilla_api::WorkloadSpec {
    let yaml =
        format!("name: {name}\nimage: app:1\nreplicas: {replicas}\nresources: {{cpu: 100m, memory: 64Mi}}\n");
    flotilla_api::parse_yaml(&yaml).expect("spec")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    println!("| nodes | allocations | full pass (median) | incremental pass (median) | full / incremental |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let config = ReconcileConfig::default();
    for nodes in [100, 1_000, 10_000] {
        let mut cluster = state_of(nodes);
        let allocations = cluster.state.allocations().count();
        let mut reconciler = IncrementalReconciler::default();
        // The first pass is a full one; from then on it follows the journal.
        assert!(reconciler.pass(&cluster.state, 0, NOW, &config).changes_nothing());
        let (mut full, mut incremental) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let name = WorkloadName::parse(&format!("w{}", round as usize % (nodes / 10))).expect("name");
            let replicas = cluster.state.workload_ref(&name).map_or(0, |w| w.spec.replicas) + 1;
            cluster.apply(Command::ScaleWorkload { name, replicas });

            let started = Instant::now();
            let plan = reconcile(&cluster.state, cluster.index, NOW, &config);
            full.push(started.elapsed());
            assert_eq!(plan.placements.len(), 1, "the full pass places the one new replica");

            let started = Instant::now();
            let plan = reconciler.pass(&cluster.state, cluster.index, NOW, &config);
            incremental.push(started.elapsed());
            assert_eq!(plan.placements.len(), 1, "the incremental pass places the one new replica");

            cluster.apply(Command::ApplyPlan { plan });
            cluster.run_pending();
        }
        let (full, incremental) = (median(full), median(incremental));
        println!(
            "| {nodes} | {allocations} | {:.2} ms | {:.3} ms | {:.0}× |",
            full.as_secs_f64() * 1e3,
            incremental.as_secs_f64() * 1e3,
            full.as_secs_f64() / incremental.as_secs_f64().max(1e-9)
        );
    }
    plan_of_many_placements(&config);
    one_change_among_many_waiting(&config);
}

/// One workload changed while many others wait for room (their replicas
/// fit no node, as the raft bench's 64 writers' workloads on a cluster with
/// no agents): the incremental pass should cost the one, not the waiting.
fn one_change_among_many_waiting(config: &ReconcileConfig) {
    println!();
    println!("| workloads waiting for room | incremental pass for one changed workload (median) |");
    println!("| ---: | ---: |");
    for waiting in [1_000, 10_000, 100_000] {
        let mut cluster = state_with(10, 1, 10);
        for i in 0..waiting {
            let yaml =
                format!("name: big-{i}\nimage: app:1\nreplicas: 1\nresources: {{cpu: 64, memory: 64Mi}}\n");
            let spec = flotilla_api::parse_yaml(&yaml).expect("spec");
            cluster.apply(Command::put_workload(spec, 0));
        }
        let mut reconciler = IncrementalReconciler::default();
        loop {
            let plan = reconciler.pass(&cluster.state, cluster.index, NOW, config);
            if plan.changes_nothing() {
                break;
            }
            cluster.apply(Command::ApplyPlan { plan });
        }
        assert_eq!(cluster.state.unplaced().len(), waiting, "every big workload waits");
        let mut passes = Vec::new();
        for round in 0..ROUNDS {
            let name = WorkloadName::parse(&format!("big-{}", round as usize % waiting)).expect("name");
            cluster.apply(Command::ScaleWorkload { name, replicas: 2 + round });
            let started = Instant::now();
            let plan = reconciler.pass(&cluster.state, cluster.index, NOW, config);
            passes.push(started.elapsed());
            assert!(plan.placements.is_empty(), "it still fits nowhere");
            cluster.apply(Command::ApplyPlan { plan });
        }
        println!("| {waiting} | {:.3} ms |", median(passes).as_secs_f64() * 1e3);
    }
}

/// The leader's largest plan (`max_placements` new replicas at once, as
/// when a thousand deploys land together) on 10,000 nodes holding 100,000
/// and 1,000,000 allocations: the pass that makes it, and applying it,
/// which every server does on its Raft thread.
fn plan_of_many_placements(config: &ReconcileConfig) {
    const NODES: usize = 10_000;
    const REPLICAS: u32 = 1000;
    const PLAN_ROUNDS: usize = 5;
    let new_workloads = config.max_placements / REPLICAS as usize;
    println!();
    println!(
        "| nodes | allocations | placements in the plan | pass making it (median) | applying it (median) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for allocations in [100_000, 1_000_000] {
        let mut cluster = state_with(NODES, allocations / REPLICAS as usize, REPLICAS);
        let mut reconciler = IncrementalReconciler::default();
        assert!(reconciler.pass(&cluster.state, 0, NOW, config).changes_nothing());
        let (mut passes, mut applies) = (Vec::new(), Vec::new());
        for round in 0..PLAN_ROUNDS {
            for w in 0..new_workloads {
                cluster.apply(Command::put_workload(spec_of(&format!("new-{round}-{w}"), REPLICAS), 0));
            }
            let started = Instant::now();
            let plan = reconciler.pass(&cluster.state, cluster.index, NOW, config);
            passes.push(started.elapsed());
            assert_eq!(plan.placements.len(), config.max_placements, "one plan places them all");

            cluster.index += 1;
            let started = Instant::now();
            let outcome = cluster.state.apply(cluster.index, Command::ApplyPlan { plan }).expect("applies");
            applies.push(started.elapsed());
            assert!(
                matches!(outcome, flotilla_scheduler::state::CommandOutput::Planned(o) if o.refused == 0),
                "every placement fits"
            );
            cluster.run_pending();
        }
        println!(
            "| {NODES} | {} | {} | {:.1} ms | {:.1} ms |",
            cluster.state.allocations().count(),
            config.max_placements,
            median(passes).as_secs_f64() * 1e3,
            median(applies).as_secs_f64() * 1e3,
        );
    }
}
