//! Raft messages between servers over HTTP.
//!
//! Each peer has a queue and one sender task, which takes everything queued
//! and posts it as one batch on a kept-alive connection: one request carries
//! many messages under load, and a slow or dead peer delays nobody else. A
//! failed send is reported to Raft (`report_unreachable`, and
//! `report_snapshot` for a snapshot), which then probes the peer gently.
//!
//! A queue holds few bytes of entries: Raft sends entries again that a peer
//! did not get, so entries for a peer that cannot keep up are dropped (and
//! the peer reported unreachable) rather than piled up. Entries and
//! snapshots go in a lane of their own, as etcd's streams do, so that a
//! heartbeat, vote or answer never waits behind megabytes of log.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};

use flotilla_api::Member;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

use super::handle::Input;
use super::snapshot_chunks::SnapshotAssembly;

/// Path of the peer endpoint on every server.
pub const PEER_PATH: &str = "/raft/v1/messages";
/// Where snapshots too big for one request arrive, a chunk per request
/// (`?id=..&offset=..&total=..`).
pub const SNAPSHOT_PATH: &str = "/raft/v1/snapshot";
/// The largest body either peer route takes. Batches are cut to the
/// sender's `request_bytes` (8 MiB by default) and bigger snapshots go in
/// chunks of that size; a single message can still be bigger (a plan for
/// thousands of replicas is one entry), so the limit leaves room for that.
pub const MAX_PEER_BODY: usize = 64 << 20;
/// Header naming the sender as `id=host:port`, so a server can answer a
/// peer it has not yet learned about from the replicated state (a server
/// that is joining, before its first snapshot).
pub const SENDER_HEADER: &str = "x-flotilla-raft-sender";
/// Messages queued for one peer beyond which new ones are dropped; Raft
/// retransmits, and an unbounded queue to a dead peer would only grow.
const QUEUE_LIMIT: usize = 4096;
const BATCH_LIMIT: usize = 512;
/// How many requests' worth of entries (`request_bytes` each) may be queued
/// or in flight to one peer before more are dropped: one being sent and
/// one being gathered. At 10,000 agents a follower starved of CPU fell
/// behind, the leader sent it up to a MiB of the same entries again on
/// every heartbeat answer, and 4,096 such messages (4 GiB) queued; the
/// leader grew past 6 GB and the heartbeats waiting behind them came too
/// late to hold off elections.
const QUEUED_REQUESTS: usize = 2;

/// The entry bytes a message carries, which its queue counts.
fn entry_bytes(message: &Message) -> usize {
    message.get_entries().iter().map(|e| e.get_data().len() + e.get_context().len()).sum()
}

/// The two queues to each peer: appends and snapshots, which can be big,
/// and everything else, which is small and must arrive on time (a
/// heartbeat late by an election timeout starts an election).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lane {
    Log,
    Control,
}

impl Lane {
    fn of(message: &Message) -> Lane {
        match message.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgSnapshot => Lane::Log,
            _ => Lane::Control,
        }
    }
}

/// One peer's queue in one lane, and the entry bytes in it or in flight
/// from it.
struct PeerQueue {
    messages: mpsc::Sender<Message>,
    bytes: Arc<AtomicUsize>,
}

/// Drop rules for fault-injection tests: messages to and from these peers
/// vanish, as in a network partition.
#[derive(Debug, Default)]
pub struct FaultRules {
    blocked: RwLock<HashSet<u64>>,
}

impl FaultRules {
    pub fn set_blocked(&self, peers: impl IntoIterator<Item = u64>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = peers.into_iter().collect();
    }

    /// The peers cut off now, in order.
    pub fn blocked(&self) -> Vec<u64> {
        let mut peers: Vec<u64> =
            self.blocked.read().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        peers.sort_unstable();
        peers
    }

    pub fn blocks(&self, peer: u64) -> bool {
        self.blocked.read().unwrap_or_else(|p| p.into_inner()).contains(&peer)
    }
}

pub struct PeerTransport {
    own_id: u64,
    own_address: String,
    http: crate::member_http::MemberHttp,
    runtime: tokio::runtime::Handle,
    addresses: RwLock<HashMap<u64, String>>,
    queues: Mutex<HashMap<(u64, Lane), PeerQueue>>,
    /// Back into the Raft thread, for unreachable and snapshot reports.
    inputs: Sender<Input>,
    faults: Arc<FaultRules>,
    /// How big one request to a peer gets: a batch is cut there, and a
    /// snapshot bigger than this goes in chunks of this size.
    request_bytes: usize,
    /// The snapshot this server is receiving in chunks.
    assembly: Mutex<SnapshotAssembly>,
}

