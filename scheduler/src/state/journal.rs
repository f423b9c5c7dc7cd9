//! What each applied command touched: the workloads and nodes whose
//! reconciliation may now come out differently. The reconciler reads the
//! journal from where its last pass stopped and looks only at what it
//! names (as kube-runtime's controllers work from a queue of changed
//! objects), instead of at the whole state on every pass.
//!
//! The journal is derived from the commands every server applies, so any
//! server that becomes leader has one; it is not part of the state's value
//! (not in snapshots, not compared), and it keeps only the latest entries:
//! a reader that fell behind them is told so and looks at everything.

use std::collections::VecDeque;

use flotilla_api::{AllocationUpdate, WorkloadName};

use super::cluster_state::ClusterState;
use super::command::Command;

/// Entries kept; a reconciler further behind than this does a full pass.
const KEPT: usize = 100_000;

/// Something a command changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    Workload(WorkloadName),
    /// A node itself (its status, capacity or volumes): every workload on
    /// it may plan differently.
    Node(String),
    /// What a node has booked (an allocation placed, stopped or changed on
    /// it): its placement view changes; the allocations' own workloads are
    /// touched beside it.
    Booking(String),
    /// A replica's progress (started, running, its health, its restarts)
    /// changed, but not whether it lives. Rollout verdicts follow it. The
    /// reconciler does not: a workload with nothing to replace plans from
    /// its live replicas alone, and one that rolls out is unsettled and
    /// looked at on every pass anyway. Agents' reports are nearly all of
    /// this kind, and reconciling their workloads for them read every
    /// replica of every reporting workload on each pass.
    Progress(WorkloadName),
}

#[derive(Debug, Clone, Default)]
pub struct ChangeJournal {
    /// (log index, what the command at that index touched), oldest first.
    entries: VecDeque<(u64, Touched)>,
    /// The highest index of an entry dropped to keep the journal short.
    forgotten_through: u64,
}

/// Bookkeeping, not state: two states are equal whatever their journals.
impl PartialEq for ChangeJournal {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What changed after a log index, as far as the journal remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Everything touched after the index, with the latest index seen.
    Since { touched: Vec<Touched>, through: u64 },
    /// The journal no longer reaches back that far: look at everything.
    Forgotten,
}

impl ChangeJournal {
    pub(super) fn record(&mut self, index: u64, touched: Vec<Touched>) {
        for item in touched {
            self.entries.push_back((index, item));
        }
        while self.entries.len() > KEPT {
            if let Some((dropped, _)) = self.entries.pop_front() {
                self.forgotten_through = self.forgotten_through.max(dropped);
            }
        }
    }

    /// The index of the latest command that touched anything (or was
    /// forgotten): a full pass over the state has seen up to here.
    pub fn latest(&self) -> u64 {
        self.entries.back().map_or(self.forgotten_through, |(index, _)| *index)
    }

    /// The nodes themselves (not their bookings) touched after log index
    /// `after`, each as often as touched; `None` if the journal no longer
    /// reaches back that far. Cheaper than `after` for a reader that wants
    /// only these: nothing else is copied.
    pub fn nodes_after(&self, after: u64) -> Option<impl Iterator<Item = &str>> {
        Some(self.entries_after(after)?.filter_map(|touched| match touched {
            Touched::Node(name) => Some(name.as_str()),
            _ => None,
        }))
    }

    /// What was touched after log index `after`.
    pub fn after(&self, after: u64) -> Changes {
        let Some(entries) = self.entries_after(after) else {
            return Changes::Forgotten;
        };
        let touched: Vec<Touched> = entries.cloned().collect();
        let through = self.entries.back().map_or(after, |(index, _)| (*index).max(after));
        Changes::Since { touched, through }
    }

    /// The entries after log index `after`, or `None` if some of them
    /// were dropped.
    fn entries_after(&self, after: u64) -> Option<impl Iterator<Item = &Touched>> {
        if self.forgotten_through > after {
            return None;
        }
        let start = self.entries.partition_point(|(index, _)| *index <= after);
        Some(self.entries.range(start..).map(|(_, touched)| touched))
    }
}

