//! The cluster's desired and observed state, and the deterministic `apply`
//! that changes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_api::spec::Protocol;
use flotilla_api::{
    Allocation, AllocationState, AllocationUpdate, DeployChange, DeployResult, Event, Member, Node,
    NodeRegistration, NodeStatus, Workload, WorkloadName, WorkloadStatus,
};
use serde::{Deserialize, Serialize};

use super::command::{Command, CommandOutput, Rejection};
use super::plan::{Placement, Plan, PlanOutcome, Unplaced};
use crate::placement::{self, NodeView, Request};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    workloads: BTreeMap<WorkloadName, Workload>,
    /// Raft members and their addresses, replicated so that every server,
    /// including one that joins later, knows where its peers listen.
    members: BTreeMap<u64, Member>,
    nodes: BTreeMap<String, Node>,
    allocations: BTreeMap<u64, Allocation>,
    /// Allocation ids by node and by workload, kept in step with `allocations`.
    by_node: BTreeMap<String, BTreeSet<u64>>,
    by_workload: BTreeMap<WorkloadName, BTreeSet<u64>>,
    next_allocation_id: u64,
    /// Replicas the last plan could not place, and why.
    unplaced: BTreeMap<WorkloadName, Unplaced>,
    /// The latest events, oldest first, at most `MAX_EVENTS`.
    events: VecDeque<Event>,
}

/// Events kept in the state; older ones are dropped.
const MAX_EVENTS: usize = 1000;

/// What one replica of a workload asks of a node, from its spec.
pub fn request_of(workload: &Workload) -> Request {
    let spec = &workload.spec;
    Request {
        cpu: spec.resources.cpu.0,
        memory: spec.resources.memory.0,
        driver: spec.driver,
        constraints: spec.constraints.clone(),
        host_ports: spec.fixed_host_ports().collect(),
        avoid_nodes: Default::default(),
    }
}

/// The host ports an allocation holds on its node (0: none chosen yet).
pub fn fixed_ports(allocation: &Allocation) -> Vec<(u16, Protocol)> {
    allocation.ports.iter().filter(|p| p.host != 0).map(|p| (p.host, p.protocol)).collect()
}

impl ClusterState {
    /// The state a new cluster starts from: no workloads, the given voters.
    pub fn bootstrap(voters: &BTreeMap<u64, String>) -> Self {
        let members = voters
            .iter()
            .map(|(id, address)| {
                (*id, Member { id: *id, address: address.clone(), voter: true, matched: None })
            })
            .collect();
        ClusterState { members, next_allocation_id: 1, ..ClusterState::default() }
    }

