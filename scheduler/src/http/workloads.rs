//! Workload routes: deploy (create or update), read, scale, delete.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use flotilla_api::{
    DeployResult, Deployment, ReplicaUtilisation, RolloutAction, ScaleRequest, UndoRequest, Utilisation,
    Workload, WorkloadName,
};
use serde::Deserialize;

use super::body::{read_json, read_spec};
use super::error::ApiError;
use super::idempotency::idempotency;
use super::{AppState, ReadQuery, read_barrier};
use crate::state::{Command, CommandOutput};

#[derive(Debug, Deserialize)]
pub struct DeployQuery {
    /// Refuse the deploy unless the stored version is this (0: must not exist).
    version: Option<u64>,
}

pub(super) fn workload_name(name: &str) -> Result<WorkloadName, ApiError> {
    WorkloadName::parse(name).map_err(|reason| ApiError::BadRequest(format!("workload name {reason}")))
}

fn expect_workload(output: CommandOutput) -> Result<Workload, ApiError> {
    match output {
        CommandOutput::Workload(workload) => Ok(workload),
        CommandOutput::Deployed(result) => Ok(result.workload),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

pub async fn deploy(
    State(app): State<AppState>,
    Query(query): Query<DeployQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DeployResult>, ApiError> {
    let spec = read_spec(&headers, body).await?;
    let once = idempotency(&headers, &("deploy", &spec, query.version))?;
    let command = Command::PutWorkload {
        spec: Box::new(spec),
        expected_version: query.version,
        now_ms: flotilla_api::now_ms(),
        service_ports: Some(app.service_ports),
    };
    let output = app.raft.propose_once(command, once).await?;
    match output {
        CommandOutput::Deployed(result) => Ok(Json(result)),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

pub async fn list(
    State(app): State<AppState>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Vec<Workload>>, ApiError> {
    read_barrier(&app, query.stale).await?;
    let state = app.raft.state();
    Ok(Json(state.workloads().map(|w| state.with_status(w.clone())).collect()))
}

pub async fn get_one(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Workload>, ApiError> {
    let name = workload_name(&name)?;
    read_barrier(&app, query.stale).await?;
    let workload = app.raft.state().workload(name.as_str());
    workload.map(Json).ok_or_else(|| ApiError::NotFound(format!("workload `{name}` does not exist")))
}

pub async fn scale(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Workload>, ApiError> {
    let name = workload_name(&name)?;
    let request: ScaleRequest = read_json(&headers, body).await?;
    if request.replicas > flotilla_api::spec::MAX_REPLICAS {
        return Err(ApiError::BadRequest(format!(
            "field `replicas`: {} is more than the maximum of {}",
            request.replicas,
            flotilla_api::spec::MAX_REPLICAS
        )));
    }
    let once = idempotency(&headers, &("scale", &name, request.replicas))?;
    let output =
        app.raft.propose_once(Command::ScaleWorkload { name, replicas: request.replicas }, once).await?;
    Ok(Json(expect_workload(output)?))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    /// Remove the workload's slot volumes too (`delete --volumes`).
    #[serde(default)]
    volumes: bool,
}

pub async fn delete(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Json<Workload>, ApiError> {
    let name = workload_name(&name)?;
    let once = idempotency(&headers, &("delete", &name, query.volumes))?;
    let command = Command::DeleteWorkload { name, volumes: query.volumes };
    let output = app.raft.propose_once(command, once).await?;
    Ok(Json(expect_workload(output)?))
}

/// The workload's deployments, newest first: its version history.
pub async fn deployments(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    let name = workload_name(&name)?;
    read_barrier(&app, query.stale).await?;
    let state = app.raft.state();
    if !state.has_workload(&name) {
        return Err(ApiError::NotFound(format!("workload `{name}` does not exist")));
    }
    Ok(Json(state.deployments_of(&name)))
}

/// `rollout promote|pause|resume`.
pub async fn rollout(
    State(app): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Deployment>, ApiError> {
    let name = workload_name(&name)?;
    let action = match action.as_str() {
        "promote" => RolloutAction::Promote,
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        other => {
            return Err(ApiError::NotFound(format!(
                "no rollout action `{other}` (promote, pause, resume or undo)"
            )));
        }
    };
    let once = idempotency(&headers, &("rollout", &name, action))?;
    let command = Command::Rollout { name, action, now_ms: flotilla_api::now_ms() };
    match app.raft.propose_once(command, once).await? {
        CommandOutput::Deployment(deployment) => Ok(Json(*deployment)),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

/// `rollout undo [--to VERSION]`.
pub async fn undo(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Workload>, ApiError> {
    let name = workload_name(&name)?;
    let request: UndoRequest = read_json(&headers, body).await?;
    let once = idempotency(&headers, &("undo", &name, request.to_version))?;
    let command =
        Command::UndoRollout { name, to_version: request.to_version, now_ms: flotilla_api::now_ms() };
    Ok(Json(expect_workload(app.raft.propose_once(command, once).await?)?))
}

/// CPU and memory use of a workload's running replicas against their
/// requests, from the leader's samples.
pub async fn utilisation(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Utilisation>, ApiError> {
    let name = workload_name(&name)?;
    if !app.raft.is_leader() {
        let path = format!("/v1/workloads/{name}/utilisation");
        return super::leader::forward::<(), Utilisation>(&app, Method::GET, &path, None).await.map(Json);
    }
    let usage = app.liveness.usage(std::time::Duration::from_secs(3));
    let state = app.raft.state();
    let workload = state
        .workload(name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("workload `{name}` does not exist")))?;
    let samples = crate::controllers::autoscale::workload_samples(&state, &name, &usage);
    let (cpu_percent, memory_percent) = crate::controllers::autoscale::utilisations(&workload.spec, &samples);
    let of = |used: f64, requested: u64| if requested == 0 { 0.0 } else { used * 100.0 / requested as f64 };
    let replicas = samples
        .iter()
        .filter_map(|sample| {
            let allocation = state.allocation(sample.id)?;
            Some(ReplicaUtilisation {
                id: sample.id,
                replica: allocation.replica,
                cpu_percent: of(sample.cpu_millis, allocation.cpu),
                memory_percent: of(sample.memory_bytes as f64, allocation.memory),
            })
        })
        .collect();
    Ok(Json(Utilisation { sampled: samples.len() as u32, cpu_percent, memory_percent, replicas }))
}
