//! Applying what changes nodes: registrations, an operator's drain and
//! undrain, the leader's down decisions and a node's return.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::{AllocationState, Event, Node, NodeRegistration, NodeStatus};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

/// Events one agent report may add: a runaway agent cannot flush the log.
const MAX_EVENTS_PER_REPORT: usize = 100;

/// Downs within this window count toward flapping.
pub const FLAP_WINDOW_MS: u64 = 10 * 60 * 1000;
/// A node back from its second down within the window is flapping.
pub const FLAPS_TO_HOLD: usize = 2;
/// How long a flapping node gets no new work once it is back.
pub const FLAP_HOLD_MS: u64 = 60 * 1000;

impl ClusterState {
    /// Adds a node, or updates one whose agent registered again. A node that
    /// is down stays down: it comes back by heartbeating with nothing of what
    /// was placed elsewhere. A smaller capacity is recorded as it is; the
    /// reconciler moves away what no longer fits.
    pub(super) fn register_node(&mut self, index: u64, registration: NodeRegistration) -> Node {
        let node = self.nodes.entry(registration.name.as_str().into()).or_insert_with(|| Node {
            name: registration.name.clone(),
            address: String::new(),
            capacity_cpu: registration.cpu,
            capacity_memory: registration.memory,
            labels: BTreeMap::new(),
            drivers: BTreeSet::new(),
            host_volumes: BTreeMap::new(),
            status: NodeStatus::Ready,
            allocated_cpu: 0,
            allocated_memory: 0,
            allocations: 0,
            ready_index: index,
            recent_downs_ms: Vec::new(),
            eligible_at_ms: 0,
            unserved_ports: Vec::new(),
            report_seq: 0,
        });
        node.address = registration.address;
        node.capacity_cpu = registration.cpu;
        node.capacity_memory = registration.memory;
        node.labels = registration.labels;
        node.drivers = registration.drivers;
        node.host_volumes = registration.host_volumes;
        node.ready_index = index;
        node.clone()
    }

    /// An operator's drain or undrain. Neither applies to a node that is
    /// down: only its agent's return makes it ready.
    pub(super) fn set_node_status(
        &mut self,
        index: u64,
        name: &str,
        status: NodeStatus,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status == NodeStatus::Down || status == NodeStatus::Down {
            return Err(Rejection::NodeDown(name.to_owned()));
        }
        node.status = status;
        let node = node.clone();
        self.record_node_event(index, now_ms, name, format!("node is {status}"));
        Ok(CommandOutput::Node(node))
    }

    /// The leader's decision that a node missed its heartbeats, taken on
    /// what it knew of the node at `ready_index`: refused if the node has
    /// registered or come back since, or is already down.
    pub(super) fn mark_node_down(
        &mut self,
        index: u64,
        name: &str,
        ready_index: u64,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status == NodeStatus::Down || node.ready_index != ready_index {
            return Err(Rejection::StaleNodeDecision {
                node: name.to_owned(),
                based_on: ready_index,
                current: node.ready_index,
            });
        }
        node.status = NodeStatus::Down;
        node.recent_downs_ms.retain(|at| now_ms.saturating_sub(*at) < FLAP_WINDOW_MS);
        node.recent_downs_ms.push(now_ms);
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
        self.node_changes.mark(name);
        let node = self.nodes.get(name).cloned().ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        self.record_node_event(index, now_ms, name, "node is down: it missed its heartbeats".to_owned());
        Ok(CommandOutput::Node(node))
    }

    /// A down node's agent heartbeats again and holds nothing that was
    /// placed elsewhere: it is ready again, after a hold if it flaps.
    pub(super) fn node_recovered(
        &mut self,
        index: u64,
        name: &str,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let node = self.nodes.get_mut(name).ok_or_else(|| Rejection::NodeNotFound(name.to_owned()))?;
        if node.status != NodeStatus::Down {
            return Ok(CommandOutput::Node(node.clone()));
        }
        node.status = NodeStatus::Ready;
        node.ready_index = index;
        node.recent_downs_ms.retain(|at| now_ms.saturating_sub(*at) < FLAP_WINDOW_MS);
        let flapping = node.recent_downs_ms.len() >= FLAPS_TO_HOLD;
        let message = if flapping {
            node.eligible_at_ms = now_ms + FLAP_HOLD_MS;
            format!(
                "node is ready again, but went down {} times in {} minutes: no new work for {} s",
                node.recent_downs_ms.len(),
                FLAP_WINDOW_MS / 60_000,
                FLAP_HOLD_MS / 1000
            )
        } else {
            "node is ready again".to_owned()
        };
        let node = node.clone();
        self.record_node_event(index, now_ms, name, message);
        Ok(CommandOutput::Node(node))
    }

