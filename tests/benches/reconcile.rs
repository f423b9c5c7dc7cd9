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
            by_node.entry(allocation.node.clone()).or_default().push(update);
        }
        for (node, updates) in by_node {
            self.apply(Command::UpdateAllocations { node, seq: 0, updates, now_ms: 0 });
        }
    }
}

fn state_of(nodes: usize) -> Cluster {
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
    for i in 0..nodes / 10 {
        let yaml =
            format!("name: w{i}\nimage: app:1\nreplicas: 100\nresources: {{cpu: 100m, memory: 64Mi}}\n");
        cluster.apply(Command::put_workload(flotilla_api::parse_yaml(&yaml).expect("spec"), 0));
    }
    let config = ReconcileConfig::default();
    loop {
        let plan = reconcile(&cluster.state, cluster.index, NOW, &config);
        if plan.changes_nothing() {
            break;
        }
        cluster.apply(Command::ApplyPlan { plan });
        cluster.run_pending();
    }
    cluster
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
}
