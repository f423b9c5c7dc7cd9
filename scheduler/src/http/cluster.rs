//! Cluster routes: this server's Raft status, membership changes,
//! and fault injection for tests.

use std::time::Duration;

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
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Peers whose Raft messages this server drops, in both directions;
    /// left as they are when absent.
    #[serde(default)]
    blocked_peers: Option<Vec<u64>>,
    /// A read of the replicated state held this long, as a slow reader
    /// holds it (a list of every workload at a million allocations): what
    /// the Raft loop must go on turning through.
    #[serde(default)]
    hold_state_ms: Option<u64>,
}

/// The longest `hold_state_ms`: long enough for any election timeout, short
/// enough that a mistyped value does not freeze a server's writes for good.
const MAX_STATE_HOLD_MS: u64 = 60_000;

pub async fn set_faults(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<()>, ApiError> {
    if !app.fault_injection {
        return Err(ApiError::NotFound("fault injection is not enabled on this server".into()));
    }
    let request: FaultRequest = read_json(&headers, body).await?;
    if let Some(ms) = request.hold_state_ms.filter(|ms| *ms > MAX_STATE_HOLD_MS) {
        return Err(ApiError::BadRequest(format!(
            "field `hold_state_ms`: {ms} is more than the {MAX_STATE_HOLD_MS} ms a hold may last"
        )));
    }
    if let Some(blocked) = request.blocked_peers {
        tracing::warn!(?blocked, "fault injection: dropping Raft messages");
        app.transport.faults().set_blocked(blocked);
    }
    if let Some(ms) = request.hold_state_ms {
        hold_state(app, Duration::from_millis(ms)).await?;
    }
    Ok(Json(()))
}

/// Holds a read of the state for `hold` on a thread of its own; returns
/// once the read is taken, so that the caller knows the hold is on.
async fn hold_state(app: AppState, hold: Duration) -> Result<(), ApiError> {
    tracing::warn!(hold_ms = hold.as_millis() as u64, "fault injection: holding a read of the state");
    let (taken, taking) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let state = app.raft.state();
        let _ = taken.send(());
        std::thread::sleep(hold);
        drop(state);
    });
    taking.await.map_err(|_| ApiError::Internal("the thread holding the state stopped".into()))
}
