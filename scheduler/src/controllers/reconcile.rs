//! The reconciler: for every workload, compare the replicas wanted with the
//! allocations that stand, and decide a plan that closes the gap. A pure
//! function of the state (and a seed), as kube-runtime's reconcilers are
//! idempotent: running it again on the state it produced plans nothing.
//!
//! Rollouts go as far as the workload's update strategy lets them each pass
//! (see [`rollout::step`]): new replicas are placed within max_surge and
//! max_parallel, and old ones stopped only while max_unavailable holds,
//! counting new replicas once healthy for min_healthy_time. Allocations on
//! draining nodes count as old, so a drain is a rollout onto other nodes.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_api::{Allocation, AllocationState, PortBinding, Workload, WorkloadName};

use super::rollout;
use crate::placement::{self, ClusterView, SplitMix64};
use crate::state::{ClusterState, Placement, Plan, Unplaced, request_of};

#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Placements in one plan; the rest wait for the next pass, so one Raft
    /// entry stays a few megabytes at most.
    pub max_placements: usize,
    /// Feasible nodes ranked per replica.
    pub candidates: usize,
    /// Terminal (failed, lost, complete) allocations kept per workload for `ps`.
    pub keep_terminal: usize,
    /// How long a pass may go on reading the state before it leaves the
    /// workloads it has not reached to the next pass: it holds the state's
    /// read lock throughout, and so holds up applying entries (every
    /// write's answer). At a million replicas, a pass after nodes went
    /// down looked at every workload and held the state for up to 1.8 s.
    /// A fifth of a second: 50 ms held it for 86 ms at the median but
    /// placed a million replicas markedly slower, each plan a Raft round
    /// trip for a few dozen workloads. `None`: no bound, for a pass that
    /// must see everything.
    pub pass_time: Option<Duration>,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            max_placements: 10_000,
            candidates: placement::DEFAULT_CANDIDATES,
            keep_terminal: 5,
            pass_time: Some(Duration::from_millis(200)),
        }
    }
}

/// The placement view of every node.
pub fn cluster_view(state: &ClusterState, now_ms: u64) -> ClusterView {
    ClusterView::new(state.nodes().filter_map(|n| state.node_view(&n.name, now_ms)).collect())
}

/// A full pass: every workload and node, on a view built for it, however
/// long that takes.
pub fn reconcile(state: &ClusterState, seed: u64, now_ms: u64, config: &ReconcileConfig) -> Plan {
    let mut view = cluster_view(state, now_ms);
    let config = ReconcileConfig { pass_time: None, ..config.clone() };
    reconcile_in(state, &mut view, &Scope::Everything, None, seed, now_ms, &config).plan
}

/// What a pass looks at.
#[derive(Debug, Clone)]
pub enum Scope {
    Everything,
    /// These workloads, and these nodes' excess (see [`shed_excess`]).
    Only {
        workloads: BTreeSet<WorkloadName>,
        nodes: BTreeSet<String>,
    },
}

/// A pass's plan, and the workloads it leaves with work to do that no
/// change to them announces.
#[derive(Debug, Clone)]
pub struct Pass {
    pub plan: Plan,
    /// Waiting for time: a failure's backoff, replicas of a rollout to
    /// count as healthy, a plan's replicas to be reported. Looked at again
    /// on the next pass.
    pub unsettled: BTreeSet<WorkloadName>,
    /// Waiting for room: replicas that fit no node now. Looked at again
    /// when a node or what it has booked changes.
    pub waiting_for_room: BTreeSet<WorkloadName>,
    /// Out of time (`ReconcileConfig::pass_time`): the workloads in scope
    /// this pass did not reach, and the last one it did, after which the
    /// next pass begins so that every workload is reached in turn.
    pub left: Option<Left>,
}

/// What a pass cut short by its time left to the next.
#[derive(Debug, Clone)]
pub struct Left {
    /// The workloads in scope it did not reach: the next pass's business.
    pub workloads: BTreeSet<WorkloadName>,
    /// The last workload it reached: the next pass begins after it.
    pub after: WorkloadName,
}

/// Where a workload stands after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Settled,
    Unsettled,
    WaitingForRoom,
}

/// Reconciles what `scope` names on `view` (reserving in it what the plan
/// places), beginning with the workloads named after `resume_after` when a
/// pass cut short left off there.
pub fn reconcile_in(
    state: &ClusterState,
    view: &mut ClusterView,
    scope: &Scope,
    resume_after: Option<&WorkloadName>,
    seed: u64,
    now_ms: u64,
    config: &ReconcileConfig,
) -> Pass {
    let deadline = config.pass_time.map(|time| Instant::now() + time);
    let mut rng = SplitMix64::new(seed);
    let mut plan = Plan { now_ms, ..Plan::default() };
    let mut budget = config.max_placements;
    let (mut unsettled, mut waiting_for_room) = (BTreeSet::new(), BTreeSet::new());
    let (mut workloads, nodes): (Vec<&Workload>, Vec<&flotilla_api::Node>) = match scope {
        Scope::Everything => (state.workloads().collect(), state.nodes().collect()),
        Scope::Only { workloads, nodes } => (
            workloads.iter().filter_map(|name| state.workload_ref(name)).collect(),
            nodes.iter().filter_map(|name| state.node(name)).collect(),
        ),
    };
    for node in nodes.into_iter().filter(|n| n.is_overcommitted()) {
        shed_excess(state, node, view, &mut plan);
    }
    match scope {
        Scope::Everything => forget_deleted(state, state.allocations(), &mut plan),
        Scope::Only { workloads, .. } => {
            for name in workloads.iter().filter(|name| !state.has_workload(name)) {
                forget_deleted(state, state.workload_allocations(name), &mut plan);
            }
        }
    }
    if let Some(after) = resume_after {
        let first = workloads.partition_point(|w| &w.spec.name <= after);
        workloads.rotate_left(first);
    }
    let mut left = None;
    let mut queue = workloads.into_iter();
    while let Some(workload) = queue.next() {
        let name = workload.spec.name.clone();
        match reconcile_workload(state, workload, view, &mut rng, &mut budget, config, &mut plan) {
            Standing::Settled => {}
            Standing::Unsettled => {
                unsettled.insert(name.clone());
            }
            Standing::WaitingForRoom => {
                waiting_for_room.insert(name.clone());
            }
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let workloads: BTreeSet<WorkloadName> = queue.by_ref().map(|w| w.spec.name.clone()).collect();
            if !workloads.is_empty() {
                left = Some(Left { workloads, after: name });
            }
            break;
        }
    }
    // Keep only what changed in the pending figures, of the workloads
    // looked at.
    let current = state.unplaced();
    let not_reached = |name: &WorkloadName| left.as_ref().is_some_and(|l| l.workloads.contains(name));
    let no_longer = |name: &&WorkloadName| !not_reached(name) && !plan.unplaced.contains_key(*name);
    // Walked from the scope's side when it is the scope that is small: every
    // workload that fits nowhere is in `current`.
    plan.no_longer_unplaced = match scope {
        Scope::Everything => current.keys().filter(no_longer).cloned().collect(),
        Scope::Only { workloads, .. } => {
            workloads.iter().filter(|name| current.contains_key(*name)).filter(no_longer).cloned().collect()
        }
    };
    plan.unplaced.retain(|name, unplaced| current.get(name) != Some(unplaced));
    Pass { plan, unsettled, waiting_for_room, left }
}

