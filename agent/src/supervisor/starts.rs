//! Starting allocations, and what the runtime's answer to a start means.

use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeMap;

use flotilla_api::spec::{Driver, EnvValue};
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
        local.out_of_memory_seen = false;
        local.forget_health();
        let report = update(local, AllocationState::Starting, String::new());
        self.reports.insert(id, report);
        let (allocation, spec, handle) = (local.allocation.clone(), local.spec.clone(), local.handle.clone());
        let (messages, permits, node) = (self.messages.clone(), Arc::clone(&self.permits), self.node.clone());
        let metrics = Arc::clone(&self.metrics);
        let inputs = self.environment(&allocation, &spec).and_then(|env| {
            let pull_config = spec.pull_secret.as_deref().map(|name| self.secret_value(name)).transpose()?;
            Ok((env, self.secret_files(&spec)?, pull_config))
        });
        let (env, files, pull_config) = match inputs {
            Ok(inputs) => inputs,
            Err(reason) => {
                let _ = messages.send(Message::Started { allocation: id, result: Err(reason) });
                return;
            }
        };
        let dns = self.directory.as_ref().and_then(|d| d.dns()).filter(|_| spec.driver == Driver::Docker);
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let progress_to = messages.clone();
            let progress = move |message: String| {
                let _ = progress_to.send(Message::StartProgress { allocation: id, message });
            };
            let launch = Launch {
                allocation: &allocation,
                spec: &spec,
                node: &node,
                env: &env,
                dns,
                files: &files,
                pull_config: pull_config.as_deref(),
                progress: &progress,
            };
            let started = Instant::now();
            let restart = handle.is_some();
            let result = match handle {
                Some(handle) => runtime.restart(&handle, launch).await,
                None => runtime.start(launch).await,
            };
            if result.is_ok() {
                metrics.started(&spec.driver.to_string(), restart, started.elapsed());
            }
            let _ =
                messages.send(Message::Started { allocation: id, result: result.map_err(|e| e.to_string()) });
        });
    }

    /// A replica's environment: its allocation id and the services known
    /// now, under what its spec sets (the spec has the last word), with
    /// secrets' values in place of their names.
    fn environment(
        &self,
        allocation: &Allocation,
        spec: &WorkloadSpec,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = self.directory.as_ref().map(|d| d.environment(spec.driver)).unwrap_or_default();
        env.insert("FLOTILLA_ALLOCATION_ID".into(), allocation.id.to_string());
        env.insert("FLOTILLA_WORKLOAD".into(), allocation.workload.to_string());
        env.extend(self.spec_environment(spec)?);
        Ok(env)
    }

    /// The spec's own variables, secrets resolved.
    pub(super) fn spec_environment(&self, spec: &WorkloadSpec) -> Result<BTreeMap<String, String>, String> {
        spec.env
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    EnvValue::Text(text) => text.clone(),
                    EnvValue::Secret { secret } => {
                        String::from_utf8(self.secret_value(secret)?).map_err(|_| {
                            format!("secret `{secret}` is not UTF-8 text, so env.{key} cannot hold it")
                        })?
                    }
                };
                Ok((key.clone(), text))
            })
            .collect()
    }

    /// The files the spec's `secrets` write into the container.
    fn secret_files(&self, spec: &WorkloadSpec) -> Result<Vec<(String, Vec<u8>)>, String> {
        spec.secrets.iter().map(|mount| Ok((mount.path.clone(), self.secret_value(&mount.name)?))).collect()
    }

    fn secret_value(&self, name: &str) -> Result<Vec<u8>, String> {
        self.secrets
            .get(name)
            .and_then(flotilla_api::SecretValue::bytes)
            .ok_or_else(|| format!("secret `{name}` was not delivered to this node"))
    }

    /// Shows how a start goes (`ps`, `deploy --wait`) while it has not ended.
    pub(super) fn on_start_progress(&mut self, id: u64, message: String) {
        let Some(local) = self.local.get(&id).filter(|local| local.phase == Phase::Starting) else { return };
        let report = update(local, AllocationState::Starting, message);
        self.reports.insert(id, report);
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
                if let Some(image) = &observed.image {
                    local.allocation.image_digest = image.digest.clone();
                    if let Some(pulled) = &image.pulled {
                        let name = local.spec.image.as_deref().unwrap_or_default();
                        self.node_events.push(format!("allocation {id}: pulled image {name} ({pulled})"));
                    }
                }
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
                        self.on_exit(id, None);
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
