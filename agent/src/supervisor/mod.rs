//! The supervisor: this node's reconciler. It compares the allocations the
//! servers want here with what the runtimes run, and acts until they match:
//! it starts what is missing, stops what is no longer wanted, adopts what a
//! previous run of the agent left running, and restarts what exits, by the
//! restart policy and with backoff.
//!
//! It is one task that owns all its state; slow runtime calls (starting or
//! stopping a container) run as their own tasks and report back as messages,
//! so one slow container never holds up the others.

mod exits;
mod local;
mod starts;
mod stops;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flotilla_api::spec::Driver;
use flotilla_api::{Allocation, AllocationState, AllocationUpdate, NodeAllocations};
use tokio::sync::{Semaphore, mpsc};

use crate::restart::{RestartConfig, RestartTracker};
use crate::runtime::{Observed, Runtime, RuntimeEvent};
use local::{Local, Phase, update};

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

    pub(super) fn handles_insert(&self, id: u64, driver: Driver, handle: &str) {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (driver, handle.to_owned()));
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
}
