//! The one thread that owns the `RawNode`.
//!
//! Raft runs on a dedicated OS thread and everything else talks to it over
//! a channel ([`RaftHandle`]). The thread drains every input that is
//! waiting before it handles a `Ready`, so many proposals share one entry
//! batch. Nothing on it waits for a disk or for the size of the state: the
//! log is made durable by a thread of its own (`persister.rs`), and
//! snapshots are written by another while applies wait in a queue
//! (`snapshots.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use flotilla_api::{Member, RaftRole, ServerStatus};
use parking_lot::{RwLock, RwLockReadGuard};
use raft::eraftpb::{Entry, Message};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use tokio::sync::watch;

use super::commit_clock::CommitClock;
use super::error::RaftError;
use super::handle::{Input, RaftHandle};
use super::node_directory::NodeDirectory;
use super::node_watches::SharedNodeWatches;
use super::pending::Pending;
use super::persister::Persister;
use super::reads::Reads;
use super::snapshot_files::SnapshotFile;
use super::snapshots::SnapshotJob;
use super::storage::{RaftStorage, StorageError};
use super::transport::PeerTransport;
use super::turn_clock::TurnClock;
use crate::metrics::ServerMetrics;
use crate::state::{ClusterState, CommandOutput, Envelope};

/// How long one turn of the Raft loop takes inputs (proposals, peer
/// messages, reads) before it ticks and hands Raft's ready on: a fifth of a
/// heartbeat interval. Draining the queue while it kept filling held a
/// leader of a million allocations in one turn for 10 s, no heartbeat sent.
const INPUT_BUDGET: Duration = Duration::from_millis(20);

/// How the Raft thread is tuned; the defaults are DESIGN.md's.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// ... or once the log's entries take this many bytes (the log is held
    /// in memory as well as on disk); a compaction for size keeps at most
    /// half of this.
    pub snapshot_bytes: u64,
    /// How long a proposal or read may wait to commit before it fails.
    pub request_timeout: Duration,
    /// How big one request to a peer gets; bigger snapshots go in chunks.
    pub peer_request_bytes: usize,
}

impl NodeConfig {
    pub fn new(id: u64) -> Self {
        NodeConfig {
            id,
            // 50 ms ticks, 100 ms heartbeats, 750 ms election timeout. Ticks
            // finer than DESIGN.md's 100 ms make followers' randomized
            // timeouts rarely land on the same instant (fewer split votes on
            // failover); the timeout is shorter than its 1 s so that a
            // failover (one timeout of 0.8 to 0.95 s) stays under a second:
            // BENCHMARKS.md measures what that costs in elections no fault
            // caused.
            tick: Duration::from_millis(50),
            election_ticks: 15,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            snapshot_bytes: 256 << 20,
            request_timeout: Duration::from_secs(5),
            peer_request_bytes: 8 << 20,
        }
    }
}

/// The Raft node and everything waiting on it; owned by the Raft thread.
pub struct Node {
    pub(super) raw: RawNode<RaftStorage>,
    pub(super) config: NodeConfig,
    pub(super) state: Arc<RwLock<ClusterState>>,
    pub(super) transport: Arc<PeerTransport>,
    /// Next id for proposals and reads; seeded from the clock so that ids in
    /// entries from an earlier run of this server never match a new request.
    next_request: u64,
    pub(super) proposals: Pending<CommandOutput>,
    pub(super) membership: Pending<()>,
    pub(super) reads: Reads,
    pub(super) leader: u64,
    pub(super) applied: u64,
    pub(super) published: Published,
    /// Back into this thread, for the snapshot thread's report.
    pub(super) inputs: Sender<Input>,
    /// The snapshot being written, if one is.
    pub(super) snapshot_job: Option<SnapshotJob>,
    /// Its report, once it came.
    pub(super) snapshot_written: Option<Result<SnapshotFile, StorageError>>,
    /// Committed entries not yet applied: while a snapshot is written the
    /// state must stay at the snapshot's index, so applies wait here.
    pub(super) unapplied: Vec<Entry>,
    /// While leading, when appended entries were, to time their commit.
    pub(super) commit_clock: CommitClock,
    /// Writes each ready's log change while this thread goes on.
    pub(super) persister: Persister,
    /// Readies handed to the persist thread and not yet durable, by number,
    /// each with the messages that may leave only once it is.
    pub(super) persisting: VecDeque<(u64, Vec<Message>)>,
    /// Where the turn under way spends its time.
    pub(super) turn: TurnClock,
}

/// What the Raft thread publishes for the async side, each read there
/// without a round trip to this thread.
pub(super) struct Published {
    /// The leader this server last heard of (0: none), for leader-only loops.
    pub(super) leader: Arc<AtomicU64>,
    /// The applied index, for blocking queries and loops that wait for change.
    pub(super) applied: watch::Sender<u64>,
    /// Each node's latest change, for its agent's long-poll.
    pub(super) node_watches: SharedNodeWatches,
    /// Each node's status, for heartbeats that must not wait for the state.
    pub(super) node_directory: Arc<NodeDirectory>,
    /// Where the thread records leader changes, commit latency and snapshots.
    pub(super) metrics: Arc<ServerMetrics>,
}