/// How long one request to a peer may take: a second, plus a second per
/// MiB it carries. A connection that was cut (a partition) can stay stalled
/// in TCP's retransmission backoff for tens of seconds after the network
/// heals; messages older than an election timeout are worth nothing, so the
/// request is abandoned and the next batch goes on a fresh connection.
fn request_timeout(bytes: usize) -> std::time::Duration {
    std::time::Duration::from_secs(1) + std::time::Duration::from_secs_f64(bytes as f64 / f64::from(1 << 20))
}

pub fn encode_batch(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        if let Ok(bytes) = message.write_to_bytes() {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
    }
    out
}

/// `messages` as batches of at most `limit` bytes each (a message bigger
/// than that on its own goes alone).
pub fn encode_batches(messages: &[Message], limit: usize) -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    for message in messages {
        let encoded = encode_batch(std::slice::from_ref(message));
        if !current.is_empty() && current.len() + encoded.len() > limit {
            batches.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(&encoded);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

pub fn decode_batch(mut bytes: &[u8]) -> Result<Vec<Message>, String> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_at_checked(4).ok_or("truncated length")?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| "bad length")?) as usize;
        let (body, rest) = rest.split_at_checked(len).ok_or("truncated message")?;
        messages.push(Message::parse_from_bytes(body).map_err(|e| e.to_string())?);
        bytes = rest;
    }
    Ok(messages)
}

impl PeerTransport {
    pub(crate) fn new(
        own_id: u64,
        own_address: String,
        runtime: tokio::runtime::Handle,
        inputs: Sender<Input>,
        faults: Arc<FaultRules>,
        request_bytes: usize,
        http: crate::member_http::MemberHttp,
    ) -> Self {
        PeerTransport {
            own_id,
            own_address,
            http,
            runtime,
            addresses: RwLock::default(),
            queues: Mutex::default(),
            inputs,
            faults,
            request_bytes: request_bytes.max(1),
            assembly: Mutex::default(),
        }
    }

