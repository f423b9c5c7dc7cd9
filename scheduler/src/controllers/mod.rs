//! Leader-only control loops. They read the replicated state, decide, and
//! change it only by proposing commands, so a new leader simply picks up
//! where the old one stopped.

pub mod autoscale;
pub mod node_health;
pub mod reconcile;

use std::time::Duration;

use crate::raft::RaftHandle;
use crate::state::Command;
use reconcile::{ReconcileConfig, reconcile};

/// How often the reconciler looks again when nothing has changed, to pick
/// up what a state change alone does not announce.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// How long the reconciler lets changes pile up before a pass: a pass reads
/// the whole state, so under a stream of writes it runs per batch, not per write.
const COALESCE: Duration = Duration::from_millis(100);

/// Runs the reconciler whenever this server leads, until the Raft node stops.
pub async fn run_reconciler(raft: RaftHandle, config: ReconcileConfig) {
    let mut applied = raft.applied_watch();
    loop {
        if raft.is_leader() {
            let (plan, unchanged) = {
                let state = raft.state().planning_copy();
                let seed = *applied.borrow_and_update();
                let plan = reconcile(&state, seed, flotilla_api::now_ms(), &config);
                let unchanged = plan.changes_nothing();
                (plan, unchanged)
            };
            if !unchanged {
                let placements = plan.placements.len();
                match raft.propose(Command::ApplyPlan { plan }).await {
                    Ok(outcome) => {
                        tracing::debug!(?outcome, placements, "plan applied");
                        // More may be waiting behind the placement budget; a
                        // plan that only updated bookkeeping waits for changes.
                        if placements == 0 {
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
        match tokio::time::timeout(IDLE_RECHECK, applied.changed()).await {
            Ok(Err(_)) => return,
            Ok(Ok(())) => tokio::time::sleep(COALESCE).await,
            Err(_) => {}
        }
    }
}
