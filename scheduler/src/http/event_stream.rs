//! `GET /v1/events/stream`: the cluster's events as Server-Sent Events, for
//! the dashboard, `flotilla top` and any client that would rather be pushed
//! than poll. Every message carries a Raft index as its SSE id, so a client
//! that lost the connection resumes from `Last-Event-ID` (browsers send it
//! on their own) and misses nothing the server still holds. Between events,
//! `applied` messages say that the state moved, at most a few times a
//! second, so a view of the state knows when to look again without one
//! message per write.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::AppState;
use crate::raft::RaftHandle;

/// How often at most a stream says the state moved: a browser redrawing on
/// each of thousands of writes a second would do nothing else.
const APPLIED_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Start after this Raft index (`Last-Event-ID` wins when both are given:
    /// it is where a reconnecting browser really stands).
    #[serde(default)]
    index: u64,
}

/// Where one client's stream stands.
struct Cursor {
    /// For the events: the state this server applied.
    raft: RaftHandle,
    /// Moves when this server applies entries.
    applied: watch::Receiver<u64>,
    /// Turns true when the server shuts down: a stream never ends on its own,
    /// and graceful shutdown waits for every connection.
    closing: watch::Receiver<bool>,
    /// The highest index whose events this client has been sent.
    sent_to: u64,
    /// The applied index last announced.
    announced: u64,
    /// When the last `applied` message went out, to space them.
    announced_at: Option<Instant>,
    /// Messages ready to go, oldest first.
    ready: VecDeque<SseEvent>,
}

impl Cursor {
    /// Queues the events after `sent_to` and an `applied` message, if the
    /// state moved since the last one.
    fn catch_up(&mut self) {
        let index = *self.applied.borrow_and_update();
        if index <= self.announced {
            return;
        }
        {
            let state = self.raft.state();
            for event in state.events_after(self.sent_to) {
                let data = serde_json::to_string(event).unwrap_or_default();
                self.ready
                    .push_back(SseEvent::default().event("event").id(event.index.to_string()).data(data));
                self.sent_to = event.index;
            }
        }
        // The state behind the watch is at least `index`, so every event up
        // to it has been queued: resuming from this id loses none.
        self.sent_to = self.sent_to.max(index);
        self.announced = index;
        self.announced_at = Some(Instant::now());
        self.ready.push_back(
            SseEvent::default().event("applied").id(index.to_string()).data(format!("{{\"index\":{index}}}")),
        );
    }

    /// Waits until the state moved and the spacing between announcements
    /// has passed; `false` when the stream should end.
    async fn wait_for_change(&mut self) -> bool {
        tokio::select! {
            changed = self.applied.changed() => if changed.is_err() { return false },
            _ = self.closing.wait_for(|closing| *closing) => return false,
        }
        if let Some(at) = self.announced_at {
            tokio::select! {
                () = tokio::time::sleep_until(at + APPLIED_EVERY) => {}
                _ = self.closing.wait_for(|closing| *closing) => return false,
            }
        }
        true
    }
}

/// The index a client resumes after: `Last-Event-ID` if it sent one.
fn resume_index(headers: &HeaderMap, query: &StreamQuery) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(query.index)
}

pub async fn stream(
    State(app): State<AppState>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let after = resume_index(&headers, &query);
    let mut applied = app.raft.applied_watch();
    // Announce the current state at once, even if nothing moves for a while.
    applied.mark_changed();
    let cursor = Cursor {
        closing: app.closing.clone(),
        applied,
        sent_to: after,
        announced: 0,
        announced_at: None,
        ready: VecDeque::new(),
        raft: app.raft.clone(),
    };
    let messages = futures_util::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if *cursor.closing.borrow() {
                return None;
            }
            if let Some(message) = cursor.ready.pop_front() {
                return Some((Ok(message), cursor));
            }
            cursor.catch_up();
            if cursor.ready.is_empty() && !cursor.wait_for_change().await {
                return None;
            }
        }
    });
    Sse::new(messages).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnecting_client_resumes_from_its_last_event_id() {
        let mut headers = HeaderMap::new();
        let query = StreamQuery { index: 7 };
        assert_eq!(resume_index(&headers, &query), 7, "without the header, the query's index");
        headers.insert("last-event-id", "42".parse().expect("header value"));
        assert_eq!(resume_index(&headers, &query), 42);
        headers.insert("last-event-id", "not-a-number".parse().expect("header value"));
        assert_eq!(resume_index(&headers, &query), 7, "an id that is not an index is ignored");
    }
}