/// Plans one workload; where it stands after.
fn reconcile_workload(
    state: &ClusterState,
    workload: &Workload,
    view: &mut ClusterView,
    rng: &mut SplitMix64,
    budget: &mut usize,
    config: &ReconcileConfig,
    plan: &mut Plan,
) -> Standing {
    let name = &workload.spec.name;
    let allocations: Vec<&Allocation> = state.workload_allocations(name).collect();

    // A replica that completed (and is not restarted by its policy) counts as
    // done; other terminal allocations are history, of which a few are kept.
    let done = |a: &Allocation| a.state == AllocationState::Complete && a.version == workload.version;
    let completed = allocations.iter().filter(|a| done(a)).count();
    let mut terminal: Vec<&Allocation> =
        allocations.iter().copied().filter(|a| !a.state.is_live() && !done(a)).collect();
    // Replicas this pass already stops (a node sheds its excess) are gone.
    let stopping_now: BTreeSet<u64> = plan.stops.iter().copied().collect();
    terminal.sort_by_key(|a| Reverse(a.modified_index));
    plan.stops.extend(terminal.iter().skip(config.keep_terminal).map(|a| a.id));

    let draining = |a: &Allocation| view.is_draining(&a.node);
    let outdated = |a: &Allocation| a.version < workload.version;
    let (mut old, mut new): (Vec<&Allocation>, Vec<&Allocation>) = allocations
        .iter()
        .copied()
        .filter(|a| a.is_replica() && !stopping_now.contains(&a.id))
        .partition(|a| outdated(a) || draining(a));
    let desired = (workload.spec.replicas as usize).saturating_sub(completed);
    let update = &workload.spec.update;
    let counts = rollout::Counts {
        desired,
        old: old.len(),
        old_serving: old.iter().filter(|a| rollout::serving(a)).count(),
        old_stopping: allocations.iter().filter(|a| a.stopping && a.state.is_live() && outdated(a)).count(),
        new: new.len(),
        new_counted: new.iter().filter(|a| rollout::counted(a, update, plan.now_ms)).count(),
    };
    let mode = rollout::mode(state, workload, !old.is_empty(), old.iter().any(|a| outdated(a)));
    let step = rollout::step(counts, update, mode);

    // Stop what the step lets go, those that do not serve first; then what is more than wanted.
    stop_most_loaded(&mut old, step.stop_old, view, plan);
    let new_to_stop = new.len().saturating_sub(desired);
    stop_most_loaded(&mut new, new_to_stop, view, plan);

    let missing = step.place_new;
    let count = missing.min(*budget);
    if missing == 0 {
        // With nothing old to replace, whether new replicas are healthy yet
        // changes nothing here (`rollout::mode` is `Settled`), so waiting for
        // it would reconcile a large deploy's workloads on every pass.
        let settled = old.is_empty()
            && step.stop_old == 0
            && new_to_stop == 0
            && terminal.len() <= config.keep_terminal;
        return if settled { Standing::Settled } else { Standing::Unsettled };
    }
    let mut request = request_of(workload);
    // Replicas that failed are replaced elsewhere if possible, and after a
    // backoff that doubles with each recent failure, so a broken image does
    // not spin through every node.
    let failed: Vec<&Allocation> =
        terminal.iter().copied().filter(|a| a.state == AllocationState::Failed).collect();
    if let Some(last) = failed.iter().filter_map(|a| a.finished_at_ms).max() {
        let wait_ms = (1000u64 << (failed.len() - 1).min(6)).min(60_000);
        if plan.now_ms < last + wait_ms {
            let seconds = (last + wait_ms - plan.now_ms).div_ceil(1000);
            let reason = format!("{} recent failures; placing a replacement in {seconds}s", failed.len());
            plan.unplaced.insert(name.clone(), Unplaced { count: missing as u32, reason });
            return Standing::Unsettled;
        }
    }
    request.avoid_nodes = failed.iter().map(|a| a.node.to_string()).collect();
    // New replicas take the lowest slots no new replica holds: a lost or
    // replaced replica's slot is filled again, with its volumes.
    let taken: BTreeSet<u32> = new.iter().map(|a| a.replica).collect();
    let slots: Vec<u32> = (0..).filter(|r| !taken.contains(r)).take(count).collect();
    let placed = if workload.spec.slot_volumes().next().is_some() {
        place_slots(state, workload, &request, &slots, view, rng, config)
    } else {
        let placed = placement::place(
            view,
            name,
            &request,
            workload.spec.placement,
            count as u32,
            config.candidates,
            rng,
        );
        SlotsPlaced {
            nodes: slots.iter().copied().zip(placed.nodes).collect(),
            stuck: request.clone(),
            unplaced_reason: placed.unplaced_reason,
        }
    };
    *budget -= placed.nodes.len();
    let ports: Vec<PortBinding> = workload
        .spec
        .ports
        .iter()
        .map(|p| PortBinding { container: p.container, host: p.host.unwrap_or(0), protocol: p.protocol })
        .collect();
    for (replica, node) in &placed.nodes {
        plan.placements.push(Placement {
            workload: name.clone(),
            replica: *replica,
            node: view.nodes[*node].name.clone(),
            version: workload.version,
            cpu: request.cpu,
            memory: request.memory,
            ports: ports.clone(),
        });
    }
    if placed.nodes.is_empty() && step.in_place_if_stuck {
        replace_in_place(&mut old, &placed.stuck, view, plan);
    }
    match placed.unplaced_reason {
        // Nothing placed and nothing stopped to make room: only a change
        // of room can help.
        Some(reason) if placed.nodes.is_empty() && !step.in_place_if_stuck && step.stop_old == 0 => {
            plan.unplaced.insert(name.clone(), Unplaced { count: missing as u32, reason });
            Standing::WaitingForRoom
        }
        Some(reason) => {
            let count = (missing - placed.nodes.len()) as u32;
            plan.unplaced.insert(name.clone(), Unplaced { count, reason });
            Standing::Unsettled
        }
        None => Standing::Unsettled,
    }
}

