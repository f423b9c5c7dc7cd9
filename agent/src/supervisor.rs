//! The supervisor: this node's reconciler. It compares the allocations the
//! servers want here with what the runtimes run, and acts until they match:
//! it starts what is missing, stops what is no longer wanted, adopts what a
//! previous run of the agent left running, and restarts what exits, by the
//! restart policy and with backoff.
//!
//! It is one task that owns all its state; slow runtime calls (starting or
//! stopping a container) run as their own tasks and report back as messages,
//! so one slow container never holds up the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flotilla_api::spec::Driver;
use flotilla_api::{Allocation, AllocationState, AllocationUpdate, NodeAllocations, WorkloadSpec};
use tokio::sync::{Semaphore, mpsc};

use crate::restart::{Decision, RestartConfig, RestartTracker};
use crate::runtime::{Launch, Observed, Runtime, RuntimeEvent};

/// Containers started (or stopped) at once; the engine slows down past a few.
const PARALLEL_RUNTIME_CALLS: usize = 8;

/// Where each running allocation is, for the logs endpoint and usage sampling.
pub type Handles = Arc<Mutex<HashMap<u64, (Driver, String)>>>;

pub enum Message {
    Desired(NodeAllocations),
    Runtime(RuntimeEvent),
    Started { allocation: u64, result: Result<Observed, String> },
    Stopped { allocation: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Starting,
    Running,
    /// Exited; starts again at this instant.
    Backoff(Instant),
    Stopping,
    /// Complete or failed: nothing more to do until the servers remove it.
    Done,
}

struct Local {
    allocation: Allocation,
    spec: WorkloadSpec,
    driver: Driver,
    handle: Option<String>,
    phase: Phase,
    tracker: RestartTracker,
    started_at: Instant,
    /// How it last exited, reported until it exits again.
    last_exit: Option<i64>,
    oom_killed: bool,
    /// An exit event arrived while it was still starting (a command that
    /// exits at once can beat the start call's answer); checked once started.
    exit_seen_while_starting: bool,
}

pub struct Supervisor {
    node: String,
    runtimes: HashMap<Driver, Arc<Runtime>>,
    restart: RestartConfig,
    local: BTreeMap<u64, Local>,
    /// What the runtimes ran when the agent started, until the servers say
    /// whether each is still wanted (adopt) or not (stop).
    found: HashMap<u64, (Driver, Observed)>,
    reports: BTreeMap<u64, AllocationUpdate>,
    handles: Handles,
    messages: mpsc::UnboundedSender<Message>,
    permits: Arc<Semaphore>,
}

fn update(local: &Local, state: AllocationState, message: String) -> AllocationUpdate {
    AllocationUpdate {
        id: local.allocation.id,
        state,
        restarts: local.tracker.restarts,
        exit_code: local.last_exit,
        oom_killed: local.oom_killed,
        message,
        ports: local.allocation.ports.clone(),
    }
}

impl Supervisor {
    pub fn new(
        node: String,
        runtimes: HashMap<Driver, Arc<Runtime>>,
        restart: RestartConfig,
        handles: Handles,
        messages: mpsc::UnboundedSender<Message>,
    ) -> Self {
        Supervisor {
            node,
            runtimes,
            restart,
            local: BTreeMap::new(),
            found: HashMap::new(),
            reports: BTreeMap::new(),
            handles,
            messages,
            permits: Arc::new(Semaphore::new(PARALLEL_RUNTIME_CALLS)),
        }
    }

    /// Lists what the runtimes run for this node, to adopt it.
    pub async fn discover(&mut self) {
        for (driver, runtime) in self.unique_runtimes() {
            match runtime.list(&self.node).await {
                Ok(observed) => {
                    for o in observed {
                        self.found.insert(o.allocation, (driver, o));
                    }
                }
                Err(error) => tracing::warn!(%error, %driver, "cannot list what the runtime runs"),
            }
        }
        tracing::info!(found = self.found.len(), "found existing allocations on this node");
    }

