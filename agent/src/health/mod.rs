//! Health checks on this node's replicas: one task per check of each
//! running replica, which reports to the supervisor only when the check's
//! verdict changes. A replica is healthy when all its checks are, unhealthy
//! when any is; without checks, a Docker image's own HEALTHCHECK decides,
//! and without either a running replica is healthy.

mod probe;
mod tracker;

use std::time::{Duration, Instant};

use flotilla_api::Health;
use flotilla_api::spec::{Check, OnFailure};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use probe::{Target, probe};
pub use tracker::CheckTracker;

use crate::supervisor::Message;

/// How often an image's own HEALTHCHECK status is read from the engine.
const IMAGE_HEALTH_POLL: Duration = Duration::from_secs(1);

/// A check's verdict changed.
#[derive(Debug, Clone)]
pub struct CheckChange {
    pub allocation: u64,
    /// Which start of the allocation the check ran against: a change from
    /// an earlier start is stale.
    pub generation: u64,
    pub check: usize,
    pub health: Health,
    pub output: String,
}

/// The check tasks of one running replica; dropping it stops them.
#[derive(Debug, Default)]
pub struct HealthWatch {
    tasks: Vec<JoinHandle<()>>,
    /// Each check's verdict, and whether it restarts the replica when it fails.
    pub verdicts: Vec<(Health, OnFailure)>,
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl HealthWatch {
    /// Starts checking a replica that has just started running.
    pub fn start(
        allocation: u64,
        generation: u64,
        checks: &[Check],
        target: Target,
        http: reqwest::Client,
        messages: mpsc::UnboundedSender<Message>,
    ) -> Self {
        let started = Instant::now();
        let tasks = checks
            .iter()
            .enumerate()
            .map(|(index, check)| {
                let (check, target, http, messages) =
                    (check.clone(), target.clone(), http.clone(), messages.clone());
                tokio::spawn(async move {
                    let mut tracker = CheckTracker::new(&check, started);
                    let mut interval = tokio::time::interval_at(
                        tokio::time::Instant::now() + check.interval.to_std(),
                        check.interval.to_std(),
                    );
                    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        interval.tick().await;
                        let (passed, detail) = probe(&check, &target, &http).await;
                        let Some(health) = tracker.record(passed, Instant::now()) else { continue };
                        let verb = if passed { "passed" } else { "failed" };
                        let output = format!("{verb} check {}: {detail}", check.name);
                        let change = CheckChange { allocation, generation, check: index, health, output };
                        if messages.send(Message::Health(change)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let verdicts = checks.iter().map(|c| (Health::Unknown, c.on_failure)).collect();
        HealthWatch { tasks, verdicts }
    }

    /// Follows a Docker image's own HEALTHCHECK, as the engine reports it.
    pub fn image_healthcheck(
        allocation: u64,
        generation: u64,
        target: Target,
        messages: mpsc::UnboundedSender<Message>,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut last = Health::Unknown;
            let mut interval = tokio::time::interval(IMAGE_HEALTH_POLL);
            loop {
                interval.tick().await;
                let Some((health, output)) = target.runtime.image_health(&target.handle).await else {
                    continue;
                };
                if health != last {
                    last = health;
                    let output = format!("image HEALTHCHECK: {output}");
                    let change = CheckChange { allocation, generation, check: 0, health, output };
                    if messages.send(Message::Health(change)).is_err() {
                        return;
                    }
                }
            }
        });
        HealthWatch { tasks: vec![task], verdicts: vec![(Health::Unknown, OnFailure::Unready)] }
    }

    /// Records a check's change; answers the replica's health, and whether
    /// a failing liveness check asks for a restart.
    pub fn record(&mut self, check: usize, health: Health) -> (Health, bool) {
        let Some(verdict) = self.verdicts.get_mut(check) else { return (self.health(), false) };
        verdict.0 = health;
        let restart = health == Health::Unhealthy && verdict.1 == OnFailure::Restart;
        (self.health(), restart)
    }

    /// All checks healthy: healthy; any unhealthy: unhealthy; else unknown.
    pub fn health(&self) -> Health {
        if self.verdicts.iter().any(|(h, _)| *h == Health::Unhealthy) {
            Health::Unhealthy
        } else if self.verdicts.iter().all(|(h, _)| *h == Health::Healthy) {
            Health::Healthy
        } else {
            Health::Unknown
        }
    }
}

/// The HTTP client checks use: never through a proxy (replicas are local).
pub fn check_client() -> reqwest::Client {
    let builder = reqwest::Client::builder().no_proxy();
    // Checks speak plain HTTP; a configuration that trusts nothing keeps
    // reqwest from looking for the system's CAs (a container has none).
    let builder = match flotilla_security::plain_client_config() {
        Ok(config) => builder.tls_backend_preconfigured(config),
        Err(_) => builder,
    };
    builder.build().unwrap_or_default()
}