/// Replicas placed for a workload's free slots.
struct SlotsPlaced {
    /// Each placed slot, and the index of its node in the view.
    nodes: Vec<(u32, usize)>,
    /// What the first slot that could not be placed asks, for a rollout
    /// that must make room in place.
    stuck: placement::Request,
    unplaced_reason: Option<String>,
}

/// Places a workload with slot volumes slot by slot: a slot whose volumes
/// are on a node that is up goes there or nowhere; one without goes where
/// placement ranks best (and its volumes are made there).
fn place_slots(
    state: &ClusterState,
    workload: &Workload,
    request: &placement::Request,
    slots: &[u32],
    view: &mut ClusterView,
    rng: &mut SplitMix64,
    config: &ReconcileConfig,
) -> SlotsPlaced {
    let name = &workload.spec.name;
    let mut placed = SlotsPlaced { nodes: Vec::new(), stuck: request.clone(), unplaced_reason: None };
    for &slot in slots {
        let slot_request = placement::Request {
            pinned_node: state.pinned_node(&workload.spec, slot).map(str::to_owned),
            ..request.clone()
        };
        let outcome = match &slot_request.pinned_node {
            Some(home) => match view.position(home) {
                Some(i) => match placement::feasibility::check(&view.nodes[i], &slot_request) {
                    Ok(()) => {
                        view.nodes[i].assign(name, &slot_request);
                        Ok(i)
                    }
                    Err(why) => Err(format!(
                        "replica {slot} stays with its volumes on node {home}, which {}",
                        why.of_one_node()
                    )),
                },
                None => Err(format!("replica {slot}'s volumes are on node {home}, which is not registered")),
            },
            None => {
                let one = placement::place(
                    view,
                    name,
                    &slot_request,
                    workload.spec.placement,
                    1,
                    config.candidates,
                    rng,
                );
                one.nodes.first().copied().ok_or_else(|| one.unplaced_reason.unwrap_or_default())
            }
        };
        match outcome {
            Ok(node) => placed.nodes.push((slot, node)),
            Err(reason) if placed.unplaced_reason.is_none() => {
                placed.stuck = slot_request;
                placed.unplaced_reason = Some(reason);
            }
            Err(_) => {}
        }
    }
    placed
}

/// No room to surge (a fixed host port on every fitting node, a full
/// cluster): stops one old replica whose node would then fit a new one, so
/// the rollout replaces in place. The new replica is placed once the old
/// one's agent has released what it held.
fn replace_in_place(
    old: &mut Vec<&Allocation>,
    request: &placement::Request,
    view: &mut ClusterView,
    plan: &mut Plan,
) {
    old.sort_by_key(|a| (rollout::serving(a), Reverse(a.id)));
    let fits_without = |a: &Allocation| {
        let Some(node) = view.position(&a.node).map(|i| &view.nodes[i]) else { return false };
        let mut freed = node.clone();
        freed.used_cpu = freed.used_cpu.saturating_sub(a.cpu);
        freed.used_memory = freed.used_memory.saturating_sub(a.memory);
        for port in crate::state::fixed_ports(a) {
            freed.ports.remove(&port);
        }
        freed.stop_replica(&a.workload);
        placement::feasibility::check(&freed, request).is_ok()
    };
    if let Some(position) = old.iter().position(|a| fits_without(a)) {
        let victim = old.remove(position);
        plan.stops.push(victim.id);
        if let Some(node) = view.node_mut(&victim.node) {
            node.stop_replica(&victim.workload);
        }
    }
}

/// A node that registered again with less than its allocations book sheds
/// replicas, newest first, until what stays fits; they are placed elsewhere.
fn shed_excess(state: &ClusterState, node: &flotilla_api::Node, view: &mut ClusterView, plan: &mut Plan) {
    let mut staying: Vec<&Allocation> =
        state.node_allocations(&node.name).filter(|a| a.is_replica()).collect();
    staying.sort_by_key(|a| a.id);
    let booked = |list: &[&Allocation]| {
        (list.iter().map(|a| a.cpu).sum::<u64>(), list.iter().map(|a| a.memory).sum::<u64>())
    };
    while let Some(newest) = staying.last().copied() {
        let (cpu, memory) = booked(&staying);
        if cpu <= node.capacity_cpu.0 && memory <= node.capacity_memory.0 {
            break;
        }
        staying.pop();
        plan.stops.push(newest.id);
        if let Some(view) = view.node_mut(&node.name) {
            view.stop_replica(&newest.workload);
        }
    }
}