    /// One runtime per distinct object (sim serves every driver).
    fn unique_runtimes(&self) -> Vec<(Driver, Arc<Runtime>)> {
        let mut seen: Vec<(Driver, Arc<Runtime>)> = Vec::new();
        for (driver, runtime) in &self.runtimes {
            if !seen.iter().any(|(_, r)| Arc::ptr_eq(r, runtime)) {
                seen.push((*driver, Arc::clone(runtime)));
            }
        }
        seen
    }

    pub async fn handle(&mut self, message: Message) {
        match message {
            Message::Desired(desired) => self.reconcile(desired),
            Message::Runtime(RuntimeEvent::Exited { allocation }) => self.on_exit(allocation).await,
            Message::Runtime(RuntimeEvent::Resync) => self.resync().await,
            Message::Started { allocation, result } => self.on_started(allocation, result).await,
            Message::Stopped { allocation } => {
                self.local.remove(&allocation);
            }
        }
    }

    fn reconcile(&mut self, desired: NodeAllocations) {
        let specs: HashMap<&str, &flotilla_api::Workload> =
            desired.workloads.iter().map(|w| (w.spec.name.as_str(), w)).collect();
        let wanted: BTreeMap<u64, &Allocation> =
            desired.allocations.iter().filter(|a| a.state.is_live()).map(|a| (a.id, a)).collect();

        let unwanted: Vec<u64> = self.local.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in unwanted {
            self.stop(id);
        }
        let stray: Vec<u64> = self.found.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in stray {
            if let Some((driver, observed)) = self.found.remove(&id) {
                tracing::info!(allocation = id, "stopping a container that is no longer wanted here");
                self.spawn_stop(id, driver, observed.handle);
            }
        }

        for (id, allocation) in wanted {
            if let Some(local) = self.local.get_mut(&id) {
                local.allocation.state = allocation.state;
                continue;
            }
            let Some(workload) = specs.get(allocation.workload.as_str()) else { continue };
            if workload.version != allocation.version {
                // Placed for a spec that has moved on; the servers replace it.
                continue;
            }
            let driver = workload.spec.driver;
            if !self.runtimes.contains_key(&driver) {
                continue;
            }
            let mut local = Local {
                allocation: allocation.clone(),
                spec: workload.spec.clone(),
                driver,
                handle: None,
                phase: Phase::Starting,
                tracker: RestartTracker::new(allocation.restarts),
                started_at: Instant::now(),
                last_exit: allocation.exit_code,
                oom_killed: allocation.oom_killed,
                exit_seen_while_starting: false,
            };
            match self.found.remove(&id) {
                Some((_, observed)) if observed.running => {
                    tracing::info!(allocation = id, "adopted a running container");
                    local.handle = Some(observed.handle.clone());
                    local.phase = Phase::Running;
                    local.allocation.ports = observed.ports.clone();
                    self.handles_insert(id, driver, &observed.handle);
                    if allocation.state != AllocationState::Running {
                        let report = update(&local, AllocationState::Running, String::new());
                        self.reports.insert(id, report);
                    }
                    self.local.insert(id, local);
                }
                Some((_, observed)) => {
                    local.handle = Some(observed.handle);
                    self.local.insert(id, local);
                    self.spawn_start(id);
                }
                None => {
                    self.local.insert(id, local);
                    self.spawn_start(id);
                }
            }
        }
    }

    fn handles_insert(&self, id: u64, driver: Driver, handle: &str) {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (driver, handle.to_owned()));
    }

    fn stop(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        if local.phase == Phase::Stopping {
            return;
        }
        local.phase = Phase::Stopping;
        let (driver, handle) = (local.driver, local.handle.clone());
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match handle {
            Some(handle) => self.spawn_stop(id, driver, handle),
            None => {
                let _ = self.messages.send(Message::Stopped { allocation: id });
            }
        }
    }

