//! Health on the supervisor's side: starting a running replica's checks,
//! and acting on their verdicts (report a change; restart on a failing
//! liveness check).

use std::sync::Arc;

use flotilla_api::{AllocationState, Health};

use super::Supervisor;
use super::local::{Phase, update};
use crate::health::{CheckChange, HealthWatch, Target};
use crate::runtime::Observed;

impl Supervisor {
    /// Starts checking a replica that runs now. Without checks of its own
    /// or in its image, a running replica is healthy.
    pub(super) fn watch_health(&mut self, id: u64, observed: &Observed) {
        let Some(spec) = self.local.get(&id).map(|l| l.spec.clone()) else { return };
        let env = self.spec_environment(&spec).unwrap_or_default();
        let Some(local) = self.local.get_mut(&id) else { return };
        let Some(runtime) = self.runtimes.get(&local.driver).cloned() else { return };
        let target = Target { runtime, handle: observed.handle.clone(), address: observed.address, env };
        let messages = self.messages.clone();
        if !local.spec.checks.is_empty() {
            let http = self.check_http.clone();
            local.watch =
                Some(HealthWatch::start(id, local.generation, &local.spec.checks, target, http, messages));
        } else if observed.healthcheck {
            local.watch = Some(HealthWatch::image_healthcheck(id, local.generation, target, messages));
        } else {
            local.health = Health::Healthy;
            local.health_output = "running; no checks".into();
        }
    }

    pub(super) fn on_health(&mut self, change: CheckChange) {
        let Some(local) = self.local.get_mut(&change.allocation) else { return };
        if local.generation != change.generation || local.phase != Phase::Running {
            return;
        }
        let Some(watch) = local.watch.as_mut() else { return };
        let (health, restart) = watch.record(change.check, change.health);
        tracing::info!(allocation = change.allocation, %health, output = %change.output, "health changed");
        local.health = health;
        local.health_output = change.output.clone();
        let report = update(local, AllocationState::Running, String::new());
        self.reports.insert(change.allocation, report);
        if restart && local.kill_reason.is_none() {
            local.kill_reason = Some(change.output);
            let (Some(runtime), Some(handle)) =
                (self.runtimes.get(&local.driver).cloned(), local.handle.clone())
            else {
                return;
            };
            let (id, permits) = (change.allocation, Arc::clone(&self.stop_permits));
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                if let Err(error) = runtime.terminate(&handle).await {
                    tracing::warn!(allocation = id, %error, "cannot stop a replica that failed its liveness check");
                }
            });
        }
    }
}
