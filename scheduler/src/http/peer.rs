//! The endpoint peers post Raft message batches to.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::AppState;
use crate::raft::{SENDER_HEADER, decode_batch};

/// Snapshots travel here too, so the limit is far above a spec's.
const MAX_BATCH_BYTES: usize = 1 << 30;

pub async fn messages(State(app): State<AppState>, headers: HeaderMap, body: Body) -> StatusCode {
    let sender = headers
        .get(SENDER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('='))
        .and_then(|(id, address)| Some((id.parse::<u64>().ok()?, address.to_owned())));
    let Some((sender, address)) = sender else {
        return StatusCode::BAD_REQUEST;
    };
    if app.transport.faults().blocks(sender) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BATCH_BYTES).await else {
        return StatusCode::PAYLOAD_TOO_LARGE;
    };
    let Ok(messages) = decode_batch(&bytes) else {
        return StatusCode::BAD_REQUEST;
    };
    app.transport.learn_sender(sender, &address);
    match app.raft.deliver(messages) {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}
