//! The cluster's desired and observed state, and the deterministic `apply`
//! that changes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_api::spec::Protocol;
use flotilla_api::{
    Allocation, AllocationState, Deployment, DeploymentStatus, Event, Member, Node, Workload, WorkloadName,
    WorkloadStatus,
};
use serde::{Deserialize, Serialize};

use super::command::{Command, CommandOutput, Rejection};
use super::idempotency::{AppliedKeys, Idempotency};
use super::plan::Unplaced;
use crate::placement::{NodeView, Request};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub(super) workloads: BTreeMap<WorkloadName, Workload>,
    /// Raft members and their addresses, replicated so that every server,
    /// including one that joins later, knows where its peers listen.
    pub(super) members: BTreeMap<u64, Member>,
    pub(super) nodes: BTreeMap<flotilla_api::NodeName, Node>,
    pub(super) allocations: super::allocation_table::AllocationTable,
    /// Allocation ids by node and by workload, kept in step with `allocations`.
    pub(super) by_node: BTreeMap<flotilla_api::NodeName, BTreeSet<u64>>,
    pub(super) by_workload: BTreeMap<WorkloadName, BTreeSet<u64>>,
    pub(super) next_allocation_id: u64,
    /// Replicas the last plan could not place, and why.
    pub(super) unplaced: BTreeMap<WorkloadName, Unplaced>,
    /// The latest events, oldest first, at most `MAX_EVENTS`.
    pub(super) events: VecDeque<Event>,
    /// Outcomes of the latest writes that carried an idempotency key.
    #[serde(default)]
    pub(super) applied_keys: AppliedKeys,
    /// Each workload's deployments, oldest first, at most `MAX_HISTORY`:
    /// its version history, and its rollout in progress (the last one).
    #[serde(default)]
    pub(super) deployments: BTreeMap<WorkloadName, VecDeque<Deployment>>,
    #[serde(default)]
    pub(super) next_deployment_id: u64,
    /// Each service's ports on every node, by port name.
    #[serde(default)]
    pub(super) service_ports: BTreeMap<WorkloadName, super::services::ServicePorts>,
    /// Where service ports are chosen from: the range the last deploy's
    /// server was given.
    #[serde(default)]
    pub(super) service_port_range: super::services::ServicePortRange,
    /// API and join tokens by id, as hashes.
    #[serde(default)]
    pub(super) tokens: BTreeMap<String, super::tokens::StoredToken>,
    /// Whether `acl bootstrap` has made the management token.
    #[serde(default)]
    pub(super) acl_bootstrapped: bool,
    /// Secrets by name, sealed.
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, super::secrets::StoredSecret>,
    /// The CA since its first rotation, and any rotation in progress.
    #[serde(default)]
    pub(super) ca: super::certificate_authority::CaState,
    /// Each replica slot's named volumes, by Docker volume name: where its
    /// data is, so the slot is placed back there.
    #[serde(default)]
    pub(super) volumes: BTreeMap<String, flotilla_api::SlotVolume>,
    /// What each applied command touched, for the reconciler to work
    /// from: derived from the applies, not part of the state's value.
    #[serde(skip)]
    pub(super) journal: super::journal::ChangeJournal,
    /// When each node's agent view last changed, for agents' long-polls:
    /// derived from the applies, not part of the state's value.
    #[serde(skip)]
    pub(super) node_changes: super::node_changes::NodeChanges,
    /// Each workload's replicas by version and what each node books:
    /// derived from the allocations, kept in step as they change, rebuilt
    /// on restore.
    #[serde(skip)]
    pub(super) tallies: super::tallies::Tallies,
}

/// Restarts after which a replica of a new version counts as failing.
pub const ROLLOUT_FAILING_RESTARTS: u32 = 3;

/// Events kept in the state; older ones are dropped.
const MAX_EVENTS: usize = 1000;

