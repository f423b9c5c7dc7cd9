//! The reconciler's memory between passes, so that a pass costs what
//! changed, not what exists: where in the change journal it stopped, the
//! placement view of every node (refreshed node by node as nodes and their
//! allocations change), and the workloads it left unsettled. A full pass
//! (every workload, a view built afresh) runs first, after the journal
//! forgot what the reconciler had not read, and every [`FULL_RESYNC`] as a
//! safety net.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flotilla_api::WorkloadName;

use super::reconcile::{Pass, ReconcileConfig, Scope, cluster_view, reconcile_in};
use crate::placement::ClusterView;
use crate::state::{Changes, ClusterState, Plan, Touched};

/// How often a full pass runs even when the journal says nothing else
/// needs a look.
pub const FULL_RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct IncrementalReconciler {
    /// The journal index the last pass read through; `None` before the
    /// first pass (and after losing the lead), which is a full one.
    cursor: Option<u64>,
    /// Every node's placement view as of the last pass.
    view: ClusterView,
    /// Nodes whose view is read again before the next pass: reserved in by
    /// the last plan, which might not be applied.
    stale: BTreeSet<String>,
    /// Nodes held back (back from flapping) and until when (ms): their
    /// views change when the hold ends, with no command to say so.
    held_until: BTreeMap<String, u64>,
    /// Workloads the last pass left with work that only time brings.
    unsettled: BTreeSet<WorkloadName>,
    /// Workloads whose replicas fit no node: looked at again when some
    /// node's view changes, not on every pass.
    waiting_for_room: BTreeSet<WorkloadName>,
    /// The last workload a pass cut short by its time reached: the next
    /// pass begins after it, so that under a stream of changes every
    /// workload is reached in turn. (Those not reached are unsettled.)
    resume_after: Option<WorkloadName>,
    last_full: Option<Instant>,
}

impl IncrementalReconciler {
    /// Forgets everything: the next pass is a full one (for a server that
    /// stopped leading and may lead again).
    pub fn reset(&mut self) {
        *self = IncrementalReconciler::default();
    }

    /// Whether the last pass ran out of time with workloads left to look
    /// at: the next should follow without waiting for changes.
    pub fn cut_short(&self) -> bool {
        self.resume_after.is_some()
    }

    /// Plans what the changes since the last pass call for.
    pub fn pass(&mut self, state: &ClusterState, seed: u64, now_ms: u64, config: &ReconcileConfig) -> Plan {
        let full_due = self.last_full.is_none_or(|at| at.elapsed() >= FULL_RESYNC);
        let changes = match self.cursor {
            Some(cursor) if !full_due => state.journal().after(cursor),
            _ => Changes::Forgotten,
        };
        let pass = match changes {
            Changes::Forgotten => {
                self.waiting_for_room.clear();
                self.full(state, seed, now_ms, config)
            }
            Changes::Since { touched, through } => {
                self.cursor = Some(through);
                self.incremental(state, touched, seed, now_ms, config)
            }
        };
        self.unsettled = pass.unsettled;
        self.resume_after = pass.left.map(|left| {
            self.unsettled.extend(left.workloads);
            left.after
        });
        self.waiting_for_room.extend(pass.waiting_for_room);
        self.stale = plan_nodes(state, &pass.plan);
        pass.plan
    }

    fn full(&mut self, state: &ClusterState, seed: u64, now_ms: u64, config: &ReconcileConfig) -> Pass {
        self.cursor = Some(state.journal().latest());
        self.last_full = Some(Instant::now());
        self.view = cluster_view(state, now_ms);
        self.held_until = state
            .nodes()
            .filter(|n| n.eligible_at_ms > now_ms)
            .map(|n| (n.name.clone(), n.eligible_at_ms))
            .collect();
        let resume_after = self.resume_after.as_ref();
        reconcile_in(state, &mut self.view, &Scope::Everything, resume_after, seed, now_ms, config)
    }