    fn spawn_stop(&self, id: u64, driver: Driver, handle: String) {
        let Some(runtime) = self.runtimes.get(&driver).cloned() else { return };
        let (messages, permits) = (self.messages.clone(), Arc::clone(&self.permits));
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            if let Err(error) = runtime.stop(&handle).await {
                tracing::warn!(allocation = id, %error, "stop failed");
            }
            let _ = messages.send(Message::Stopped { allocation: id });
        });
    }

    /// Starts (or, with a handle from an earlier run, restarts) an allocation.
    fn spawn_start(&mut self, id: u64) {
        let Some(local) = self.local.get_mut(&id) else { return };
        let Some(runtime) = self.runtimes.get(&local.driver).cloned() else { return };
        local.phase = Phase::Starting;
        local.exit_seen_while_starting = false;
        let (allocation, spec, handle) = (local.allocation.clone(), local.spec.clone(), local.handle.clone());
        let (messages, permits, node) = (self.messages.clone(), Arc::clone(&self.permits), self.node.clone());
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let launch = Launch { allocation: &allocation, spec: &spec, node: &node };
            let result = match handle {
                Some(handle) => runtime.restart(&handle, launch).await,
                None => runtime.start(launch).await,
            };
            let _ =
                messages.send(Message::Started { allocation: id, result: result.map_err(|e| e.to_string()) });
        });
    }

    async fn on_started(&mut self, id: u64, result: Result<Observed, String>) {
        let Some(local) = self.local.get_mut(&id) else { return };
        if local.phase != Phase::Starting {
            // Stopped while it was starting: make sure nothing is left behind.
            if let Ok(observed) = result {
                let driver = local.driver;
                self.spawn_stop(id, driver, observed.handle);
            }
            return;
        }
        match result {
            Ok(observed) => {
                local.handle = Some(observed.handle.clone());
                local.started_at = Instant::now();
                local.allocation.ports = observed.ports.clone();
                let driver = local.driver;
                self.handles_insert(id, driver, &observed.handle);
                if observed.running {
                    let mut exited_meanwhile = false;
                    if let Some(local) = self.local.get_mut(&id) {
                        local.phase = Phase::Running;
                        exited_meanwhile = std::mem::take(&mut local.exit_seen_while_starting);
                        let report = update(local, AllocationState::Running, String::new());
                        self.reports.insert(id, report);
                    }
                    if exited_meanwhile {
                        self.on_exit(id).await;
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

    async fn on_exit(&mut self, id: u64) {
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
    fn after_exit(&mut self, id: u64, exit_code: Option<i64>, oom_killed: bool, message: String) {
        let restart = self.restart.clone();
        let Some(local) = self.local.get_mut(&id) else { return };
        let ran_for = local.started_at.elapsed();
        let now = Instant::now();
        let decision = local.tracker.on_exit(local.spec.restart, exit_code, ran_for, now, &restart);
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
                (AllocationState::Running, Phase::Backoff(now + delay), message)
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
        let report = update(local, state, message);
        self.reports.insert(id, report);
        if phase == Phase::Done {
            self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }

    /// Compares with a fresh list after the event stream broke.
    async fn resync(&mut self) {
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

    /// Restarts what has waited out its backoff.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .local
            .iter()
            .filter(|(_, l)| matches!(l.phase, Phase::Backoff(at) if at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.spawn_start(id);
        }
    }

    pub fn take_reports(&mut self) -> Vec<AllocationUpdate> {
        std::mem::take(&mut self.reports).into_values().collect()
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

fn exit_text(exit_code: Option<i64>, oom_killed: bool) -> String {
    match (exit_code, oom_killed) {
        (_, true) => "out of memory".to_owned(),
        (Some(code), false) => format!("code {code}"),
        (None, false) => "unknown code".to_owned(),
    }
}
