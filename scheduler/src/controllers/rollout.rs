//! Rollouts: how far a workload's change may go in one reconcile pass, and
//! the verdict on each deployment (successful, failed, waiting for
//! promotion). Both are pure functions of the state and a clock, as the
//! reconciler is; the leader proposes the verdicts as commands.
//!
//! The bounds follow Kubernetes' Deployments (replicas + max_surge at most,
//! replicas - max_unavailable available at least) and Nomad's update block
//! (max_parallel replicas in flight, min_healthy_time, healthy and progress
//! deadlines, canaries, auto-revert).

use flotilla_api::spec::UpdateStrategy;
use flotilla_api::{
    Allocation, AllocationState, Deployment, DeploymentStatus, Health, Workload, WorkloadName,
};

use crate::state::{ClusterState, failing_reason};

/// Whether a replica of the new version counts: running, healthy, and
/// healthy for `min_healthy_time`.
pub fn counted(allocation: &Allocation, update: &UpdateStrategy, now_ms: u64) -> bool {
    allocation.state == AllocationState::Running
        && allocation.health == Health::Healthy
        && allocation
            .healthy_since_ms
            .is_some_and(|since| since + update.min_healthy_time.as_millis() <= now_ms)
}

/// Whether a replica being replaced still serves: it counts against
/// `max_unavailable` when the rollout stops it.
pub fn serving(allocation: &Allocation) -> bool {
    allocation.state == AllocationState::Running && allocation.health != Health::Unhealthy
}

/// What a workload's rollout allows this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing to replace: place what is missing, all at once.
    Settled,
    /// Canaries first, beside the old replicas, until promoted.
    Canary { canary: usize },
    /// Paused, or failed without a revert: nothing is replaced.
    Frozen,
    /// Old replicas are replaced within the update strategy's bounds.
    Rolling,
}

/// Replica counts the step is decided on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub desired: usize,
    /// Live replicas being replaced (older versions, or on draining nodes).
    pub old: usize,
    /// Of those, the ones still serving.
    pub old_serving: usize,
    /// Old replicas asked to stop whose agents have not yet said they did.
    pub old_stopping: usize,
    /// Live replicas of the current version.
    pub new: usize,
    /// Of those, the ones that count (healthy for min_healthy_time).
    pub new_counted: usize,
}

/// What one pass does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub stop_old: usize,
    pub place_new: usize,
    /// If none of `place_new` can be placed (no room to surge, as with a
    /// fixed host port on every node), stop one old replica to make room.
    pub in_place_if_stuck: bool,
}

/// How far the rollout goes this pass.
pub fn step(counts: Counts, update: &UpdateStrategy, mode: Mode) -> Step {
    let Counts { desired, old, old_serving, old_stopping, new, new_counted } = counts;
    let surge = update.max_surge as usize;
    let scale_down = old.saturating_sub(desired);
    match mode {
        Mode::Settled => {
            Step { stop_old: old, place_new: desired.saturating_sub(new), in_place_if_stuck: false }
        }
        Mode::Canary { canary } => Step {
            stop_old: scale_down,
            place_new: canary.min(desired).saturating_sub(new),
            in_place_if_stuck: false,
        },
        Mode::Frozen => Step {
            stop_old: scale_down,
            place_new: desired.saturating_sub(old + new),
            in_place_if_stuck: false,
        },
        Mode::Rolling => {
            let in_flight = new - new_counted.min(new);
            let parallel_room = (update.max_parallel as usize).saturating_sub(in_flight);
            let available = old_serving + new_counted;
            let min_available = desired.saturating_sub(update.max_unavailable as usize);
            let by_availability = available.saturating_sub(min_available).min(parallel_room);
            // Old replicas that do not serve cost no availability (as
            // Kubernetes' cleanup of unhealthy replicas), and free room.
            let not_serving = old - old_serving.min(old);
            let over_total = (old + new).saturating_sub(desired + surge);
            let stop_old = (by_availability + not_serving).max(over_total).min(old);
            let room_total = (desired + surge).saturating_sub(old - stop_old + new);
            let place_new = desired.saturating_sub(new).min(room_total).min(parallel_room);
            let in_place_if_stuck = place_new > 0 && stop_old == 0 && in_flight == 0 && old_stopping == 0;
            Step { stop_old, place_new, in_place_if_stuck }
        }
    }
}

