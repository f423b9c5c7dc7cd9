//! Requests only the leader can answer (it alone holds heartbeats and usage
//! samples): a follower passes them on and relays the answer.

use std::time::Duration;

use axum::http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::member_http::MemberHttp;
use crate::raft::{PeerTransport, RaftHandle};

/// Sends `body` to `path` on the leader and returns its JSON answer; the
/// leader's refusals are passed on as they are (`ApiError::from_status`).
pub async fn forward<B: Serialize, T: DeserializeOwned>(
    app: &AppState,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<T, ApiError> {
    LeaderLink { raft: &app.raft, transport: &app.transport, http: &app.http }
        .forward(method, path, body)
        .await
}

/// What a server needs to reach the leader: who leads, at which address,
/// and the client that speaks to the other servers.
#[derive(Clone, Copy)]
pub struct LeaderLink<'a> {
    pub raft: &'a RaftHandle,
    pub transport: &'a PeerTransport,
    pub http: &'a MemberHttp,
}

impl LeaderLink<'_> {
    /// `forward`, for a caller that holds no `AppState` (the heartbeat relay).
    pub async fn forward<B: Serialize, T: DeserializeOwned>(
        self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let leader = self.raft.leader().and_then(|id| self.transport.address_of(id));
        let Some(leader) = leader else {
            return Err(ApiError::Unavailable {
                code: "no_leader",
                message: "no leader is elected right now".into(),
            });
        };
        let mut request = self.http.client.request(method, self.http.url(&leader, path));
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
        let body = response.json::<flotilla_api::ApiErrorBody>().await.map_err(|_| unreachable())?;
        Err(ApiError::from_status(status.as_u16(), body))
    }
}
