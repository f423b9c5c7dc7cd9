//! The agent's own HTTP API: an allocation's output, streamed, for
//! `flotilla logs`, and `/metrics` for Prometheus. The servers fetch logs
//! and pass them on to users; over TLS only a server's certificate is
//! answered for them. Output never enters the Raft log. Metrics, like a
//! node exporter's, are served to whoever reaches the port.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_api::spec::Driver;
use flotilla_security::{Peer, SERVER_ROLE_NAME, TlsListener};

use crate::metrics::AgentMetrics;
use crate::node_tls::NodeTls;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::runtime::Runtime;
use crate::supervisor::Handles;

#[derive(Clone)]
struct LogsState {
    handles: Handles,
    runtimes: HashMap<Driver, Arc<Runtime>>,
    metrics: Arc<AgentMetrics>,
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// Serves the logs API on `listener`: over TLS with this node's
/// certificate, or plain HTTP for an `--insecure` agent.
pub fn serve(listener: tokio::net::TcpListener, app: Router, tls: Option<&NodeTls>) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<Peer>();
    match tls {
        Some(tls) => {
            let config = tls.server_config().map_err(std::io::Error::other)?;
            let listener = TlsListener::new(listener, Arc::new(config))?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        None => {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
    }
    Ok(())
}

pub fn router(
    handles: Handles,
    runtimes: HashMap<Driver, Arc<Runtime>>,
    metrics: Arc<AgentMetrics>,
) -> Router {
    Router::new()
        .route("/v1/allocations/{id}/logs", get(logs))
        .route_layer(axum::middleware::from_fn(servers_only))
        .route("/metrics", get(metrics_text))
        .with_state(LogsState { handles, runtimes, metrics })
}

async fn metrics_text(State(state): State<LogsState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], state.metrics.encode()).into_response()
}

/// Over TLS, only the cluster's servers may read logs here: users go
/// through them, with their tokens and roles.
async fn servers_only(ConnectInfo(peer): ConnectInfo<Peer>, request: Request, next: Next) -> Response {
    let server = peer.certificate.as_ref().is_some_and(|c| c.vouches_for(SERVER_ROLE_NAME));
    if peer.secure && !server {
        return (StatusCode::FORBIDDEN, "only the cluster's servers read logs here; ask a server\n")
            .into_response();
    }
    next.run(request).await
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
