//! Volume routes: list the slot volumes, remove those a deleted workload
//! kept, and hear from an agent which it removed.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use flotilla_api::{SlotVolume, VolumesRemoved};
use serde::Deserialize;

use super::body::read_json;
use super::error::ApiError;
use super::idempotency::idempotency;
use super::workloads::workload_name;
use super::{AppState, read_barrier};
use crate::state::{Command, CommandOutput};

#[derive(Debug, Deserialize)]
pub struct VolumeQuery {
    workload: Option<String>,
    #[serde(default)]
    stale: bool,
}

pub async fn list(
    State(app): State<AppState>,
    Query(query): Query<VolumeQuery>,
) -> Result<Json<Vec<SlotVolume>>, ApiError> {
    read_barrier(&app, query.stale).await?;
    let state = app.raft.state();
    let wanted = |v: &&SlotVolume| query.workload.as_deref().is_none_or(|w| v.workload.as_str() == w);
    Ok(Json(state.slot_volumes().filter(wanted).cloned().collect()))
}

/// `volumes rm WORKLOAD`: the volumes a workload deleted without
/// `--volumes` kept; answers how many are now being removed.
pub async fn remove(
    State(app): State<AppState>,
    Path(workload): Path<String>,
    headers: HeaderMap,
) -> Result<Json<u32>, ApiError> {
    let workload = workload_name(&workload)?;
    let once = idempotency(&headers, &("remove-volumes", &workload))?;
    match app.raft.propose_once(Command::RemoveVolumes { workload }, once).await? {
        CommandOutput::VolumesRemoving(count) => Ok(Json(count)),
        other => Err(ApiError::Internal(format!("unexpected command output {other:?}"))),
    }
}

/// An agent removed slot volumes it was asked to remove.
pub async fn removed(
    State(app): State<AppState>,
    Path(node): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<()>, ApiError> {
    let removed: VolumesRemoved = read_json(&headers, body).await?;
    let once = idempotency(&headers, &("volumes-removed", &node, &removed.volumes))?;
    app.raft.propose_once(Command::VolumesRemoved { node, volumes: removed.volumes }, once).await?;
    Ok(Json(()))
}
