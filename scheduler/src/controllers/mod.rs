//! Leader-only control loops. They read the replicated state, decide, and
//! change it only by proposing commands, so a new leader simply picks up
//! where the old one stopped.

pub mod autoscale;
pub mod ca_rotation;
mod due_timers;
pub mod incremental;
pub mod node_health;
pub mod reconcile;
pub mod rollout;
pub mod rollout_judge;

use std::time::Duration;

use crate::metrics::ServerMetrics;
use crate::raft::RaftHandle;
use crate::state::Command;
use incremental::IncrementalReconciler;
use reconcile::ReconcileConfig;
use rollout_judge::RolloutJudge;

/// How often the reconciler looks again when nothing has changed, to pick
/// up what a state change alone does not announce.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// How long the reconciler lets changes pile up before a pass, so that
/// under a stream of writes it runs per batch, not per write.
const COALESCE: Duration = Duration::from_millis(100);

/// Runs a pass's work, which reads the state and may take tens of
/// milliseconds at scale, on a blocking thread rather than on one of the
/// runtime's workers (one per core: two here). On a worker it held up
/// every request queued behind it, agents' heartbeats among them, for as
/// long as it ran; on a thread of its own the kernel shares the cores
/// between it and the workers. `None`: the runtime is shutting down.
pub(crate) async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Some(value),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => None,
    }
}

/// Proposes the rollout verdicts due now; answers the judge back and when
/// a verdict may next fall due on its own (ms since the epoch), or `None`
/// when the runtime is shutting down.
async fn judge_rollouts(raft: &RaftHandle, mut judge: RolloutJudge) -> Option<(RolloutJudge, Option<u64>)> {
    let reader = raft.clone();
    let (mut judge, verdicts, next) = off_the_workers(move || {
        let (verdicts, next) = judge.judge(|| reader.state(), flotilla_api::now_ms());
        (judge, verdicts, next)
    })
    .await?;
    for verdict in verdicts {
        let rollout::Verdict { workload, deployment, status, reason } = verdict;
        tracing::info!(%workload, deployment, %status, ?reason, "rollout verdict");
        let command = Command::SetDeploymentStatus {
            name: workload.clone(),
            deployment,
            status,
            reason,
            now_ms: flotilla_api::now_ms(),
        };
        if let Err(error) = raft.propose(command).await {
            tracing::debug!(%error, "rollout verdict not applied; judged again next pass");
            judge.again(workload);
        }
    }
    Some((judge, next))
}

/// Runs the reconciler and the rollout judge whenever this server leads,
/// until the Raft node stops.
pub async fn run_reconciler(raft: RaftHandle, config: ReconcileConfig) {
    let mut applied = raft.applied_watch();
    let mut reconciler = IncrementalReconciler::default();
    let mut judge = RolloutJudge::default();
    let config = std::sync::Arc::new(config);
    loop {
        let mut recheck = IDLE_RECHECK;
        let mut more = false;
        if !raft.is_leader() {
            reconciler.reset();
            judge.reset();
        } else {
            let Some((judged, due)) = judge_rollouts(&raft, judge).await else { return };
            judge = judged;
            if let Some(due) = due {
                let wait = due.saturating_sub(flotilla_api::now_ms());
                recheck = recheck.min(Duration::from_millis(wait.max(10)));
            }
            // Under the state's read lock: a pass looks at what changed
            // (see `incremental`), so it holds up applying entries briefly.
            let started = std::time::Instant::now();
            let seed = *applied.borrow_and_update();
            let (reader, config) = (raft.clone(), std::sync::Arc::clone(&config));
            let Some((passed, plan)) = off_the_workers(move || {
                let plan = reconciler.pass(&reader.state(), seed, flotilla_api::now_ms(), &config);
                (reconciler, plan)
            })
            .await
            else {
                return;
            };
            reconciler = passed;
            // Out of time with workloads left: the next pass follows as
            // soon as the applies this one held up have gone in.
            more = reconciler.cut_short();
            if more {
                recheck = recheck.min(COALESCE);
            }
            let unchanged = plan.changes_nothing();
            ServerMetrics::observe(&raft.metrics().reconcile_pass_seconds, started.elapsed());
            if !unchanged {
                let placements = plan.placements.len();
                match raft.propose(Command::ApplyPlan { plan }).await {
                    Ok(outcome) => {
                        tracing::debug!(?outcome, placements, "plan applied");
                        if placements > 0 {
                            raft.metrics().placements.inc_by(placements as u64);
                            ServerMetrics::observe(&raft.metrics().placement_seconds, started.elapsed());
                        }
                        // More may be waiting behind the placement budget; a
                        // plan that only updated bookkeeping waits for changes.
                        if placements == 0 && !more {
                            tokio::time::sleep(COALESCE).await;
                        }
                        continue;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "plan not applied; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        }
        // A closed watch means the Raft node stopped: so does the reconciler.
        match tokio::time::timeout(recheck, applied.changed()).await {
            Ok(Err(_)) => return,
            Ok(Ok(())) if !more => tokio::time::sleep(COALESCE).await,
            Ok(Ok(())) | Err(_) => {}
        }
    }
}
