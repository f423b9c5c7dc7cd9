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

use flotilla_api::WorkloadName;

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

    /// What was touched after log index `after`.
    pub fn after(&self, after: u64) -> Changes {
        if self.forgotten_through > after {
            return Changes::Forgotten;
        }
        let start = self.entries.partition_point(|(index, _)| *index <= after);
        let touched: Vec<Touched> = self.entries.range(start..).map(|(_, t)| t.clone()).collect();
        let through = self.entries.back().map_or(after, |(index, _)| (*index).max(after));
        Changes::Since { touched, through }
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
                .map(|a| [Touched::Workload(a.workload.clone()), Touched::Booking(a.node.clone())])
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
            Command::UpdateAllocations { node: name, updates, .. } => {
                let mut touched: Vec<Touched> = std::iter::once(booking(name))
                    .chain(updates.iter().flat_map(|u| allocation(u.id)))
                    .collect();
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

    pub fn journal(&self) -> &ChangeJournal {
        &self.journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
