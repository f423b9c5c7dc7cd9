//! `flotilla logs` through the servers: a server fetches an allocation's
//! output from the agent that runs it (with its own certificate; agents
//! serve logs to servers alone) and streams it on. Users need no route to
//! the agents' network, and a log that cannot be fetched is an error that
//! says why.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

pub async fn logs(
    State(app): State<AppState>,
    Path(id): Path<u64>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let address = {
        let state = app.raft.state();
        let allocation = state
            .allocation(id)
            .ok_or_else(|| ApiError::NotFound(format!("allocation {id} does not exist")))?;
        let node = state
            .node(&allocation.node)
            .ok_or_else(|| ApiError::NotFound(format!("node `{}` is not registered", allocation.node)))?;
        if node.address.is_empty() {
            return Err(ApiError::NotFound(format!(
                "node `{}` has no agent API to read logs from",
                node.name
            )));
        }
        node.address.clone()
    };
    let url = app.agent_http.url(&address, &format!("/v1/allocations/{id}/logs?follow={}", query.follow));
    let unreachable = |reason: String| ApiError::Unavailable {
        code: "agent_unreachable",
        message: format!("cannot read the logs from the agent at {address}: {reason}"),
    };
    let response = app.agent_http.client.get(&url).send().await.map_err(|e| unreachable(e.to_string()))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(match status.as_u16() {
            404 => ApiError::NotFound(text.trim().to_owned()),
            _ => unreachable(format!("{status}: {}", text.trim())),
        });
    }
    Ok(Response::new(Body::from_stream(response.bytes_stream())))
}