impl ClusterState {
    /// What `command` touches, read before it is applied (it may remove
    /// the allocations it names). Every command is listed, so a new one
    /// must say what it touches.
    pub(super) fn touches(&self, command: &Command) -> Vec<Touched> {
        let workload = |name: &WorkloadName| Touched::Workload(name.clone());
        let node = |name: &str| Touched::Node(name.to_owned());
        let booking = |name: &str| Touched::Booking(name.to_owned());
        let allocation = |id: u64| {
            self.allocations
                .get(&id)
                .map(|a| [Touched::Workload(a.workload.clone()), Touched::Booking(a.node.to_string())])
                .into_iter()
                .flatten()
        };
        match command {
            Command::PutWorkload { spec, .. } => vec![workload(&spec.name)],
            Command::ScaleWorkload { name, .. }
            | Command::DeleteWorkload { name, .. }
            | Command::SetDeploymentStatus { name, .. }
            | Command::Rollout { name, .. }
            | Command::UndoRollout { name, .. } => vec![workload(name)],
            Command::RemoveVolumes { workload: name } => vec![workload(name)],
            Command::AutoscaleWorkload(decision) => vec![workload(&decision.name)],
            Command::VolumesRemoved { node: name, .. } => vec![node(name)],
            Command::RegisterNode { registration } => vec![node(&registration.name)],
            Command::SetNodeStatus { name, .. }
            | Command::MarkNodeDown { name, .. }
            | Command::NodeRecovered { name, .. } => vec![node(name)],
            Command::ApplyPlan { plan } => {
                let mut touched: Vec<Touched> = plan
                    .placements
                    .iter()
                    .flat_map(|p| [workload(&p.workload), booking(&p.node)])
                    .chain(plan.stops.iter().flat_map(|id| allocation(*id)))
                    .chain(plan.unplaced.keys().map(workload))
                    .chain(plan.no_longer_unplaced.iter().map(workload))
                    .collect();
                touched.sort();
                touched.dedup();
                touched
            }
            Command::UpdateAllocations { updates, .. } => {
                let mut touched: Vec<Touched> = updates.iter().flat_map(|u| self.report_touches(u)).collect();
                touched.sort();
                touched.dedup();
                touched
            }
            // Neither placement nor rollouts read these.
            Command::RecordNodeEvents { .. }
            | Command::SetUnservedPorts { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::BootstrapAcl { .. }
            | Command::StartCaRotation { .. }
            | Command::ReissueFromNewCa { .. }
            | Command::FinishCaRotation { .. }
            | Command::PutSecret { .. }
            | Command::DeleteSecret { .. } => Vec::new(),
        }
    }

    /// What one reported change touches: its workload and its node's
    /// booking when the replica stops or starts living (capacity, counts
    /// and ports change); its node's booking when the agent chose host
    /// ports; otherwise only its progress.
    fn report_touches(&self, update: &AllocationUpdate) -> Vec<Touched> {
        let Some(allocation) = self.allocations.get(&update.id) else {
            return Vec::new();
        };
        let (workload, node) = (allocation.workload.clone(), allocation.node.to_string());
        if allocation.state.is_live() != update.state.is_live() {
            return vec![Touched::Workload(workload), Touched::Booking(node)];
        }
        let ports_chosen = update.ports.iter().any(|bound| {
            !allocation.ports.iter().any(|p| {
                p.container == bound.container && p.protocol == bound.protocol && p.host == bound.host
            })
        });
        if ports_chosen {
            vec![Touched::Progress(workload), Touched::Booking(node)]
        } else {
            vec![Touched::Progress(workload)]
        }
    }

    pub fn journal(&self) -> &ChangeJournal {
        &self.journal
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::spec::{Driver, Protocol};
    use flotilla_api::{AllocationState, CpuMillis, MemoryBytes, NodeRegistration, PortBinding, parse_yaml};

    use super::*;
    use crate::state::{Placement, Plan};

    #[test]
    fn a_report_touches_its_workload_only_when_a_replica_starts_or_stops_living() {
        let mut state = ClusterState::default();
        let registration = NodeRegistration {
            name: "n".into(),
            address: String::new(),
            cpu: CpuMillis(1000),
            memory: MemoryBytes(1 << 30),
            labels: Default::default(),
            drivers: [Driver::Docker].into(),
            host_volumes: Default::default(),
        };
        state.apply(1, Command::RegisterNode { registration }).expect("register");
        let spec = parse_yaml("name: web\nimage: x\nports: [{container: 80}]\n").expect("spec");
        state.apply(2, Command::put_workload(spec, 0)).expect("deploy");
        let web = WorkloadName::parse("web").expect("name");
        let unbound = PortBinding { container: 80, host: 0, protocol: Protocol::Tcp };
        let placement = Placement {
            workload: web.clone(),
            replica: 0,
            node: "n".into(),
            version: 1,
            cpu: 100,
            memory: 1 << 20,
            ports: vec![unbound],
        };
        let plan = Plan { placements: vec![placement], ..Plan::default() };
        state.apply(3, Command::ApplyPlan { plan }).expect("plan");
        let bound = PortBinding { host: 30000, ..unbound };
        let (progress, booking) = (Touched::Progress(web.clone()), Touched::Booking("n".into()));
        let lives = Touched::Workload(web);
        let cases = [
            ("started", AllocationUpdate::running(1), vec![progress.clone()]),
            (
                "started on a port it chose",
                AllocationUpdate { ports: vec![bound], ..AllocationUpdate::running(1) },
                vec![booking.clone(), progress.clone()],
            ),
            (
                "restarting",
                AllocationUpdate { state: AllocationState::Restarting, ..AllocationUpdate::running(1) },
                vec![progress],
            ),
            (
                "failed",
                AllocationUpdate { state: AllocationState::Failed, ..AllocationUpdate::running(1) },
                vec![lives.clone(), booking.clone()],
            ),
            ("stopped", AllocationUpdate::stopped(1), vec![lives, booking]),
            ("of an allocation that is not there", AllocationUpdate::running(9), vec![]),
        ];
        for (what, update, expected) in cases {
            let command =
                Command::UpdateAllocations { node: "n".into(), seq: 0, updates: vec![update], now_ms: 0 };
            assert_eq!(state.touches(&command), expected, "{what}");
        }
    }

    #[test]
    fn a_reader_gets_what_came_after_its_index_or_is_told_it_fell_behind() {
        let mut journal = ChangeJournal::default();
        journal.record(3, vec![Touched::Node("a".into())]);
        journal.record(5, vec![Touched::Node("b".into()), Touched::Node("c".into())]);
        assert_eq!(
            journal.after(3),
            Changes::Since {
                touched: vec![Touched::Node("b".into()), Touched::Node("c".into())],
                through: 5
            }
        );
        assert_eq!(journal.after(5), Changes::Since { touched: vec![], through: 5 });
        assert_eq!(journal.after(9), Changes::Since { touched: vec![], through: 9 });
        for index in 10..10 + KEPT as u64 {
            journal.record(index, vec![Touched::Node("d".into())]);
        }
        // The three oldest entries (at 3 and 5) were dropped to keep KEPT.
        assert_eq!(journal.after(4), Changes::Forgotten, "entries after 4 were dropped");
        assert!(matches!(journal.after(5), Changes::Since { ref touched, .. } if touched.len() == KEPT));
        assert_eq!(journal.latest(), 9 + KEPT as u64);
    }

    #[test]
    fn nodes_after_names_the_nodes_touched_and_not_their_bookings() {
        let mut journal = ChangeJournal::default();
        journal.record(3, vec![Touched::Node("a".into())]);
        let web = WorkloadName::parse("web").expect("name");
        journal.record(4, vec![Touched::Booking("b".into()), Touched::Workload(web)]);
        journal.record(5, vec![Touched::Node("c".into()), Touched::Node("a".into())]);
        fn nodes(journal: &ChangeJournal, after: u64) -> Option<Vec<&str>> {
            journal.nodes_after(after).map(Iterator::collect)
        }
        assert_eq!(nodes(&journal, 0), Some(vec!["a", "c", "a"]));
        assert_eq!(nodes(&journal, 3), Some(vec!["c", "a"]));
        assert_eq!(nodes(&journal, 5), Some(vec![]));
        for index in 10..10 + KEPT as u64 {
            journal.record(index, vec![Touched::Progress(WorkloadName::parse("web").expect("name"))]);
        }
        assert_eq!(nodes(&journal, 4), None, "a reader that fell behind is told so");
    }
}
