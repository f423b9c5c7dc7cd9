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
mod health;
mod local;
mod orphans;
mod starts;
mod stops;
mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::spec::Driver;
use flotilla_api::{Allocation, AllocationState, AllocationUpdate};
use tokio::sync::{Semaphore, mpsc};

use crate::restart::{RestartConfig, RestartTracker};
use crate::runtime::{Observed, Runtime, RuntimeEvent};
use local::{Local, Phase, update};

/// Containers started at once, and stopped at once; the engine slows down past a few.
const PARALLEL_RUNTIME_CALLS: usize = 8;

/// Where each running allocation is, for the logs endpoint and usage sampling.
pub type Handles = Arc<Mutex<HashMap<u64, (Driver, String)>>>;

/// Allocations this agent still has something of, for its heartbeats.
pub type Holding = Arc<Mutex<Vec<u64>>>;

pub enum Message {
    Desired(crate::desired_view::Desired),
    Runtime(RuntimeEvent),
    Started {
        allocation: u64,
        result: Result<Observed, String>,
    },
    Stopped {
        allocation: u64,
        result: Result<(), String>,
    },
    /// What the runtime says of a running allocation, for the start
    /// (`generation`) that was running then; `exited`: it had reported its
    /// exit (else the event stream broke and every replica is looked at).
    Inspected {
        allocation: u64,
        generation: u64,
        exited: bool,
        result: Result<Option<Observed>, String>,
    },
    /// The servers say these were placed elsewhere: stop them now.
    StopNow(Vec<u64>),
    /// What the runtimes hold for this node, for the orphan collector.
    Inventory(Vec<(Driver, Observed)>),
    /// A check's verdict on a replica changed.
    Health(crate::health::CheckChange),
    /// How a start goes before the replica runs (its image being pulled).
    StartProgress {
        allocation: u64,
        message: String,
    },
    /// A slot volume's removal ended.
    VolumeRemoved {
        name: String,
        result: Result<(), String>,
    },
}

pub struct Supervisor {
    node: String,
    runtimes: HashMap<Driver, Arc<Runtime>>,
    restart: RestartConfig,
    local: BTreeMap<u64, Local>,
    /// What the runtimes ran when the agent started, until the servers say
    /// whether each is still wanted (adopt) or not (stop).
    found: HashMap<u64, (Driver, Observed)>,
    /// Found containers being stopped: still held (a down node is not ready
    /// before they are gone) until the stop ends, or the orphan collector
    /// sees them gone.
    stopping_found: BTreeSet<u64>,
    reports: BTreeMap<u64, AllocationUpdate>,
    handles: Handles,
    messages: mpsc::UnboundedSender<Message>,
    /// Bounds the starts in flight at once.
    permits: Arc<Semaphore>,
    /// Bounds the stops in flight at once: a pool of their own, because a
    /// stop mostly waits out its replica's grace after SIGTERM, and five
    /// slow stops must not hold up the starts that replace them.
    stop_permits: Arc<Semaphore>,
    /// Whether the servers have said what this node should run: before
    /// that, nothing found is unowned.
    desired_seen: bool,
    /// How long a container may stay unowned before it is removed.
    orphan_grace: Duration,
    orphans: orphans::OrphanWatch,
    /// Things worth an event in `flotilla events` (orphans removed), to send.
    node_events: Vec<String>,
    /// Shared with the heartbeat, refreshed every tick.
    holding: Holding,
    /// For HTTP checks: one connection pool for every replica's checks.
    check_http: reqwest::Client,
    /// The services, for the environment and DNS of replicas it starts.
    directory: Option<crate::mesh::Directory>,
    /// The values of the secrets this node's workloads name, as the
    /// servers last sent them; held in memory only.
    secrets: BTreeMap<String, flotilla_api::SecretValue>,
    /// Slot volumes the servers asked this node to remove, by Docker name.
    removals: BTreeMap<String, volumes::Removal>,
    /// Volumes removed, not yet told to the servers.
    removed_volumes: Vec<String>,
    /// Where starts, restarts and OOM kills are counted.
    metrics: Arc<crate::metrics::AgentMetrics>,
}

/// How the supervisor is set up, beyond its runtimes.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub node: String,
    pub restart: RestartConfig,
    pub orphan_grace: Duration,
    /// The mesh's view of the services; `None` where no mesh runs.
    pub directory: Option<crate::mesh::Directory>,
    /// Where starts, restarts and OOM kills are counted.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