/// The rollout mode of a workload whose replicas include `old` ones.
pub fn mode(state: &ClusterState, workload: &Workload, has_old: bool, has_outdated: bool) -> Mode {
    if !has_old {
        return Mode::Settled;
    }
    match state.current_deployment(workload) {
        Some(d) if d.status == DeploymentStatus::Paused => Mode::Frozen,
        // A failed rollout goes no further; replicas on draining nodes still move.
        Some(d) if d.status == DeploymentStatus::Failed && has_outdated => Mode::Frozen,
        Some(d) if d.status.is_active() && d.canary > 0 && !d.promoted && has_outdated => {
            Mode::Canary { canary: d.canary as usize }
        }
        _ => Mode::Rolling,
    }
}

/// A decision on a deployment, to propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub workload: WorkloadName,
    pub deployment: u64,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
}

/// The verdicts due on every active deployment, and when (ms since the
/// epoch) a verdict may next fall due without any state change: a
/// `min_healthy_time` or a deadline running out. The leader judges
/// incrementally (`rollout_judge`); this whole-state judge is what tests
/// check that one against.
#[cfg(test)]
pub fn judge(state: &ClusterState, now_ms: u64) -> (Vec<Verdict>, Option<u64>) {
    let mut verdicts = Vec::new();
    let mut next: Option<u64> = None;
    for workload in state.workloads() {
        let (verdict, due) = judge_workload(state, workload, now_ms);
        verdicts.extend(verdict);
        if let Some(due) = due {
            next = Some(next.map_or(due, |n| n.min(due)));
        }
    }
    (verdicts, next)
}

/// The verdict due now on the workload's active deployment, if any, and
/// when one may next fall due on its own.
pub fn judge_workload(
    state: &ClusterState,
    workload: &Workload,
    now_ms: u64,
) -> (Option<Verdict>, Option<u64>) {
    let Some(deployment) = state.active_deployment(&workload.spec.name) else { return (None, None) };
    if deployment.to_version != workload.version || deployment.status == DeploymentStatus::Paused {
        return (None, None);
    }
    let (verdict, due) = judge_one(state, workload, deployment, now_ms);
    let verdict = verdict.map(|(status, reason)| Verdict {
        workload: workload.spec.name.clone(),
        deployment: deployment.id,
        status,
        reason,
    });
    (verdict, due)
}

type Judgement = (Option<(DeploymentStatus, Option<String>)>, Option<u64>);

