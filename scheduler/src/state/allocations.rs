//! Applying what changes allocations: plans from the reconciler and the
//! state changes agents report, with the node bookkeeping that follows.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_api::{Allocation, AllocationState, AllocationUpdate, Event, Health, NodeStatus, WorkloadName};

use super::cluster_state::{ClusterState, slot_request};
use super::command::{CommandOutput, Rejection};
use super::plan::{Placement, Plan, PlanOutcome};
use crate::placement;
use crate::placement::NodeView;

/// A workload's live replicas while a plan's placements are applied:
/// counted once per plan and kept up to date as placements land, not
/// counted again for each (a plan of 10,000 replicas of one workload would
/// visit 50 million allocations). A placement never changes whether a
/// rollout is under way: it is of the current version, on a node that is
/// not draining.
struct ReplicaTally {
    live: u32,
    /// The replicas, plus the rollout's surge while old ones remain.
    limit: u32,
}

/// A node as a plan's checks see it: capacity and what the plan booked,
/// and the host ports of the node's allocations once a placement with fixed
/// host ports needs them. Most placements have none, and reading every
/// allocation of each node a plan touches was most of applying a plan on
/// every server (10,000 placements over 10,000 nodes of 100 replicas).
struct PlanNodeView {
    view: NodeView,
    /// Whether `view.ports` holds the ports of the node's allocations, or
    /// only those the plan booked so far.
    ports_read: bool,
}