impl Supervisor {
    pub fn new(
        config: SupervisorConfig,
        runtimes: HashMap<Driver, Arc<Runtime>>,
        handles: Handles,
        holding: Holding,
        messages: mpsc::UnboundedSender<Message>,
    ) -> Self {
        Supervisor {
            node: config.node,
            runtimes,
            restart: config.restart,
            desired_seen: false,
            orphan_grace: config.orphan_grace,
            orphans: orphans::OrphanWatch::default(),
            node_events: Vec::new(),
            holding,
            check_http: crate::health::check_client(),
            secrets: BTreeMap::new(),
            removals: BTreeMap::new(),
            removed_volumes: Vec::new(),
            directory: config.directory,
            metrics: config.metrics,
            local: BTreeMap::new(),
            found: HashMap::new(),
            stopping_found: BTreeSet::new(),
            reports: BTreeMap::new(),
            handles,
            messages,
            permits: Arc::new(Semaphore::new(PARALLEL_RUNTIME_CALLS)),
            stop_permits: Arc::new(Semaphore::new(PARALLEL_RUNTIME_CALLS)),
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
    pub(super) fn unique_runtimes(&self) -> Vec<(Driver, Arc<Runtime>)> {
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
            Message::Runtime(RuntimeEvent::Exited { allocation, exit_code }) => {
                self.on_exit(allocation, exit_code)
            }
            Message::Runtime(RuntimeEvent::OutOfMemory { allocation }) => self.on_out_of_memory(allocation),
            Message::Inspected { allocation, generation, exited, result } => {
                self.on_inspected(allocation, generation, exited, result)
            }
            Message::Runtime(RuntimeEvent::Resync) => self.resync(),
            Message::Started { allocation, result } => self.on_started(allocation, result).await,
            Message::Stopped { allocation, result } => self.on_stopped(allocation, result),
            Message::StopNow(ids) => {
                for id in ids {
                    self.stop_at_once(id);
                    self.stop_found(id);
                }
            }
            Message::Inventory(inventory) => self.collect_orphans(inventory, Instant::now()),
            Message::Health(change) => self.on_health(change),
            Message::StartProgress { allocation, message } => self.on_start_progress(allocation, message),
            Message::VolumeRemoved { name, result } => self.on_volume_removed(name, result),
        }
    }

    fn reconcile(&mut self, mut desired: crate::desired_view::Desired) {
        self.secrets = std::mem::take(&mut desired.secrets);
        self.volumes_to_remove(std::mem::take(&mut desired.remove_volumes), Instant::now());
        let specs: HashMap<&str, &flotilla_api::Workload> =
            desired.workloads.iter().map(|w| (w.spec.name.as_str(), &**w)).collect();
        self.desired_seen = true;
        let wanted: BTreeMap<u64, &Allocation> =
            desired.allocations.iter().filter(|a| a.is_replica()).map(|a| (a.id, &**a)).collect();
        // Asked to stop something this agent does not run (never started,
        // or gone already): it is stopped, and the servers may release it.
        let gone: Vec<u64> = desired
            .allocations
            .iter()
            .filter(|a| a.stopping && a.state.is_live())
            .filter(|a| !self.local.contains_key(&a.id) && !self.found.contains_key(&a.id))
            .map(|a| a.id)
            .collect();
        for id in gone {
            self.stopped(id);
        }

        let unwanted: Vec<u64> = self.local.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in unwanted {
            self.stop(id);
        }
        let stray: Vec<u64> = self.found.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in stray {
            tracing::info!(allocation = id, "stopping a container that is no longer wanted here");
            self.stop_found(id);
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
                out_of_memory_seen: false,
                generation: 0,
                watch: None,
                health: flotilla_api::Health::Unknown,
                health_output: String::new(),
                kill_reason: None,
            };
            match self.found.remove(&id) {
                Some((_, observed)) if observed.running => {
                    tracing::info!(allocation = id, handle = %observed.handle, "adopted a running container");
                    local.handle = Some(observed.handle.clone());
                    local.phase = Phase::Running;
                    local.allocation.ports = observed.ports.clone();
                    local.allocation.container_address =
                        self.runtimes.get(&driver).and_then(|r| r.container_address(&observed));
                    self.handles_insert(id, driver, &observed.handle);
                    self.local.insert(id, local);
                    self.watch_health(id, &observed);
                    // Said even when the servers think it runs: they learn
                    // which container this agent adopted.
                    if let Some(local) = self.local.get(&id) {
                        let report = update(local, AllocationState::Running, String::new());
                        self.reports.insert(id, report);
                    }
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

    /// Restarts what has waited out its backoff, retries failed stops, and
    /// refreshes what the heartbeat says this node holds.
    pub fn tick(&mut self) {
        let now = Instant::now();
        self.end_drains(now);
        self.retry_stops(now);
        self.remove_due_volumes(now);
        let holding: Vec<u64> = self
            .local
            .iter()
            .filter(|(_, l)| l.phase != Phase::Done)
            .map(|(id, _)| *id)
            .chain(self.found.iter().filter(|(_, (_, o))| o.running).map(|(id, _)| *id))
            .chain(self.stopping_found.iter().copied())
            .collect();
        *self.holding.lock().unwrap_or_else(|p| p.into_inner()) = holding;
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

    /// Whether something waits on the clock (a restart backoff, a drain, a
    /// stop to retry, a volume to remove): while nothing does, the agent's
    /// loop need not tick, and an idle node costs no wakeups.
    pub fn waits_on_time(&self) -> bool {
        let timed = |l: &local::Local| {
            matches!(l.phase, Phase::Backoff(_) | Phase::Draining(_) | Phase::StopRetry { .. })
        };
        self.local.values().any(timed) || self.removals.values().any(|r| !r.in_flight)
    }

    pub fn take_reports(&mut self) -> Vec<AllocationUpdate> {
        std::mem::take(&mut self.reports).into_values().collect()
    }

    pub fn take_node_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.node_events)
    }
}
