//! Starting allocations, and what the runtime's answer to a start means.

use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeMap;

use flotilla_api::spec::Driver;
use flotilla_api::{Allocation, AllocationState, WorkloadSpec};

use super::local::{Phase, update};
use super::{Message, Supervisor};
use crate::runtime::{Launch, Observed};

impl Supervisor {
    /// Starts (or, with a handle from an earlier run, restarts) an allocation.
    pub(super) fn spawn_start(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        let Some(runtime) = self.runtimes.get(&local.driver).cloned() else { return };
        local.phase = Phase::Starting;
        local.exit_seen_while_starting = false;
        local.forget_health();
        let report = update(local, AllocationState::Starting, String::new());
        self.reports.insert(id, report);
        let (allocation, spec, handle) = (local.allocation.clone(), local.spec.clone(), local.handle.clone());
        let (messages, permits, node) = (self.messages.clone(), Arc::clone(&self.permits), self.node.clone());
        let env = self.environment(&allocation, &spec);
        let dns = self.directory.as_ref().and_then(|d| d.dns()).filter(|_| spec.driver == Driver::Docker);
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let launch = Launch { allocation: &allocation, spec: &spec, node: &node, env: &env, dns };
            let result = match handle {
                Some(handle) => runtime.restart(&handle, launch).await,
                None => runtime.start(launch).await,
            };
            let _ =
                messages.send(Message::Started { allocation: id, result: result.map_err(|e| e.to_string()) });
        });
    }

    /// A replica's environment: its allocation id and the services known
    /// now, under what its spec sets (the spec has the last word).
    fn environment(&self, allocation: &Allocation, spec: &WorkloadSpec) -> BTreeMap<String, String> {
        let mut env = self.directory.as_ref().map(|d| d.environment(spec.driver)).unwrap_or_default();
        env.insert("FLOTILLA_ALLOCATION_ID".into(), allocation.id.to_string());
        env.insert("FLOTILLA_WORKLOAD".into(), allocation.workload.to_string());
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    pub(super) async fn on_started(&mut self, id: u64, result: Result<Observed, String>) {
        let Some(local) = self.local.get_mut(&id) else { return };
        if local.phase == Phase::Stopping {
            // Asked to stop while it was starting: stop what the start made.
            match result {
                Ok(observed) => {
                    let driver = local.driver;
                    local.handle = Some(observed.handle.clone());
                    self.spawn_stop(id, driver, observed.handle);
                }
                Err(_) => self.stopped(id),
            }
            return;
        }
        if local.phase != Phase::Starting {
            return;
        }
        match result {
            Ok(observed) => {
                local.handle = Some(observed.handle.clone());
                local.started_at = Instant::now();
                local.allocation.ports = observed.ports.clone();
                let driver = local.driver;
                local.allocation.container_address =
                    self.runtimes.get(&driver).and_then(|r| r.container_address(&observed));
                self.handles_insert(id, driver, &observed.handle);
                if observed.running {
                    let mut exited_meanwhile = false;
                    self.watch_health(id, &observed);
                    if let Some(local) = self.local.get_mut(&id) {
                        local.phase = Phase::Running;
                        exited_meanwhile = std::mem::take(&mut local.exit_seen_while_starting);
                        let report = update(local, AllocationState::Running, String::new());
                        self.reports.insert(id, report);
                    }
                    if exited_meanwhile {
                        self.on_exit(id);
                    }
                } else {
                    self.after_exit(id, observed.exit_code, observed.oom_killed, String::new());
                }
            }
            Err(message) => {
                tracing::warn!(allocation = id, %message, "start failed");
                self.after_exit(id, None, false, message);
            }
        }
    }
}