    pub(super) fn record_node_events(
        &mut self,
        index: u64,
        node: &str,
        messages: Vec<String>,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        if !self.nodes.contains_key(node) {
            return Err(Rejection::NodeNotFound(node.to_owned()));
        }
        let recorded = messages.len().min(MAX_EVENTS_PER_REPORT);
        for message in messages.into_iter().take(MAX_EVENTS_PER_REPORT) {
            self.record_node_event(index, now_ms, node, message);
        }
        Ok(CommandOutput::EventsRecorded(recorded as u32))
    }

    /// What a node's mesh cannot serve, as its agent reports it.
    pub(super) fn set_unserved_ports(
        &mut self,
        node: &str,
        mut ports: Vec<flotilla_api::UnservedPort>,
    ) -> Result<CommandOutput, Rejection> {
        let entry = self.nodes.get_mut(node).ok_or_else(|| Rejection::NodeNotFound(node.to_owned()))?;
        for port in &mut ports {
            port.node = node.to_owned();
        }
        entry.unserved_ports = ports;
        Ok(CommandOutput::Node(entry.clone()))
    }

    fn record_node_event(&mut self, index: u64, now_ms: u64, node: &str, message: String) {
        self.record(Event { index, at_ms: now_ms, workload: None, node: Some(node.to_owned()), message });
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::spec::Driver;
    use flotilla_api::{AllocationUpdate, CpuMillis, MemoryBytes, NodeRegistration, NodeStatus, parse_yaml};

    use super::*;
    use crate::state::{Command, Placement, Plan};

    fn registration(cpu: u64) -> NodeRegistration {
        NodeRegistration {
            name: "n".into(),
            address: String::new(),
            cpu: CpuMillis(cpu),
            memory: MemoryBytes(1 << 30),
            labels: Default::default(),
            drivers: [Driver::Docker].into(),
            host_volumes: Default::default(),
        }
    }

    /// A cluster with node `n` and one running replica of `web` on it.
    fn one_replica() -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(1, Command::RegisterNode { registration: registration(1000) }).expect("register");
        let spec = parse_yaml("name: web\nimage: x\nresources: {cpu: 500m, memory: 64Mi}\n").expect("spec");
        state.apply(2, Command::put_workload(spec, 0)).expect("deploy");
        let placement = Placement {
            workload: flotilla_api::WorkloadName::parse("web").expect("name"),
            replica: 0,
            node: "n".into(),
            version: 1,
            cpu: 500,
            memory: 64 << 20,
            ports: Vec::new(),
        };
        let plan = Plan { placements: vec![placement], ..Plan::default() };
        state.apply(3, Command::ApplyPlan { plan }).expect("plan");
        let updates = vec![AllocationUpdate::running(1)];
        state
            .apply(4, Command::UpdateAllocations { node: "n".into(), seq: 0, updates, now_ms: 0 })
            .expect("report");
        state
    }

    #[test]
    fn a_report_that_arrives_after_a_later_one_is_refused_and_undoes_nothing() {
        // (what, seq of the late "starting" report, applied)
        let table = [
            ("an earlier report, arriving late", 9, false),
            ("the same report, arriving twice", 10, false),
            ("a later report", 11, true),
            ("an agent that does not number its reports", 0, true),
        ];
        for (what, seq, applied) in table {
            let mut state = one_replica();
            let running = vec![AllocationUpdate { restarts: 1, ..AllocationUpdate::running(1) }];
            let report =
                Command::UpdateAllocations { node: "n".into(), seq: 10, updates: running, now_ms: 0 };
            state.apply(5, report).expect("the report numbered 10");
            let starting =
                AllocationUpdate { state: AllocationState::Starting, ..AllocationUpdate::running(1) };
            let late =
                Command::UpdateAllocations { node: "n".into(), seq, updates: vec![starting], now_ms: 0 };
            let outcome = state.apply(6, late);
            let allocation = state.allocation(1).expect("allocation");
            let node = state.node("n").expect("node");
            if applied {
                assert!(outcome.is_ok(), "{what}: {outcome:?}");
                assert_eq!(allocation.state, AllocationState::Starting, "{what}");
                assert_eq!(node.report_seq, seq.max(10), "{what}");
            } else {
                let expected = Rejection::StaleReport { node: "n".into(), seq, last: 10 };
                assert_eq!(outcome, Err(expected), "{what}");
                assert_eq!((allocation.state, allocation.restarts), (AllocationState::Running, 1), "{what}");
                assert_eq!(node.report_seq, 10, "{what}");
            }
        }
    }

    fn status(state: &ClusterState) -> NodeStatus {
        state.node("n").map(|n| n.status).expect("node")
    }

