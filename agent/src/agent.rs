//! The agent daemon: registers its node, heartbeats, long-polls the servers
//! for the node's allocations, and runs the supervisor until told to stop.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::spec::Driver;
use flotilla_api::{Client, CpuMillis, HostVolume, MemoryBytes, NodeRegistration};
use tokio::sync::mpsc;

use crate::mesh::setup::start_mesh;
use crate::metrics::AgentMetrics;
use crate::node_tls::{NodeTls, NodeTlsError};
use crate::restart::RestartConfig;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::sim::SimRuntime;
use crate::runtime::{Runtime, RuntimeEvent};
use crate::server_link::{
    Beat, heartbeat, poll_allocations, register, report, report_volumes_removed, send_node_events,
};
use crate::supervisor::{Handles, Holding, Message, Supervisor, SupervisorConfig};
use crate::usage::Sampler;

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
    /// Directories of this host offered to replicas as host volumes.
    pub host_volumes: BTreeMap<String, HostVolume>,
    pub cpu: Option<CpuMillis>,
    pub memory: Option<MemoryBytes>,
    pub reserve_cpu: CpuMillis,
    pub reserve_memory: MemoryBytes,
    /// Runtimes to offer; `None`: docker if the engine answers, and process
    /// if it is allowed.
    pub runtimes: Option<Vec<RuntimeKind>>,
    /// Whether the process driver may run here: it runs any command a spec
    /// names on this host, so it is off unless the operator says so.
    pub allow_process: bool,
    /// Who process replicas run as, when the agent is root.
    pub process_user: String,
    /// A process replica's output file is rotated past this size (two
    /// older files are kept).
    pub process_log_max_bytes: u64,
    /// Where the agent's own API (logs) listens; port 0 picks a free one.
    /// `None`: no API (a simulated node of a fleet has no logs to serve,
    /// and ten thousand listeners would cost ten thousand descriptors).
    pub listen: Option<String>,
    pub heartbeat: Duration,
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
    /// Plain HTTP to servers started `--insecure`; no certificate.
    pub insecure: bool,
    /// An agent join token, needed until the agent holds a certificate
    /// for its node.
    pub join_token: Option<flotilla_security::JoinToken>,
    /// The runtime that carries this node's exchanges with the servers and
    /// its heartbeats; `None`: the agent's own. A fleet's thousands of
    /// nodes share one process, and the work of starting their replicas
    /// must not keep their heartbeats waiting, as it would not on hosts of
    /// their own.
    pub io: Option<tokio::runtime::Handle>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("{0}")]
    Capacity(String),
    #[error(
        "no runtime is available on this host (Docker does not answer, and the process driver needs --allow-driver process)"
    )]
    NoRuntime,
    #[error(
        "the process driver runs any command a spec names on this host; start the agent with --allow-driver process to offer it"
    )]
    ProcessNotAllowed,
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: String, reason: String },
    #[error(transparent)]
    Tls(#[from] crate::node_tls::NodeTlsError),
}

