//! Cluster routes: this server's Raft status, membership changes,
//! and fault injection for tests.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use flotilla_api::{AddMemberRequest, Member, ServerStatus};
use serde::Deserialize;

use super::AppState;
use super::body::read_json;
use super::error::ApiError;
use super::leader::forward;
use crate::raft::MembershipChange;

pub async fn status(State(app): State<AppState>) -> Result<Json<ServerStatus>, ApiError> {
    Ok(Json(app.raft.status().await?))
}

fn valid_address(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}

pub async fn add_member(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Member>, ApiError> {
    let request: AddMemberRequest = read_json(&headers, body).await?;
    if request.id == 0 {
        return Err(ApiError::BadRequest("field `id`: must be more than 0".into()));
    }
    if !valid_address(&request.address) {
        return Err(ApiError::BadRequest(format!("field `address`: `{}` is not host:port", request.address)));
    }
    if !app.raft.is_leader() {
        return forward(&app, Method::POST, "/v1/cluster/members", Some(&request)).await.map(Json);
    }
    app.raft
        .change_membership(MembershipChange::AddLearner { id: request.id, address: request.address.clone() })
        .await?;
    let member = app.raft.state().member(request.id).cloned();
    Ok(Json(member.unwrap_or(Member {
        id: request.id,
        address: request.address,
        voter: false,
        matched: None,
    })))
}

pub async fn remove_member(
    State(app): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<Member>, ApiError> {
    if !app.raft.is_leader() {
        return forward::<(), _>(&app, Method::DELETE, &format!("/v1/cluster/members/{id}"), None)
            .await
            .map(Json);
    }
    let member = app.raft.state().member(id).cloned();
    app.raft.change_membership(MembershipChange::Remove { id }).await?;
    member.map(Json).ok_or_else(|| ApiError::NotFound(format!("server {id} is not a member")))
}

#[derive(Debug, Deserialize)]
pub struct FaultRequest {
    /// Peers whose Raft messages this server drops, in both directions.
    blocked_peers: Vec<u64>,
}

pub async fn set_faults(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<()>, ApiError> {
    if !app.fault_injection {
        return Err(ApiError::NotFound("fault injection is not enabled on this server".into()));
    }
    let request: FaultRequest = read_json(&headers, body).await?;
    tracing::warn!(blocked = ?request.blocked_peers, "fault injection: dropping Raft messages");
    app.transport.faults().set_blocked(request.blocked_peers);
    Ok(Json(()))
}