    /// Takes one chunk of a snapshot; the snapshot's message once whole.
    pub fn receive_snapshot_chunk(
        &self,
        sender: u64,
        id: &str,
        offset: u64,
        total: u64,
        chunk: &[u8],
    ) -> Result<Option<Message>, String> {
        let mut assembly = self.assembly.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bytes) = assembly.receive(sender, id, offset, total, chunk).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        Message::parse_from_bytes(&bytes).map(Some).map_err(|e| e.to_string())
    }

    pub fn own_address(&self) -> &str {
        &self.own_address
    }

    pub fn sender_header(&self) -> String {
        format!("{}={}", self.own_id, self.own_address)
    }

    /// Takes the members' addresses from the replicated state.
    pub fn learn_members<'a>(&self, members: impl Iterator<Item = &'a Member>) {
        let mut addresses = self.addresses.write().unwrap_or_else(|p| p.into_inner());
        for member in members {
            addresses.insert(member.id, member.address.clone());
        }
    }

    /// Where member `id` listens, as this server's Raft traffic reaches it.
    /// Hot paths ask here rather than the replicated state: a follower
    /// forwards every heartbeat it takes to the leader, and reading the
    /// state for the address waited on its lock behind every apply.
    pub fn address_of(&self, id: u64) -> Option<String> {
        self.addresses.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Remembers a sender's address if the replicated state has not told us yet.
    pub fn learn_sender(&self, id: u64, address: &str) {
        let mut addresses = self.addresses.write().unwrap_or_else(|p| p.into_inner());
        addresses.entry(id).or_insert_with(|| address.to_owned());
    }

    pub fn faults(&self) -> &FaultRules {
        &self.faults
    }

    /// Queues messages for their peers; never blocks the Raft thread.
    /// Entries past a peer's byte budget are dropped and the peer reported
    /// unreachable, so that Raft probes it instead of streaming on; other
    /// messages (heartbeats, votes, answers) are small and always queued.
    pub fn send(self: &Arc<Self>, messages: Vec<Message>) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let budget = QUEUED_REQUESTS * self.request_bytes;
        let mut dropped = HashSet::new();
        for message in messages {
            let to = message.to;
            if self.faults.blocks(to) {
                continue;
            }
            let queue = queues.entry((to, Lane::of(&message))).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_LIMIT);
                let bytes = Arc::new(AtomicUsize::new(0));
                self.runtime.spawn(Arc::clone(self).deliver(to, rx, Arc::clone(&bytes)));
                PeerQueue { messages: tx, bytes }
            });
            let size = entry_bytes(&message);
            let queued = queue.bytes.load(Ordering::Relaxed);
            if size > 0 && queued > 0 && queued + size > budget {
                dropped.insert(to);
                continue;
            }
            queue.bytes.fetch_add(size, Ordering::Relaxed);
            if queue.messages.try_send(message).is_err() {
                queue.bytes.fetch_sub(size, Ordering::Relaxed);
                tracing::debug!(peer = to, "peer queue full; dropping a message");
            }
        }
        for peer in dropped {
            tracing::debug!(peer, "peer behind by more than its queue holds; entries dropped");
            let _ = self.inputs.send(Input::Unreachable(peer));
        }
    }

    /// The entry bytes queued or in flight to `peer`.
    #[cfg(test)]
    fn queued_bytes(&self, peer: u64) -> usize {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.get(&(peer, Lane::Log)).map_or(0, |queue| queue.bytes.load(Ordering::Relaxed))
    }

    async fn deliver(
        self: Arc<Self>,
        peer: u64,
        mut queue: mpsc::Receiver<Message>,
        queued_bytes: Arc<AtomicUsize>,
    ) {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH_LIMIT {
                match queue.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let bytes: usize = batch.iter().map(entry_bytes).sum();
            let has_snapshot = batch.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let address = self.addresses.read().unwrap_or_else(|p| p.into_inner()).get(&peer).cloned();
            let delivered = match address {
                Some(address) => self.post_all(&address, batch).await,
                None => false,
            };
            if !delivered {
                let _ = self.inputs.send(Input::Unreachable(peer));
            }
            if has_snapshot {
                let _ = self.inputs.send(Input::SnapshotReported { to: peer, ok: delivered });
            }
            queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Posts a batch, cut into requests of at most `request_bytes`, with
    /// snapshots bigger than that in chunks; whether all of it arrived.
    async fn post_all(&self, address: &str, batch: Vec<Message>) -> bool {
        let (large, small): (Vec<Message>, Vec<Message>) = batch.into_iter().partition(|m| {
            m.get_msg_type() == MessageType::MsgSnapshot && m.compute_size() as usize > self.request_bytes
        });
        for body in encode_batches(&small, self.request_bytes) {
            if !self.post(&self.http.url(address, PEER_PATH), body).await {
                return false;
            }
        }
        for snapshot in large {
            if !self.post_snapshot(address, &snapshot).await {
                return false;
            }
        }
        true
    }

    async fn post_snapshot(&self, address: &str, snapshot: &Message) -> bool {
        let Ok(bytes) = snapshot.write_to_bytes() else { return false };
        let metadata = snapshot.get_snapshot().get_metadata();
        let id = format!("{}-{}", metadata.term, metadata.index);
        let total = bytes.len();
        for (i, chunk) in bytes.chunks(self.request_bytes).enumerate() {
            let offset = i * self.request_bytes;
            let url =
                self.http.url(address, &format!("{SNAPSHOT_PATH}?id={id}&offset={offset}&total={total}"));
            if !self.post(&url, chunk.to_vec()).await {
                return false;
            }
        }
        tracing::info!(
            address,
            bytes = total,
            chunks = total.div_ceil(self.request_bytes),
            "sent a snapshot in chunks"
        );
        true
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> bool {
        let result = self
            .http
            .client
            .post(url)
            .timeout(request_timeout(body.len()))
            .header(SENDER_HEADER, self.sender_header())
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::debug!(url, status = %response.status(), "peer refused messages");
                false
            }
            Err(error) => {
                tracing::debug!(url, %error, "peer unreachable");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::Entry;

    use super::*;

    fn message(to: u64, kind: MessageType, entry_bytes: usize) -> Message {
        let entries = if entry_bytes == 0 {
            Vec::new()
        } else {
            vec![Entry { data: vec![7; entry_bytes].into(), ..Entry::default() }]
        };
        let mut message = Message { to, term: 3, entries: entries.into(), ..Message::default() };
        message.set_msg_type(kind);
        message
    }

    /// Reads what arrived on `socket` onto `buffer`; false once it closed.
    async fn read_more(socket: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 65536];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// A peer that answers requests without entries and never answers one
    /// with entries, as a follower starved of CPU stalls on big appends;
    /// tells `heard` of every message it answered.
    async fn peer_stalling_on_entries(heard: mpsc::UnboundedSender<MessageType>) -> String {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let heard = heard.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            if !read_more(&mut socket, &mut buffer).await {
                                return;
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .and_then(|value| value.trim().parse().ok())
                            .unwrap_or(0);
                        let body_start = head_end + 4;
                        while buffer.len() < body_start + length {
                            if !read_more(&mut socket, &mut buffer).await {
                                return;
                            }
                        }
                        let messages =
                            decode_batch(&buffer[body_start..body_start + length]).expect("a batch");
                        buffer.drain(..body_start + length);
                        if messages.iter().any(|m| !m.get_entries().is_empty()) {
                            std::future::pending::<()>().await;
                        }
                        for message in &messages {
                            let _ = heard.send(message.get_msg_type());
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_heartbeat_reaches_a_peer_that_is_stuck_on_a_big_append() {
        let (heard_tx, mut heard) = mpsc::unbounded_channel();
        let address = peer_stalling_on_entries(heard_tx).await;
        let (inputs, reported) = std::sync::mpsc::channel();
        let http = crate::member_http::MemberHttp::for_raft(None).expect("client");
        let transport = Arc::new(PeerTransport::new(
            1,
            "127.0.0.1:1".into(),
            tokio::runtime::Handle::current(),
            inputs,
            Arc::default(),
            8 << 20,
            http,
        ));
        transport.learn_sender(2, &address);
        // 4 MiB: the peer holds this request for its whole timeout (5 s).
        transport.send(vec![message(2, MessageType::MsgAppend, 4 << 20)]);
        transport.send(vec![message(2, MessageType::MsgHeartbeat, 0)]);
        let kind = tokio::time::timeout(std::time::Duration::from_secs(30), heard.recv()).await;
        assert_eq!(kind.expect("the heartbeat arrives"), Some(MessageType::MsgHeartbeat));
        assert!(
            reported.try_recv().is_err(),
            "the heartbeat went while the append was still in flight, not after it failed"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entries_for_a_peer_that_cannot_keep_up_are_dropped_past_its_budget_but_heartbeats_are_not() {
        // A peer that takes connections and never answers: what is sent
        // to it stays in flight until the request times out.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (inputs, reported) = std::sync::mpsc::channel();
        let http = crate::member_http::MemberHttp::for_raft(None).expect("client");
        let request_bytes = 1 << 20;
        let transport = Arc::new(PeerTransport::new(
            1,
            "127.0.0.1:1".into(),
            tokio::runtime::Handle::current(),
            inputs,
            Arc::default(),
            request_bytes,
            http,
        ));
        let address = silent.local_addr().expect("address").to_string();
        transport.learn_sender(2, &address);
        transport.learn_sender(3, &address);

        let appends = (0..64).map(|_| message(2, MessageType::MsgAppend, 256 << 10)).collect();
        transport.send(appends);
        let queued = transport.queued_bytes(2);
        assert!(queued > 0, "entries within the budget are queued");
        assert!(queued <= QUEUED_REQUESTS * request_bytes, "{queued} bytes queued for 16 MiB sent");
        assert!(matches!(reported.try_recv(), Ok(Input::Unreachable(2))), "the drop is reported to Raft");
        assert!(reported.try_recv().is_err(), "one report for the whole drop");

        transport.send(vec![message(2, MessageType::MsgHeartbeat, 0)]);
        assert!(reported.try_recv().is_err(), "a heartbeat is queued, not dropped");
        assert_eq!(transport.queued_bytes(2), queued);

        // A message bigger than the budget on its own still goes to a peer
        // with nothing queued, or a large entry could never be sent.
        transport.send(vec![message(3, MessageType::MsgAppend, 4 * request_bytes)]);
        assert_eq!(transport.queued_bytes(3), 4 * request_bytes);
        drop(silent);
    }

    #[test]
    fn batches_round_trip_and_truncation_is_an_error() {
        let messages: Vec<Message> = (1..=3)
            .map(|i| {
                let mut m = Message { to: i, term: 7, ..Message::default() };
                m.set_msg_type(MessageType::MsgHeartbeat);
                m
            })
            .collect();
        let bytes = encode_batch(&messages);
        assert_eq!(decode_batch(&bytes).expect("decode"), messages);
        assert!(decode_batch(&bytes[..bytes.len() - 1]).is_err());

        let one = encode_batch(&messages[..1]).len();
        let cut = encode_batches(&messages, 2 * one);
        assert_eq!(cut.len(), 2, "two messages fit a request, the third starts another");
        let rejoined: Vec<Message> = cut.iter().flat_map(|b| decode_batch(b).expect("decode")).collect();
        assert_eq!(rejoined, messages);
        assert_eq!(encode_batches(&messages, 1).len(), 3, "a message bigger than the limit goes alone");
    }
}
