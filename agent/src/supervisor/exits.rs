//! Exits: learning how an allocation ended, and deciding by its restart
//! policy whether and when it starts again.

use std::time::Instant;

use flotilla_api::AllocationState;
use flotilla_api::spec::Driver;

use super::Supervisor;
use super::local::{Phase, update};
use crate::restart::Decision;

impl Supervisor {
    pub(super) async fn on_exit(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        if local.phase == Phase::Starting {
            local.exit_seen_while_starting = true;
            return;
        }
        if local.phase != Phase::Running {
            return;
        }
        let (Some(runtime), Some(handle)) = (self.runtimes.get(&local.driver).cloned(), local.handle.clone())
        else {
            return;
        };
        let observed = match runtime.inspect(&handle).await {
            Ok(observed) => observed,
            Err(error) => {
                tracing::warn!(allocation = id, %error, "cannot inspect an exited allocation");
                None
            }
        };
        if observed.as_ref().is_some_and(|o| o.running) {
            return;
        }
        let (exit_code, oom) = observed.map_or((None, false), |o| (o.exit_code, o.oom_killed));
        let message = if oom { "killed: out of memory".to_owned() } else { String::new() };
        self.after_exit(id, exit_code, oom, message);
    }

    /// Decides what follows an exit (or a failed start) and reports it.
    pub(super) fn after_exit(&mut self, id: u64, exit_code: Option<i64>, oom_killed: bool, message: String) {
        let restart = self.restart.clone();
        let Some(local) = self.local.get_mut(&id) else { return };
        let ran_for = local.started_at.elapsed();
        let now = Instant::now();
        let decision = local.tracker.on_exit(local.spec.restart, exit_code, ran_for, now, &restart);
        if let Some(directory) = &self.directory {
            directory.eject(id);
        }
        local.forget_health();
        let message = match local.kill_reason.take() {
            Some(reason) if message.is_empty() => format!("stopped: {reason}"),
            Some(reason) => format!("stopped: {reason}; {message}"),
            None => message,
        };
        if exit_code.is_some() || oom_killed {
            local.last_exit = exit_code;
            local.oom_killed = oom_killed;
        }
        tracing::info!(allocation = id, ?exit_code, oom_killed, ?decision, "allocation exited");
        let (state, phase, message) = match decision {
            Decision::RestartAfter(delay) => {
                let note = format!(
                    "exited ({}); restarting in {:.1}s",
                    exit_text(exit_code, oom_killed),
                    delay.as_secs_f64()
                );
                let message = if message.is_empty() { note } else { format!("{message}; {note}") };
                (AllocationState::Restarting, Phase::Backoff(now + delay), message)
            }
            Decision::Complete => (AllocationState::Complete, Phase::Done, message),
            Decision::Failed => {
                let note = format!("failed {} times within {:?}", restart.max_failures + 1, restart.window);
                (
                    AllocationState::Failed,
                    Phase::Done,
                    if message.is_empty() { note } else { format!("{message}; {note}") },
                )
            }
        };
        local.phase = phase;
        let mut report = update(local, state, message);
        if let Phase::Backoff(at) = phase {
            report.next_restart_at_ms =
                Some(flotilla_api::now_ms() + at.saturating_duration_since(now).as_millis() as u64);
        }
        self.reports.insert(id, report);
        if phase == Phase::Done {
            self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }

    /// Compares with a fresh list after the event stream broke.
    pub(super) async fn resync(&mut self) {
        let running: Vec<(u64, Driver)> = self
            .local
            .iter()
            .filter(|(_, l)| l.phase == Phase::Running)
            .map(|(id, l)| (*id, l.driver))
            .collect();
        for (id, _) in running {
            self.on_exit(id).await;
        }
    }
}

fn exit_text(exit_code: Option<i64>, oom_killed: bool) -> String {
    match (exit_code, oom_killed) {
        (_, true) => "out of memory".to_owned(),
        (Some(code), false) => format!("code {code}"),
        (None, false) => "unknown code".to_owned(),
    }
}
