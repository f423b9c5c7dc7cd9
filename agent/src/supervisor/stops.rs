//! Stopping allocations: what the servers no longer want here, and
//! everything on shutdown when asked to. A stop is done only when the
//! runtime says so: one that races a start waits for the start, and one
//! that fails is tried again with backoff, so nothing is left running
//! untracked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::AllocationState;
use flotilla_api::spec::Driver;

use super::local::{Phase, update};
use super::{Message, Supervisor};

/// First wait before a failed stop is tried again; it doubles up to `STOP_RETRY_MAX`.
const STOP_RETRY_FIRST: Duration = Duration::from_millis(500);
const STOP_RETRY_MAX: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Stops an allocation the servers no longer want here. A running
    /// replica of a service drains first: the servers already mark it
    /// stopping, so every mesh drops it from its pool at once, and it gets
    /// the service's `drain` to finish what it serves before the signal.
    pub(super) fn stop(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        if matches!(local.phase, Phase::Draining(_)) {
            return;
        }
        let drain = local.spec.service.drain.to_std();
        let serves = local.spec.service_ports().next().is_some();
        if local.phase == Phase::Running && serves && !drain.is_zero() {
            tracing::info!(allocation = id, ?drain, "draining before the stop");
            local.phase = Phase::Draining(Instant::now() + drain);
            return;
        }
        self.stop_at_once(id);
    }

    /// Stops an allocation without draining it (its node was lost, so it
    /// is served elsewhere already; or its drain is over).
    pub(super) fn stop_at_once(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        match local.phase {
            Phase::Stopping | Phase::StopRetry { .. } => return,
            // The start call is under way: its answer (see `on_started`)
            // stops whatever it created.
            Phase::Starting => {
                local.phase = Phase::Stopping;
                return;
            }
            _ => {}
        }
        local.phase = Phase::Stopping;
        local.watch = None;
        let (driver, handle) = (local.driver, local.handle.clone());
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match handle {
            Some(handle) => self.spawn_stop(id, driver, handle),
            None => self.stopped(id),
        }
    }

    pub(super) fn spawn_stop(&self, id: u64, driver: Driver, handle: String) {
        let Some(runtime) = self.runtimes.get(&driver).cloned() else { return };
        let (messages, permits) = (self.messages.clone(), Arc::clone(&self.stop_permits));
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = runtime.stop(&handle).await.map_err(|e| e.to_string());
            let _ = messages.send(Message::Stopped { allocation: id, result });
        });
    }

    /// Stops a container found at start-up that is not (or no longer) wanted.
    pub(super) fn stop_found(&mut self, id: u64) {
        if let Some((driver, observed)) = self.found.remove(&id) {
            self.stopping_found.insert(id);
            self.spawn_stop(id, driver, observed.handle);
        }
    }

    /// The runtime's answer to a stop.
    pub(super) fn on_stopped(&mut self, id: u64, result: Result<(), String>) {
        let Err(error) = result else {
            self.stopped(id);
            return;
        };
        let Some(local) = self.local.get_mut(&id) else {
            // A container found at start-up and no longer wanted: the orphan
            // collector finds it again if it is still there.
            tracing::warn!(allocation = id, %error, "stop of a found container failed");
            return;
        };
        let attempts = match local.phase {
            Phase::StopRetry { attempts, .. } => attempts + 1,
            _ => 1,
        };
        let wait = STOP_RETRY_FIRST.saturating_mul(1 << (attempts - 1).min(16)).min(STOP_RETRY_MAX);
        tracing::warn!(allocation = id, %error, attempts, retry_in = ?wait, "stop failed; trying again");
        local.phase = Phase::StopRetry { at: Instant::now() + wait, attempts };
    }

    /// Stops the replicas whose drain is over.
    pub(super) fn end_drains(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .local
            .iter()
            .filter(|(_, l)| matches!(l.phase, Phase::Draining(at) if at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.stop_at_once(id);
        }
    }

    /// Tries again the stops whose retry time has come.
    pub(super) fn retry_stops(&mut self, now: Instant) {
        let due: Vec<(u64, Driver, Option<String>)> = self
            .local
            .iter()
            .filter(|(_, l)| matches!(l.phase, Phase::StopRetry { at, .. } if at <= now))
            .map(|(id, l)| (*id, l.driver, l.handle.clone()))
            .collect();
        for (id, driver, handle) in due {
            match handle {
                Some(handle) => self.spawn_stop(id, driver, handle),
                None => self.stopped(id),
            }
        }
    }

    /// Nothing of the allocation runs any more: forget it, and tell the
    /// servers, which release what it booked.
    pub(super) fn stopped(&mut self, id: u64) {
        self.stopping_found.remove(&id);
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let report = match self.local.remove(&id) {
            Some(local) => update(&local, AllocationState::Stopped, String::new()),
            None => flotilla_api::AllocationUpdate::stopped(id),
        };
        self.reports.insert(id, report);
    }

    /// Stops everything this agent runs (for `flotilla dev` on Ctrl-C).
    pub async fn stop_all(&mut self) {
        for (id, local) in std::mem::take(&mut self.local) {
            if let (Some(runtime), Some(handle)) = (self.runtimes.get(&local.driver), local.handle)
                && let Err(error) = runtime.stop(&handle).await
            {
                tracing::warn!(allocation = id, %error, "stop failed");
            }
        }
    }
}