fn judge_one(state: &ClusterState, workload: &Workload, deployment: &Deployment, now_ms: u64) -> Judgement {
    let update = &workload.spec.update;
    let failed = |reason: String| (Some((DeploymentStatus::Failed, Some(reason))), None);
    if let Some(failing) = state.failing_replica(workload) {
        return failed(failing_reason(failing));
    }
    let replicas: Vec<&Allocation> =
        state.workload_allocations(&workload.spec.name).filter(|a| a.is_replica()).collect();
    let new: Vec<&Allocation> =
        replicas.iter().copied().filter(|a| a.version == deployment.to_version).collect();
    // Deadlines count from the placement, or from the resume of a pause.
    let resumed = deployment.resumed_at_ms.unwrap_or(0);
    let placed_at = |a: &Allocation| a.created_at_ms.max(resumed);
    let healthy_deadline = update.healthy_deadline.as_millis();
    let late: Vec<&Allocation> = new
        .iter()
        .copied()
        .filter(|a| a.health != Health::Healthy && placed_at(a) + healthy_deadline <= now_ms)
        .collect();
    if let Some(first) = late.iter().find(|a| !a.health_output.is_empty()).or(late.first()) {
        let what = if first.health_output.is_empty() {
            format!("were not healthy within {}", update.healthy_deadline)
        } else {
            first.health_output.clone()
        };
        return failed(format!("{} of {} new replicas {what}", late.len(), new.len()));
    }
    let min_healthy = update.min_healthy_time.as_millis();
    let counted_now = new.iter().filter(|a| counted(a, update, now_ms)).count();
    let last_progress = new
        .iter()
        .filter(|a| counted(a, update, now_ms))
        .filter_map(|a| a.healthy_since_ms.map(|s| s + min_healthy))
        .fold(deployment.started_at_ms.max(resumed), u64::max);
    let progress_due = last_progress + update.progress_deadline.as_millis();
    if now_ms >= progress_due {
        return failed(format!("no new replica became healthy for {}", update.progress_deadline));
    }
    // When something may change without any report: a healthy replica
    // counts, a deadline passes.
    let due = new
        .iter()
        .filter_map(|a| match a.healthy_since_ms {
            Some(since) if a.health == Health::Healthy => Some(since + min_healthy).filter(|t| *t > now_ms),
            _ => Some(placed_at(a) + healthy_deadline),
        })
        .chain([progress_due])
        .min();
    let desired = workload.spec.replicas as usize;
    let waiting_for_canaries =
        deployment.canary > 0 && !deployment.promoted && deployment.from_version.is_some();
    if waiting_for_canaries {
        let canaries_healthy = counted_now >= (deployment.canary as usize).min(desired);
        if deployment.status == DeploymentStatus::Running && canaries_healthy {
            return (Some((DeploymentStatus::WaitingForPromotion, None)), None);
        }
        return (None, due);
    }
    let old_left = replicas.iter().any(|a| a.version < deployment.to_version);
    if counted_now >= desired && !old_left {
        return (Some((DeploymentStatus::Successful, None)), None);
    }
    (None, due)
}

#[cfg(test)]
mod tests {
    use flotilla_api::{AllocationUpdate, RolloutAction, parse_yaml};

    use super::*;
    use crate::state::{Command, Placement, Plan};