impl Node {
    pub fn new(
        config: NodeConfig,
        storage: RaftStorage,
        state: Arc<RwLock<ClusterState>>,
        transport: Arc<PeerTransport>,
        published: Published,
        inputs: Sender<Input>,
    ) -> Result<Self, raft::Error> {
        let applied = storage.snapshot_index();
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            // Followers time out between 1 and 1.3 elections (raft-rs's default
            // is up to 2): failover stays near one election timeout, and a
            // 30 % spread still keeps split votes rare on a LAN. The shortest
            // timeout is one tick past the election timeout, so that the
            // first follower to ask never finds another still inside its
            // check-quorum lease (their tick phases differ by under a tick),
            // which would cost a whole second round.
            min_election_tick: config.election_ticks + 1,
            max_election_tick: config.election_ticks + config.election_ticks.div_ceil(3),
            heartbeat_tick: config.heartbeat_ticks,
            // Two followers whose timeouts fall within a vote's round trip
            // (a few ms over HTTP) both win the pre-vote, both stand, and
            // split the vote: a second election round, a failover twice as
            // long (2 trials in 40 before this). With priorities a voter
            // refuses a candidate whose log is no longer than its own if
            // its own id is higher, so of two such candidates only the
            // higher stands a chance and the other grants it. A longer log
            // still wins every vote (safety is Raft's own), and of the
            // candidates with the longest log in a connected majority the
            // highest id can always win, so elections end.
            priority: i64::try_from(config.id).unwrap_or(i64::MAX),
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let persister =
            Persister::start(storage.log_writer(), inputs.clone(), Arc::clone(&published.metrics))
                .map_err(|e| raft::Error::Io(std::io::Error::other(e.to_string())))?;
        let raw = RawNode::new(&raft_config, storage, &super::slog_bridge::logger(config.id))?;
        let next_request = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Ok(Node {
            raw,
            config,
            state,
            transport,
            next_request,
            proposals: Pending::default(),
            membership: Pending::default(),
            reads: Reads::default(),
            leader: 0,
            applied,
            published,
            inputs,
            snapshot_job: None,
            snapshot_written: None,
            unapplied: Vec::new(),
            commit_clock: CommitClock::default(),
            persister,
            persisting: VecDeque::new(),
            turn: TurnClock::start(Instant::now()),
        })
    }