impl ClusterState {
    /// Applies a plan, re-checking every placement against the latest state:
    /// a placement that no longer fits (another plan got there first, the
    /// node went down, the spec changed) is refused, never forced.
    pub(super) fn apply_plan(&mut self, index: u64, plan: Plan) -> PlanOutcome {
        let mut outcome = PlanOutcome::default();
        for id in plan.stops {
            if self.stop_allocation(index, id) {
                outcome.stopped += 1;
            }
        }
        let mut tallies = BTreeMap::new();
        // Each node's view, built once per plan and kept up to date with
        // its placements: a plan of thousands of placements on nodes of a
        // hundred replicas each would otherwise look at every replica of a
        // node for each placement on it.
        let mut views: HashMap<String, PlanNodeView> = HashMap::new();
        // Usually none; looked up for every live replica of each workload placed.
        let draining: BTreeSet<String> = self
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Draining)
            .map(|n| n.name.clone())
            .collect();
        for placement in plan.placements {
            if self.placement_fits(&placement, plan.now_ms, &draining, &mut tallies, &mut views) {
                if let Some(tally) = tallies.get_mut(&placement.workload) {
                    tally.live += 1;
                }
                if let Some(plan_view) = views.get_mut(&placement.node) {
                    let bound = placement.ports.iter().filter(|p| p.host != 0).map(|p| (p.host, p.protocol));
                    plan_view.view.book(&placement.workload, placement.cpu, placement.memory, bound);
                }
                self.add_allocation(index, plan.now_ms, placement);
                outcome.placed += 1;
            } else {
                outcome.refused += 1;
            }
        }
        for name in plan.no_longer_unplaced {
            self.unplaced.remove(&name);
        }
        for (name, unplaced) in plan.unplaced {
            if self.workloads.contains_key(&name) {
                self.unplaced.insert(name, unplaced);
            }
        }
        outcome
    }

    fn placement_fits(
        &self,
        placement: &Placement,
        now_ms: u64,
        draining: &BTreeSet<String>,
        tallies: &mut BTreeMap<WorkloadName, ReplicaTally>,
        views: &mut HashMap<String, PlanNodeView>,
    ) -> bool {
        let Some(workload) = self.workloads.get(&placement.workload) else {
            return false;
        };
        if workload.version != placement.version {
            return false;
        }
        let tally = tallies.entry(placement.workload.clone()).or_insert_with(|| {
            let (mut live, mut outdated) = (0, 0);
            for (version, counts) in self.tallies.replicas.versions(&placement.workload) {
                live += counts.replicas;
                if version < workload.version {
                    outdated += counts.replicas;
                }
            }
            let rolling = outdated > 0
                || (!draining.is_empty()
                    && self
                        .workload_allocations(&placement.workload)
                        .any(|a| a.is_replica() && draining.contains(a.node.as_str())));
            let update = &workload.spec.update;
            let extra = if rolling { update.max_surge.max(update.canary) } else { 0 };
            ReplicaTally { live, limit: workload.spec.replicas.saturating_add(extra) }
        });
        if tally.live >= tally.limit {
            return false;
        }
        let plan_view = match views.entry(placement.node.clone()) {
            Entry::Occupied(view) => view.into_mut(),
            Entry::Vacant(vacant) => match self.node_capacity_view(&placement.node, now_ms) {
                Some(view) => vacant.insert(PlanNodeView { view, ports_read: false }),
                None => return false,
            },
        };
        let request = slot_request(self, workload, placement.replica);
        if !request.host_ports.is_empty() && !plan_view.ports_read {
            plan_view.view.ports.extend(self.node_ports(&placement.node));
            plan_view.ports_read = true;
        }
        placement::feasibility::check(&plan_view.view, &request).is_ok()
    }

    /// Asks a live allocation's agent to stop it (it keeps what it books
    /// until the agent says it stopped); forgets a terminal one, which is
    /// only history.
    pub(super) fn stop_allocation(&mut self, index: u64, id: u64) -> bool {
        match self.allocations.get_mut(&id) {
            Some(allocation) if allocation.state.is_live() => {
                if allocation.stopping {
                    return false;
                }
                self.tallies.remove(allocation);
                allocation.stopping = true;
                self.tallies.add(allocation);
                allocation.modified_index = index;
                self.node_changes.mark(&allocation.node);
                true
            }
            Some(_) => self.remove_allocation(id),
            None => false,
        }
    }

    pub(super) fn add_allocation(&mut self, index: u64, now_ms: u64, placement: Placement) {
        let id = self.next_allocation_id.max(1);
        self.next_allocation_id = id + 1;
        // The workload's and the node's own names, shared: the plan's
        // copies would cost each allocation strings of its own.
        let workload = match self.workloads.get_key_value(&placement.workload) {
            Some((name, _)) => name.clone(),
            None => placement.workload,
        };
        let node = match self.nodes.get_key_value(placement.node.as_str()) {
            Some((name, _)) => name.clone(),
            None => placement.node.into(),
        };
        let allocation = Allocation {
            id,
            workload,
            replica: placement.replica,
            node,
            version: placement.version,
            cpu: placement.cpu,
            memory: placement.memory,
            ports: placement.ports,
            state: AllocationState::Pending,
            stopping: false,
            next_restart_at_ms: None,
            runtime_id: None,
            container_address: None,
            image_digest: None,
            created_index: index,
            modified_index: index,
            created_at_ms: now_ms,
            finished_at_ms: None,
            restarts: 0,
            exit_code: None,
            oom_killed: false,
            message: String::new(),
            health: Health::Unknown,
            health_output: String::new(),
            healthy_since_ms: None,
        };
        if let Some(workload) = self.workloads.get(&allocation.workload)
            && workload.spec.slot_volumes().next().is_some()
        {
            let spec = workload.spec.clone();
            self.claim_slot_volumes(index, &spec, allocation.replica, &allocation.node, now_ms);
        }
        if let Some(node) = self.nodes.get_mut(&allocation.node) {
            node.allocated_cpu += allocation.cpu;
            node.allocated_memory += allocation.memory;
            node.allocations += 1;
        }
        self.node_changes.mark(&allocation.node);
        self.by_node.entry(allocation.node.clone()).or_default().insert(id);
        self.by_workload.entry(allocation.workload.clone()).or_default().insert(id);
        self.tallies.add(&allocation);
        self.allocations.insert(id, std::sync::Arc::new(allocation));
    }

    /// Removes an allocation, releasing what it held if it was live.
    pub(super) fn remove_allocation(&mut self, id: u64) -> bool {
        let Some(allocation) = self.allocations.remove(&id) else {
            return false;
        };
        self.tallies.remove(&allocation);
        if allocation.state.is_live() {
            self.release(&allocation);
        }
        self.node_changes.mark(&allocation.node);
        if let Some(ids) = self.by_node.get_mut(&allocation.node) {
            ids.remove(&id);
        }
        if let Some(ids) = self.by_workload.get_mut(&allocation.workload) {
            ids.remove(&id);
            if ids.is_empty() && !self.workloads.contains_key(&allocation.workload) {
                self.by_workload.remove(&allocation.workload);
            }
        }
        true
    }

    pub(super) fn release(&mut self, allocation: &Allocation) {
        if let Some(node) = self.nodes.get_mut(&allocation.node) {
            node.allocated_cpu = node.allocated_cpu.saturating_sub(allocation.cpu);
            node.allocated_memory = node.allocated_memory.saturating_sub(allocation.memory);
            node.allocations = node.allocations.saturating_sub(1);
        }
    }

    pub(super) fn set_allocation_state(&mut self, index: u64, id: u64, state: AllocationState) {
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return;
        };
        let was_live = allocation.state.is_live();
        self.tallies.remove(allocation);
        allocation.state = state;
        self.tallies.add(allocation);
        allocation.modified_index = index;
        if was_live && !state.is_live() {
            let allocation = allocation.clone();
            self.release(&allocation);
        }
    }

    pub(super) fn update_allocations(
        &mut self,
        index: u64,
        node: &str,
        seq: u64,
        updates: Vec<AllocationUpdate>,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let record = self.nodes.get_mut(node).ok_or_else(|| Rejection::NodeNotFound(node.to_owned()))?;
        if seq != 0 {
            if seq <= record.report_seq {
                return Err(Rejection::StaleReport { node: node.to_owned(), seq, last: record.report_seq });
            }
            record.report_seq = seq;
        }
        let mut changed = 0;
        for update in updates {
            let Some(allocation) = self.allocations.get(&update.id) else {
                continue;
            };
            // Only the node an allocation is on reports on it, a replaced
            // (lost, failed) allocation does not come back to life, and only
            // the servers place (pending) or lose allocations.
            if allocation.node != node
                || !allocation.state.is_live()
                || matches!(update.state, AllocationState::Pending | AllocationState::Lost)
            {
                continue;
            }
            let before = (allocation.state, allocation.restarts, allocation.oom_killed, allocation.health);
            self.set_allocation_state(index, update.id, update.state);
            if let Some(allocation) = self.allocations.get_mut(&update.id) {
                // Restarts decide whether it is failing, and the host
                // ports the agent chose are booked on its node.
                self.tallies.remove(allocation);
                allocation.restarts = update.restarts;
                if !update.state.is_live() {
                    allocation.finished_at_ms = Some(now_ms);
                }
                allocation.exit_code = update.exit_code;
                allocation.oom_killed = update.oom_killed;
                allocation.message = update.message;
                if update.runtime_id.is_some() {
                    allocation.runtime_id = update.runtime_id;
                }
                if update.image_digest.is_some() {
                    allocation.image_digest = update.image_digest;
                }
                // A restarted container may come back at another address.
                if update.state == AllocationState::Running || !update.state.is_live() {
                    allocation.container_address = update.container_address;
                }
                allocation.next_restart_at_ms =
                    update.next_restart_at_ms.filter(|_| update.state == AllocationState::Restarting);
                // Only a running replica can be healthy; anything else starts over.
                let health =
                    if update.state == AllocationState::Running { update.health } else { Health::Unknown };
                if health != allocation.health {
                    allocation.healthy_since_ms = (health == Health::Healthy).then_some(now_ms);
                    allocation.health_output = update.health_output;
                } else if !update.health_output.is_empty() {
                    allocation.health_output = update.health_output;
                }
                allocation.health = health;
                for bound in update.ports {
                    if let Some(port) = allocation
                        .ports
                        .iter_mut()
                        .find(|p| p.container == bound.container && p.protocol == bound.protocol)
                    {
                        port.host = bound.host;
                    }
                }
                self.tallies.add(allocation);
            }
            changed += 1;
            if let Some(after) = self.allocations.get(&update.id) {
                let failed = after.state == AllocationState::Failed && before.0 != AllocationState::Failed;
                let oom = after.oom_killed && (!before.2 || after.restarts != before.1);
                let (workload, node) = (Some(after.workload.to_string()), Some(after.node.to_string()));
                let mut messages = Vec::new();
                if failed || oom {
                    let what = if failed { "failed" } else { "was OOM-killed" };
                    messages.push(format!("allocation {} {what}: {}", after.id, after.message));
                }
                // Health changes that checks found (not the reset of a restart).
                if after.health != before.3 && after.health != Health::Unknown {
                    let output = if after.health_output.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", after.health_output)
                    };
                    messages.push(format!("allocation {} is {}{output}", after.id, after.health));
                }
                for message in messages {
                    let (workload, node) = (workload.clone(), node.clone());
                    self.record(Event { index, at_ms: now_ms, workload, node, message });
                }
            }
        }
        Ok(CommandOutput::AllocationsUpdated(changed))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::spec::{Driver, Protocol};
    use flotilla_api::{CpuMillis, MemoryBytes, NodeRegistration, PortBinding, WorkloadName, parse_yaml};

    use super::*;
    use crate::state::Command;

    const WEB: &str = "name: web\nimage: x\nreplicas: 2\nports: [{container: 80, host: 8080}]\nresources: {cpu: 100m, memory: 64Mi}\n";
    const ADMIN: &str =
        "name: admin\nimage: x\nports: [{container: 80, host: 8080}]\nresources: {cpu: 100m, memory: 64Mi}\n";
    const API: &str = "name: api\nimage: x\nreplicas: 4\nresources: {cpu: 400m, memory: 64Mi}\n";

    /// A placement in a case: workload, replica, node.
    type PlacementRow = (&'static str, u32, &'static str);

    fn placement(workload: &str, replica: u32, node: &str) -> Placement {
        let (cpu, ports) = match workload {
            "api" => (400, Vec::new()),
            _ => (100, vec![PortBinding { container: 80, host: 8080, protocol: Protocol::Tcp }]),
        };
        Placement {
            workload: WorkloadName::parse(workload).expect("name"),
            replica,
            node: node.into(),
            version: 1,
            cpu,
            memory: 64 << 20,
            ports,
        }
    }

    /// Nodes `a` and `b` of one CPU; `web`, `admin` (both on host port
    /// 8080) and `api` deployed; web's replica 0 placed on `a`.
    fn cluster() -> ClusterState {
        let mut state = ClusterState::default();
        for (index, name) in [(1, "a"), (2, "b")] {
            let registration = NodeRegistration {
                name: name.into(),
                address: String::new(),
                cpu: CpuMillis(1000),
                memory: MemoryBytes(1 << 30),
                labels: BTreeMap::new(),
                drivers: [Driver::Docker].into(),
                host_volumes: Default::default(),
            };
            state.apply(index, Command::RegisterNode { registration }).expect("register");
        }
        for (index, yaml) in [(3, WEB), (4, ADMIN), (5, API)] {
            state.apply(index, Command::put_workload(parse_yaml(yaml).expect("spec"), 0)).expect("deploy");
        }
        let plan = Plan { placements: vec![placement("web", 0, "a")], ..Plan::default() };
        state.apply(6, Command::ApplyPlan { plan }).expect("plan");
        state
    }

    /// Whether every allocation names its node with the state's own copy
    /// of the name (the same bytes, not equal ones).
    fn node_names_shared(state: &ClusterState) -> bool {
        state.allocations.values().all(|a| {
            state
                .nodes
                .get_key_value(a.node.as_str())
                .is_some_and(|(name, _)| name.as_ptr() == a.node.as_ptr())
        })
    }

    #[test]
    fn allocations_share_their_nodes_names_when_placed_and_when_restored_from_a_snapshot() {
        let mut state = cluster();
        let plan =
            Plan { placements: vec![placement("api", 0, "b"), placement("api", 1, "b")], ..Plan::default() };
        state.apply(7, Command::ApplyPlan { plan }).expect("plan");
        assert_eq!(state.allocations.values().count(), 3);
        assert!(node_names_shared(&state), "placed");
        let json = serde_json::to_vec(&state).expect("serialize");
        let mut restored: ClusterState = serde_json::from_slice(&json).expect("deserialize");
        assert!(!node_names_shared(&restored), "read from the file, each allocation has a name of its own");
        restored.restored_at(7);
        assert!(node_names_shared(&restored), "restored");
        assert_eq!(restored, state);
    }

    #[test]
    fn a_plan_places_what_still_fits_and_refuses_the_rest() {
        let cases: &[(&str, &[PlacementRow], PlanOutcome)] = &[
            (
                "a port held by a live allocation",
                &[("web", 1, "a")],
                PlanOutcome { placed: 0, refused: 1, stopped: 0 },
            ),
            (
                "the same port on another node",
                &[("web", 1, "b")],
                PlanOutcome { placed: 1, refused: 0, stopped: 0 },
            ),
            (
                "a port the node's allocations hold, after a placement without ports read the node",
                &[("api", 0, "a"), ("admin", 0, "a")],
                PlanOutcome { placed: 1, refused: 1, stopped: 0 },
            ),
            (
                "a port an earlier placement of the same plan booked",
                &[("api", 0, "b"), ("web", 1, "b"), ("admin", 0, "b")],
                PlanOutcome { placed: 2, refused: 1, stopped: 0 },
            ),
            (
                "CPU the node's allocations and the plan's earlier placements use",
                &[("api", 0, "a"), ("api", 1, "a"), ("api", 2, "a")],
                PlanOutcome { placed: 2, refused: 1, stopped: 0 },
            ),
            (
                "more replicas than the spec asks for",
                &[("admin", 0, "b"), ("admin", 1, "a")],
                PlanOutcome { placed: 1, refused: 1, stopped: 0 },
            ),
            (
                "a node that does not exist",
                &[("api", 0, "c")],
                PlanOutcome { placed: 0, refused: 1, stopped: 0 },
            ),
        ];
        for (what, placements, expected) in cases {
            let mut state = cluster();
            let placements = placements.iter().map(|(w, r, n)| placement(w, *r, n)).collect();
            let plan = Plan { placements, ..Plan::default() };
            let outcome = state.apply(7, Command::ApplyPlan { plan }).expect("plan");
            assert_eq!(outcome, CommandOutput::Planned(*expected), "{what}");
            let on_a_with_port = state.node_ports("a").count();
            assert_eq!(on_a_with_port, 1, "{what}: only web's replica 0 holds a port on a");
        }
    }
}
