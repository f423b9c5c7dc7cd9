//! The agent daemon: registers its node, heartbeats, long-polls the servers
//! for the node's allocations, and runs the supervisor until told to stop.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::spec::Driver;
use flotilla_api::{AllocationUsage, Client, CpuMillis, Heartbeat, MemoryBytes, NodeRegistration};
use tokio::sync::mpsc;

use crate::restart::RestartConfig;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::sim::SimRuntime;
use crate::runtime::{Runtime, RuntimeEvent};
use crate::supervisor::{Handles, Holding, Message, Supervisor, SupervisorConfig};

/// Which runtimes an agent offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuntimeKind {
    Docker,
    Process,
    /// Stands in for every driver and runs nothing.
    Sim,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub servers: Vec<String>,
    pub data_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cpu: Option<CpuMillis>,
    pub memory: Option<MemoryBytes>,
    pub reserve_cpu: CpuMillis,
    pub reserve_memory: MemoryBytes,
    /// Runtimes to offer; `None`: docker if the engine answers, and process.
    pub runtimes: Option<Vec<RuntimeKind>>,
    /// Where the agent's own API (logs) listens; port 0 picks a free one.
    pub listen: String,
    pub heartbeat: Duration,
    /// How often each allocation's CPU and memory are sampled.
    pub sample_every: Duration,
    pub restart: RestartConfig,
    /// How long a container labelled with this node may stay unowned by
    /// any allocation before the agent removes it.
    pub orphan_grace: Duration,
    /// The Docker network replicas join; the default bridge if none.
    pub docker_network: Option<String>,
    /// Where the routing mesh serves every service port; empty: no mesh
    /// (simulated nodes in benchmarks).
    pub mesh_listen: Vec<std::net::IpAddr>,
    /// Stop everything this agent runs when it shuts down (`flotilla dev`);
    /// a real agent leaves its containers running, to adopt them on restart.
    pub stop_on_exit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("{0}")]
    Capacity(String),
    #[error("no runtime is available on this host")]
    NoRuntime,
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: String, reason: String },
}

async fn build_runtimes(
    config: &AgentConfig,
    events: &mpsc::UnboundedSender<RuntimeEvent>,
) -> Result<HashMap<Driver, Arc<Runtime>>, AgentError> {
    let mut runtimes = HashMap::new();
    let wanted = config.runtimes.clone();
    let explicit = wanted.is_some();
    let kinds = wanted.unwrap_or_else(|| vec![RuntimeKind::Docker, RuntimeKind::Process]);
    for kind in kinds {
        match kind {
            RuntimeKind::Docker => match DockerRuntime::connect_on(config.docker_network.clone()).await {
                Ok(docker) => {
                    if let Err(error) = docker.ensure_busybox_image().await {
                        tracing::warn!(%error, "the examples' base image is not available");
                    }
                    docker.watch_events(config.name.clone(), events.clone());
                    runtimes.insert(Driver::Docker, Arc::new(Runtime::Docker(docker)));
                }
                Err(error) if explicit => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(%error, "Docker is not available; offering the process runtime only")
                }
            },
            RuntimeKind::Process => {
                let process = ProcessRuntime::new(&config.data_dir, events.clone())?;
                runtimes.insert(Driver::Process, Arc::new(Runtime::Process(process)));
            }
            RuntimeKind::Sim => {
                let sim = Arc::new(Runtime::Sim(SimRuntime::default()));
                runtimes.insert(Driver::Docker, Arc::clone(&sim));
                runtimes.insert(Driver::Process, sim);
            }
        }
    }
    if runtimes.is_empty() {
        return Err(AgentError::NoRuntime);
    }
    Ok(runtimes)
}

