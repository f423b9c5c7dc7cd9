//! The rollout judge, incremental: it judges the deployments of the
//! workloads the change journal names since its last pass (and of those on
//! a node that changed), and those whose timer has come, instead of every
//! active deployment on every pass: a thousand rollouts in progress are
//! each judged when something about them changed, not a thousand times a
//! second. A full pass runs first, after the journal forgot what the judge
//! had not read, and every [`FULL_RESYNC`], as the reconciler's does.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::time::Instant;

use flotilla_api::WorkloadName;

use super::due_timers::DueTimers;
use super::incremental::FULL_RESYNC;
use super::rollout::{Verdict, judge_workload};
use crate::state::{Changes, ClusterState, Touched};

#[derive(Debug, Default)]
pub struct RolloutJudge {
    /// The journal index the last pass read through.
    cursor: u64,
    /// When the last full pass ran; `None`: never, or reset.
    last_full: Option<Instant>,
    /// Workloads whose verdict may fall due on its own (a minimum healthy
    /// time or a deadline running out), by when (ms since the epoch).
    timers: DueTimers,
    /// Workloads to judge again whatever the journal says: a verdict that
    /// was not applied.
    again: BTreeSet<WorkloadName>,
}

impl RolloutJudge {
    /// The verdicts due now, and when one may next fall due on its own.
    /// `state` gives a read of the state. It is called once to learn which
    /// workloads to judge (from the journal, cheaply), then once for each,
    /// so that a caller behind a lock holds it for one workload's replicas
    /// at a time: judging a thousand deploying workloads read a million
    /// replicas under one read lock.
    pub fn judge<S: Deref<Target = ClusterState>>(
        &mut self,
        state: impl Fn() -> S,
        now_ms: u64,
    ) -> (Vec<Verdict>, Option<u64>) {
        let names = self.workloads_to_judge(&state(), now_ms);
        let verdicts = names.into_iter().filter_map(|name| self.judge_one(&state(), name, now_ms)).collect();
        (verdicts, self.timers.next())
    }

    /// The workloads to judge now: those the journal names since the last
    /// pass, those whose timer came, those judged again.
    fn workloads_to_judge(&mut self, state: &ClusterState, now_ms: u64) -> BTreeSet<WorkloadName> {
        let full_due = self.last_full.is_none_or(|at| at.elapsed() >= FULL_RESYNC);
        let changes = if full_due { Changes::Forgotten } else { state.journal().after(self.cursor) };
        let mut names: BTreeSet<WorkloadName> = match changes {
            Changes::Forgotten => {
                self.last_full = Some(Instant::now());
                self.cursor = state.journal().latest();
                self.timers.clear();
                state.workloads().map(|w| w.spec.name.clone()).collect()
            }
            Changes::Since { touched, through } => {
                self.cursor = through;
                let mut names = BTreeSet::new();
                for item in touched {
                    match item {
                        Touched::Workload(name) | Touched::Progress(name) => {
                            names.insert(name);
                        }
                        // A node lost or drained changes its replicas' workloads.
                        Touched::Node(node) => {
                            names.extend(state.node_allocations(&node).map(|a| a.workload.clone()))
                        }
                        Touched::Booking(_) => {}
                    }
                }
                names.extend(self.timers.due(now_ms).cloned());
                names
            }
        };
        names.append(&mut self.again);
        names
    }

    /// Judges one workload named by [`Self::workloads_to_judge`], setting its timer.
    fn judge_one(&mut self, state: &ClusterState, name: WorkloadName, now_ms: u64) -> Option<Verdict> {
        self.timers.remove(&name);
        let workload = state.workload_ref(&name)?;
        let (verdict, due) = judge_workload(state, workload, now_ms);
        if let Some(due) = due {
            self.timers.set(name, due);
        }
        verdict
    }

    /// The verdict on `workload` was not applied: judge it again next pass.
    pub fn again(&mut self, workload: WorkloadName) {
        self.again.insert(workload);
    }

    /// Forgets everything: this server stopped leading, and judges afresh
    /// when it leads again.
    pub fn reset(&mut self) {
        *self = RolloutJudge::default();
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::{DeploymentStatus, parse_yaml};

    use super::*;
    use crate::state::Command;

    const MINUTE: u64 = 60_000;

    /// A deploy with nowhere to place its replicas: its deployment waits,
    /// and fails once its progress deadline (10 minutes) runs out.
    fn stuck_deploy(state: &mut ClusterState, index: u64, name: &str) {
        let spec = parse_yaml(&format!("name: {name}\nimage: x\nreplicas: 2\n")).expect("spec");
        state.apply(index, Command::put_workload(spec, 0)).expect("deploy");
    }

    #[test]
    fn a_deadline_running_out_is_judged_with_nothing_else_changed() {
        let mut state = ClusterState::default();
        stuck_deploy(&mut state, 1, "web");
        let mut judge = RolloutJudge::default();
        let (verdicts, next) = judge.judge(|| &state, MINUTE);
        assert!(verdicts.is_empty());
        assert_eq!(next, Some(10 * MINUTE), "the progress deadline");
        // The journal is quiet; only the timer brings the workload back.
        let (verdicts, _) = judge.judge(|| &state, 10 * MINUTE);
        assert_eq!(verdicts.len(), 1);
        assert_eq!((verdicts[0].workload.as_str(), verdicts[0].status), ("web", DeploymentStatus::Failed));
    }

    #[test]
    fn a_verdict_not_applied_is_judged_again_and_a_new_change_is_seen() {
        let mut state = ClusterState::default();
        stuck_deploy(&mut state, 1, "web");
        let mut judge = RolloutJudge::default();
        let (verdicts, _) = judge.judge(|| &state, 10 * MINUTE);
        assert_eq!(verdicts.len(), 1, "failed at the deadline");
        let (verdicts, _) = judge.judge(|| &state, 10 * MINUTE);
        assert!(verdicts.is_empty(), "judged once: the verdict is the leader's to propose");
        judge.again(workload_name("web"));
        assert_eq!(judge.judge(|| &state, 10 * MINUTE).0.len(), 1, "the proposal failed: judged again");
        stuck_deploy(&mut state, 2, "api");
        let (verdicts, _) = judge.judge(|| &state, 10 * MINUTE);
        let judged: Vec<&str> = verdicts.iter().map(|v| v.workload.as_str()).collect();
        assert_eq!(judged, ["api"], "the new deploy is judged; web, unchanged and untimed, is not");
    }

    fn workload_name(name: &str) -> WorkloadName {
        WorkloadName::parse(name).expect("name")
    }
}
