//! Requests only the leader can answer (it alone holds heartbeats and usage
//! samples): a follower passes them on and relays the answer.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// Sends `body` to `path` on the leader and returns its JSON answer; the
/// leader's refusals (400, 404, 409, 504) are passed on as they are.
pub async fn forward<B: Serialize, T: DeserializeOwned>(
    app: &AppState,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<T, ApiError> {
    let leader = app.raft.leader().and_then(|id| app.transport.address_of(id));
    let Some(leader) = leader else {
        return Err(ApiError::Unavailable {
            code: "no_leader",
            message: "no leader is elected right now".into(),
        });
    };
    let mut request = app.http.client.request(method, app.http.url(&leader, path));
    if let Some(body) = body {
        request = request.json(body);
    }
    let unreachable = || ApiError::Unavailable {
        code: "leader_unreachable",
        message: format!("cannot reach the leader at {leader}"),
    };
    let response = request.timeout(Duration::from_secs(8)).send().await.map_err(|_| unreachable())?;
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(|_| unreachable());
    }
    let message = response.json::<flotilla_api::ApiErrorBody>().await.map_err(|_| unreachable())?.message;
    Err(match status {
        StatusCode::BAD_REQUEST => ApiError::BadRequest(message),
        StatusCode::NOT_FOUND => ApiError::NotFound(message),
        StatusCode::CONFLICT => ApiError::Conflict(message),
        StatusCode::GATEWAY_TIMEOUT => ApiError::OutcomeUnknown(message),
        _ => unreachable(),
    })
}