    #[test]
    fn a_down_decision_is_refused_once_the_node_registered_again_or_is_down_already() {
        // (what, registrations between decision and apply, already down, accepted)
        let table = [
            ("current decision", 0, false, true),
            ("the agent registered since", 1, false, false),
            ("already down", 0, true, false),
        ];
        for (what, registrations, already_down, accepted) in table {
            let mut state = one_replica();
            let seen = state.node("n").map(|n| n.ready_index).expect("node");
            if already_down {
                state
                    .apply(5, Command::MarkNodeDown { name: "n".into(), ready_index: seen, now_ms: 0 })
                    .expect("down");
            }
            for i in 0..registrations {
                state
                    .apply(6 + i, Command::RegisterNode { registration: registration(1000) })
                    .expect("register");
            }
            let before = state.clone();
            let result =
                state.apply(10, Command::MarkNodeDown { name: "n".into(), ready_index: seen, now_ms: 0 });
            assert_eq!(result.is_ok(), accepted, "{what}: {result:?}");
            if !accepted {
                assert_eq!(state, before, "{what}: a refused decision changes nothing");
            }
        }
    }

    #[test]
    fn down_loses_replicas_undrain_cannot_revive_it_and_a_second_return_is_held() {
        let mut state = one_replica();
        let down = |state: &mut ClusterState, index: u64, now_ms: u64| {
            let ready_index = state.node("n").map(|n| n.ready_index).expect("node");
            state
                .apply(index, Command::MarkNodeDown { name: "n".into(), ready_index, now_ms })
                .expect("down");
        };
        down(&mut state, 5, 1_000);
        assert_eq!(state.allocations().next().map(|a| a.state), Some(AllocationState::Lost));
        assert_eq!(state.node("n").map(|n| n.allocated_cpu), Some(0), "lost replicas release their node");
        let undrain = Command::SetNodeStatus { name: "n".into(), status: NodeStatus::Ready, now_ms: 2_000 };
        assert_eq!(state.apply(6, undrain), Err(Rejection::NodeDown("n".into())));
        let register = Command::RegisterNode { registration: registration(1000) };
        state.apply(7, register).expect("register");
        assert_eq!(status(&state), NodeStatus::Down, "registering does not make a down node ready");

        state.apply(8, Command::NodeRecovered { name: "n".into(), now_ms: 3_000 }).expect("back");
        assert_eq!(status(&state), NodeStatus::Ready);
        assert_eq!(state.node("n").map(|n| n.eligible_at_ms), Some(0), "one down is no flapping");
        down(&mut state, 9, 4_000);
        state.apply(10, Command::NodeRecovered { name: "n".into(), now_ms: 5_000 }).expect("back");
        assert_eq!(
            state.node("n").map(|n| n.eligible_at_ms),
            Some(5_000 + FLAP_HOLD_MS),
            "held after flapping"
        );
        let view = |now_ms| state.node_view("n", now_ms).map(|v| v.held);
        assert_eq!((view(5_001), view(5_000 + FLAP_HOLD_MS)), (Some(true), Some(false)));
        // Downs older than the window are forgotten.
        down(&mut state, 11, 5_000 + FLAP_WINDOW_MS + 1);
        state
            .apply(12, Command::NodeRecovered { name: "n".into(), now_ms: 6_000 + FLAP_WINDOW_MS })
            .expect("back");
        assert_eq!(state.node("n").map(|n| n.recent_downs_ms.len()), Some(1));
    }

    #[test]
    fn a_stopping_replica_stays_booked_until_its_agent_reports_it_stopped() {
        let mut state = one_replica();
        let plan = Plan { stops: vec![1], ..Plan::default() };
        state.apply(5, Command::ApplyPlan { plan }).expect("stop");
        let allocation = state.allocations().next().cloned().expect("allocation");
        assert!(allocation.stopping && allocation.state.is_live() && !allocation.is_replica());
        assert_eq!(state.node("n").map(|n| n.allocated_cpu), Some(500));
        // Agents do not report pending or lost: those are the servers' words.
        let lost = vec![AllocationUpdate { state: AllocationState::Lost, ..AllocationUpdate::running(1) }];
        state
            .apply(6, Command::UpdateAllocations { node: "n".into(), seq: 0, updates: lost, now_ms: 0 })
            .expect("report");
        assert_eq!(state.allocations().next().map(|a| a.state), Some(AllocationState::Running));
        let stopped = vec![AllocationUpdate::stopped(1)];
        state
            .apply(7, Command::UpdateAllocations { node: "n".into(), seq: 0, updates: stopped, now_ms: 0 })
            .expect("report");
        assert_eq!(state.node("n").map(|n| n.allocated_cpu), Some(0));
    }

    #[test]
    fn a_node_registering_smaller_than_its_bookings_is_overcommitted() {
        let mut state = one_replica();
        state.apply(5, Command::RegisterNode { registration: registration(400) }).expect("register");
        let node = state.node("n").cloned().expect("node");
        assert_eq!(node.capacity_cpu, CpuMillis(400), "the smaller capacity is recorded as it is");
        assert!(node.is_overcommitted());
    }
}