/// What one replica of a workload asks of a node, from its spec.
/// Why a failing replica fails, for a rollout's failure.
pub fn failing_reason(allocation: &Allocation) -> String {
    let what = if allocation.state == AllocationState::Failed { "failed" } else { "keeps failing" };
    format!("replica {} (allocation {}) {what}: {}", allocation.replica, allocation.id, allocation.message)
}

pub fn request_of(workload: &Workload) -> Request {
    let spec = &workload.spec;
    Request {
        cpu: spec.resources.cpu.0,
        memory: spec.resources.memory.0,
        driver: spec.driver,
        constraints: spec.constraints.clone(),
        host_ports: spec.fixed_host_ports().collect(),
        host_volumes: spec.host_volumes().map(|v| (v.name.to_string(), !v.read_only)).collect(),
        avoid_nodes: Default::default(),
        pinned_node: None,
    }
}

/// What one replica slot asks of a node: its workload's request, pinned to
/// the node that holds the slot's volumes while that node is up.
pub fn slot_request(state: &ClusterState, workload: &Workload, slot: u32) -> Request {
    Request {
        pinned_node: state.pinned_node(&workload.spec, slot).map(str::to_owned),
        ..request_of(workload)
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

    /// Applies a committed write at most once per idempotency key: a write
    /// sent again with its key gets the first outcome, and changes nothing.
    pub fn apply_once(
        &mut self,
        index: u64,
        once: Option<Idempotency>,
        command: Command,
    ) -> Result<CommandOutput, Rejection> {
        let Some(once) = once else {
            return self.apply(index, command);
        };
        if let Some(first) = self.applied_keys.replay(&once) {
            return first;
        }
        let result = self.apply(index, command);
        self.applied_keys.remember(once, &result);
        result
    }

    /// Applies a committed command at log `index`. A rejected command leaves
    /// the state exactly as it was.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<CommandOutput, Rejection> {
        let touched = self.touches(&command);
        self.node_changes.applying(index);
        let result = self.apply_command(index, command);
        if result.is_ok() {
            self.journal.record(index, touched);
        }
        result
    }

    fn apply_command(&mut self, index: u64, command: Command) -> Result<CommandOutput, Rejection> {
        match command {
            Command::PutWorkload { spec, expected_version, now_ms, service_ports } => {
                self.put_workload(index, *spec, expected_version, now_ms, service_ports)
            }
            Command::ScaleWorkload { name, replicas } => self.scale_workload(index, name, replicas),
            Command::DeleteWorkload { name, volumes } => self.delete_workload(index, name, volumes),
            Command::RemoveVolumes { workload } => self.remove_kept_volumes(&workload),
            Command::VolumesRemoved { node, volumes } => Ok(self.volumes_removed(&node, volumes)),
            Command::RegisterNode { registration } => {
                Ok(CommandOutput::Node(self.register_node(index, registration)))
            }
            Command::SetNodeStatus { name, status, now_ms } => {
                self.set_node_status(index, &name, status, now_ms)
            }
            Command::MarkNodeDown { name, ready_index, now_ms } => {
                self.mark_node_down(index, &name, ready_index, now_ms)
            }
            Command::NodeRecovered { name, now_ms } => self.node_recovered(index, &name, now_ms),
            Command::RecordNodeEvents { node, messages, now_ms } => {
                self.record_node_events(index, &node, messages, now_ms)
            }
            Command::SetUnservedPorts { node, ports } => self.set_unserved_ports(&node, ports),
            Command::CreateToken { token } => self.create_token(token),
            Command::RevokeToken { id } => self.revoke_token(&id),
            Command::BootstrapAcl { token } => self.bootstrap_acl(token),
            Command::StartCaRotation { rotation } => self.start_ca_rotation(index, rotation),
            Command::ReissueFromNewCa { to_digest, now_ms } => {
                self.reissue_from_new_ca(index, &to_digest, now_ms)
            }
            Command::FinishCaRotation { to_digest, now_ms } => {
                self.finish_ca_rotation(index, &to_digest, now_ms)
            }
            Command::PutSecret { name, sealed, size, now_ms } => {
                self.mark_every_node();
                Ok(self.put_secret(name, sealed, size, now_ms))
            }
            Command::DeleteSecret { name } => {
                let result = self.delete_secret(&name);
                if result.is_ok() {
                    self.mark_every_node();
                }
                result
            }
            Command::AutoscaleWorkload(decision) => self.autoscale_workload(index, decision),
            Command::ApplyPlan { plan } => Ok(CommandOutput::Planned(self.apply_plan(index, plan))),
            Command::SetDeploymentStatus { name, deployment, status, reason, now_ms } => {
                self.set_deployment_status(index, &name, deployment, status, reason, now_ms)
            }
            Command::Rollout { name, action, now_ms } => self.rollout_action(index, &name, action, now_ms),
            Command::UndoRollout { name, to_version, now_ms } => {
                self.undo_rollout(index, &name, to_version, now_ms)
            }
            Command::UpdateAllocations { node, seq, updates, now_ms } => {
                self.update_allocations(index, &node, seq, updates, now_ms)
            }
        }
    }

    /// The node as placement sees it, with what its live allocations book.
    /// `now_ms` tells whether a node back from flapping is still held.
    pub fn node_view(&self, name: &str, now_ms: u64) -> Option<NodeView> {
        let mut view = self.node_capacity_view(name, now_ms)?;
        if let Some(booking) = self.tallies.bookings.of_node(name) {
            view.ports = booking.ports.keys().copied().collect();
            view.workload_counts = booking.replicas.clone();
        }
        Some(view)
    }

    /// A node's view without what only its allocations tell (the host ports
    /// they hold, the replicas per workload): all that checking a placement
    /// without fixed host ports needs, and it reads none of the node's
    /// allocations, which was most of the cost of applying a plan.
    pub fn node_capacity_view(&self, name: &str, now_ms: u64) -> Option<NodeView> {
        let node = self.nodes.get(name)?;
        Some(NodeView {
            name: node.name.clone(),
            status: node.status,
            held: node.eligible_at_ms > now_ms,
            drivers: node.drivers.clone(),
            labels: node.labels.clone(),
            capacity_cpu: node.capacity_cpu.0,
            capacity_memory: node.capacity_memory.0,
            used_cpu: node.allocated_cpu,
            used_memory: node.allocated_memory,
            ports: Default::default(),
            workload_counts: Default::default(),
            host_volumes: node.host_volumes.iter().map(|(name, v)| (name.clone(), v.read_only)).collect(),
        })
    }

    /// The host ports the live allocations on `name` hold.
    pub fn node_ports(&self, name: &str) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.tallies.bookings.of_node(name).into_iter().flat_map(|booking| booking.ports.keys().copied())
    }

    /// The workload with its replicas' status filled in.
    pub fn with_status(&self, mut workload: Workload) -> Workload {
        let mut status = WorkloadStatus::default();
        for (version, counts) in self.tallies.replicas.versions(&workload.spec.name) {
            status.placed += counts.replicas;
            status.running += counts.running;
            status.restarting += counts.restarting;
            if version < workload.version {
                status.outdated += counts.replicas;
            }
        }
        let running_current = self.tallies.replicas.version(&workload.spec.name, workload.version).running;
        let deployment = self.current_deployment(&workload);
        status.rollout_failure = match deployment {
            Some(d) if d.status == DeploymentStatus::Failed => d.reason.clone(),
            Some(d) if !d.status.is_active() => None,
            _ if running_current < workload.spec.replicas => {
                self.failing_replica(&workload).map(failing_reason)
            }
            _ => None,
        };
        status.rollout = deployment.map(|d| d.status);
        if let Some(unplaced) = self.unplaced.get(&workload.spec.name) {
            status.unplaced = unplaced.count;
            status.unplaced_reason = Some(unplaced.reason.clone());
        }
        workload.status = status;
        workload
    }

    /// Whether the kept tallies are what counting every allocation afresh
    /// gives, every workload's status what reading each of its replicas
    /// gives, and every node's view what reading its allocations gives:
    /// for tests that drive the state through plans, reports and node
    /// failures.
    #[cfg(test)]
    pub fn tallies_are_kept(&self) -> bool {
        let fresh = super::tallies::Tallies::of(self.allocations.values());
        self.tallies.same_as(&fresh)
            && self.nodes.keys().all(|name| {
                let Some(view) = self.node_view(name, 0) else { return false };
                let live: Vec<&Allocation> =
                    self.node_allocations(name).filter(|a| a.state.is_live()).collect();
                let ports: std::collections::HashSet<(u16, Protocol)> =
                    live.iter().flat_map(|a| fixed_ports(a)).collect();
                let mut replicas = std::collections::HashMap::new();
                for allocation in live.iter().filter(|a| !a.stopping) {
                    *replicas.entry(allocation.workload.clone()).or_insert(0u32) += 1;
                }
                view.ports == ports && view.workload_counts == replicas
            })
            && self.workloads.values().all(|workload| {
                let status = self.with_status(workload.clone()).status;
                let replicas: Vec<&Allocation> =
                    self.workload_allocations(&workload.spec.name).filter(|a| a.is_replica()).collect();
                let count =
                    |keep: &dyn Fn(&Allocation) -> bool| replicas.iter().filter(|a| keep(a)).count() as u32;
                status.placed == replicas.len() as u32
                    && status.running == count(&|a| a.state == AllocationState::Running)
                    && status.restarting == count(&|a| a.state == AllocationState::Restarting)
                    && status.outdated == count(&|a| a.version < workload.version)
            })
    }

    /// The deployment of the workload's current version, if it is still in the history.
    pub fn current_deployment(&self, workload: &Workload) -> Option<&Deployment> {
        self.deployments.get(&workload.spec.name)?.back().filter(|d| d.to_version == workload.version)
    }

    /// A replica of the workload's current version that keeps failing: one
    /// its agent gave up on, or one restarted `ROLLOUT_FAILING_RESTARTS`
    /// times without staying up. A rollout with one is failed: it goes no
    /// further and the old replicas keep running.
    pub fn failing_replica(&self, workload: &Workload) -> Option<&Allocation> {
        if self.tallies.replicas.version(&workload.spec.name, workload.version).failing == 0 {
            return None;
        }
        self.workload_allocations(&workload.spec.name).filter(|a| a.version == workload.version).find(|a| {
            !a.stopping
                && (a.state == AllocationState::Failed
                    || (a.state == AllocationState::Restarting && a.restarts >= ROLLOUT_FAILING_RESTARTS))
        })
    }

    pub fn workload(&self, name: &str) -> Option<Workload> {
        self.workloads.get(name).map(|w| self.with_status(w.clone()))
    }

    /// The workload as stored, without its status (which costs a look at
    /// every replica).
    pub fn workload_ref(&self, name: &WorkloadName) -> Option<&Workload> {
        self.workloads.get(name)
    }

    pub fn has_workload(&self, name: &WorkloadName) -> bool {
        self.workloads.contains_key(name)
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

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn allocation(&self, id: u64) -> Option<&Allocation> {
        self.allocations.get(&id)
    }

    pub fn node_allocations(&self, node: &str) -> impl Iterator<Item = &Allocation> {
        self.by_node.get(node).into_iter().flatten().filter_map(|id| self.allocation(*id))
    }

    pub fn workload_allocations(&self, workload: &WorkloadName) -> impl Iterator<Item = &Allocation> {
        self.by_workload.get(workload).into_iter().flatten().filter_map(|id| self.allocation(*id))
    }

    pub(super) fn record(&mut self, event: Event) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::{DeployChange, RolloutAction, parse_yaml};
    use proptest::prelude::*;

    fn name(i: u8) -> WorkloadName {
        WorkloadName::parse(&format!("w{}", i % 4)).expect("valid name")
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0..8u8, 0..5u32, proptest::option::of(0..3u64), any::<bool>()).prop_map(
                |(i, replicas, version, auto)| {
                    let autoscale = if auto {
                        "autoscale: {min: 1, max: 3, cpu: 50}\nupdate: {auto_revert: true, canary: 1}\n"
                    } else {
                        ""
                    };
                    let yaml =
                        format!("name: {}\nimage: img:{}\nreplicas: {replicas}\n{autoscale}", name(i), i % 2);
                    Command::PutWorkload {
                        spec: Box::new(parse_yaml(&yaml).expect("valid")),
                        expected_version: version,
                        now_ms: 0,
                        service_ports: None,
                    }
                }
            ),
            (0..8u8, 0..6u32).prop_map(|(i, replicas)| Command::ScaleWorkload { name: name(i), replicas }),
            (0..8u8).prop_map(|i| Command::DeleteWorkload { name: name(i), volumes: i % 2 == 0 }),
            (0..8u8, proptest::option::of(0..4u64)).prop_map(|(i, to_version)| Command::UndoRollout {
                name: name(i),
                to_version,
                now_ms: 0
            }),
            (0..8u8, 0..3u8, 1..4u64, any::<bool>()).prop_map(|(i, action, deployment, good)| {
                if good {
                    let status =
                        if action == 0 { DeploymentStatus::Successful } else { DeploymentStatus::Failed };
                    Command::SetDeploymentStatus {
                        name: name(i),
                        deployment,
                        status,
                        reason: None,
                        now_ms: 0,
                    }
                } else {
                    let action = [RolloutAction::Promote, RolloutAction::Pause, RolloutAction::Resume]
                        [action as usize];
                    Command::Rollout { name: name(i), action, now_ms: 0 }
                }
            }),
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

    proptest! {
        /// Keyed writes: replicas that apply the same keyed log agree; a
        /// write repeated with its key answers its first outcome and
        /// changes nothing; the remembered keys survive a snapshot.
        #[test]
        fn keyed_writes_apply_once_and_deterministically(
            commands in proptest::collection::vec((command(), 0..6u8), 1..60)
        ) {
            let mut a = ClusterState::bootstrap(&[(1, "127.0.0.1:1".to_owned())].into());
            let mut b = a.clone();
            let mut first: BTreeMap<String, (Command, Result<CommandOutput, Rejection>)> = BTreeMap::new();
            for (i, (command, key)) in commands.into_iter().enumerate() {
                let index = i as u64 + 2;
                let key = format!("k{key}");
                let once = Idempotency::new(key.clone(), &command);
                let before = a.clone();
                let result_a = a.apply_once(index, Some(once.clone()), command.clone());
                let result_b = b.apply_once(index, Some(once), command.clone());
                prop_assert_eq!(&result_a, &result_b);
                prop_assert_eq!(&a, &b);
                match first.get(&key) {
                    Some((seen, outcome)) if *seen == command => {
                        prop_assert_eq!(&result_a, outcome);
                        prop_assert_eq!(&a, &before, "a repeat changes nothing");
                    }
                    Some(_) => prop_assert_eq!(result_a, Err(Rejection::IdempotencyKeyReused(key))),
                    None => {
                        first.insert(key, (command, result_a));
                    }
                }
            }
            let restored: ClusterState = serde_json::from_slice(&serde_json::to_vec(&a).expect("snapshot")).expect("restore");
            prop_assert_eq!(&restored, &a);
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
            let got = state.apply(
                i as u64 + 1,
                Command::PutWorkload {
                    spec: Box::new(spec),
                    expected_version,
                    now_ms: 0,
                    service_ports: None,
                },
            );
            let got = match got {
                Ok(CommandOutput::Deployed(r)) => Ok((r.change, r.workload.version)),
                _ => Err(()),
            };
            assert_eq!(got, want, "step {i}");
        }
    }
}
