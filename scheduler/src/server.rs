//! One scheduler server: opens its data dir, bootstraps or joins the Raft
//! cluster, runs the Raft thread and serves HTTP until told to stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use raft::eraftpb::Snapshot;

use crate::controllers::node_health::{HealthConfig, Liveness, run_node_health};
use crate::http::{AppResources, AppState, HeartbeatRelay, HttpLeader, NodeReads, router};
use flotilla_security::{Peer, TlsListener};

use crate::controllers::ca_rotation::{RotationProgress, run_ca_rotation};
use crate::member_http::MemberHttp;
use crate::raft::{FaultRules, NodeConfig, PeerTransport, RaftStorage, StorageError};
pub use crate::server_tls::CaSource;
use crate::server_tls::ServerTls;
use crate::state::ClusterState;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub id: u64,
    /// `host:port` to listen on, which is also the address peers and clients use.
    pub listen: String,
    pub data_dir: PathBuf,
    /// The voters of a new cluster, this server among them. Ignored once the
    /// data dir holds a cluster.
    pub peers: BTreeMap<u64, String>,
    /// A member of an existing cluster to ask to add this server.
    pub join: Option<String>,
    pub node: NodeConfig,
    pub health: HealthConfig,
    pub fault_injection: bool,
    /// Where the cluster chooses service ports for named ports without an ingress.
    pub service_ports: crate::state::ServicePortRange,
    /// Mutual TLS and tokens; `None` only for `--insecure`.
    pub tls: Option<TlsSetup>,
}

/// How a secure server gets its TLS material on its first start, and how
/// long the certificates it issues last.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub source: CaSource,
    pub lifetime: Duration,
}

/// The names a server's certificate carries besides its identity: the
/// host it listens on, unless that is every address.
fn certificate_addresses(listen: &str) -> Vec<String> {
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host).trim_matches(['[', ']']);
    match host {
        "" | "0.0.0.0" | "::" => Vec::new(),
        host => vec![host.to_owned()],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: String, reason: String },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("the snapshot in the data dir does not decode: {0}")]
    Snapshot(String),
}

/// The snapshot every founding member writes first: index 1, the initial
/// voters, and their addresses. Identical on every member, so their logs
/// agree from the start; a server that joins later receives it from the leader.
fn bootstrap_snapshot(peers: &BTreeMap<u64, String>) -> Result<Snapshot, ServerError> {
    let state = ClusterState::bootstrap(peers);
    let data = serde_json::to_vec(&state).map_err(|e| ServerError::Snapshot(e.to_string()))?;
    let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
    let meta = snapshot.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = peers.keys().copied().collect();
    Ok(snapshot)
}

