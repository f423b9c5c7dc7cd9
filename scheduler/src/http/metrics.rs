//! `/metrics` for Prometheus (OpenMetrics text), and the middleware that
//! counts and times every API request by its route.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_api::RaftRole;

use super::AppState;
use super::error::ApiError;
use crate::metrics::ServerMetrics;

pub async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let status = app.raft.status().await?;
    let metrics = app.raft.metrics();
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    metrics.raft_term.set(gauge(status.term));
    metrics.raft_commit_index.set(gauge(status.commit));
    metrics.raft_applied_index.set(gauge(status.applied));
    metrics.raft_leader.set(i64::from(status.role == RaftRole::Leader));
    metrics.read_state(&app.raft.state());
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        metrics.encode(),
    ))
}

/// Counts and times a request under its route's pattern (`/v1/workloads/{name}`),
/// never its raw path, so the label sets stay as few as the routes.
pub async fn record(
    State(app): State<AppState>,
    matched: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched.as_str().to_owned();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let metrics = app.raft.metrics();
    let status = response.status().as_u16().to_string();
    metrics
        .http_requests
        .get_or_create(&[("route", route.clone()), ("method", method.clone()), ("status", status)])
        .inc();
    ServerMetrics::observe(
        &metrics.http_request_seconds.get_or_create(&[("route", route), ("method", method)]),
        started.elapsed(),
    );
    response
}
