//! Exits: learning how an allocation ended, and deciding by its restart
//! policy whether and when it starts again.

use std::time::Instant;

use flotilla_api::AllocationState;
use flotilla_api::spec::Driver;

use super::Supervisor;
use super::local::{Phase, update};
use crate::restart::Decision;
use crate::runtime::Observed;

impl Supervisor {
    /// The runtime says a replica exited. Before anything else it leaves
    /// this node's mesh, and the servers hear that its health is unknown (so
    /// every other mesh drops it too). With the exit code in the event, what
    /// follows is decided at once; without, how it ended is learnt by
    /// inspecting it in a task of its own, which a loaded engine can make
    /// slow.
    pub(super) fn on_exit(&mut self, id: u64, exit_code: Option<i64>) {
        let Some(local) = self.local.get_mut(&id) else { return };
        if local.phase == Phase::Starting {
            local.exit_seen_while_starting = true;
            return;
        }
        if local.phase != Phase::Running {
            return;
        }
        if local.health != flotilla_api::Health::Unknown {
            local.health = flotilla_api::Health::Unknown;
            let report = update(local, AllocationState::Running, String::new());
            self.reports.insert(id, report);
        }
        if let Some(directory) = &self.directory {
            directory.eject(id);
        }
        match exit_code {
            Some(code) => {
                let oom = local.out_of_memory_seen;
                let message = if oom { "killed: out of memory".to_owned() } else { String::new() };
                self.after_exit(id, Some(code), oom, message);
            }
            None => self.spawn_inspect(id, true),
        }
    }

    /// The runtime says the kernel killed a replica for its memory: noted
    /// for the exit that follows; or, where the exit came first (and the
    /// replica may be starting again already), that exit was an OOM kill,
    /// said in the pending report or, once that is sent, in the next.
    /// While a start's answer is still on its way, an OOM kill belongs to
    /// that start (a replica can run out of memory before the agent hears
    /// that it started) unless an earlier exit went out without one.
    pub(super) fn on_out_of_memory(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        let explains_an_earlier_exit = local.last_exit.is_some() && !local.oom_killed;
        if local.phase == Phase::Running || (local.phase == Phase::Starting && !explains_an_earlier_exit) {
            local.out_of_memory_seen = true;
            return;
        }
        local.oom_killed = true;
        self.metrics.out_of_memory_kills.inc();
        if let Some(report) = self.reports.get_mut(&id) {
            report.oom_killed = true;
        }
    }

    /// Inspects a running replica in a task of its own; the answer comes
    /// back as `Message::Inspected`.
    fn spawn_inspect(&self, id: u64, exited: bool) {
        let Some(local) = self.local.get(&id) else { return };
        let (Some(runtime), Some(handle)) = (self.runtimes.get(&local.driver).cloned(), local.handle.clone())
        else {
            return;
        };
        let (generation, messages) = (local.generation, self.messages.clone());
        tokio::spawn(async move {
            let result = runtime.inspect(&handle).await.map_err(|e| e.to_string());
            let _ = messages.send(super::Message::Inspected { allocation: id, generation, exited, result });
        });
    }

    /// What inspecting a replica found.
    pub(super) fn on_inspected(
        &mut self,
        id: u64,
        generation: u64,
        exited: bool,
        result: Result<Option<Observed>, String>,
    ) {
        let Some(local) = self.local.get(&id) else { return };
        if local.phase != Phase::Running || local.generation != generation {
            return;
        }
        let observed = result.unwrap_or_else(|error| {
            tracing::warn!(allocation = id, %error, "cannot inspect an allocation");
            None
        });
        if observed.as_ref().is_some_and(|o| o.running) {
            // Running after all. If its exit was reported its health was
            // set aside: checks start over and say it again.
            if exited {
                if let Some(local) = self.local.get_mut(&id) {
                    local.forget_health();
                }
                if let Some(observed) = observed {
                    self.watch_health(id, &observed);
                }
            }
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
        if oom_killed {
            self.metrics.out_of_memory_kills.inc();
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
        match phase {
            Phase::Done => {
                self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            }
            // A first restart waits for nothing: started now, not at the
            // loop's next tick.
            Phase::Backoff(at) if at <= now => self.spawn_start(id),
            _ => {}
        }
    }

    /// Looks at every running replica again after the event stream broke.
    pub(super) fn resync(&mut self) {
        let running: Vec<(u64, Driver)> = self
            .local
            .iter()
            .filter(|(_, l)| l.phase == Phase::Running)
            .map(|(id, l)| (*id, l.driver))
            .collect();
        for (id, _) in running {
            self.spawn_inspect(id, false);
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