/// Runs a server until `shutdown` resolves or its storage fails.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let mut storage = RaftStorage::open(&config.data_dir)?;
    if !storage.is_initialized() {
        if !config.peers.is_empty() {
            if !config.peers.contains_key(&config.id) {
                return Err(ServerError::Config(format!(
                    "--peers does not list this server's id {}",
                    config.id
                )));
            }
            storage.install_snapshot(bootstrap_snapshot(&config.peers)?)?;
            tracing::info!(peers = ?config.peers, "bootstrapped a new cluster");
        } else if config.join.is_none() {
            return Err(ServerError::Config(
                "a new server needs --peers (to found a cluster) or --join".into(),
            ));
        }
    }
    let state: ClusterState = if storage.is_initialized() {
        let mut state: ClusterState = storage.restore()?;
        state.restored_at(storage.snapshot_index());
        state
    } else {
        ClusterState::default()
    };
    let tls = match &config.tls {
        Some(setup) => Some(
            ServerTls::prepare(
                &config.data_dir,
                config.id,
                certificate_addresses(&config.listen),
                setup.source.clone(),
                setup.lifetime,
            )
            .await?,
        ),
        None => {
            tracing::warn!(
                "INSECURE: this server speaks plain HTTP and checks no certificate or token; anyone who reaches {} controls the cluster",
                config.listen
            );
            None
        }
    };
    let member_tls = tls.as_ref().map(|tls| tls.member_client_config()).transpose()?;
    let raft_http =
        MemberHttp::for_raft(member_tls.clone()).map_err(|e| ServerError::Config(e.to_string()))?;
    let request_http =
        MemberHttp::for_requests(member_tls.clone()).map_err(|e| ServerError::Config(e.to_string()))?;
    let agent_tls = tls.as_ref().map(|tls| tls.agent_client_config()).transpose()?;
    let agent_http = MemberHttp::for_agents(agent_tls).map_err(|e| ServerError::Config(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| ServerError::Listen { address: config.listen.clone(), reason: e.to_string() })?;
    let faults = Arc::new(FaultRules::default());
    let runtime = tokio::runtime::Handle::current();
    let mut transport_slot = None;
    let members: Vec<_> = state.members().cloned().collect();
    let state = Arc::new(RwLock::new(state));
    let metrics = Arc::new(crate::metrics::ServerMetrics::default());
    let (raft, thread) = crate::raft::spawn(config.node.clone(), storage, state, metrics, |inputs| {
        let transport = Arc::new(PeerTransport::new(
            config.id,
            config.listen.clone(),
            runtime,
            inputs,
            faults,
            config.node.peer_request_bytes,
            raft_http,
        ));
        transport.learn_members(members.iter());
        for (id, address) in &config.peers {
            transport.learn_sender(*id, address);
        }
        transport_slot = Some(Arc::clone(&transport));
        transport
    })?;
    let transport = transport_slot.ok_or_else(|| ServerError::Config("transport was not created".into()))?;
    tracing::info!(id = config.id, listen = %config.listen, data_dir = %config.data_dir.display(), "server started");

    if let Some(seed) = config.join.clone() {
        let mut client = flotilla_api::Client::new([seed.clone()]).with_retry_for(Duration::from_secs(2));
        if let Some(tls) = member_tls {
            client = client.with_tls(tls).map_err(|e| ServerError::Config(e.to_string()))?;
        }
        tokio::spawn(ask_to_join(client, seed, config.id, config.listen.clone()));
    }
    if let Some(tls) = &tls {
        tokio::spawn(Arc::clone(tls).renew_when_due());
        tokio::spawn(Arc::clone(tls).follow_ca_state(raft.clone()));
    }

    tokio::spawn(crate::controllers::run_reconciler(raft.clone(), Default::default()));
    let liveness = Arc::new(Liveness::default());
    tokio::spawn(run_node_health(raft.clone(), Arc::clone(&liveness), config.health.clone()));
    tokio::spawn(crate::controllers::autoscale::run_autoscaler(raft.clone(), Arc::clone(&liveness)));
    let ca_rotation = Arc::new(RotationProgress::default());
    if let Some(tls) = &tls {
        tokio::spawn(run_ca_rotation(
            raft.clone(),
            Arc::clone(tls),
            request_http.clone(),
            Arc::clone(&liveness),
            Arc::clone(&ca_rotation),
        ));
    }
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let heartbeat_relay = HeartbeatRelay::start(HttpLeader {
        raft: raft.clone(),
        transport: Arc::clone(&transport),
        http: request_http.clone(),
    });
    let app = router(AppState::new(AppResources {
        closing,
        health: config.health.clone(),
        ca_rotation,
        liveness,
        heartbeat_relay,
        node_reads: NodeReads::default(),
        http: request_http,
        agent_http,
        tls: tls.clone(),
        raft: raft.clone(),
        transport,
        fault_injection: config.fault_injection,
        service_ports: config.service_ports,
    }));
    let (raft_stopped_tx, raft_stopped_rx) = tokio::sync::oneshot::channel();
    let raft_thread = std::thread::spawn(move || {
        let result = thread.join().map_err(|_| ServerError::Config("the Raft thread panicked".into()));
        let _ = raft_stopped_tx.send(());
        result
    });
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            _ = raft_stopped_rx => {}
        }
        closing_tx.send_replace(true);
    };
    let app = app.into_make_service_with_connect_info::<Peer>();
    let served = match &tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, Arc::new(tls.server_config()?))
                .map_err(|e| ServerError::Listen { address: config.listen.clone(), reason: e.to_string() })?;
            axum::serve(listener, app).with_graceful_shutdown(stop).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(stop).await,
    };
    raft.shutdown();
    let raft_result = tokio::task::spawn_blocking(move || raft_thread.join())
        .await
        .map_err(|e| ServerError::Config(e.to_string()))?
        .map_err(|_| ServerError::Config("the Raft thread panicked".into()))?;
    raft_result??;
    served.map_err(|e| ServerError::Listen { address: config.listen, reason: e.to_string() })
}

/// Asks a member of the existing cluster to add this server, until it does.
async fn ask_to_join(client: flotilla_api::Client, seed: String, id: u64, address: String) {
    loop {
        match client.add_member(id, &address).await {
            Ok(_) => {
                tracing::info!(%seed, "joined the cluster as a learner");
                return;
            }
            Err(error) => tracing::warn!(%seed, %error, "cannot join yet; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