async fn register(client: &Client, registration: &NodeRegistration) {
    loop {
        match client.register_node(registration).await {
            Ok(node) => {
                tracing::info!(node = %node.name, cpu = %node.capacity_cpu, memory = %node.capacity_memory, "registered");
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot register yet; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| AgentError::Listen {
        address: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let runtimes = build_runtimes(&config, &events_tx).await?;
    let (cpu, memory) =
        crate::host::capacity(config.cpu, config.memory, config.reserve_cpu, config.reserve_memory)
            .map_err(AgentError::Capacity)?;
    let handles: Handles = Arc::default();

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| AgentError::Listen { address: config.listen.clone(), reason: e.to_string() })?;
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let logs_app = crate::logs_api::router(Arc::clone(&handles), runtimes.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, logs_app).await;
    });

    let registration = NodeRegistration {
        name: config.name.clone(),
        address,
        cpu,
        memory,
        labels: config.labels.clone(),
        drivers: runtimes.keys().copied().collect(),
    };
    let client = Client::new(config.servers.clone()).with_retry_for(Duration::from_secs(3));
    register(&client, &registration).await;

    let (node_events_tx, node_events_rx) = mpsc::unbounded_channel();
    let mesh = start_mesh(&config, &runtimes, &client, &node_events_tx).await;
    let (messages_tx, mut messages_rx) = mpsc::unbounded_channel();
    let holding: Holding = Arc::default();
    let supervisor_config = SupervisorConfig {
        node: config.name.clone(),
        restart: config.restart.clone(),
        orphan_grace: config.orphan_grace,
        directory: mesh.as_ref().map(|(directory, _)| directory.clone()),
    };
    let mut supervisor = Supervisor::new(
        supervisor_config,
        runtimes.clone(),
        Arc::clone(&handles),
        Arc::clone(&holding),
        messages_tx.clone(),
    );
    supervisor.discover().await;

    let poller = tokio::spawn(poll_allocations(client.clone(), registration.clone(), messages_tx.clone()));
    let samples: Samples = Arc::default();
    let beat = Beat {
        every: config.heartbeat,
        samples: Arc::clone(&samples),
        holding,
        messages: messages_tx.clone(),
    };
    let beater = tokio::spawn(heartbeat(client.clone(), registration.clone(), beat));
    let sampler = tokio::spawn(sample(config.sample_every, Arc::clone(&handles), runtimes.clone(), samples));
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report(client.clone(), config.name.clone(), reports_rx));
    let event_sender = tokio::spawn(send_node_events(client.clone(), config.name.clone(), node_events_rx));

    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut orphan_scan = tokio::time::interval(supervisor.orphan_scan_every());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(message) = messages_rx.recv() => supervisor.handle(message).await,
            Some(event) = events_rx.recv() => supervisor.handle(Message::Runtime(event)).await,
            _ = orphan_scan.tick() => supervisor.take_inventory(),
            _ = tick.tick() => {
                supervisor.tick();
                let reports = supervisor.take_reports();
                if !reports.is_empty() {
                    let _ = reports_tx.send(reports);
                }
                let events = supervisor.take_node_events();
                if !events.is_empty() {
                    let _ = node_events_tx.send(events);
                }
            }
        }
    }
    event_sender.abort();
    if let Some((_, task)) = mesh {
        task.abort();
    }
    poller.abort();
    beater.abort();
    sampler.abort();
    if config.stop_on_exit {
        supervisor.stop_all().await;
    }
    drop(reports_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), reporter).await;
    Ok(())
}

/// Starts the routing mesh, unless it has no address to serve on. With
/// Docker replicas on a network of their own, it also serves on this
/// host's address there (the gateway, or this agent's address when the
/// agent is itself a container on that network), where the replicas'
/// DNS questions and connections come.
async fn start_mesh(
    config: &AgentConfig,
    runtimes: &HashMap<Driver, Arc<Runtime>>,
    client: &Client,
    node_events: &mpsc::UnboundedSender<Vec<String>>,
) -> Option<(crate::mesh::Directory, tokio::task::JoinHandle<()>)> {
    if config.mesh_listen.is_empty() {
        return None;
    }
    let docker = runtimes.get(&Driver::Docker).filter(|r| matches!(***r, Runtime::Docker(_)));
    let (mut container_facing, mut engine) = (None, None);
    if let Some(docker) = docker {
        if let Some(gateway) = docker.network_gateway().await {
            container_facing = local_address_towards(gateway);
        }
        if let Runtime::Docker(d) = &**docker {
            engine = Some(d.engine().to_owned());
        }
    }
    let mesh_config =
        crate::mesh::MeshConfig { listen: config.mesh_listen.clone(), container_facing, engine };
    tracing::info!(listen = ?mesh_config.listen, ?container_facing, "routing mesh");
    Some(crate::mesh::start(mesh_config, client.clone(), config.name.clone(), node_events.clone()))
}

