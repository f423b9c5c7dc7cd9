//! The event stream behind `flotilla events [-f]`: a blocking query that
//! answers with the events after an index as soon as there are any.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use flotilla_api::EventPage;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    /// Only events after this log index.
    #[serde(default)]
    index: u64,
    /// Wait this long (ms, at most a minute) for an event after `index`.
    #[serde(default)]
    wait_ms: u64,
}

pub async fn events(
    State(app): State<AppState>,
    Query(query): Query<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let mut applied = app.raft.applied_watch();
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(Duration::from_secs(60));
    loop {
        let index = *applied.borrow_and_update();
        let events: Vec<_> = app.raft.state().events_after(query.index).cloned().collect();
        if !events.is_empty() || query.wait_ms == 0 {
            return Ok(Json(EventPage {
                index: events.last().map_or(index.max(query.index), |e| e.index),
                events,
            }));
        }
        if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
            return Ok(Json(EventPage { index: query.index, events }));
        }
    }
}
