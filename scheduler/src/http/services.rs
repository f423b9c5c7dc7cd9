//! The service registry: every service's ports and replicas, derived from
//! the replicated state, as a blocking query (agents' routing meshes follow
//! it the way they follow their allocations).

use axum::Json;
use axum::extract::{Path, Query, State};
use flotilla_api::{Service, ServicePage, WorkloadName};

use super::error::ApiError;
use super::nodes::{BlockingQuery, wait_past};
use super::{AppState, ReadQuery, read_barrier};

pub async fn list(
    State(app): State<AppState>,
    Query(query): Query<BlockingQuery>,
) -> Result<Json<ServicePage>, ApiError> {
    let index = wait_past(&app, &query).await?;
    let services = app.raft.state().services();
    Ok(Json(ServicePage { index, services }))
}

pub async fn get_one(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Service>, ApiError> {
    let name = WorkloadName::parse(&name)
        .map_err(|reason| ApiError::BadRequest(format!("service name {reason}")))?;
    read_barrier(&app, query.stale).await?;
    let service = app.raft.state().service(&name);
    service.map(Json).ok_or_else(|| ApiError::NotFound(format!("service `{name}` does not exist")))
}
