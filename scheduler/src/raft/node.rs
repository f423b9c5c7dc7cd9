//! The one thread that owns the `RawNode`.
//!
//! Storage calls block on fsync, so Raft runs on a dedicated OS thread and
//! everything else talks to it over a channel ([`RaftHandle`]). The thread
//! drains every input that is waiting before it handles a `Ready`, so many
//! proposals share one fsync. Nothing on it waits for the size of the
//! state: snapshots are written by a thread of their own while applies wait
//! in a queue (`snapshots.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use flotilla_api::{Member, RaftRole, ServerStatus};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use tokio::sync::watch;

use super::commit_clock::CommitClock;
use super::error::RaftError;
use super::handle::{Input, RaftHandle};
use super::membership::ConfChangeContext;
use super::node_watches::SharedNodeWatches;
use super::pending::Pending;
use super::reads::Reads;
use super::snapshot_files::SnapshotFile;
use super::snapshots::SnapshotJob;
use super::storage::{RaftStorage, StorageError};
use super::transport::PeerTransport;
use crate::metrics::ServerMetrics;
use crate::state::{ClusterState, CommandOutput, Envelope};

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
    reads: Reads,
    leader: u64,
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
    commit_clock: CommitClock,
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
    /// Where the thread records leader changes, commit latency and snapshots.
    pub(super) metrics: Arc<ServerMetrics>,
}

pub(super) fn corrupt_entry(index: u64, reason: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupted { path: "raft log".into(), what: format!("entry {index}: {reason}") }
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
        })
    }

    /// Runs the node until shutdown, or until storage fails (which must stop
    /// the server: continuing could acknowledge writes it did not keep).
    pub(crate) fn run(mut self, inputs: Receiver<Input>) -> Result<(), StorageError> {
        let mut next_tick = Instant::now() + self.config.tick;
        let result = loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut stop = false;
            match inputs.recv_timeout(wait) {
                Ok(Input::Shutdown) | Err(RecvTimeoutError::Disconnected) => stop = true,
                Ok(input) => {
                    self.handle(input);
                    while let Ok(input) = inputs.try_recv() {
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
            self.ask_read_index();
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.on_tick(now);
                next_tick = (next_tick + self.config.tick).max(now);
            }
            let turn =
                self.on_ready().and_then(|()| self.finish_snapshot()).and_then(|()| self.maybe_snapshot());
            if let Err(error) = turn {
                break Err(error);
            }
        };
        if let Some(job) = self.snapshot_job.take() {
            job.wait();
        }
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
            Input::SnapshotWritten(result) => self.snapshot_written = Some(result),
            Input::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Input::Shutdown => {}
        }
    }

    pub(super) fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(soft) = ready.ss() {
            self.on_leader_seen(soft.leader_id);
        }
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for read in ready.take_read_states() {
            let id = read.request_ctx.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0);
            self.reads.confirm(id, read.index);
        }
        self.apply_committed(ready.take_committed_entries())?;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            let started = Instant::now();
            self.raw.mut_store().persist(ready.entries(), ready.hs())?;
            ServerMetrics::observe(&self.published.metrics.raft_persist_seconds, started.elapsed());
        }
        if let Some(last) = ready.entries().last()
            && self.raw.raft.state == StateRole::Leader
        {
            self.commit_clock.appended(last.index, Instant::now());
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply_committed(light.take_committed_entries())?;
        self.applied_moved();
        self.time_commits();
        Ok(())
    }

    /// Records how long the leader's newly committed batches took to commit.
    fn time_commits(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.commit_clock.clear();
            return;
        }
        for waited in self.commit_clock.committed(self.raw.raft.raft_log.committed, Instant::now()) {
            ServerMetrics::observe(&self.published.metrics.raft_commit_seconds, waited);
        }
    }

    /// Tells Raft, blocking queries and waiting reads how far this server
    /// has applied.
    pub(super) fn applied_moved(&mut self) {
        self.raw.advance_apply_to(self.applied);
        if *self.published.applied.borrow() != self.applied {
            self.published.applied.send_replace(self.applied);
        }
        self.reads.answer_applied(self.applied);
    }

    fn on_leader_seen(&mut self, leader: u64) {
        if leader == self.leader {
            return;
        }
        tracing::info!(previous = self.leader, leader, term = self.raw.raft.term, "leader changed");
        self.published.metrics.raft_leader_changes.inc();
        if self.leader != raft::INVALID_ID {
            let error = RaftError::LeaderChanged;
            self.proposals.fail_all(&error);
            self.membership.fail_all(&error);
            self.reads.fail_unconfirmed(&error);
        }
        self.leader = leader;
        self.published.leader.store(leader, Ordering::Relaxed);
    }

    /// Applies committed entries, after those that waited; while a
    /// snapshot is written they wait too.
    pub(super) fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if self.snapshot_job.is_some() {
            self.unapplied.extend(entries);
            return Ok(());
        }
        // Without a queue (nearly always) the batch is applied as it came,
        // neither copied nor allocated again.
        let entries = if self.unapplied.is_empty() {
            entries
        } else {
            let mut waited = std::mem::take(&mut self.unapplied);
            waited.extend(entries);
            waited
        };
        if entries.is_empty() {
            return Ok(());
        }
        let state = Arc::clone(&self.state);
        let mut state = state.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            self.applied = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    let envelope: Envelope =
                        serde_json::from_slice(&entry.data).map_err(|e| corrupt_entry(entry.index, e))?;
                    let result = state.apply_once(entry.index, envelope.once, envelope.command);
                    if envelope.origin == self.config.id {
                        self.proposals.answer(envelope.request_id, result.map_err(RaftError::from));
                    }
                }
                EntryType::EntryConfChange => {
                    let change = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| corrupt_entry(entry.index, e))?;
                    if let Err(error) = self.raw.apply_conf_change(&change) {
                        tracing::warn!(%error, index = entry.index, "conf change refused");
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let change = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| corrupt_entry(entry.index, e))?;
                    let context: Option<ConfChangeContext> = serde_json::from_slice(&entry.context).ok();
                    let result = self.raw.apply_conf_change(&change);
                    if result.is_ok() {
                        for single in change.get_changes() {
                            let address = context.as_ref().and_then(|c| c.address.clone());
                            match single.get_change_type() {
                                ConfChangeType::AddNode => state.add_member(single.node_id, address, true),
                                ConfChangeType::AddLearnerNode => {
                                    state.add_member(single.node_id, address, false)
                                }
                                ConfChangeType::RemoveNode => state.remove_member(single.node_id),
                            }
                        }
                        self.transport.learn_members(state.members());
                        tracing::info!(index = entry.index, changes = ?change.get_changes(), "membership changed");
                    }
                    if let Some(context) = context
                        && context.origin == self.config.id
                    {
                        let answer = result.map_err(|e| RaftError::Membership(e.to_string()));
                        self.membership.answer(context.request_id, answer.map(|_| ()));
                    }
                }
            }
        }
        let changed = state.take_recent_node_changes();
        drop(state);
        self.published.node_watches.publish(changed);
        Ok(())
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
    let published = Published {
        leader: Arc::clone(&leader),
        applied: applied_shared,
        node_watches: Arc::clone(&node_watches),
        metrics: Arc::clone(&metrics),
    };
    let node = Node::new(node_config, storage, Arc::clone(&state), transport, published, inputs.clone())?;
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || node.run(receiver))
        .map_err(raft::Error::Io)?;
    Ok((RaftHandle { inputs, state, wait_limit, id, leader, applied, node_watches, metrics }, thread))
}