    fn incremental(
        &mut self,
        state: &ClusterState,
        touched: Vec<Touched>,
        seed: u64,
        now_ms: u64,
        config: &ReconcileConfig,
    ) -> Pass {
        let mut workloads = std::mem::take(&mut self.unsettled);
        let mut nodes = BTreeSet::new();
        let mut refresh = std::mem::take(&mut self.stale);
        for item in touched {
            match item {
                Touched::Workload(name) => {
                    workloads.insert(name);
                }
                Touched::Node(name) => {
                    refresh.insert(name.clone());
                    nodes.insert(name);
                }
                Touched::Booking(name) => {
                    refresh.insert(name);
                }
                // See `Touched::Progress`: it cannot change this workload's plan.
                Touched::Progress(_) => {}
            }
        }
        // A node's own change is a change for every workload on it.
        for node in &nodes {
            workloads.extend(state.node_allocations(node).map(|a| a.workload.clone()));
        }
        refresh.extend(self.held_until.iter().filter(|(_, until)| **until <= now_ms).map(|(n, _)| n.clone()));
        // Room may have changed only where a node's view does.
        if !refresh.is_empty() {
            workloads.append(&mut self.waiting_for_room);
        }
        // Those looked at now say again whether they wait. Taken out one by
        // one, so that a pass costs what it looks at, not what waits (a
        // `retain` over tens of thousands waiting took 9 % of a leader's CPU).
        for name in &workloads {
            self.waiting_for_room.remove(name);
        }
        let (mut changed, mut gone) = (Vec::new(), BTreeSet::new());
        for name in &refresh {
            self.held_until.remove(name);
            match state.node_view(name, now_ms) {
                Some(view) => {
                    if let Some(node) = state.node(name).filter(|n| n.eligible_at_ms > now_ms) {
                        self.held_until.insert(name.clone(), node.eligible_at_ms);
                    }
                    changed.push(view);
                }
                None => {
                    gone.insert(name.clone());
                }
            }
        }
        self.view.refresh(changed, &gone);
        if workloads.is_empty() && nodes.is_empty() {
            let plan = Plan { now_ms, ..Plan::default() };
            return Pass { plan, unsettled: BTreeSet::new(), waiting_for_room: BTreeSet::new(), left: None };
        }
        let scope = Scope::Only { workloads, nodes };
        reconcile_in(state, &mut self.view, &scope, self.resume_after.as_ref(), seed, now_ms, config)
    }
}

