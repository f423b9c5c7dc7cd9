//! The endpoints peers post Raft traffic to: message batches, and the
//! chunks of snapshots too big for one request. Neither takes a body past
//! `MAX_PEER_BODY`.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::AppState;
use crate::raft::{MAX_PEER_BODY, SENDER_HEADER, decode_batch};

/// The sender's id and address, from its header.
fn sender_of(headers: &HeaderMap) -> Option<(u64, String)> {
    let (id, address) = headers.get(SENDER_HEADER)?.to_str().ok()?.split_once('=')?;
    Some((id.parse().ok()?, address.to_owned()))
}

pub async fn messages(State(app): State<AppState>, headers: HeaderMap, body: Body) -> StatusCode {
    let Some((sender, address)) = sender_of(&headers) else {
        return StatusCode::BAD_REQUEST;
    };
    if app.transport.faults().blocks(sender) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PEER_BODY).await else {
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

/// Where one chunk of a snapshot belongs.
#[derive(Debug, Deserialize)]
pub struct ChunkPosition {
    id: String,
    offset: u64,
    total: u64,
}

pub async fn snapshot_chunk(
    State(app): State<AppState>,
    Query(position): Query<ChunkPosition>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    let Some((sender, address)) = sender_of(&headers) else {
        return StatusCode::BAD_REQUEST;
    };
    if app.transport.faults().blocks(sender) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Ok(chunk) = axum::body::to_bytes(body, MAX_PEER_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE;
    };
    let ChunkPosition { id, offset, total } = position;
    match app.transport.receive_snapshot_chunk(sender, &id, offset, total, &chunk) {
        Ok(None) => StatusCode::NO_CONTENT,
        Ok(Some(snapshot)) => {
            app.transport.learn_sender(sender, &address);
            match app.raft.deliver(vec![snapshot]) {
                Ok(()) => StatusCode::NO_CONTENT,
                Err(_) => StatusCode::SERVICE_UNAVAILABLE,
            }
        }
        Err(reason) => {
            tracing::warn!(sender, %reason, "refused a snapshot chunk");
            StatusCode::BAD_REQUEST
        }
    }
}
