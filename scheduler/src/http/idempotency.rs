//! The `Idempotency-Key` header of a write: a client-chosen key under which
//! the state machine remembers the write's outcome (see `state::idempotency`).

use axum::http::HeaderMap;
use serde::Serialize;

use super::error::ApiError;
use crate::state::Idempotency;

pub const HEADER: &str = "idempotency-key";

/// Longest key accepted: UUIDs and the like fit many times over.
const MAX_KEY_LEN: usize = 255;

/// The write's key, if it sent one, bound to `request` (what the write
/// asks, as decoded), so that the key cannot be reused for another request.
pub fn idempotency(headers: &HeaderMap, request: &impl Serialize) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "header `Idempotency-Key`: must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(Idempotency::new(key.to_owned(), request)))
}