/// The nodes a plan reserved in or released from.
fn plan_nodes(state: &ClusterState, plan: &Plan) -> BTreeSet<String> {
    let stopped = plan.stops.iter().filter_map(|id| state.allocation(*id)).map(|a| a.node.to_string());
    plan.placements.iter().map(|p| p.node.clone()).chain(stopped).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::spec::Driver;
    use flotilla_api::{
        AllocationState, AllocationUpdate, CpuMillis, Health, MemoryBytes, NodeRegistration, NodeStatus,
        parse_yaml,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::controllers::reconcile::reconcile;
    use crate::controllers::rollout;
    use crate::controllers::rollout_judge::RolloutJudge;
    use crate::state::Command;

    /// Late enough that replicas reported healthy at 0 count as healthy.
    const NOW: u64 = 1_000_000;

    /// Something that happens to a cluster between passes.
    #[derive(Debug, Clone)]
    enum Event {
        Deploy {
            workload: u8,
            replicas: u32,
            cpu: u64,
            version: u8,
            /// None, a fixed host port (the same for every workload, so
            /// they compete for it), or one the agent chooses.
            ports: u8,
        },
        Scale {
            workload: u8,
            replicas: u32,
        },
        Delete {
            workload: u8,
        },
        /// Registers (or registers again, perhaps with less room) a node.
        Register {
            node: u8,
            cpu: u64,
        },
        Drain {
            node: u8,
        },
        Undrain {
            node: u8,
        },
        MarkDown {
            node: u8,
        },
        /// The agent reports the `pick`th live replica failed.
        Fail {
            pick: usize,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0..3u8, 0..8u32, prop_oneof![Just(100u64), Just(300), Just(700)], 0..3u8, 0..3u8).prop_map(
                |(workload, replicas, cpu, version, ports)| Event::Deploy {
                    workload,
                    replicas,
                    cpu,
                    version,
                    ports
                }
            ),
            (0..3u8, 0..8u32).prop_map(|(workload, replicas)| Event::Scale { workload, replicas }),
            (0..3u8).prop_map(|workload| Event::Delete { workload }),
            (0..4u8, prop_oneof![Just(500u64), Just(1000), Just(2000)])
                .prop_map(|(node, cpu)| Event::Register { node, cpu }),
            (0..4u8).prop_map(|node| Event::Drain { node }),
            (0..4u8).prop_map(|node| Event::Undrain { node }),
            (0..4u8).prop_map(|node| Event::MarkDown { node }),
            (0..20usize).prop_map(|pick| Event::Fail { pick }),
        ]
    }

    /// Applies commands at increasing log indexes, as Raft would.
    struct Cluster {
        state: ClusterState,
        index: u64,
    }

    /// What a node's agent is told (its long-poll's answer, less the
    /// workloads' specs, which it reads only for allocations it is told of).
    fn agent_view(state: &ClusterState, node: &str) -> String {
        let allocations: Vec<_> = state.node_allocations(node).collect();
        serde_json::to_string(&(allocations, state.volumes_to_remove(node))).expect("encodes")
    }

    impl Cluster {
        /// Applies a command, and checks on the way that every node whose
        /// agent view it changed is marked changed at its index and
        /// published: an agent's long-poll wakes for every change it must
        /// see. A node's own report changes only its own view (with what it
        /// told), and wakes no one.
        fn apply(&mut self, command: Command) {
            self.index += 1;
            let reporter = match &command {
                Command::UpdateAllocations { node, .. } => Some(node.clone()),
                _ => None,
            };
            let nodes: Vec<String> = (0..4).map(|n| format!("n{n}")).collect();
            let before: Vec<String> = nodes.iter().map(|node| agent_view(&self.state, node)).collect();
            // Refusals (a node unknown, already down) change nothing.
            let _ = self.state.apply(self.index, command);
            assert!(self.state.tallies_are_kept(), "the tallies drifted from the allocations");
            let published = self.state.take_recent_node_changes();
            for (node, was) in nodes.iter().zip(before) {
                if reporter.as_ref() == Some(node) {
                    assert!(!published.iter().any(|(n, _)| n == node), "{node}'s own report woke it");
                    continue;
                }
                if agent_view(&self.state, node) != was {
                    assert_eq!(self.state.node_changes().of(node), self.index, "{node} changed unmarked");
                    assert!(published.contains(&(node.clone(), self.index)), "{node} changed unpublished");
                }
            }
        }

        fn happen(&mut self, event: &Event) {
            match *event {
                Event::Deploy { workload, replicas, cpu, version, ports } => {
                    let ports = match ports {
                        0 => "",
                        1 => "ports: [{container: 80, host: 8080}]\n",
                        _ => "ports: [{container: 80}]\n",
                    };
                    let yaml = format!(
                        "name: w{workload}\nimage: x\nreplicas: {replicas}\nresources: {{cpu: {cpu}m, memory: 64Mi}}\nenv: {{V: \"{version}\"}}\n{ports}"
                    );
                    let spec = parse_yaml(&yaml).expect("valid spec");
                    self.apply(Command::put_workload(spec, 0));
                }
                Event::Scale { workload, replicas } => {
                    let name = WorkloadName::parse(&format!("w{workload}")).expect("name");
                    self.apply(Command::ScaleWorkload { name, replicas });
                }
                Event::Delete { workload } => {
                    let name = WorkloadName::parse(&format!("w{workload}")).expect("name");
                    self.apply(Command::DeleteWorkload { name, volumes: false });
                }
                Event::Register { node, cpu } => {
                    let registration = NodeRegistration {
                        name: format!("n{node}"),
                        address: String::new(),
                        cpu: CpuMillis(cpu),
                        memory: MemoryBytes(2 << 30),
                        labels: BTreeMap::new(),
                        drivers: [Driver::Docker].into(),
                        host_volumes: Default::default(),
                    };
                    self.apply(Command::RegisterNode { registration });
                }
                Event::Drain { node } | Event::Undrain { node } => {
                    let status = if matches!(event, Event::Drain { .. }) {
                        NodeStatus::Draining
                    } else {
                        NodeStatus::Ready
                    };
                    self.apply(Command::SetNodeStatus { name: format!("n{node}"), status, now_ms: NOW });
                }
                Event::MarkDown { node } => {
                    let name = format!("n{node}");
                    if let Some(ready_index) = self.state.node(&name).map(|n| n.ready_index) {
                        self.apply(Command::MarkNodeDown { name, ready_index, now_ms: NOW });
                    }
                }
                Event::Fail { pick } => {
                    let live: Vec<(String, u64)> = self
                        .state
                        .allocations()
                        .filter(|a| a.is_replica())
                        .map(|a| (a.node.to_string(), a.id))
                        .collect();
                    if let Some((node, id)) = live.get(pick % live.len().max(1)).cloned() {
                        let update = AllocationUpdate {
                            state: AllocationState::Failed,
                            message: "exited 1".into(),
                            ..AllocationUpdate::running(id)
                        };
                        self.apply(Command::UpdateAllocations {
                            node,
                            seq: 0,
                            updates: vec![update],
                            now_ms: NOW,
                        });
                    }
                }
            }
        }

        /// Does what agents do: pending replicas start (on a host port of
        /// their own where the spec leaves it to the agent), and pass their
        /// checks in a later report (progress alone, which the reconciler
        /// does not look at); those being stopped stop.
        fn act_as_agents(&mut self) {
            let mut by_node: BTreeMap<String, Vec<AllocationUpdate>> = BTreeMap::new();
            for allocation in self.state.allocations() {
                let update = if allocation.stopping && allocation.state.is_live() {
                    AllocationUpdate::stopped(allocation.id)
                } else if allocation.state == AllocationState::Pending {
                    let mut ports = allocation.ports.clone();
                    for port in ports.iter_mut().filter(|p| p.host == 0) {
                        port.host = 30_000 + allocation.id as u16;
                    }
                    AllocationUpdate { ports, ..AllocationUpdate::running(allocation.id) }
                } else if allocation.state == AllocationState::Running && allocation.health == Health::Unknown
                {
                    AllocationUpdate { health: Health::Healthy, ..AllocationUpdate::running(allocation.id) }
                } else {
                    continue;
                };
                by_node.entry(allocation.node.to_string()).or_default().push(update);
            }
            for (node, updates) in by_node {
                self.apply(Command::UpdateAllocations { node, seq: 0, updates, now_ms: 0 });
            }
        }

        /// A pass of the incremental rollout judge, its verdicts applied.
        fn judge(&mut self, judge: &mut RolloutJudge) {
            for verdict in judge.judge(|| &self.state, NOW).0 {
                let rollout::Verdict { workload, deployment, status, reason } = verdict;
                self.apply(Command::SetDeploymentStatus {
                    name: workload,
                    deployment,
                    status,
                    reason,
                    now_ms: NOW,
                });
            }
        }

        /// One reconciler pass, its plan applied, the agents acting on it;
        /// whether it planned anything.
        fn pass(&mut self, reconciler: &mut IncrementalReconciler) -> bool {
            self.pass_with(reconciler, &ReconcileConfig::default())
        }

        fn pass_with(&mut self, reconciler: &mut IncrementalReconciler, config: &ReconcileConfig) -> bool {
            let plan = reconciler.pass(&self.state, self.index, NOW, config);
            if plan.changes_nothing() {
                return false;
            }
            self.apply(Command::ApplyPlan { plan });
            self.act_as_agents();
            true
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever happens, once the incremental reconciler has nothing
        /// left to do, neither has a full pass over the whole state: the
        /// journal and the kept view missed nothing, nor did passes cut
        /// short by their time (here each out of time after one workload).
        #[test]
        fn a_full_pass_finds_nothing_the_incremental_ones_missed(
            events in proptest::collection::vec((event(), 0..3usize), 1..40),
            out_of_time in any::<bool>(),
        ) {
            let config = ReconcileConfig {
                pass_time: if out_of_time { Some(Duration::ZERO) } else { None },
                ..ReconcileConfig::default()
            };
            let mut cluster = Cluster { state: ClusterState::default(), index: 0 };
            let mut reconciler = IncrementalReconciler::default();
            let mut judge = RolloutJudge::default();
            for (event, passes) in &events {
                cluster.happen(event);
                for _ in 0..*passes {
                    cluster.pass_with(&mut reconciler, &config);
                    cluster.judge(&mut judge);
                }
            }
            // Quiet: passes that reach every workload (one each, when out
            // of time after one; there are three) plan nothing.
            let (mut quiet, mut passes_planning_nothing) = (false, 0);
            for _ in 0..100 {
                if cluster.pass_with(&mut reconciler, &config) {
                    passes_planning_nothing = 0;
                } else {
                    passes_planning_nothing += 1;
                }
                if passes_planning_nothing > 3 {
                    quiet = true;
                    break;
                }
            }
            prop_assert!(quiet, "the incremental reconciler never settled");
            let full = reconcile(&cluster.state, cluster.index, NOW, &ReconcileConfig::default());
            prop_assert!(full.changes_nothing(), "a full pass still plans {:?}", full);
            // Now and an hour on (every timer run out), the judge that looked
            // only at what changed finds what judging everything finds; its
            // verdicts are applied in between, as the leader applies them.
            for at in [NOW, NOW + 3_600_000] {
                let (mut incremental, _) = judge.judge(|| &cluster.state, at);
                let (mut full, _) = rollout::judge(&cluster.state, at);
                incremental.sort_by(|a, b| a.workload.cmp(&b.workload));
                full.sort_by(|a, b| a.workload.cmp(&b.workload));
                prop_assert_eq!(&incremental, &full);
                for verdict in incremental {
                    let rollout::Verdict { workload, deployment, status, reason } = verdict;
                    cluster.apply(Command::SetDeploymentStatus { name: workload, deployment, status, reason, now_ms: at });
                }
            }
        }
    }

    #[test]
    fn a_pass_out_of_time_leaves_the_rest_to_the_next_which_begins_where_it_stopped() {
        let mut cluster = Cluster { state: ClusterState::default(), index: 0 };
        let mut reconciler = IncrementalReconciler::default();
        let out_of_time = ReconcileConfig { pass_time: Some(Duration::ZERO), ..ReconcileConfig::default() };
        let placed_for = |plan: &Plan| -> BTreeSet<String> {
            plan.placements.iter().map(|p| p.workload.to_string()).collect()
        };
        cluster.happen(&Event::Register { node: 0, cpu: 2000 });
        for workload in 0..3 {
            cluster.happen(&Event::Deploy { workload, replicas: 1, cpu: 100, version: 0, ports: 0 });
        }
        let mut reached = Vec::new();
        for _ in 0..2 {
            let plan = reconciler.pass(&cluster.state, cluster.index, NOW, &out_of_time);
            assert!(reconciler.cut_short(), "workloads are left for the next pass");
            reached.extend(placed_for(&plan));
            cluster.apply(Command::ApplyPlan { plan });
            // w0 changes again meanwhile: the next pass still begins after
            // the last workload reached, so w0 cannot keep the others waiting.
            cluster.happen(&Event::Scale { workload: 0, replicas: 2 });
        }
        let plan = reconciler.pass(&cluster.state, cluster.index, NOW, &out_of_time);
        reached.extend(placed_for(&plan));
        assert_eq!(reached, ["w0", "w1", "w2"], "one workload a pass, each in turn");
    }

    #[test]
    fn a_pass_with_nothing_changed_looks_at_nothing() {
        let mut cluster = Cluster { state: ClusterState::default(), index: 0 };
        let mut reconciler = IncrementalReconciler::default();
        cluster.happen(&Event::Register { node: 0, cpu: 2000 });
        cluster.happen(&Event::Deploy { workload: 0, replicas: 3, cpu: 100, version: 0, ports: 0 });
        while cluster.pass(&mut reconciler) {}
        assert!(reconciler.unsettled.is_empty(), "a placed, healthy workload is settled");
        let cursor = reconciler.cursor;
        let plan = reconciler.pass(&cluster.state, 1, NOW, &ReconcileConfig::default());
        assert!(plan.changes_nothing());
        assert_eq!(reconciler.cursor, cursor, "nothing new in the journal");
        // A change to one workload is seen without a full pass.
        cluster.happen(&Event::Scale { workload: 0, replicas: 5 });
        let plan = reconciler.pass(&cluster.state, 2, NOW, &ReconcileConfig::default());
        assert_eq!(plan.placements.len(), 2);
    }

    #[test]
    fn a_workload_looked_at_again_leaves_the_waiting_set_unless_it_still_waits() {
        let mut cluster = Cluster { state: ClusterState::default(), index: 0 };
        let mut reconciler = IncrementalReconciler::default();
        let deploy = |workload, cpu, version| Event::Deploy { workload, replicas: 1, cpu, version, ports: 0 };
        cluster.happen(&Event::Register { node: 0, cpu: 500 });
        for workload in 0..3 {
            cluster.happen(&deploy(workload, 700, 0));
        }
        while cluster.pass(&mut reconciler) {}
        assert!(cluster.state.allocations().next().is_none(), "nothing fits the node");
        // Each row: deploys, then who waits after the one pass that follows
        // (no node's view changed before it, so only those deployed are
        // looked at): nothing, then one that fits now, then one still too
        // big beside two that fit.
        let rows: [(&[Event], &[&str]); 3] = [
            (&[], &["w0", "w1", "w2"]),
            (&[deploy(1, 100, 1)], &["w0", "w2"]),
            (&[deploy(0, 700, 2), deploy(1, 100, 2), deploy(2, 100, 2)], &["w0"]),
        ];
        for (deploys, still_waiting) in rows {
            for event in deploys {
                cluster.happen(event);
            }
            assert!(reconciler.stale.is_empty(), "no node's view is read again");
            cluster.pass(&mut reconciler);
            let waiting: Vec<String> = reconciler.waiting_for_room.iter().map(|w| w.to_string()).collect();
            assert_eq!(waiting, still_waiting, "after {deploys:?}");
            while cluster.pass(&mut reconciler) {}
        }
    }

    #[test]
    fn a_health_report_is_judged_and_not_reconciled() {
        let mut cluster = Cluster { state: ClusterState::default(), index: 0 };
        let mut reconciler = IncrementalReconciler::default();
        let mut judge = RolloutJudge::default();
        cluster.happen(&Event::Register { node: 0, cpu: 2000 });
        cluster.happen(&Event::Deploy { workload: 0, replicas: 2, cpu: 100, version: 0, ports: 0 });
        assert!(cluster.pass(&mut reconciler), "the replicas are placed, and start");
        assert!(!cluster.pass(&mut reconciler), "nothing more to plan while they are not healthy yet");
        assert!(reconciler.unsettled.is_empty(), "with nothing to replace, health changes no plan");
        // A minute after the deploy: past the replicas' healthy time, well
        // before the deployment's 10-minute progress deadline.
        let judged_at = 60_000;
        let early = judge.judge(|| &cluster.state, judged_at).0;
        assert!(early.is_empty(), "not healthy: no verdict yet: {early:?}");

        let before = cluster.index;
        cluster.act_as_agents();
        let Changes::Since { touched, .. } = cluster.state.journal().after(before) else {
            panic!("the journal remembers the report");
        };
        let web = WorkloadName::parse("w0").expect("name");
        assert_eq!(touched, vec![Touched::Progress(web)], "checks passing are progress alone");
        let (verdicts, _) = judge.judge(|| &cluster.state, judged_at);
        let statuses: Vec<_> = verdicts.iter().map(|v| (v.workload.as_str(), v.status)).collect();
        assert_eq!(statuses, [("w0", flotilla_api::DeploymentStatus::Successful)]);
    }
}
