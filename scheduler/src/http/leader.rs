//! Requests only the leader can answer (it alone holds heartbeats and usage
//! samples): a follower passes them on and relays the answer.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// Sends `body` to `path` on the leader and returns its JSON answer.
pub async fn forward<B: Serialize, T: DeserializeOwned>(
    app: &AppState,
    path: &str,
    body: Option<&B>,
) -> Result<T, ApiError> {
    let leader = app.raft.leader().and_then(|id| app.raft.state().member(id).map(|m| m.address.clone()));
    let Some(leader) = leader else {
        return Err(ApiError::Unavailable {
            code: "no_leader",
            message: "no leader is elected right now".into(),
        });
    };
    let url = format!("http://{leader}{path}");
    let request = match body {
        Some(body) => app.http.post(url).json(body),
        None => app.http.get(url),
    };
    let unreachable = || ApiError::Unavailable {
        code: "leader_unreachable",
        message: format!("cannot reach the leader at {leader}"),
    };
    let response = request.timeout(Duration::from_secs(3)).send().await.map_err(|_| unreachable())?;
    match response.status() {
        status if status.is_success() => response.json().await.map_err(|_| unreachable()),
        StatusCode::NOT_FOUND => {
            let body: flotilla_api::ApiErrorBody = response.json().await.map_err(|_| unreachable())?;
            Err(ApiError::NotFound(body.message))
        }
        _ => Err(unreachable()),
    }
}
