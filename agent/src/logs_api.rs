//! The agent's own HTTP API: an allocation's output, streamed, for
//! `flotilla logs`. Output never passes through the Raft servers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_api::spec::Driver;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::runtime::Runtime;
use crate::supervisor::Handles;

#[derive(Clone)]
struct LogsState {
    handles: Handles,
    runtimes: HashMap<Driver, Arc<Runtime>>,
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

pub fn router(handles: Handles, runtimes: HashMap<Driver, Arc<Runtime>>) -> Router {
    Router::new().route("/v1/allocations/{id}/logs", get(logs)).with_state(LogsState { handles, runtimes })
}

async fn logs(
    State(state): State<LogsState>,
    Path(id): Path<u64>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let found = state.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
    let Some((driver, handle)) = found else {
        return (StatusCode::NOT_FOUND, format!("allocation {id} does not run on this node\n"))
            .into_response();
    };
    let Some(runtime) = state.runtimes.get(&driver) else {
        return (StatusCode::NOT_FOUND, format!("no {driver} runtime on this node\n")).into_response();
    };
    let stream = runtime.logs(&handle, query.follow).map(|chunk| chunk.map_err(std::io::Error::other));
    Response::new(Body::from_stream(stream))
}
