//! The client side of `GET /v1/events/stream`: Server-Sent Events read
//! off a streaming response, one message at a time. `flotilla top` and
//! `flotilla events -f` follow the cluster with it; a caller that loses
//! the stream opens a new one from `last_index()` and misses nothing.

use crate::client::ClientError;
use crate::model::Event;

/// One message of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamMessage {
    /// Something the cluster did, as `GET /v1/events` lists it.
    Event(Event),
    /// The server's state moved to this applied index: a view of it is stale.
    Applied(u64),
}

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    /// Bytes received but not yet a whole message.
    buffer: Vec<u8>,
    /// The id of the last message read: where a new stream resumes.
    last_index: u64,
}

impl EventStream {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        EventStream { response, buffer: Vec::new(), last_index: 0 }
    }

    /// The Raft index of the last message read.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The next message; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<StreamMessage, ClientError>> {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                match parse_block(&text) {
                    Some(Ok((id, message))) => {
                        self.last_index = id.unwrap_or(self.last_index);
                        return Some(Ok(message));
                    }
                    Some(Err(reason)) => return Some(Err(ClientError::Stream(reason))),
                    None => continue,
                }
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => return None,
                Err(error) => return Some(Err(ClientError::Stream(format!("it broke off: {error}")))),
            }
        }
    }
}

/// One SSE block: `None` for a keep-alive comment or a kind this client
/// does not know (a newer server's), an error for a message it cannot read.
fn parse_block(block: &str) -> Option<Result<(Option<u64>, StreamMessage), String>> {
    let (mut kind, mut data, mut id) = ("message", String::new(), None);
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = value,
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "id" => id = value.parse().ok(),
            _ => {}
        }
    }
    let message = match kind {
        "event" => serde_json::from_str(&data).map(StreamMessage::Event),
        "applied" => serde_json::from_str::<serde_json::Value>(&data).map(|v| {
            StreamMessage::Applied(v.get("index").and_then(serde_json::Value::as_u64).unwrap_or_default())
        }),
        _ => return None,
    };
    Some(message.map(|m| (id, m)).map_err(|e| format!("a message is not valid JSON: {e}: {data}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_messages_with_their_ids() {
        let event = "event: event\nid: 12\ndata: {\"index\":12,\"at_ms\":5,\"workload\":\"web\",\"message\":\"deployed\"}\n\n";
        let Some(Ok((id, StreamMessage::Event(e)))) = parse_block(event) else { panic!("an event") };
        assert_eq!(
            (id, e.index, e.workload.as_deref(), e.message.as_str()),
            (Some(12), 12, Some("web"), "deployed")
        );
        assert_eq!(
            parse_block("event: applied\nid: 40\ndata: {\"index\":40}\n\n"),
            Some(Ok((Some(40), StreamMessage::Applied(40))))
        );
    }

    #[test]
    fn comments_and_unknown_kinds_are_skipped_and_bad_json_is_an_error() {
        assert_eq!(parse_block(":\n\n"), None, "a keep-alive");
        assert_eq!(parse_block("event: gossip\ndata: {}\n\n"), None);
        assert!(matches!(parse_block("event: event\ndata: {nope\n\n"), Some(Err(_))));
    }
}
