//! Node and allocation routes: registration and status reports from agents,
//! drain and undrain from operators, and the lists behind `nodes` and `ps`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use flotilla_api::{
    Allocation, AllocationReport, AllocationUpdate, Heartbeat, HeartbeatAnswer, Node, NodeAllocations,
    NodeRegistered, NodeRegistration, NodeStatus, NodeStatusRequest,
};
use serde::Deserialize;

use super::body::{read_json, read_node_json};
use super::error::ApiError;
use super::heartbeat_relay::{RelayedAnswer, RelayedHeartbeat};
use super::idempotency::idempotency;
use super::node_reads::NodeReads;
use super::{AppState, Caller, ReadQuery, read_barrier};
use crate::state::{ClusterState, Command, CommandOutput};

/// How often a blocking query checks that its server still knows a leader.
const LEADER_CHECK: Duration = Duration::from_millis(250);

/// The longest a blocking query may wait for a change.
const MAX_WAIT: Duration = Duration::from_secs(60);

fn expect_node(output: CommandOutput) -> Result<Node, ApiError> {
    match output {
        CommandOutput::Node(node) => Ok(node),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

pub async fn register(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<NodeRegistered>, ApiError> {
    let registration: NodeRegistration = read_json(&headers, body).await?;
    if !caller.speaks_for_node(&registration.name) {
        return Err(ApiError::Forbidden(format!(
            "this agent's certificate is not for node `{}`",
            registration.name
        )));
    }
    registration.validate().map_err(ApiError::BadRequest)?;
    let name = registration.name.clone();
    let once = idempotency(&headers, &("register", &registration))?;
    let output = app.raft.propose_once(Command::RegisterNode { registration }, once).await?;
    if app.raft.is_leader() {
        app.liveness.beat(&name, &[], None);
    }
    let heartbeat_every_ms = heartbeat_every_ms(&app);
    Ok(Json(NodeRegistered { node: expect_node(output)?, heartbeat_every_ms }))
}

pub async fn list(
    State(app): State<AppState>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Vec<Node>>, ApiError> {
    read_barrier(&app, query.stale).await?;
    Ok(Json(app.raft.state().nodes().cloned().collect()))
}

pub async fn set_status(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Node>, ApiError> {
    let request: NodeStatusRequest = read_json(&headers, body).await?;
    if request.status == NodeStatus::Down {
        return Err(ApiError::BadRequest(
            "field `status`: a node is marked down by missed heartbeats, not by request; use draining".into(),
        ));
    }
    let once = idempotency(&headers, &("node status", &name, request.status))?;
    let now_ms = flotilla_api::now_ms();
    let output =
        app.raft.propose_once(Command::SetNodeStatus { name, status: request.status, now_ms }, once).await?;
    Ok(Json(expect_node(output)?))
}

/// An allocation report as agents send it: ordered, or a bare list from an
/// agent older than the ordering, during a rolling upgrade.
#[derive(Deserialize)]
#[serde(untagged)]
enum ReportBody {
    Ordered(AllocationReport),
    Unordered(Vec<AllocationUpdate>),
}

pub async fn report(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<u32>, ApiError> {
    let report = match read_node_json(&headers, body).await? {
        ReportBody::Ordered(report) => report,
        ReportBody::Unordered(updates) => AllocationReport { seq: 0, updates },
    };
    let once = idempotency(&headers, &("report", &name, &report))?;
    let now_ms = flotilla_api::now_ms();
    let AllocationReport { seq, updates } = report;
    match app.raft.propose_once(Command::UpdateAllocations { node: name, seq, updates, now_ms }, once).await?
    {
        CommandOutput::AllocationsUpdated(count) => Ok(Json(count)),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

/// What a node's agent did on its own, recorded as events.
pub async fn record_events(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<()>, ApiError> {
    let messages: Vec<String> = read_json(&headers, body).await?;
    let once = idempotency(&headers, &("events", &name, &messages))?;
    let now_ms = flotilla_api::now_ms();
    app.raft.propose_once(Command::RecordNodeEvents { node: name, messages, now_ms }, once).await?;
    Ok(Json(()))
}

/// The service ports a node's mesh cannot serve (another program holds them).
pub async fn report_unserved(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<()>, ApiError> {
    let ports: Vec<flotilla_api::UnservedPort> = read_json(&headers, body).await?;
    let once = idempotency(&headers, &("unserved", &name, &ports))?;
    app.raft.propose_once(Command::SetUnservedPorts { node: name, ports }, once).await?;
    Ok(Json(()))
}

/// A node's heartbeat. Liveness is the leader's memory, so a follower
/// passes the heartbeat on to the leader (in a batch with others).
pub async fn heartbeat(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let heartbeat: Heartbeat = read_node_json(&headers, body).await?;
    if app.raft.is_leader() {
        return beat_on_leader(&app, name, heartbeat).await.map(Json);
    }
    // A node this server does not know is told to register without a
    // round trip to the leader.
    if app.raft.node_status(&name).is_none() {
        return Err(not_registered(&name));
    }
    app.heartbeat_relay.relay(name, heartbeat).await.map(Json)
}

/// The heartbeats a follower passes on in one batch, each answered as if
/// its node had sent it here.
pub async fn relayed_heartbeats(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<RelayedAnswer>>, ApiError> {
    let batch: Vec<RelayedHeartbeat> = read_node_json(&headers, body).await?;
    if !app.raft.is_leader() {
        return Err(ApiError::Unavailable {
            code: "leader_changed",
            message: "this server no longer leads".into(),
        });
    }
    let answers = batch.into_iter().map(|relayed| beat_on_leader(&app, relayed.node, relayed.heartbeat));
    let answers = futures_util::future::join_all(answers).await;
    Ok(Json(answers.into_iter().map(RelayedAnswer::from_result).collect()))
}

fn not_registered(name: &str) -> ApiError {
    ApiError::NotFound(format!("node `{name}` is not registered"))
}

/// The leader's answer to a heartbeat: a down node's agent is told to stop
/// what it still holds (all of it was lost and placed elsewhere); once it
/// holds nothing, the node is ready again.
async fn beat_on_leader(
    app: &AppState,
    name: String,
    heartbeat: Heartbeat,
) -> Result<HeartbeatAnswer, ApiError> {
    let Some(status) = app.raft.node_status(&name) else {
        return Err(not_registered(&name));
    };
    app.liveness.beat(&name, &heartbeat.usage, heartbeat.tls.as_ref());
    let trust = trust_advice(app, heartbeat.tls.as_ref());
    let next_in_ms = heartbeat_every_ms(app);
    if status != NodeStatus::Down {
        return Ok(HeartbeatAnswer { status, stop: Vec::new(), trust, next_in_ms });
    }
    if !heartbeat.holding.is_empty() {
        return Ok(HeartbeatAnswer { status, stop: heartbeat.holding, trust, next_in_ms });
    }
    let now_ms = flotilla_api::now_ms();
    let node = expect_node(app.raft.propose(Command::NodeRecovered { name, now_ms }).await?)?;
    Ok(HeartbeatAnswer { status: node.status, stop: Vec::new(), trust, next_in_ms })
}

/// How often the cluster asks its nodes to beat, when its size stretches
/// the interval past the agents' own (`None`).
fn heartbeat_every_ms(app: &AppState) -> Option<u64> {
    let every = app.health.heartbeat_every(app.raft.node_count());
    (every > Duration::from_secs(1)).then_some(every.as_millis() as u64)
}

/// What an agent should trust and renew from, when its TLS differs from
/// the leader's (which follows the replicated CA state): how a CA
/// rotation reaches the agents.
fn trust_advice(
    app: &AppState,
    report: Option<&flotilla_api::TlsReport>,
) -> Option<flotilla_api::TrustAdvice> {
    let (tls, report) = (app.tls.as_deref()?, report?);
    let trusted = tls.trust.digests();
    let issuing = tls.issuing().digest();
    if flotilla_api::same_cas(&trusted, &report.trusted) && report.issuer.as_ref() == Some(&issuing) {
        return None;
    }
    Some(flotilla_api::TrustAdvice { trust_pem: tls.trust.trust().pem, issuing })
}

#[derive(Debug, Deserialize)]
pub struct BlockingQuery {
    /// Answer once the state index is past this one.
    #[serde(default)]
    index: u64,
    /// How long to wait for that, in milliseconds.
    #[serde(default)]
    wait_ms: u64,
}

/// A blocking query's wait: until the state index is past the query's (or
/// its wait ends), then until this server's state is confirmed current.
/// Answers the index the answer is at; 503 while this server knows no leader.
pub(super) async fn wait_past(app: &AppState, query: &BlockingQuery) -> Result<u64, ApiError> {
    wait_for(app, app.raft.applied_watch(), query).await
}

/// A blocking query's wait on `changes` (the applied index, or one node's
/// marks) to pass the query's index.
async fn wait_for(
    app: &AppState,
    mut changes: tokio::sync::watch::Receiver<u64>,
    query: &BlockingQuery,
) -> Result<u64, ApiError> {
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    while *changes.borrow_and_update() <= query.index && tokio::time::Instant::now() < deadline {
        if app.raft.leader().is_none() {
            return Err(ApiError::Unavailable {
                code: "no_leader",
                message: "this server knows no leader; ask another".into(),
            });
        }
        let next_check = deadline.min(tokio::time::Instant::now() + LEADER_CHECK);
        if let Ok(Err(_)) = tokio::time::timeout_at(next_check, changes.changed()).await {
            return Err(ApiError::Unavailable {
                code: "stopping",
                message: "this server is stopping".into(),
            });
        }
    }
    app.raft.read_barrier().await?;
    Ok(*app.raft.applied_watch().borrow())
}

/// A node's allocations, as a blocking query: with `index`, the answer waits
/// until the state has moved past it (or `wait_ms` passes), so an agent
/// learns of new work at once without polling. Any server can answer, but
/// only once it has confirmed with the leader that its state is current
/// (ReadIndex): an agent must never act on a state older than one it has
/// seen, nor on the frozen state of a server cut off from the majority,
/// which answers 503 instead so that the agent moves on to another server.
/// It waits on its own node's changes, not on every write: with ten
/// thousand agents waiting, a write wakes only the agents it concerns.
pub async fn node_allocations(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<NodeQuery>,
) -> Result<Json<NodeAllocations>, ApiError> {
    let blocking = BlockingQuery { index: query.index, wait_ms: query.wait_ms };
    let index = wait_for(&app, app.raft.node_watch(&name), &blocking).await?;
    // Changes only after the index the agent holds; everything when it
    // holds nothing yet. The wait above and the read barrier put this
    // server's state past that index, wherever the agent read it.
    let since = query.changes_only.then_some(query.index).filter(|since| *since > 0);
    NodeReads::read(&app, name, index, since).await.map(Json)
}

/// What an agent's long-poll answers, read from this server's state at
/// `index`: the node's allocations (those changed after `since`, with the
/// ids of all, when it holds the rest), their workloads' specs and
/// secrets, and the slot volumes to remove.
pub(super) fn node_allocations_at(
    app: &AppState,
    state: &ClusterState,
    name: &str,
    index: u64,
    since: Option<u64>,
) -> Result<NodeAllocations, ApiError> {
    if state.node(name).is_none() {
        return Err(ApiError::NotFound(format!("node `{name}` is not registered")));
    }
    let on_node: Vec<&Allocation> = state.node_allocations(name).collect();
    let allocations: Vec<Allocation> = match since {
        Some(since) => on_node.iter().filter(|a| a.modified_index > since).map(|a| (*a).clone()).collect(),
        None => on_node.iter().map(|a| (*a).clone()).collect(),
    };
    let all_ids = since.map(|_| on_node.iter().map(|a| a.id).collect());
    // The specs as stored: an agent reads no status, and a workload's
    // status costs a look at each of its replicas, on every node.
    let names: std::collections::BTreeSet<&flotilla_api::WorkloadName> =
        allocations.iter().map(|a| &a.workload).collect();
    let workloads: Vec<_> = names.into_iter().filter_map(|n| state.workload_ref(n).cloned()).collect();
    // Secrets for every workload on the node, changed or not: the agent
    // takes each answer's values as the current ones.
    let all_names: std::collections::BTreeSet<&flotilla_api::WorkloadName> =
        on_node.iter().map(|a| &a.workload).collect();
    let specs = all_names.into_iter().filter_map(|n| state.workload_ref(n)).map(|w| &w.spec);
    let secrets = super::secrets::values_for(app, state, specs);
    let remove_volumes = state.volumes_to_remove(name);
    Ok(NodeAllocations { index, allocations, all_ids, workloads, secrets, remove_volumes })
}

/// A blocking query for a node's allocations (no `flatten`: query
/// strings carry numbers as text, which a flattened struct cannot read).
#[derive(Debug, Deserialize)]
pub struct NodeQuery {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    wait_ms: u64,
    /// Only the allocations changed after `index`, with the ids of all.
    #[serde(default)]
    changes_only: bool,
}

#[derive(Debug, Deserialize)]
pub struct AllocationQuery {
    workload: Option<String>,
    node: Option<String>,
    #[serde(default)]
    stale: bool,
}

pub async fn allocations(
    State(app): State<AppState>,
    Query(query): Query<AllocationQuery>,
) -> Result<Json<Vec<Allocation>>, ApiError> {
    read_barrier(&app, query.stale).await?;
    let state = app.raft.state();
    let wanted = |a: &&Allocation| {
        query.workload.as_deref().is_none_or(|w| a.workload.as_str() == w)
            && query.node.as_deref().is_none_or(|n| a.node == n)
    };
    Ok(Json(state.allocations().filter(wanted).cloned().collect()))
}