    /// Runs the node until shutdown, or until storage fails (which must stop
    /// the server: continuing could acknowledge writes it did not keep).
    pub(crate) fn run(mut self, inputs: Receiver<Input>) -> Result<(), StorageError> {
        let mut next_tick = Instant::now() + self.config.tick;
        let heartbeat = self.config.tick * self.config.heartbeat_ticks as u32;
        let result = loop {
            // A backlog of committed entries is applied a budget at a time,
            // with ticks and messages between.
            let wait = if self.may_apply_more() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            let mut stop = false;
            let woken = inputs.recv_timeout(wait);
            self.turn = TurnClock::start(Instant::now());
            match woken {
                Ok(Input::Shutdown) | Err(RecvTimeoutError::Disconnected) => stop = true,
                Ok(input) => {
                    self.handle(input);
                    // What is still queued after the budget waits for the
                    // next turn, which comes at once (the queue is not empty).
                    let until = self.turn.started() + INPUT_BUDGET;
                    while Instant::now() < until
                        && let Ok(input) = inputs.try_recv()
                    {
                        if matches!(input, Input::Shutdown) {
                            stop = true;
                            break;
                        }
                        self.handle(input);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if stop {
                break Ok(());
            }
            self.turn.inputs = self.turn.started().elapsed();
            self.ask_read_index();
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.on_tick(now);
                next_tick = (next_tick + self.config.tick).max(now);
            }
            let turn = self
                .take_persisted()
                .and_then(|()| self.on_ready())
                .and_then(|()| self.apply_backlog())
                .and_then(|()| self.finish_snapshot())
                .and_then(|()| self.maybe_snapshot());
            if let Err(error) = turn {
                break Err(error);
            }
            let took = self.turn.finish(Instant::now(), heartbeat);
            ServerMetrics::observe(&self.published.metrics.raft_loop_turn_seconds, took);
        };
        if let Some(job) = self.snapshot_job.take() {
            job.wait();
        }
        self.persister.stop();
        // Nothing here answers any more: long-polls and leader-only loops
        // stop waiting on this server.
        self.published.leader.store(raft::INVALID_ID, Ordering::Relaxed);
        self.published.node_watches.close();
        let stopped = RaftError::Stopped;
        self.proposals.fail_all(&stopped);
        self.membership.fail_all(&stopped);
        self.reads.fail_all(&stopped);
        result
    }

    pub(super) fn new_request_id(&mut self) -> u64 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose { command, once, reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RaftError::NoLeader));
                    return;
                }
                let request_id = self.new_request_id();
                let envelope = Envelope { origin: self.config.id, request_id, command: *command, once };
                let data = match serde_json::to_vec(&envelope) {
                    Ok(data) => data,
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Membership(format!("cannot encode command: {e}"))));
                        return;
                    }
                };
                match self.raw.propose(vec![], data) {
                    Ok(()) => {
                        let deadline = self.deadline();
                        self.proposals.insert(request_id, reply, deadline);
                    }
                    Err(_) => {
                        let _ = reply.send(Err(RaftError::NoLeader));
                    }
                }
            }
            Input::ChangeMembership { change, reply } => self.change_membership(change, reply),
            Input::ReadIndex { reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RaftError::NoLeader));
                    return;
                }
                let deadline = self.deadline();
                self.reads.wait(reply, deadline);
            }
            Input::Messages(messages) => {
                for message in messages {
                    if let Err(error) = self.raw.step(message) {
                        tracing::debug!(%error, "dropped a peer message");
                    }
                }
            }
            Input::Unreachable(peer) => self.raw.report_unreachable(peer),
            Input::SnapshotReported { to, ok } => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.raw.report_snapshot(to, status);
            }
            Input::SnapshotCopied(took) => {
                if let Some(job) = &mut self.snapshot_job {
                    job.release_applies(took);
                }
            }
            Input::SnapshotWritten(result) => self.snapshot_written = Some(result),
            // Taken at the end of the turn, with whatever else came.
            Input::Persisted => {}
            Input::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Input::Shutdown => {}
        }
    }

    pub(super) fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read()
    }

    fn on_tick(&mut self, now: Instant) {
        let timeout = RaftError::Timeout(self.config.request_timeout);
        self.proposals.expire(now, &timeout);
        self.membership.expire(now, &timeout);
        self.reads.expire(now, &timeout);
        self.ask_unconfirmed_reads_again(now);
        self.promote_caught_up_learner();
    }

    /// One read index request for every read asked for in this turn.
    fn ask_read_index(&mut self) {
        if !self.reads.forming() {
            return;
        }
        let id = self.new_request_id();
        if self.reads.form_group(id, Instant::now()) {
            self.raw.read_index(id.to_le_bytes().to_vec());
        }
    }

    fn ask_unconfirmed_reads_again(&mut self, now: Instant) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        for id in self.reads.due_again(now) {
            self.raw.read_index(id.to_le_bytes().to_vec());
        }
    }

    fn status(&self) -> ServerStatus {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf().to_conf_state();
        let id = self.config.id;
        let is_leader = raft.state == StateRole::Leader;
        let role = if !conf.voters.contains(&id) && !conf.learners.contains(&id) {
            RaftRole::Removed
        } else if conf.learners.contains(&id) {
            RaftRole::Learner
        } else {
            match raft.state {
                StateRole::Leader => RaftRole::Leader,
                StateRole::Follower => RaftRole::Follower,
                StateRole::Candidate => RaftRole::Candidate,
                StateRole::PreCandidate => RaftRole::PreCandidate,
            }
        };
        let members: Vec<Member> = self
            .state()
            .members()
            .map(|m| Member {
                matched: if is_leader { raft.prs().get(m.id).map(|p| p.matched) } else { None },
                ..m.clone()
            })
            .collect();
        let store = self.raw.store();
        ServerStatus {
            id,
            address: self.transport.own_address().to_owned(),
            role,
            leader: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            first_index: store.first_index().unwrap_or(0),
            last_index: raft.raft_log.last_index(),
            snapshot_index: store.snapshot_index(),
            members,
            blocked_peers: self.transport.faults().blocked(),
        }
    }
}

/// Starts the Raft thread and returns the handle to it and the thread's join handle.
pub(crate) fn spawn(
    node_config: NodeConfig,
    storage: RaftStorage,
    state: Arc<RwLock<ClusterState>>,
    metrics: Arc<ServerMetrics>,
    transport_for: impl FnOnce(Sender<Input>) -> Arc<PeerTransport>,
) -> Result<(RaftHandle, std::thread::JoinHandle<Result<(), StorageError>>), raft::Error> {
    let (inputs, receiver) = std::sync::mpsc::channel();
    let transport = transport_for(inputs.clone());
    let wait_limit = node_config.request_timeout + Duration::from_secs(1);
    let id = node_config.id;
    let leader = Arc::new(AtomicU64::new(0));
    let (applied_shared, applied) = watch::channel(storage.snapshot_index());
    let node_watches = SharedNodeWatches::default();
    let node_directory = Arc::new(NodeDirectory::of(&state.read()));
    let published = Published {
        leader: Arc::clone(&leader),
        applied: applied_shared,
        node_watches: Arc::clone(&node_watches),
        node_directory: Arc::clone(&node_directory),
        metrics: Arc::clone(&metrics),
    };
    let node = Node::new(node_config, storage, Arc::clone(&state), transport, published, inputs.clone())?;
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || node.run(receiver))
        .map_err(raft::Error::Io)?;
    let handle =
        RaftHandle { inputs, state, wait_limit, id, leader, applied, node_watches, node_directory, metrics };
    Ok((handle, thread))
}
