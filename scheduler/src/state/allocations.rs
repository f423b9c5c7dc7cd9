//! Applying what changes allocations: plans from the reconciler and the
//! state changes agents report, with the node bookkeeping that follows.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

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
        let mut views: HashMap<String, NodeView> = HashMap::new();
        for placement in plan.placements {
            if self.placement_fits(&placement, plan.now_ms, &mut tallies, &mut views) {
                if let Some(tally) = tallies.get_mut(&placement.workload) {
                    tally.live += 1;
                }
                if let Some(view) = views.get_mut(&placement.node) {
                    let bound = placement.ports.iter().filter(|p| p.host != 0).map(|p| (p.host, p.protocol));
                    view.book(&placement.workload, placement.cpu, placement.memory, bound);
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
        tallies: &mut BTreeMap<WorkloadName, ReplicaTally>,
        views: &mut HashMap<String, NodeView>,
    ) -> bool {
        let Some(workload) = self.workloads.get(&placement.workload) else {
            return false;
        };
        if workload.version != placement.version {
            return false;
        }
        let tally = tallies.entry(placement.workload.clone()).or_insert_with(|| {
            let live: Vec<&Allocation> =
                self.workload_allocations(&placement.workload).filter(|a| a.is_replica()).collect();
            let rolling = live.iter().any(|a| a.version < workload.version || self.on_draining_node(a));
            let update = &workload.spec.update;
            let extra = if rolling { update.max_surge.max(update.canary) } else { 0 };
            ReplicaTally { live: live.len() as u32, limit: workload.spec.replicas.saturating_add(extra) }
        });
        if tally.live >= tally.limit {
            return false;
        }
        let view = match views.entry(placement.node.clone()) {
            Entry::Occupied(view) => view.into_mut(),
            Entry::Vacant(vacant) => match self.node_view(&placement.node, now_ms) {
                Some(view) => vacant.insert(view),
                None => return false,
            },
        };
        placement::feasibility::check(view, &slot_request(self, workload, placement.replica)).is_ok()
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
                allocation.stopping = true;
                allocation.modified_index = index;
                self.node_changes.mark(&allocation.node);
                true
            }
            Some(_) => self.remove_allocation(id),
            None => false,
        }
    }

    pub(super) fn on_draining_node(&self, allocation: &Allocation) -> bool {
        self.nodes.get(&allocation.node).is_some_and(|n| n.status == NodeStatus::Draining)
    }

    pub(super) fn add_allocation(&mut self, index: u64, now_ms: u64, placement: Placement) {
        let id = self.next_allocation_id.max(1);
        self.next_allocation_id = id + 1;
        let allocation = Allocation {
            id,
            workload: placement.workload,
            replica: placement.replica,
            node: placement.node,
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
        self.allocations.insert(id, Box::new(allocation));
    }

    /// Removes an allocation, releasing what it held if it was live.
    pub(super) fn remove_allocation(&mut self, id: u64) -> bool {
        let Some(allocation) = self.allocations.remove(&id) else {
            return false;
        };
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
        allocation.state = state;
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
                if !update.state.is_live() {
                    allocation.finished_at_ms = Some(now_ms);
                }
                allocation.restarts = update.restarts;
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
            }
            changed += 1;
            if let Some(after) = self.allocations.get(&update.id) {
                let failed = after.state == AllocationState::Failed && before.0 != AllocationState::Failed;
                let oom = after.oom_killed && (!before.2 || after.restarts != before.1);
                let (workload, node) = (Some(after.workload.to_string()), Some(after.node.clone()));
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