    /// A workload at version 1 (successful, two healthy replicas since t=0)
    /// then version 2 deployed at t=1000 with `update`, whose two replicas
    /// were placed at t=1000 and report `health` (with `output`) at t=2000.
    fn rollout_state(update: &str, health: Option<Health>, output: &str) -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(1, Command::register_docker_node("a", "", 8000, 8 << 30)).expect("node");
        let deploy = |state: &mut ClusterState, index: u64, image: &str| {
            let yaml = format!("name: web\nimage: {image}\nreplicas: 2\nupdate: {update}\n");
            let spec = parse_yaml(&yaml).expect("spec");
            state.apply(index, Command::put_workload(spec, index)).expect("deploy");
        };
        let place = |state: &mut ClusterState, index: u64, version: u64| {
            let placements = (0..2)
                .map(|replica| Placement {
                    workload: WorkloadName::parse("web").expect("name"),
                    replica,
                    node: "a".into(),
                    version,
                    cpu: 100,
                    memory: 64 << 20,
                    ports: Vec::new(),
                })
                .collect();
            state
                .apply(
                    index,
                    Command::ApplyPlan { plan: Plan { placements, now_ms: index, ..Plan::default() } },
                )
                .expect("plan");
        };
        let report = |state: &mut ClusterState, ids: [u64; 2], health: Health, output: &str, at: u64| {
            let updates = ids
                .map(|id| AllocationUpdate {
                    health,
                    health_output: output.into(),
                    ..AllocationUpdate::running(id)
                })
                .to_vec();
            state
                .apply(at, Command::UpdateAllocations { node: "a".into(), seq: 0, updates, now_ms: at })
                .expect("report");
        };
        deploy(&mut state, 0, "v1");
        place(&mut state, 2, 1);
        report(&mut state, [1, 2], Health::Healthy, "", 0);
        let id = state.active_deployment(&WorkloadName::parse("web").expect("name")).map_or(0, |d| d.id);
        let name = WorkloadName::parse("web").expect("name");
        let status = DeploymentStatus::Successful;
        state
            .apply(3, Command::SetDeploymentStatus { name, deployment: id, status, reason: None, now_ms: 3 })
            .expect("v1");
        deploy(&mut state, 1000, "v2");
        place(&mut state, 1000, 2);
        if let Some(health) = health {
            report(&mut state, [3, 4], health, output, 2000);
        }
        state
    }

    #[test]
    fn verdicts_follow_health_min_healthy_time_and_the_deadlines() {
        let strategy = "{min_healthy_time: 1s, healthy_deadline: 5s, progress_deadline: 20s, max_surge: 2}";
        let canary = "{min_healthy_time: 1s, canary: 1, max_surge: 2}";
        let failed = |reason: &'static str| Some((DeploymentStatus::Failed, Some(reason)));
        // (what, update, new replicas' health, output, now, verdict and a word of its reason, next look)
        let table = [
            (
                "healthy, not yet for min_healthy_time",
                strategy,
                Some(Health::Healthy),
                "",
                2500,
                None,
                Some(3000),
            ),
            (
                "healthy long enough, old ones still there",
                strategy,
                Some(Health::Healthy),
                "",
                3000,
                None,
                Some(23_000),
            ),
            ("unknown before the healthy deadline", strategy, None, "", 5999, None, Some(6000)),
            (
                "unhealthy at the healthy deadline",
                strategy,
                Some(Health::Unhealthy),
                "failed check web: GET /healthz -> 500",
                6000,
                failed("2 of 2 new replicas failed check web: GET /healthz -> 500"),
                None,
            ),
            (
                "never answered by the deadline",
                strategy,
                None,
                "",
                6000,
                failed("were not healthy within 5s"),
                None,
            ),
            (
                "canaries healthy: wait for promotion",
                canary,
                Some(Health::Healthy),
                "",
                3000,
                Some((DeploymentStatus::WaitingForPromotion, None)),
                None,
            ),
        ];
        for (what, update, health, output, now, want, next) in table {
            let state = rollout_state(update, health, output);
            let (verdicts, due) = judge(&state, now);
            match (verdicts.first(), want) {
                (None, None) => {}
                (Some(got), Some((status, None))) => {
                    assert_eq!((got.status, &got.reason), (status, &None), "{what}");
                }
                (Some(got), Some((status, Some(reason)))) => {
                    assert_eq!(got.status, status, "{what}");
                    let said = got.reason.clone().unwrap_or_default();
                    assert!(said.contains(reason), "{what}: {said:?} lacks {reason:?}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
            if want.is_none() {
                assert_eq!(due, next, "{what}: when to look again");
            }
        }
    }

    #[test]
    fn deadlines_count_from_the_resume_of_a_pause() {
        let strategy = "{min_healthy_time: 1s, healthy_deadline: 5s, progress_deadline: 20s, max_surge: 2}";
        let mut state = rollout_state(strategy, None, "");
        let name = WorkloadName::parse("web").expect("name");
        for (at, action) in [(2000, RolloutAction::Pause), (30_000, RolloutAction::Resume)] {
            state
                .apply(at, Command::Rollout { name: name.clone(), action, now_ms: at })
                .expect("rollout action");
        }
        let (verdicts, due) = judge(&state, 31_000);
        assert_eq!(verdicts, Vec::new(), "long past both deadlines by the placement, not by the resume");
        assert_eq!(due, Some(35_000), "the healthy deadline, from the resume");
        let (verdicts, _) = judge(&state, 35_000);
        assert_eq!(verdicts.first().map(|v| v.status), Some(DeploymentStatus::Failed));
    }

    #[test]
    fn a_rollout_succeeds_once_every_new_replica_counts_and_no_old_one_is_left() {
        let mut state = rollout_state("{min_healthy_time: 1s, max_surge: 2}", Some(Health::Healthy), "");
        let stops = Plan { stops: vec![1, 2], now_ms: 3000, ..Plan::default() };
        state.apply(3001, Command::ApplyPlan { plan: stops }).expect("stop the old ones");
        let (verdicts, _) = judge(&state, 3000);
        assert_eq!(verdicts.first().map(|v| v.status), Some(DeploymentStatus::Successful));
    }

    fn strategy(parallel: u32, surge: u32, unavailable: u32) -> UpdateStrategy {
        UpdateStrategy {
            max_parallel: parallel,
            max_surge: surge,
            max_unavailable: unavailable,
            ..Default::default()
        }
    }

    #[test]
    fn a_rolling_step_keeps_within_surge_unavailability_and_parallelism() {
        let counts = |desired, old, old_serving, old_stopping, new, new_counted| Counts {
            desired,
            old,
            old_serving,
            old_stopping,
            new,
            new_counted,
        };
        // (what, counts, strategy (parallel, surge, unavailable), stop old, place new, in place if stuck)
        let table = [
            ("surge one: place one extra first", counts(3, 3, 3, 0, 0, 0), (1, 1, 0), 0, 1, true),
            ("surge one: wait while it is not healthy", counts(3, 3, 3, 0, 1, 0), (1, 1, 0), 0, 0, false),
            (
                "surge one: once it counts, one old goes, the next comes",
                counts(3, 3, 3, 0, 1, 1),
                (1, 1, 0),
                1,
                1,
                false,
            ),
            ("stop first: five down, five up", counts(20, 20, 20, 0, 0, 0), (5, 0, 5), 5, 5, false),
            ("stop first: wait for the five", counts(20, 15, 15, 5, 5, 0), (5, 0, 5), 0, 0, false),
            ("parallel three with surge three", counts(9, 9, 9, 0, 0, 0), (3, 3, 0), 0, 3, true),
            (
                "parallel three: one of three counts, one old goes, one more comes",
                counts(9, 9, 9, 0, 3, 1),
                (3, 3, 0),
                1,
                1,
                false,
            ),
            (
                "parallel three: three in flight, nothing more",
                counts(9, 9, 9, 0, 3, 0),
                (3, 3, 0),
                0,
                0,
                false,
            ),
            (
                "an unhealthy old replica goes first, costing nothing",
                counts(3, 3, 2, 0, 1, 1),
                (1, 1, 0),
                1,
                1,
                false,
            ),
            (
                "scale down mid rollout stops old beyond the total",
                counts(2, 4, 4, 0, 1, 0),
                (1, 1, 0),
                2,
                0,
                false,
            ),
            (
                "last old replica goes once the new ones count",
                counts(3, 1, 1, 0, 3, 3),
                (1, 1, 0),
                1,
                0,
                false,
            ),
            (
                "an old replica still stopping holds the in-place fallback",
                counts(1, 0, 0, 1, 0, 0),
                (1, 1, 0),
                0,
                1,
                false,
            ),
        ];
        for (what, counts, (parallel, surge, unavailable), stop_old, place_new, in_place) in table {
            let got = step(counts, &strategy(parallel, surge, unavailable), Mode::Rolling);
            assert_eq!(got, Step { stop_old, place_new, in_place_if_stuck: in_place }, "{what}");
            let live_after = counts.old - got.stop_old + counts.new + got.place_new;
            assert!(
                live_after <= counts.desired + surge as usize || got.place_new == 0,
                "{what}: surge kept"
            );
        }
    }

    #[test]
    fn canary_frozen_and_settled_steps() {
        let update = strategy(1, 1, 0);
        let counts = Counts { desired: 3, old: 3, old_serving: 3, new: 0, ..Counts::default() };
        assert_eq!(step(counts, &update, Mode::Canary { canary: 1 }).place_new, 1);
        assert_eq!(step(Counts { new: 1, ..counts }, &update, Mode::Canary { canary: 1 }).place_new, 0);
        assert_eq!(step(counts, &update, Mode::Frozen), Step::default(), "frozen: nothing moves");
        let lost_one = Counts { old: 2, old_serving: 2, new: 0, ..counts };
        assert_eq!(step(lost_one, &update, Mode::Frozen).place_new, 1, "frozen still restores the count");
        let settled = Counts { desired: 5, new: 2, ..Counts::default() };
        assert_eq!(step(settled, &update, Mode::Settled).place_new, 3, "a first version is placed at once");
    }
}