/// The address this host sends from to reach `peer`: on the host, the
/// gateway itself; in a container on the gateway's network, its own
/// address there. (A connected UDP socket sends nothing.)
fn local_address_towards(peer: std::net::IpAddr) -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect((peer, 53)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Long-polls the servers for this node's allocations; a blocking query
/// answers as soon as the state changes, so new work starts at once.
async fn poll_allocations(
    client: Client,
    registration: NodeRegistration,
    messages: mpsc::UnboundedSender<Message>,
) {
    // The highest state index seen: an answer older than it (from a server
    // that lags) is ignored, and every query asks for newer.
    let mut index = 0;
    loop {
        match client.node_allocations(&registration.name, index, Duration::from_secs(20)).await {
            Ok(desired) => {
                if desired.index > index {
                    index = desired.index;
                    if messages.send(Message::Desired(desired)).is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                if error.code() == Some("not_found") {
                    register(&client, &registration).await;
                } else {
                    tracing::warn!(%error, "cannot fetch this node's allocations; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What the heartbeat task needs besides the client.
struct Beat {
    every: Duration,
    samples: Samples,
    holding: Holding,
    /// To pass on the servers' word to stop allocations lost while down.
    messages: mpsc::UnboundedSender<Message>,
}

/// Tells the leader this node lives, with the latest usage samples and what
/// it holds. It never waits on sampling (a Docker stats call takes a
/// second), so a slow engine cannot make a healthy node miss its heartbeats.
async fn heartbeat(client: Client, registration: NodeRegistration, beat: Beat) {
    let mut interval = tokio::time::interval(beat.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let usage = std::mem::take(&mut *beat.samples.lock().unwrap_or_else(|p| p.into_inner()));
        let holding = beat.holding.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match client.heartbeat(&registration.name, &Heartbeat { usage, holding }).await {
            Ok(answer) if !answer.stop.is_empty() => {
                tracing::warn!(node = %registration.name, stop = ?answer.stop, "the node was down; stopping what was placed elsewhere");
                let _ = beat.messages.send(Message::StopNow(answer.stop));
            }
            Ok(_) => {}
            Err(error) if error.code() == Some("not_found") => register(&client, &registration).await,
            Err(error) => tracing::warn!(%error, "heartbeat not delivered"),
        }
    }
}

/// Sends what the agent did on its own (orphans removed) to `flotilla events`.
async fn send_node_events(client: Client, node: String, mut events: mpsc::UnboundedReceiver<Vec<String>>) {
    while let Some(messages) = events.recv().await {
        if let Err(error) = client.record_node_events(&node, &messages).await {
            tracing::warn!(%error, "cannot record node events");
        }
    }
}

/// The latest usage samples, waiting for the next heartbeat.
type Samples = Arc<std::sync::Mutex<Vec<AllocationUsage>>>;

/// Samples every running allocation's usage, every `every`.
async fn sample(
    every: Duration,
    handles: Handles,
    runtimes: HashMap<Driver, Arc<Runtime>>,
    samples: Samples,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let fresh = sample_usage(&handles, &runtimes).await;
        if !fresh.is_empty() {
            *samples.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
    }
}

/// One usage sample of every running allocation, taken in parallel.
async fn sample_usage(handles: &Handles, runtimes: &HashMap<Driver, Arc<Runtime>>) -> Vec<AllocationUsage> {
    let running: Vec<(u64, Driver, String)> = handles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, (driver, handle))| (*id, *driver, handle.clone()))
        .collect();
    let mut tasks = Vec::new();
    for (id, driver, handle) in running {
        let Some(runtime) = runtimes.get(&driver).cloned() else { continue };
        tasks.push(tokio::spawn(async move {
            runtime.usage(&handle).await.map(|u| AllocationUsage {
                id,
                cpu_millis: u.cpu_millis,
                memory_bytes: u.memory_bytes,
            })
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        if let Ok(Some(sample)) = task.await {
            samples.push(sample);
        }
    }
    samples
}

/// Sends allocation state changes to the servers, batching what piles up
/// while a report is in flight into the next one.
async fn report(
    client: Client,
    node: String,
    mut reports: mpsc::UnboundedReceiver<Vec<flotilla_api::AllocationUpdate>>,
) {
    let mut pending: BTreeMap<u64, flotilla_api::AllocationUpdate> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match reports.recv().await {
                Some(batch) => pending.extend(batch.into_iter().map(|u| (u.id, u))),
                None => return,
            }
        }
        while let Ok(batch) = reports.try_recv() {
            pending.extend(batch.into_iter().map(|u| (u.id, u)));
        }
        let batch: Vec<_> = pending.values().cloned().collect();
        match client.report_allocations(&node, &batch).await {
            Ok(_) => pending.clear(),
            Err(error) => {
                tracing::warn!(%error, "cannot report allocation states; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