async fn build_runtimes(
    config: &AgentConfig,
    events: &mpsc::UnboundedSender<RuntimeEvent>,
    metrics: &Arc<AgentMetrics>,
) -> Result<HashMap<Driver, Arc<Runtime>>, AgentError> {
    let mut runtimes = HashMap::new();
    let wanted = config.runtimes.clone();
    let explicit = wanted.is_some();
    let kinds = wanted.unwrap_or_else(|| {
        if config.allow_process {
            vec![RuntimeKind::Docker, RuntimeKind::Process]
        } else {
            vec![RuntimeKind::Docker]
        }
    });
    for kind in kinds {
        match kind {
            RuntimeKind::Docker => match DockerRuntime::connect_on(config.docker_network.clone()).await {
                Ok(docker) => {
                    let docker = docker
                        .with_host_volumes(config.host_volumes.clone())
                        .with_metrics(Arc::clone(metrics));
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
                if !config.allow_process {
                    return Err(AgentError::ProcessNotAllowed);
                }
                let user = crate::runtime::process_user::ProcessUser::for_replicas(&config.process_user)?;
                let process = ProcessRuntime::new(
                    &config.data_dir,
                    &config.name,
                    user,
                    events.clone(),
                    config.process_log_max_bytes,
                )?;
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

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| AgentError::Listen {
        address: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let metrics = Arc::new(AgentMetrics::default());
    let runtimes = build_runtimes(&config, &events_tx, &metrics).await?;
    let (cpu, memory) =
        crate::host::capacity(config.cpu, config.memory, config.reserve_cpu, config.reserve_memory)
            .map_err(AgentError::Capacity)?;
    let handles: Handles = Arc::default();

    let tls = if config.insecure {
        tracing::warn!("INSECURE: this agent speaks plain HTTP to the servers and serves logs to anyone");
        None
    } else {
        Some(
            NodeTls::prepare(&config.data_dir, &config.name, &config.servers, config.join_token.as_ref())
                .await?,
        )
    };
    let address = match &config.listen {
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| AgentError::Listen { address: listen.clone(), reason: e.to_string() })?;
            let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let logs_app =
                crate::logs_api::router(Arc::clone(&handles), runtimes.clone(), Arc::clone(&metrics));
            crate::logs_api::serve(listener, logs_app, tls.as_deref())
                .map_err(|e| AgentError::Listen { address: address.clone(), reason: e.to_string() })?;
            address
        }
        None => String::new(),
    };

    let registration = NodeRegistration {
        name: config.name.clone(),
        address,
        cpu,
        memory,
        labels: config.labels.clone(),
        drivers: runtimes.keys().copied().collect(),
        host_volumes: config.host_volumes.clone(),
    };
    let mut client = Client::new(config.servers.clone()).with_retry_for(Duration::from_secs(3));
    if let Some(io) = &config.io {
        client = client.driven_on(io.clone());
    }
    let mut renewal = None;
    if let Some(tls) = &tls {
        let config = tls.client_config().map_err(|e| AgentError::Tls(e.into()))?;
        client =
            client.with_tls(config).map_err(|e| AgentError::Tls(NodeTlsError::HttpClient(e.to_string())))?;
        renewal = Some(tokio::spawn(Arc::clone(tls).renew_when_due(client.clone())));
    }
    let registered = register(&client, &registration).await;

    let (node_events_tx, node_events_rx) = mpsc::unbounded_channel();
    let mesh = start_mesh(&config, &runtimes, &client, &node_events_tx).await;
    let (messages_tx, mut messages_rx) = mpsc::unbounded_channel();
    let holding: Holding = Arc::default();
    let supervisor_config = SupervisorConfig {
        node: config.name.clone(),
        restart: config.restart.clone(),
        orphan_grace: config.orphan_grace,
        directory: mesh.as_ref().map(|(directory, _)| directory.clone()),
        metrics: Arc::clone(&metrics),
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
    let beat = Beat {
        every: config.heartbeat,
        asked_ms: registered.heartbeat_every_ms,
        sampler: Sampler { handles: Arc::clone(&handles), runtimes: runtimes.clone(), metrics },
        holding,
        messages: messages_tx.clone(),
        tls: tls.clone(),
    };
    let beating = heartbeat(client.clone(), registration.clone(), beat);
    let beater = match &config.io {
        Some(io) => io.spawn(beating),
        None => tokio::spawn(beating),
    };
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let reporter =
        tokio::spawn(report(client.clone(), registration.clone(), registered.node.report_seq, reports_rx));
    let event_sender = tokio::spawn(send_node_events(client.clone(), config.name.clone(), node_events_rx));

    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The loop ticks after anything happened (to send its reports) and
    // while something waits on the clock; an idle node does not tick.
    let mut busy = true;
    let mut orphan_scan = tokio::time::interval(supervisor.orphan_scan_every());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(message) = messages_rx.recv() => {
                supervisor.handle(message).await;
                busy = true;
            }
            Some(event) = events_rx.recv() => {
                supervisor.handle(Message::Runtime(event)).await;
                busy = true;
            }
            _ = orphan_scan.tick() => {
                supervisor.take_inventory();
                busy = true;
            }
            _ = tick.tick(), if busy => {
                supervisor.tick();
                busy = supervisor.waits_on_time();
                let reports = supervisor.take_reports();
                if !reports.is_empty() {
                    let _ = reports_tx.send(reports);
                }
                let removed = supervisor.take_removed_volumes();
                if !removed.is_empty() {
                    tokio::spawn(report_volumes_removed(client.clone(), config.name.clone(), removed));
                }
                let events = supervisor.take_node_events();
                if !events.is_empty() {
                    let _ = node_events_tx.send(events);
                }
            }
        }
    }
    event_sender.abort();
    if let Some(task) = renewal {
        task.abort();
    }
    if let Some((_, task)) = mesh {
        task.abort();
    }
    poller.abort();
    beater.abort();
    if config.stop_on_exit {
        supervisor.stop_all().await;
    }
    drop(reports_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), reporter).await;
    Ok(())
}