    /// Applies a committed command at log `index`. A rejected command leaves
    /// the state exactly as it was.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<CommandOutput, Rejection> {
        match command {
            Command::PutWorkload { spec, expected_version } => {
                let existing = self.workloads.get(&spec.name);
                if let Some(expected) = expected_version {
                    let actual = existing.map_or(0, |w| w.version);
                    if actual != expected {
                        return Err(Rejection::VersionMismatch { name: spec.name, expected, actual });
                    }
                }
                let (change, workload) = match existing {
                    Some(current) if current.spec == spec => (DeployChange::Unchanged, current.clone()),
                    // A change of replicas alone is a scale, not a new version to roll out.
                    Some(current) if current.spec == spec_with_replicas(&spec, current.spec.replicas) => {
                        (DeployChange::Updated, Workload { spec, modified_index: index, ..current.clone() })
                    }
                    Some(current) => (
                        DeployChange::Updated,
                        Workload {
                            spec,
                            version: current.version + 1,
                            created_index: current.created_index,
                            modified_index: index,
                            status: WorkloadStatus::default(),
                        },
                    ),
                    None => (
                        DeployChange::Created,
                        Workload {
                            spec,
                            version: 1,
                            created_index: index,
                            modified_index: index,
                            status: WorkloadStatus::default(),
                        },
                    ),
                };
                self.workloads.insert(workload.spec.name.clone(), workload.clone());
                let workload = self.with_status(workload);
                Ok(CommandOutput::Deployed(DeployResult { change, workload }))
            }
            Command::ScaleWorkload { name, replicas } => {
                let workload =
                    self.workloads.get_mut(&name).ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
                if let Some(auto) = &workload.spec.autoscale
                    && !(auto.min..=auto.max).contains(&replicas)
                {
                    return Err(Rejection::OutsideAutoscaleRange {
                        name,
                        replicas,
                        min: auto.min,
                        max: auto.max,
                    });
                }
                if workload.spec.replicas != replicas {
                    workload.spec.replicas = replicas;
                    workload.modified_index = index;
                }
                let workload = workload.clone();
                Ok(CommandOutput::Workload(self.with_status(workload)))
            }
            Command::DeleteWorkload { name } => {
                let workload =
                    self.workloads.remove(&name).ok_or(Rejection::WorkloadNotFound(name.clone()))?;
                for id in self.by_workload.get(&name).cloned().unwrap_or_default() {
                    self.remove_allocation(id);
                }
                self.by_workload.remove(&name);
                self.unplaced.remove(&name);
                Ok(CommandOutput::Workload(workload))
            }
            Command::RegisterNode { registration } => {
                Ok(CommandOutput::Node(self.register_node(registration)))
            }
            Command::SetNodeStatus { name, status, now_ms } => {
                let output = self.set_node_status(index, &name, status)?;
                self.record(Event {
                    index,
                    at_ms: now_ms,
                    workload: None,
                    node: Some(name),
                    message: format!("node is {status}"),
                });
                Ok(output)
            }
            Command::AutoscaleWorkload { name, replicas, reason, now_ms } => {
                let workload =
                    self.workloads.get_mut(&name).ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
                workload.spec.replicas = replicas;
                workload.modified_index = index;
                let workload = workload.clone();
                let message = format!("autoscaled: {reason}");
                self.record(Event {
                    index,
                    at_ms: now_ms,
                    workload: Some(name.to_string()),
                    node: None,
                    message,
                });
                Ok(CommandOutput::Workload(self.with_status(workload)))
            }
            Command::ApplyPlan { plan } => Ok(CommandOutput::Planned(self.apply_plan(index, plan))),
            Command::UpdateAllocations { node, updates, now_ms } => {
                self.update_allocations(index, &node, updates, now_ms)
            }
        }
    }

    fn register_node(&mut self, registration: NodeRegistration) -> Node {
        let node = self.nodes.entry(registration.name.clone()).or_insert_with(|| Node {
            name: registration.name.clone(),
            address: String::new(),
            capacity_cpu: registration.cpu,
            capacity_memory: registration.memory,
            labels: BTreeMap::new(),
            drivers: BTreeSet::new(),
            status: NodeStatus::Ready,
            allocated_cpu: 0,
            allocated_memory: 0,
            allocations: 0,
        });
        node.address = registration.address;
        node.capacity_cpu = registration.cpu;
        node.capacity_memory = registration.memory;
        node.labels = registration.labels;
        node.drivers = registration.drivers;
        if node.status == NodeStatus::Down {
            node.status = NodeStatus::Ready;
        }
        node.clone()
    }

    fn set_node_status(
        &mut self,
        index: u64,
        name: &str,
        status: NodeStatus,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status == NodeStatus::Down && status == NodeStatus::Draining {
            return Err(Rejection::NodeDown(name.to_owned()));
        }
        node.status = status;
        if status == NodeStatus::Down {
            let live: Vec<u64> = self
                .by_node
                .get(name)
                .into_iter()
                .flatten()
                .filter(|id| self.allocations.get(id).is_some_and(|a| a.state.is_live()))
                .copied()
                .collect();
            for id in live {
                self.set_allocation_state(index, id, AllocationState::Lost);
            }
        }
        let node = self.nodes.get(name).cloned().ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        Ok(CommandOutput::Node(node))
    }

    /// Applies a plan, re-checking every placement against the latest state:
    /// a placement that no longer fits (another plan got there first, the
    /// node went down, the spec changed) is refused, never forced.
    fn apply_plan(&mut self, index: u64, plan: Plan) -> PlanOutcome {
        let mut outcome = PlanOutcome::default();
        for id in plan.stops {
            if self.remove_allocation(id) {
                outcome.stopped += 1;
            }
        }
        for placement in plan.placements {
            if self.placement_fits(&placement) {
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

    fn placement_fits(&self, placement: &Placement) -> bool {
        let Some(workload) = self.workloads.get(&placement.workload) else {
            return false;
        };
        if workload.version != placement.version {
            return false;
        }
        let live: Vec<&Allocation> =
            self.workload_allocations(&placement.workload).filter(|a| a.state.is_live()).collect();
        let rolling = live.iter().any(|a| a.version < workload.version || self.on_draining_node(a));
        let limit = workload.spec.replicas + u32::from(rolling);
        if live.len() as u32 >= limit {
            return false;
        }
        let Some(view) = self.node_view(&placement.node) else {
            return false;
        };
        placement::feasibility::check(&view, &request_of(workload)).is_ok()
    }

    fn on_draining_node(&self, allocation: &Allocation) -> bool {
        self.nodes.get(&allocation.node).is_some_and(|n| n.status == NodeStatus::Draining)
    }

    fn add_allocation(&mut self, index: u64, now_ms: u64, placement: Placement) {
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
            created_index: index,
            modified_index: index,
            created_at_ms: now_ms,
            finished_at_ms: None,
            restarts: 0,
            exit_code: None,
            oom_killed: false,
            message: String::new(),
        };
        if let Some(node) = self.nodes.get_mut(&allocation.node) {
            node.allocated_cpu += allocation.cpu;
            node.allocated_memory += allocation.memory;
            node.allocations += 1;
        }
        self.by_node.entry(allocation.node.clone()).or_default().insert(id);
        self.by_workload.entry(allocation.workload.clone()).or_default().insert(id);
        self.allocations.insert(id, allocation);
    }

    /// Removes an allocation, releasing what it held if it was live.
    fn remove_allocation(&mut self, id: u64) -> bool {
        let Some(allocation) = self.allocations.remove(&id) else {
            return false;
        };
        if allocation.state.is_live() {
            self.release(&allocation);
        }
        if let Some(ids) = self.by_node.get_mut(&allocation.node) {
            ids.remove(&id);
        }
        if let Some(ids) = self.by_workload.get_mut(&allocation.workload) {
            ids.remove(&id);
        }
        true
    }

    fn release(&mut self, allocation: &Allocation) {
        if let Some(node) = self.nodes.get_mut(&allocation.node) {
            node.allocated_cpu = node.allocated_cpu.saturating_sub(allocation.cpu);
            node.allocated_memory = node.allocated_memory.saturating_sub(allocation.memory);
            node.allocations = node.allocations.saturating_sub(1);
        }
    }

    fn set_allocation_state(&mut self, index: u64, id: u64, state: AllocationState) {
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

    fn update_allocations(
        &mut self,
        index: u64,
        node: &str,
        updates: Vec<AllocationUpdate>,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        if !self.nodes.contains_key(node) {
            return Err(Rejection::NodeNotFound(node.to_owned()));
        }
        let mut changed = 0;
        for update in updates {
            let Some(allocation) = self.allocations.get(&update.id) else {
                continue;
            };
            // Only the node an allocation is on reports on it, and a replaced
            // (lost, failed) allocation does not come back to life.
            if allocation.node != node || !allocation.state.is_live() {
                continue;
            }
            let before = (allocation.state, allocation.restarts, allocation.oom_killed);
            self.set_allocation_state(index, update.id, update.state);
            if let Some(allocation) = self.allocations.get_mut(&update.id) {
                if !update.state.is_live() {
                    allocation.finished_at_ms = Some(now_ms);
                }
                allocation.restarts = update.restarts;
                allocation.exit_code = update.exit_code;
                allocation.oom_killed = update.oom_killed;
                allocation.message = update.message;
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
                if failed || oom {
                    let what = if failed { "failed" } else { "was OOM-killed" };
                    let message = format!("allocation {} {what}: {}", after.id, after.message);
                    let (workload, node) = (Some(after.workload.to_string()), Some(after.node.clone()));
                    self.record(Event { index, at_ms: now_ms, workload, node, message });
                }
            }
        }
        Ok(CommandOutput::AllocationsUpdated(changed))
    }

    /// The node as placement sees it, from the live allocations on it.
    pub fn node_view(&self, name: &str) -> Option<NodeView> {
        let node = self.nodes.get(name)?;
        let mut view = NodeView {
            name: node.name.clone(),
            status: node.status,
            drivers: node.drivers.clone(),
            labels: node.labels.clone(),
            capacity_cpu: node.capacity_cpu.0,
            capacity_memory: node.capacity_memory.0,
            used_cpu: node.allocated_cpu,
            used_memory: node.allocated_memory,
            ports: Default::default(),
            workload_counts: Default::default(),
        };
        for allocation in self.node_allocations(name).filter(|a| a.state.is_live()) {
            view.ports.extend(fixed_ports(allocation));
            *view.workload_counts.entry(allocation.workload.clone()).or_default() += 1;
        }
        Some(view)
    }

    /// The workload with its replicas' status filled in.
    pub fn with_status(&self, mut workload: Workload) -> Workload {
        let mut status = WorkloadStatus::default();
        for allocation in self.workload_allocations(&workload.spec.name).filter(|a| a.state.is_live()) {
            status.placed += 1;
            if allocation.state == AllocationState::Running {
                status.running += 1;
            }
            if allocation.version < workload.version {
                status.outdated += 1;
            }
        }
        if let Some(unplaced) = self.unplaced.get(&workload.spec.name) {
            status.unplaced = unplaced.count;
            status.unplaced_reason = Some(unplaced.reason.clone());
        }
        workload.status = status;
        workload
    }

    pub fn workload(&self, name: &str) -> Option<Workload> {
        self.workloads.get(name).map(|w| self.with_status(w.clone()))
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    pub fn node_allocations(&self, node: &str) -> impl Iterator<Item = &Allocation> {
        self.by_node.get(node).into_iter().flatten().filter_map(|id| self.allocations.get(id))
    }

    pub fn workload_allocations(&self, workload: &WorkloadName) -> impl Iterator<Item = &Allocation> {
        self.by_workload.get(workload).into_iter().flatten().filter_map(|id| self.allocations.get(id))
    }

    fn record(&mut self, event: Event) {
        self.events.push_back(event);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Events recorded after log index `index`.
    pub fn events_after(&self, index: u64) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.index > index)
    }

    pub fn unplaced(&self) -> &BTreeMap<WorkloadName, Unplaced> {
        &self.unplaced
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Records a member added as a learner (with its address) or promoted to voter.
    pub fn add_member(&mut self, id: u64, address: Option<String>, voter: bool) {
        let entry = self.members.entry(id).or_insert_with(|| Member {
            id,
            address: String::new(),
            voter,
            matched: None,
        });
        if let Some(address) = address {
            entry.address = address;
        }
        entry.voter = voter;
    }

    pub fn remove_member(&mut self, id: u64) {
        self.members.remove(&id);
    }
}

fn spec_with_replicas(spec: &flotilla_api::WorkloadSpec, replicas: u32) -> flotilla_api::WorkloadSpec {
    flotilla_api::WorkloadSpec { replicas, ..spec.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::parse_yaml;
    use proptest::prelude::*;

    fn name(i: u8) -> WorkloadName {
        WorkloadName::parse(&format!("w{}", i % 4)).expect("valid name")
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0..8u8, 0..5u32, proptest::option::of(0..3u64), any::<bool>()).prop_map(
                |(i, replicas, version, auto)| {
                    let autoscale = if auto { "autoscale: {min: 1, max: 3, cpu: 50}\n" } else { "" };
                    let yaml =
                        format!("name: {}\nimage: img:{}\nreplicas: {replicas}\n{autoscale}", name(i), i % 2);
                    Command::PutWorkload {
                        spec: parse_yaml(&yaml).expect("valid"),
                        expected_version: version,
                    }
                }
            ),
            (0..8u8, 0..6u32).prop_map(|(i, replicas)| Command::ScaleWorkload { name: name(i), replicas }),
            (0..8u8).prop_map(|i| Command::DeleteWorkload { name: name(i) }),
        ]
    }

    proptest! {
        /// Every server applies the same log, so the same commands must give
        /// the same states and answers; a rejected command changes nothing;
        /// and a snapshot restores exactly what was there.
        #[test]
        fn apply_is_deterministic_rejections_change_nothing_and_snapshots_restore(
            commands in proptest::collection::vec(command(), 1..60)
        ) {
            let mut a = ClusterState::bootstrap(&[(1, "127.0.0.1:1".to_owned())].into());
            let mut b = a.clone();
            for (i, command) in commands.into_iter().enumerate() {
                let index = i as u64 + 2;
                let before = a.clone();
                let versions: BTreeMap<_, _> = a.workloads.iter().map(|(n, w)| (n.clone(), w.version)).collect();
                let result_a = a.apply(index, command.clone());
                let result_b = b.apply(index, command);
                prop_assert_eq!(&result_a, &result_b);
                prop_assert_eq!(&a, &b);
                if result_a.is_err() {
                    prop_assert_eq!(&a, &before);
                }
                for (name, version) in versions {
                    if let Some(w) = a.workloads.get(&name) {
                        prop_assert!(w.version >= version, "versions never go back");
                    }
                }
                let snapshot = serde_json::to_vec(&a).expect("snapshot");
                let restored: ClusterState = serde_json::from_slice(&snapshot).expect("restore");
                prop_assert_eq!(&restored, &a);
            }
        }
    }

    #[test]
    fn deploy_reports_created_updated_and_unchanged() {
        let mut state = ClusterState::default();
        let spec = parse_yaml("name: web\nimage: a\n").expect("valid");
        let changed = parse_yaml("name: web\nimage: b\n").expect("valid");
        let table = [
            (spec.clone(), None, Ok((DeployChange::Created, 1))),
            (spec.clone(), None, Ok((DeployChange::Unchanged, 1))),
            (changed.clone(), Some(1), Ok((DeployChange::Updated, 2))),
            (spec.clone(), Some(1), Err(())),
            (spec, Some(2), Ok((DeployChange::Updated, 3))),
        ];
        for (i, (spec, expected_version, want)) in table.into_iter().enumerate() {
            let got = state.apply(i as u64 + 1, Command::PutWorkload { spec, expected_version });
            let got = match got {
                Ok(CommandOutput::Deployed(r)) => Ok((r.change, r.workload.version)),
                _ => Err(()),
            };
            assert_eq!(got, want, "step {i}");
        }
    }
}
