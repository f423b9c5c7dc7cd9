//! The server's HTTP surface: the public API under `/v1/`, the Raft peer
//! endpoint, and (only when enabled) fault injection for tests.

mod access;
mod body;
mod certificate_authority;
mod cluster;
mod error;
mod event_stream;
mod events;
mod heartbeat_relay;
mod idempotency;
mod leader;
mod logs;
mod metrics;
mod node_reads;
mod nodes;
mod peer;
mod secrets;
mod services;
mod tokens;
mod ui;
mod volumes;
mod workloads;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post, put};

pub use access::{Caller, ROUTES};
pub use error::ApiError;
pub use heartbeat_relay::{HeartbeatRelay, HttpLeader, RELAY_PATH};
pub use node_reads::NodeReads;

use crate::controllers::node_health::Liveness;
use crate::raft::{PEER_PATH, PeerTransport, RaftHandle, SNAPSHOT_PATH};

/// What every handler works with, behind one `Arc`: axum clones the state
/// for every request and again for each middleware, and cloning the
/// fields one by one (two HTTP clients among them) took 3% of a server's
/// CPU under 64 writers.
#[derive(Clone)]
pub struct AppState(Arc<AppResources>);

impl AppState {
    pub fn new(resources: AppResources) -> Self {
        AppState(Arc::new(resources))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppResources;

    fn deref(&self) -> &AppResources {
        &self.0
    }
}

pub struct AppResources {
    pub raft: RaftHandle,
    pub transport: Arc<PeerTransport>,
    /// Whether `/debug/v1/faults` may cut this server off from peers; only
    /// test clusters turn it on.
    pub fault_injection: bool,
    /// Heartbeats heard while leader.
    pub liveness: Arc<Liveness>,
    /// How often nodes are asked to heartbeat, and the budget behind it.
    pub health: crate::controllers::node_health::HealthConfig,
    /// Passes this server's agents' heartbeats on to the leader in batches
    /// while it follows.
    pub heartbeat_relay: HeartbeatRelay,
    /// Answers agents' long-polls for their allocations in batches.
    pub node_reads: NodeReads,
    /// For passing requests only the leader can answer on to it.
    pub http: crate::member_http::MemberHttp,
    /// For reading allocations' logs from their agents.
    pub agent_http: crate::member_http::MemberHttp,
    /// The CA and this server's certificate; `None` under `--insecure`.
    pub tls: Option<Arc<crate::server_tls::ServerTls>>,
    /// Where this server's deploys choose service ports (`--service-ports`).
    pub service_ports: crate::state::ServicePortRange,
    /// What a CA rotation waits for, as this server's controller last saw
    /// it while leading.
    pub ca_rotation: Arc<crate::controllers::ca_rotation::RotationProgress>,
    /// Turns true when the server begins to shut down, so that streams that
    /// never end on their own (`/v1/events/stream`) end, and do not hold up
    /// the graceful shutdown that waits for every connection.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// `?stale=true`: serve this server's state without confirming it is current.
#[derive(Debug, serde::Deserialize)]
pub struct ReadQuery {
    #[serde(default)]
    pub stale: bool,
}

/// Unless the caller accepts stale data, waits until this server has applied
/// everything committed when the read arrived (ReadIndex): a linearizable read.
pub async fn read_barrier(app: &AppState, stale: bool) -> Result<(), ApiError> {
    if !stale {
        app.raft.read_barrier().await?;
    }
    Ok(())
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/", get(ui::root))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::cluster))
        .route("/ui/nodes", get(ui::nodes))
        .route("/ui/workloads", get(ui::workloads))
        .route("/ui/workloads/{name}", get(ui::workload))
        .route("/ui/events", get(ui::events))
        .route("/ui/assets/{file}", get(ui::asset))
        .route("/v1/workloads", get(workloads::list).post(workloads::deploy))
        .route("/v1/workloads/{name}", get(workloads::get_one).delete(workloads::delete))
        .route("/v1/workloads/{name}/scale", post(workloads::scale))
        .route("/v1/workloads/{name}/utilisation", get(workloads::utilisation))
        .route("/v1/workloads/{name}/deployments", get(workloads::deployments))
        .route("/v1/workloads/{name}/rollout/undo", post(workloads::undo))
        .route("/v1/workloads/{name}/rollout/{action}", post(workloads::rollout))
        .route("/v1/services", get(services::list))
        .route("/v1/services/{name}", get(services::get_one))
        .route("/v1/events", get(events::events))
        .route("/v1/events/stream", get(event_stream::stream))
        .route("/v1/nodes", get(nodes::list).post(nodes::register))
        .route("/v1/nodes/{name}/status", put(nodes::set_status))
        .route("/v1/nodes/{name}/heartbeat", post(nodes::heartbeat))
        .route(RELAY_PATH, post(nodes::relayed_heartbeats))
        .route("/v1/nodes/{name}/events", post(nodes::record_events))
        .route("/v1/nodes/{name}/unserved", put(nodes::report_unserved))
        .route("/v1/nodes/{name}/allocations", get(nodes::node_allocations).post(nodes::report))
        .route("/v1/nodes/{name}/certificate", post(tokens::renew_node_certificate))
        .route("/v1/nodes/{name}/volumes/removed", post(volumes::removed))
        .route("/v1/volumes", get(volumes::list))
        .route("/v1/volumes/{workload}", delete(volumes::remove))
        .route("/v1/allocations", get(nodes::allocations))
        .route("/v1/allocations/{id}/logs", get(logs::logs))
        .route("/v1/cluster/status", get(cluster::status))
        .route("/v1/cluster/members", post(cluster::add_member))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .route("/debug/v1/faults", put(cluster::set_faults))
        .route("/v1/secrets", get(secrets::list))
        .route("/v1/secrets/{name}", put(secrets::put).delete(secrets::delete))
        .route("/v1/acl/bootstrap", post(tokens::bootstrap))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/join", post(tokens::join))
        .route("/v1/ca", get(certificate_authority::status))
        .route("/v1/ca/rotate", post(certificate_authority::rotate))
        .route("/v1/ca/local", get(certificate_authority::local))
        .route(PEER_PATH, post(peer::messages))
        .route(SNAPSHOT_PATH, post(peer::snapshot_chunk))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::authorize))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), metrics::record))
        .fallback(|| async { ApiError::NotFound("no such API path".into()) })
        .with_state(state)
}