/// Terminal allocations of deleted workloads are history nobody can ask for.
fn forget_deleted<'a>(
    state: &ClusterState,
    allocations: impl Iterator<Item = &'a Allocation>,
    plan: &mut Plan,
) {
    let gone = allocations.filter(|a| !a.state.is_live() && !state.has_workload(&a.workload)).map(|a| a.id);
    plan.stops.extend(gone);
}

/// Stops `count` of `allocations`: those that do not serve first, then
/// those on the most loaded nodes (pending before running on equal load).
fn stop_most_loaded(
    allocations: &mut Vec<&Allocation>,
    count: usize,
    view: &mut ClusterView,
    plan: &mut Plan,
) {
    if count == 0 {
        return;
    }
    let load =
        |a: &Allocation| view.position(&a.node).map_or(f64::MAX, |i| view.nodes[i].utilisation_with(0, 0));
    allocations.sort_by(|a, b| {
        rollout::serving(a)
            .cmp(&rollout::serving(b))
            .then_with(|| load(b).total_cmp(&load(a)))
            .then_with(|| (a.state == AllocationState::Running).cmp(&(b.state == AllocationState::Running)))
            .then_with(|| b.id.cmp(&a.id))
    });
    for allocation in allocations.drain(..count) {
        plan.stops.push(allocation.id);
        if let Some(node) = view.node_mut(&allocation.node) {
            node.stop_replica(&allocation.workload);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::spec::Driver;
    use flotilla_api::{
        AllocationUpdate, CpuMillis, Health, MemoryBytes, NodeRegistration, NodeStatus, parse_yaml,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::state::Command;

    fn register(
        state: &mut ClusterState,
        name: &str,
        cpu: u64,
        memory_mi: u64,
        zone: &str,
        drivers: &[Driver],
    ) {
        let registration = NodeRegistration {
            name: name.into(),
            address: String::new(),
            cpu: CpuMillis(cpu),
            memory: MemoryBytes(memory_mi << 20),
            labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
            drivers: drivers.iter().copied().collect(),
            host_volumes: Default::default(),
        };
        state.apply(1, Command::RegisterNode { registration }).expect("register");
    }

    fn deploy(state: &mut ClusterState, yaml: &str) {
        let spec = parse_yaml(yaml).expect("valid spec");
        state.apply(1, Command::put_workload(spec, 0)).expect("deploy");
    }

    /// The tests' clock: late enough that replicas reported healthy at 0
    /// have been healthy for the default min_healthy_time.
    const NOW: u64 = 1_000_000;

    /// Reconciles and applies until the reconciler has nothing left to do.
    fn converge(state: &mut ClusterState, seed: u64) -> usize {
        let config = ReconcileConfig::default();
        for round in 0..50 {
            let plan = reconcile(state, seed + round, NOW, &config);
            if plan.changes_nothing() {
                return round as usize;
            }
            state.apply(100 + round, Command::ApplyPlan { plan }).expect("plan applies");
        }
        panic!("the reconciler did not converge");
    }

    fn mark_running(state: &mut ClusterState) {
        let by_node: BTreeMap<String, Vec<u64>> = state
            .allocations()
            .filter(|a| a.state == AllocationState::Pending)
            .fold(BTreeMap::new(), |mut m, a| {
                m.entry(a.node.to_string()).or_default().push(a.id);
                m
            });
        for (node, ids) in by_node {
            let updates = ids
                .into_iter()
                .map(|id| AllocationUpdate { health: Health::Healthy, ..AllocationUpdate::running(id) })
                .collect();
            state.apply(1, Command::UpdateAllocations { node, seq: 0, updates, now_ms: 0 }).expect("report");
        }
    }

    /// What agents do when asked to stop: stop, and say so.
    fn report_stopped(state: &mut ClusterState) {
        let by_node: BTreeMap<String, Vec<u64>> = state
            .allocations()
            .filter(|a| a.stopping && a.state.is_live())
            .fold(BTreeMap::new(), |mut m, a| {
                m.entry(a.node.to_string()).or_default().push(a.id);
                m
            });
        for (node, ids) in by_node {
            let updates = ids.into_iter().map(AllocationUpdate::stopped).collect();
            state.apply(1, Command::UpdateAllocations { node, seq: 0, updates, now_ms: 0 }).expect("report");
        }
    }

    fn live(state: &ClusterState, workload: &str) -> Vec<Allocation> {
        let name = flotilla_api::WorkloadName::parse(workload).expect("name");
        state.workload_allocations(&name).filter(|a| a.is_replica()).cloned().collect()
    }

    #[test]
    fn places_missing_replicas_and_reports_why_the_rest_wait() {
        let mut state = ClusterState::default();
        register(&mut state, "a", 1000, 1024, "a", &[Driver::Docker]);
        register(&mut state, "b", 1000, 1024, "b", &[Driver::Docker]);
        deploy(&mut state, "name: web\nimage: x\nreplicas: 5\nresources: {cpu: 400m, memory: 128Mi}\n");
        converge(&mut state, 1);
        let workload = state.workload("web").expect("web");
        assert_eq!(workload.status.placed, 4, "two fit on each node");
        assert_eq!(workload.status.unplaced, 1);
        assert_eq!(
            workload.status.unplaced_reason.as_deref(),
            Some("needs 400m CPU and 128Mi memory: 2 nodes have too little CPU")
        );
    }

    #[test]
    fn scale_down_stops_replicas_on_the_most_loaded_nodes_first() {
        let mut state = ClusterState::default();
        register(&mut state, "big", 4000, 4096, "a", &[Driver::Docker]);
        register(&mut state, "small", 1000, 1024, "a", &[Driver::Docker]);
        deploy(&mut state, "name: web\nimage: x\nreplicas: 2\nresources: {cpu: 500m, memory: 64Mi}\n");
        converge(&mut state, 1);
        let nodes: BTreeSet<String> = live(&state, "web").into_iter().map(|a| a.node.to_string()).collect();
        assert_eq!(nodes.len(), 2, "anti-affinity spreads the two replicas");
        state
            .apply(
                2,
                Command::ScaleWorkload {
                    name: flotilla_api::WorkloadName::parse("web").expect("n"),
                    replicas: 1,
                },
            )
            .expect("scale");
        converge(&mut state, 2);
        let left = live(&state, "web");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].node, "big", "the replica on the fuller node (small, 50%) went first");
    }

    /// Four nodes and three running replicas of `web` at version 1.
    fn three_running_replicas_on_four_nodes() -> ClusterState {
        let mut state = ClusterState::default();
        for n in ["a", "b", "c", "d"] {
            register(&mut state, n, 2000, 2048, "a", &[Driver::Docker]);
        }
        deploy(&mut state, "name: web\nimage: v1\nreplicas: 3\n");
        converge(&mut state, 1);
        mark_running(&mut state);
        state
    }

    #[test]
    fn a_spec_change_rolls_out_one_replica_at_a_time() {
        let mut state = three_running_replicas_on_four_nodes();
        deploy(&mut state, "name: web\nimage: v2\nreplicas: 3\n");
        let mut rounds = 0;
        loop {
            converge(&mut state, rounds);
            let all = live(&state, "web");
            let running = all.iter().filter(|a| a.state == AllocationState::Running).count();
            assert!(running >= 3, "never fewer than 3 running during the rollout");
            assert!(all.len() <= 4, "never more than one extra replica");
            if all.iter().all(|a| a.version == 2 && a.state == AllocationState::Running) && all.len() == 3 {
                break;
            }
            mark_running(&mut state);
            rounds += 1;
            assert!(rounds < 10, "the rollout finishes");
        }
        assert_eq!(rounds, 3, "three replicas, replaced one by one");
    }

    /// Rolls `yaml` out over what runs, marking new replicas running and
    /// healthy pass by pass; returns the most new-but-not-counted replicas
    /// seen at once, and the fewest running old-or-new replicas.
    fn roll_out(state: &mut ClusterState, yaml: &str) -> (usize, usize) {
        deploy(state, yaml);
        let (mut most_in_flight, mut fewest_running) = (0, usize::MAX);
        for round in 0..40 {
            converge(state, round);
            let all = live(state, "web");
            let workload = state.workload("web").expect("web");
            let (version, replicas) = (workload.version, workload.spec.replicas as usize);
            most_in_flight = most_in_flight.max(
                all.iter().filter(|a| a.version == version && a.state == AllocationState::Pending).count(),
            );
            fewest_running =
                fewest_running.min(all.iter().filter(|a| a.state == AllocationState::Running).count());
            if all.len() == replicas
                && all.iter().all(|a| a.version == version && a.state == AllocationState::Running)
            {
                return (most_in_flight, fewest_running);
            }
            report_stopped(state);
            mark_running(state);
        }
        panic!("the rollout did not finish");
    }

    #[test]
    fn max_parallel_three_replaces_three_at_a_time() {
        let mut state = ClusterState::default();
        for n in ["a", "b", "c", "d"] {
            register(&mut state, n, 8000, 8192, "a", &[Driver::Docker]);
        }
        let spec = |image: &str| {
            format!("name: web\nimage: {image}\nreplicas: 9\nupdate: {{max_parallel: 3, max_surge: 3}}\n")
        };
        deploy(&mut state, &spec("v1"));
        converge(&mut state, 1);
        mark_running(&mut state);
        let (in_flight, running) = roll_out(&mut state, &spec("v2"));
        assert_eq!(in_flight, 3, "three new replicas at once, never more");
        assert!(running >= 9, "max_unavailable 0: never fewer than 9 running ({running})");
    }

    #[test]
    fn a_fixed_host_port_on_one_node_rolls_out_in_place() {
        let mut state = ClusterState::default();
        register(&mut state, "only", 2000, 2048, "a", &[Driver::Docker]);
        let spec =
            |image: &str| format!("name: web\nimage: {image}\nports: [{{container: 80, host: 8080}}]\n");
        deploy(&mut state, &spec("v1"));
        converge(&mut state, 1);
        mark_running(&mut state);
        let (in_flight, _) = roll_out(&mut state, &spec("v2"));
        assert_eq!(in_flight, 1);
        assert_eq!(live(&state, "web").len(), 1);
    }

    #[test]
    fn canaries_wait_beside_the_old_replicas_until_promoted() {
        let mut state = three_running_replicas_on_four_nodes();
        deploy(&mut state, "name: web\nimage: v2\nreplicas: 3\nupdate: {canary: 1}\n");
        for round in 0..5 {
            converge(&mut state, round);
            mark_running(&mut state);
        }
        let versions = |state: &ClusterState| {
            let all = live(state, "web");
            (all.iter().filter(|a| a.version == 1).count(), all.iter().filter(|a| a.version == 2).count())
        };
        assert_eq!(versions(&state), (3, 1), "one canary beside three old replicas");
        let name = flotilla_api::WorkloadName::parse("web").expect("name");
        let action = flotilla_api::RolloutAction::Promote;
        state.apply(60, Command::Rollout { name, action, now_ms: 0 }).expect("promote");
        roll_out(&mut state, "name: web\nimage: v2\nreplicas: 3\nupdate: {canary: 1}\n");
        assert_eq!(versions(&state), (0, 3));
    }

    #[test]
    fn a_rollout_whose_new_replica_keeps_failing_goes_no_further_and_keeps_the_old_ones() {
        let mut state = three_running_replicas_on_four_nodes();
        deploy(&mut state, "name: web\nimage: missing\nreplicas: 3\n");
        converge(&mut state, 2);
        let new: Vec<Allocation> = live(&state, "web").into_iter().filter(|a| a.version == 2).collect();
        assert_eq!(new.len(), 1, "one surge replica");
        let failing = AllocationUpdate {
            state: AllocationState::Restarting,
            restarts: 3,
            message: "image `missing` is not on this host".into(),
            ..AllocationUpdate::running(new[0].id)
        };
        let node = new[0].node.to_string();
        state
            .apply(50, Command::UpdateAllocations { node, seq: 0, updates: vec![failing], now_ms: 0 })
            .expect("report");
        converge(&mut state, 3);
        let replicas = live(&state, "web");
        assert_eq!(
            replicas.iter().filter(|a| a.version == 1 && a.state == AllocationState::Running).count(),
            3
        );
        assert_eq!(replicas.iter().filter(|a| a.version == 2).count(), 1, "no further new replicas");
        let status = state.workload("web").expect("web").status;
        assert_eq!(status.restarting, 1);
        let failure = status.rollout_failure.expect("the rollout is failed");
        assert!(failure.contains("is not on this host"), "{failure}");
    }

    const WITH_DATA: &str = "name: db\nimage: v1\nreplicas: 2\nplacement: spread\nresources: {cpu: 400m, memory: 128Mi}\nvolumes: [{name: data, path: /data}]\n";

    fn slot_nodes(state: &ClusterState) -> BTreeMap<u32, String> {
        live(state, "db").into_iter().map(|a| (a.replica, a.node.to_string())).collect()
    }

    #[test]
    fn a_slot_with_volumes_goes_back_to_their_node_through_restarts_and_rollouts() {
        let mut state = ClusterState::default();
        for node in ["a", "b", "c"] {
            register(&mut state, node, 1000, 1024, "z", &[Driver::Docker]);
        }
        deploy(&mut state, WITH_DATA);
        converge(&mut state, 1);
        mark_running(&mut state);
        let homes = slot_nodes(&state);
        assert_eq!(homes.len(), 2);
        let volumes: Vec<(u32, String)> = state.slot_volumes().map(|v| (v.slot, v.node.clone())).collect();
        assert_eq!(
            volumes,
            homes.clone().into_iter().collect::<Vec<_>>(),
            "one volume per slot, on its node"
        );

        // A rollout: spread would favour the empty node, but each slot's
        // new replica goes where its volume is.
        deploy(&mut state, &WITH_DATA.replace("v1", "v2"));
        for round in 0..20 {
            let plan = reconcile(&state, 10 + round, NOW, &ReconcileConfig::default());
            for placement in &plan.placements {
                assert_eq!(
                    Some(&placement.node),
                    homes.get(&placement.replica),
                    "slot {}",
                    placement.replica
                );
            }
            if plan.changes_nothing() {
                break;
            }
            state.apply(200 + round, Command::ApplyPlan { plan }).expect("plan");
            mark_running(&mut state);
            report_stopped(&mut state);
        }
        assert!(live(&state, "db").iter().all(|a| a.version == 2), "the rollout finished");
        assert_eq!(slot_nodes(&state), homes);

        // Scaled to one and back to two: slot 1 returns to its node.
        state
            .apply(
                300,
                Command::ScaleWorkload {
                    name: flotilla_api::WorkloadName::parse("db").expect("name"),
                    replicas: 1,
                },
            )
            .expect("scale");
        converge(&mut state, 20);
        report_stopped(&mut state);
        state
            .apply(
                301,
                Command::ScaleWorkload {
                    name: flotilla_api::WorkloadName::parse("db").expect("name"),
                    replicas: 2,
                },
            )
            .expect("scale");
        converge(&mut state, 30);
        assert_eq!(slot_nodes(&state), homes);
    }

    #[test]
    fn a_slot_waits_for_room_on_its_volumes_node_and_moves_only_when_that_node_is_down() {
        let mut state = ClusterState::default();
        register(&mut state, "a", 1000, 1024, "z", &[Driver::Docker]);
        deploy(&mut state, &WITH_DATA.replace("replicas: 2", "replicas: 1"));
        converge(&mut state, 1);
        mark_running(&mut state);
        register(&mut state, "b", 1000, 1024, "z", &[Driver::Docker]);

        // Its node now has too little room: the replacement waits, and says why.
        let lost = live(&state, "db")[0].id;
        let failed = AllocationUpdate { state: AllocationState::Failed, ..AllocationUpdate::running(lost) };
        state
            .apply(
                5,
                Command::UpdateAllocations { node: "a".into(), seq: 0, updates: vec![failed], now_ms: 0 },
            )
            .expect("report");
        register(&mut state, "a", 300, 1024, "z", &[Driver::Docker]);
        converge(&mut state, 3);
        assert!(live(&state, "db").is_empty(), "not placed on b, away from its data");
        let reason = &state.unplaced()["db"].reason;
        assert_eq!(reason, "replica 0 stays with its volumes on node a, which has too little CPU");

        // Its node goes down: the slot moves, and the copy it leaves is stale.
        let ready_index = state.node("a").expect("a").ready_index;
        state.apply(7, Command::MarkNodeDown { name: "a".into(), ready_index, now_ms: NOW }).expect("down");
        converge(&mut state, 4);
        assert_eq!(slot_nodes(&state), BTreeMap::from([(0, "b".to_owned())]));
        let volume = state.slot_volumes().next().expect("the slot's volume");
        assert_eq!(
            (volume.node.as_str(), volume.stale_nodes.iter().map(String::as_str).collect::<Vec<_>>()),
            ("b", vec!["a"])
        );
        assert!(
            state.events_after(0).any(|e| e.message.contains("volume data of replica 0 moved from node a"))
        );
    }

    #[test]
    fn host_volumes_are_placed_only_where_offered_and_writable() {
        let mut state = ClusterState::default();
        let offer = |read_only| flotilla_api::HostVolume { path: "/srv/config".into(), read_only };
        for (name, offers) in [("plain", None), ("ro", Some(offer(true))), ("rw", Some(offer(false)))] {
            let registration = NodeRegistration {
                name: name.into(),
                address: String::new(),
                cpu: CpuMillis(4000),
                memory: MemoryBytes(4 << 30),
                labels: BTreeMap::new(),
                drivers: [Driver::Docker].into(),
                host_volumes: offers.map(|o| ("config".to_owned(), o)).into_iter().collect(),
            };
            state.apply(1, Command::RegisterNode { registration }).expect("register");
        }
        let spec = |name: &str, extra: &str| {
            format!(
                "name: {name}\nimage: x\nreplicas: 3\nvolumes: [{{name: config, path: /etc/app, host: true{extra}}}]\n"
            )
        };
        deploy(&mut state, &spec("reader", ", read_only: true"));
        deploy(&mut state, &spec("writer", ""));
        deploy(&mut state, &spec("lost", "").replace("name: config", "name: shared-config"));
        converge(&mut state, 1);
        let nodes =
            |w: &str| live(&state, w).into_iter().map(|a| a.node.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(nodes("reader"), BTreeSet::from(["ro".to_owned(), "rw".to_owned()]));
        assert_eq!(nodes("writer"), BTreeSet::from(["rw".to_owned()]));
        assert!(nodes("lost").is_empty());
        assert_eq!(state.unplaced()["lost"].reason, "no node offers host volume shared-config");
    }

    #[test]
    fn an_overcommitted_node_sheds_its_newest_replicas_and_they_are_placed_elsewhere() {
        let mut state = ClusterState::default();
        register(&mut state, "a", 1000, 1024, "a", &[Driver::Docker]);
        deploy(&mut state, "name: first\nimage: x\nresources: {cpu: 400m, memory: 64Mi}\n");
        deploy(&mut state, "name: second\nimage: x\nresources: {cpu: 400m, memory: 64Mi}\n");
        converge(&mut state, 1);
        mark_running(&mut state);
        register(&mut state, "b", 1000, 1024, "b", &[Driver::Docker]);
        // Node a's agent comes back with half its CPU.
        register(&mut state, "a", 500, 1024, "a", &[Driver::Docker]);
        converge(&mut state, 2);
        let second = live(&state, "second");
        assert_eq!(second.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(), vec!["b"]);
        let first = live(&state, "first");
        assert_eq!(
            first.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(),
            vec!["a"],
            "the older one stays"
        );
        let shed: Vec<&Allocation> = state.node_allocations("a").filter(|a| a.stopping).collect();
        assert_eq!(shed.len(), 1);
        assert_eq!(shed[0].workload.as_str(), "second");
    }

    #[test]
    fn a_draining_node_is_emptied_onto_others_new_before_old() {
        let mut state = ClusterState::default();
        register(&mut state, "a", 2000, 2048, "a", &[Driver::Docker]);
        register(&mut state, "b", 2000, 2048, "a", &[Driver::Docker]);
        deploy(&mut state, "name: web\nimage: v1\nreplicas: 2\nplacement: spread\n");
        converge(&mut state, 1);
        mark_running(&mut state);
        state
            .apply(2, Command::SetNodeStatus { name: "a".into(), status: NodeStatus::Draining, now_ms: 0 })
            .expect("drain");
        for round in 0..5 {
            converge(&mut state, round);
            assert!(live(&state, "web").iter().filter(|a| a.state == AllocationState::Running).count() >= 2);
            mark_running(&mut state);
        }
        converge(&mut state, 9);
        assert!(live(&state, "web").iter().all(|a| a.node == "b"));
        assert_eq!(live(&state, "web").len(), 2);
    }

    #[derive(Debug, Clone)]
    struct NodeSpec {
        cpu: u64,
        memory_mi: u64,
        zone: &'static str,
        process: bool,
        status: NodeStatus,
    }

    #[derive(Debug, Clone)]
    struct WorkloadShape {
        replicas: u32,
        cpu: u64,
        memory_mi: u64,
        zone: Option<&'static str>,
        host_port: Option<u16>,
        spread: bool,
        process: bool,
    }

    fn node_spec() -> impl Strategy<Value = NodeSpec> {
        (
            prop::sample::select(vec![500u64, 1000, 2000, 4000]),
            prop::sample::select(vec![256u64, 512, 1024, 4096]),
            prop::sample::select(vec!["a", "b", "c"]),
            any::<bool>(),
            prop::sample::select(vec![
                NodeStatus::Ready,
                NodeStatus::Ready,
                NodeStatus::Ready,
                NodeStatus::Down,
                NodeStatus::Draining,
            ]),
        )
            .prop_map(|(cpu, memory_mi, zone, process, status)| NodeSpec {
                cpu,
                memory_mi,
                zone,
                process,
                status,
            })
    }

    fn workload_shape() -> impl Strategy<Value = WorkloadShape> {
        (
            0..12u32,
            prop::sample::select(vec![100u64, 250, 500, 1500]),
            prop::sample::select(vec![32u64, 128, 300, 1000]),
            prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
            prop::option::of(prop::sample::select(vec![8080u16, 9090])),
            any::<bool>(),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(replicas, cpu, memory_mi, zone, host_port, spread, process)| WorkloadShape {
                replicas,
                cpu,
                memory_mi,
                zone,
                host_port,
                spread,
                process,
            })
    }

    fn build(nodes: &[NodeSpec], workloads: &[WorkloadShape]) -> ClusterState {
        let mut state = ClusterState::default();
        for (i, n) in nodes.iter().enumerate() {
            let drivers: &[Driver] =
                if n.process { &[Driver::Docker, Driver::Process] } else { &[Driver::Docker] };
            let name = format!("node-{i}");
            register(&mut state, &name, n.cpu, n.memory_mi, n.zone, drivers);
            let ready_index = state.node(&name).map_or(0, |n| n.ready_index);
            match n.status {
                NodeStatus::Ready => {}
                NodeStatus::Down => {
                    state.apply(2, Command::MarkNodeDown { name, ready_index, now_ms: 0 }).expect("down");
                }
                status => {
                    state.apply(2, Command::SetNodeStatus { name, status, now_ms: 0 }).expect("status");
                }
            }
        }
        for (i, w) in workloads.iter().enumerate() {
            let mut yaml = format!(
                "name: w{i}\nreplicas: {}\nresources: {{cpu: {}m, memory: {}Mi}}\nplacement: {}\n",
                w.replicas,
                w.cpu,
                w.memory_mi,
                if w.spread { "spread" } else { "binpack" }
            );
            yaml.push_str(if w.process {
                "driver: process\ncommand: [sleep, \"1\"]\n"
            } else {
                "image: x\n"
            });
            if let Some(zone) = w.zone {
                yaml.push_str(&format!("constraints: [\"zone == {zone}\"]\n"));
            }
            if let Some(port) = w.host_port {
                yaml.push_str(&format!("ports: [{{container: 80, host: {port}}}]\n"));
            }
            deploy(&mut state, &yaml);
        }
        state
    }

    /// The invariants of a converged state: nothing oversubscribed, every
    /// placement legal, and every missing replica truly has nowhere to go.
    fn check_invariants(state: &ClusterState) -> Result<(), TestCaseError> {
        for node in state.nodes() {
            prop_assert!(node.allocated_cpu <= node.capacity_cpu.0, "cpu oversubscribed on {}", node.name);
            prop_assert!(
                node.allocated_memory <= node.capacity_memory.0,
                "memory oversubscribed on {}",
                node.name
            );
            let live: Vec<&Allocation> =
                state.node_allocations(&node.name).filter(|a| a.state.is_live()).collect();
            prop_assert_eq!(live.iter().map(|a| a.cpu).sum::<u64>(), node.allocated_cpu);
            let mut ports = BTreeSet::new();
            for allocation in &live {
                let workload = state.workload(allocation.workload.as_str()).expect("workload exists");
                prop_assert!(
                    workload.spec.constraints.iter().all(|c| c.matches(&node.labels)),
                    "constraint broken"
                );
                prop_assert!(node.drivers.contains(&workload.spec.driver), "driver missing");
                for p in allocation.ports.iter().filter(|p| p.host != 0) {
                    prop_assert!(ports.insert(p.host), "host port {} bound twice on {}", p.host, node.name);
                }
            }
        }
        let view = cluster_view(state, NOW);
        for workload in state.workloads() {
            let status = state.with_status(workload.clone()).status;
            prop_assert!(status.placed <= workload.spec.replicas);
            if status.placed < workload.spec.replicas {
                prop_assert_eq!(status.unplaced, workload.spec.replicas - status.placed);
                let request = request_of(workload);
                let fits_somewhere =
                    view.nodes.iter().any(|n| placement::feasibility::check(n, &request).is_ok());
                prop_assert!(!fits_somewhere, "{} has unplaced replicas that fit", workload.spec.name);
            } else {
                prop_assert_eq!(status.unplaced, 0);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn placement_never_oversubscribes_keeps_constraints_and_places_all_that_fits(
            nodes in prop::collection::vec(node_spec(), 0..12),
            workloads in prop::collection::vec(workload_shape(), 1..6),
            seed in any::<u64>(),
        ) {
            let mut state = build(&nodes, &workloads);
            converge(&mut state, seed);
            check_invariants(&state)?;
        }

        #[test]
        fn scale_down_then_up_converges_to_the_same_guarantees(
            nodes in prop::collection::vec(node_spec(), 1..10),
            workloads in prop::collection::vec(workload_shape(), 1..5),
            seed in any::<u64>(),
        ) {
            let mut state = build(&nodes, &workloads);
            converge(&mut state, seed);
            let names: Vec<_> = state.workloads().map(|w| (w.spec.name.clone(), w.spec.replicas)).collect();
            for (name, _) in &names {
                state.apply(2, Command::ScaleWorkload { name: name.clone(), replicas: 0 }).expect("scale down");
            }
            let booked: Vec<u64> = state.nodes().map(|n| n.allocated_cpu).collect();
            converge(&mut state, seed);
            prop_assert_eq!(state.allocations().filter(|a| a.is_replica()).count(), 0);
            prop_assert_eq!(
                state.nodes().map(|n| n.allocated_cpu).collect::<Vec<_>>(),
                booked,
                "stopping replicas stay booked until their agents report them stopped"
            );
            report_stopped(&mut state);
            prop_assert_eq!(state.allocations().filter(|a| a.state.is_live()).count(), 0);
            prop_assert!(state.nodes().all(|n| n.allocated_cpu == 0 && n.allocated_memory == 0));
            for (name, replicas) in &names {
                state.apply(3, Command::ScaleWorkload { name: name.clone(), replicas: *replicas }).expect("scale up");
            }
            converge(&mut state, seed);
            check_invariants(&state)?;
        }

        #[test]
        fn placement_is_deterministic_for_a_seed(
            nodes in prop::collection::vec(node_spec(), 1..12),
            workloads in prop::collection::vec(workload_shape(), 1..6),
            seed in any::<u64>(),
        ) {
            let state = build(&nodes, &workloads);
            let config = ReconcileConfig::default();
            prop_assert_eq!(reconcile(&state, seed, 7, &config), reconcile(&state, seed, 7, &config));
        }
    }
}
