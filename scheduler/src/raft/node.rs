//! The one thread that owns the `RawNode`.
//!
//! Storage calls block on fsync, so Raft runs on a dedicated OS thread and
//! everything else talks to it over a channel ([`RaftHandle`]). The thread
//! drains every input that is waiting before it handles a `Ready`, so many
//! proposals share one fsync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use flotilla_api::{Member, RaftRole, ServerStatus};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::storage::{RaftStorage, StorageError};
use super::transport::PeerTransport;
use crate::state::{ClusterState, Command, CommandOutput, Envelope, Rejection};

/// How the Raft thread is tuned; the defaults are DESIGN.md's.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// How long a proposal or read may wait to commit before it fails.
    pub request_timeout: Duration,
}

impl NodeConfig {
    pub fn new(id: u64) -> Self {
        NodeConfig {
            id,
            // 50 ms ticks, 100 ms heartbeats, 1 s election timeout: DESIGN.md's
            // timings, with finer ticks so that followers' randomized timeouts
            // rarely land on the same instant (fewer split votes on failover).
            tick: Duration::from_millis(50),
            election_ticks: 20,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RaftError {
    #[error("no leader is elected right now; retry shortly")]
    NoLeader,
    #[error("the leader changed before the request was committed; it may or may not have been applied")]
    LeaderChanged,
    #[error("the request was not committed within {0:?}")]
    Timeout(Duration),
    #[error("this server is shutting down")]
    Stopped,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("{0}")]
    Membership(String),
    #[error("leadership is moving to another server before this one is removed; retry")]
    LeaderMoving,
}

/// A change of the Raft configuration requested through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a non-voting learner; the leader promotes it once it has caught up.
    AddLearner {
        id: u64,
        address: String,
    },
    Remove {
        id: u64,
    },
}

/// Carried in a conf change entry's context: who to answer, and the address
/// every server must learn for an added member.
#[derive(Debug, Serialize, Deserialize)]
struct ConfChangeContext {
    origin: u64,
    request_id: u64,
    address: Option<String>,
}

type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

pub(crate) enum Input {
    Propose { command: Command, reply: Reply<CommandOutput> },
    ChangeMembership { change: MembershipChange, reply: Reply<()> },
    ReadIndex { reply: Reply<()> },
    Messages(Vec<Message>),
    Unreachable(u64),
    SnapshotReported { to: u64, ok: bool },
    Status { reply: oneshot::Sender<ServerStatus> },
    Shutdown,
}

/// The async side's way into the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    inputs: Sender<Input>,
    state: Arc<RwLock<ClusterState>>,
    /// Upper bound on waiting for a reply, a little above the node's own
    /// timeout so the node's clearer error normally wins.
    wait_limit: Duration,
    id: u64,
    /// The leader this server last heard of (0: none), for leader-only loops.
    leader: Arc<AtomicU64>,
    /// The applied index, for loops and blocking queries that wait for change.
    applied: watch::Receiver<u64>,
}

impl RaftHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Input) -> Result<T, RaftError> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(make(reply)).map_err(|_| RaftError::Stopped)?;
        match tokio::time::timeout(self.wait_limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout(self.wait_limit)),
        }
    }

    /// Proposes a command and waits until it is committed and applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandOutput, RaftError> {
        self.call(|reply| Input::Propose { command, reply }).await
    }

    /// Waits until this server has applied everything committed when the
    /// call was made (Raft's ReadIndex), so a read after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        self.call(|reply| Input::ReadIndex { reply }).await
    }

    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), RaftError> {
        self.call(|reply| Input::ChangeMembership { change, reply }).await
    }

    pub async fn status(&self) -> Result<ServerStatus, RaftError> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Status { reply }).map_err(|_| RaftError::Stopped)?;
        answer.await.map_err(|_| RaftError::Stopped)
    }

    /// This server's applied state, which may trail the leader's.
    pub fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn deliver(&self, messages: Vec<Message>) -> Result<(), RaftError> {
        self.inputs.send(Input::Messages(messages)).map_err(|_| RaftError::Stopped)
    }

    pub fn shutdown(&self) {
        let _ = self.inputs.send(Input::Shutdown);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed) == self.id
    }

    /// The leader this server last heard of.
    pub fn leader(&self) -> Option<u64> {
        Some(self.leader.load(Ordering::Relaxed)).filter(|l| *l != raft::INVALID_ID)
    }

    /// Whether the Raft thread has stopped (the server is shutting down).
    pub fn is_stopped(&self) -> bool {
        self.applied.has_changed().is_err()
    }

    /// Changes whenever this server applies entries.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

/// A request waiting for its entry to apply, and when it gives up.
struct Waiting<T> {
    reply: Reply<T>,
    deadline: Instant,
}

pub struct Node {
    raw: RawNode<RaftStorage>,
    config: NodeConfig,
    state: Arc<RwLock<ClusterState>>,
    transport: Arc<PeerTransport>,
    /// Next id for proposals and reads; seeded from the clock so that ids in
    /// entries from an earlier run of this server never match a new request.
    next_request: u64,
    proposals: HashMap<u64, Waiting<CommandOutput>>,
    membership: HashMap<u64, Waiting<()>>,
    /// Reads waiting for the leader to confirm the read index.
    reads_unconfirmed: HashMap<u64, Waiting<()>>,
    /// Reads with a confirmed index, waiting for it to be applied here.
    reads_confirmed: Vec<(u64, Waiting<()>)>,
    leader: u64,
    applied: u64,
    leader_shared: Arc<AtomicU64>,
    applied_shared: watch::Sender<u64>,
}

fn fail_all<T>(waiting: impl IntoIterator<Item = Waiting<T>>, error: &RaftError) {
    for w in waiting {
        let _ = w.reply.send(Err(error.clone()));
    }
}

fn corrupt_entry(index: u64, reason: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupted { path: "raft log".into(), what: format!("entry {index}: {reason}") }
}

impl Node {
    pub fn new(
        config: NodeConfig,
        storage: RaftStorage,
        state: Arc<RwLock<ClusterState>>,
        transport: Arc<PeerTransport>,
        leader_shared: Arc<AtomicU64>,
        applied_shared: watch::Sender<u64>,
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
            proposals: HashMap::new(),
            membership: HashMap::new(),
            reads_unconfirmed: HashMap::new(),
            reads_confirmed: Vec::new(),
            leader: 0,
            applied,
            leader_shared,
            applied_shared,
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
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.on_tick(now);
                next_tick = (next_tick + self.config.tick).max(now);
            }
            if let Err(error) = self.on_ready().and_then(|()| self.maybe_compact()) {
                break Err(error);
            }
        };
        let stopped = RaftError::Stopped;
        fail_all(self.proposals.drain().map(|(_, w)| w), &stopped);
        fail_all(self.membership.drain().map(|(_, w)| w), &stopped);
        fail_all(self.reads_unconfirmed.drain().map(|(_, w)| w), &stopped);
        fail_all(self.reads_confirmed.drain(..).map(|(_, w)| w), &stopped);
        result
    }

    fn new_request_id(&mut self) -> u64 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose { command, reply } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(RaftError::NoLeader));
                    return;
                }
                let request_id = self.new_request_id();
                let envelope = Envelope { origin: self.config.id, request_id, command };
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
                        self.proposals.insert(request_id, Waiting { reply, deadline });
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
                let id = self.new_request_id();
                self.raw.read_index(id.to_le_bytes().to_vec());
                let deadline = self.deadline();
                self.reads_unconfirmed.insert(id, Waiting { reply, deadline });
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
            Input::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Input::Shutdown => {}
        }
    }

    fn change_membership(&mut self, change: MembershipChange, reply: Reply<()>) {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let is_member = |id: u64| conf.voters.contains(&id) || conf.learners.contains(&id);
        let (change_type, id, address) = match change {
            MembershipChange::AddLearner { id, address } => {
                if is_member(id) {
                    let known = self.state().member(id).map(|m| m.address.clone());
                    let result = if known.as_deref() == Some(address.as_str()) {
                        Ok(())
                    } else {
                        Err(RaftError::Membership(format!(
                            "server {id} is already a member at {}",
                            known.unwrap_or_default()
                        )))
                    };
                    let _ = reply.send(result);
                    return;
                }
                (ConfChangeType::AddLearnerNode, id, Some(address))
            }
            MembershipChange::Remove { id } => {
                if !is_member(id) {
                    let _ = reply.send(Err(RaftError::Membership(format!("server {id} is not a member"))));
                    return;
                }
                if conf.voters == [id] {
                    let _ = reply.send(Err(RaftError::Membership(format!(
                        "server {id} is the only voter; removing it would leave no cluster"
                    ))));
                    return;
                }
                if self.raw.raft.leader_id == id {
                    let prs = self.raw.raft.prs();
                    let transferee = conf
                        .voters
                        .iter()
                        .copied()
                        .filter(|v| *v != id)
                        .max_by_key(|v| prs.get(*v).map_or(0, |p| p.matched));
                    if let Some(transferee) = transferee {
                        self.raw.transfer_leader(transferee);
                    }
                    let _ = reply.send(Err(RaftError::LeaderMoving));
                    return;
                }
                (ConfChangeType::RemoveNode, id, None)
            }
        };
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(RaftError::NoLeader));
            return;
        }
        let request_id = self.new_request_id();
        let context = ConfChangeContext { origin: self.config.id, request_id, address };
        match self.propose_conf_change(change_type, id, &context) {
            Ok(()) => {
                let deadline = self.deadline();
                self.membership.insert(request_id, Waiting { reply, deadline });
            }
            Err(error) => {
                let _ =
                    reply.send(Err(RaftError::Membership(format!("cannot change membership now: {error}"))));
            }
        }
    }

    fn propose_conf_change(
        &mut self,
        change_type: ConfChangeType,
        id: u64,
        context: &ConfChangeContext,
    ) -> Result<(), raft::Error> {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![single].into());
        let context = serde_json::to_vec(context).unwrap_or_default();
        self.raw.propose_conf_change(context, change)
    }

    fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn on_tick(&mut self, now: Instant) {
        let timeout = RaftError::Timeout(self.config.request_timeout);
        let late: Vec<u64> =
            self.proposals.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
        fail_all(late.iter().filter_map(|id| self.proposals.remove(id)), &timeout);
        let late: Vec<u64> =
            self.membership.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
        fail_all(late.iter().filter_map(|id| self.membership.remove(id)), &timeout);
        let late: Vec<u64> =
            self.reads_unconfirmed.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
        fail_all(late.iter().filter_map(|id| self.reads_unconfirmed.remove(id)), &timeout);
        let (late, keep): (Vec<_>, Vec<_>) =
            self.reads_confirmed.drain(..).partition(|(_, w)| w.deadline <= now);
        self.reads_confirmed = keep;
        fail_all(late.into_iter().map(|(_, w)| w), &timeout);
        self.promote_caught_up_learner();
    }

    /// A learner becomes a voter once it holds everything committed, so that
    /// adding a server never leaves the cluster waiting on a slow new voter.
    fn promote_caught_up_learner(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() {
            return;
        }
        let committed = raft.raft_log.committed;
        let learners = raft.prs().conf().to_conf_state().learners;
        let ready =
            learners.into_iter().find(|id| raft.prs().get(*id).is_some_and(|p| p.matched >= committed));
        if let Some(id) = ready {
            tracing::info!(member = id, "promoting caught-up learner to voter");
            let context = ConfChangeContext { origin: 0, request_id: 0, address: None };
            if let Err(error) = self.propose_conf_change(ConfChangeType::AddNode, id, &context) {
                tracing::warn!(member = id, %error, "cannot promote learner yet");
            }
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
            if let Some(waiting) = self.reads_unconfirmed.remove(&id) {
                self.reads_confirmed.push((read.index, waiting));
            }
        }
        self.apply_committed(ready.take_committed_entries())?;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.raw.mut_store().persist(ready.entries(), ready.hs())?;
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.apply_committed(light.take_committed_entries())?;
        self.raw.advance_apply();
        if *self.applied_shared.borrow() != self.applied {
            self.applied_shared.send_replace(self.applied);
        }
        self.answer_reads();
        Ok(())
    }

    fn on_leader_seen(&mut self, leader: u64) {
        if leader == self.leader {
            return;
        }
        tracing::info!(previous = self.leader, leader, term = self.raw.raft.term, "leader changed");
        if self.leader != raft::INVALID_ID {
            let error = RaftError::LeaderChanged;
            fail_all(self.proposals.drain().map(|(_, w)| w), &error);
            fail_all(self.membership.drain().map(|(_, w)| w), &error);
            fail_all(self.reads_unconfirmed.drain().map(|(_, w)| w), &error);
        }
        self.leader = leader;
        self.leader_shared.store(leader, Ordering::Relaxed);
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let (done, waiting): (Vec<_>, Vec<_>) =
            self.reads_confirmed.drain(..).partition(|(i, _)| *i <= applied);
        self.reads_confirmed = waiting;
        for (_, w) in done {
            let _ = w.reply.send(Ok(()));
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let index = snapshot.get_metadata().index;
        let restored: ClusterState = serde_json::from_slice(&snapshot.data)
            .map_err(|e| corrupt_entry(index, format!("snapshot: {e}")))?;
        self.raw.mut_store().install_snapshot(snapshot)?;
        tracing::info!(index, "installed snapshot from leader");
        self.transport.learn_members(restored.members());
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = restored;
        self.applied = index;
        Ok(())
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
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
                    let result = state.apply(entry.index, envelope.command);
                    if envelope.origin == self.config.id
                        && let Some(waiting) = self.proposals.remove(&envelope.request_id)
                    {
                        let _ = waiting.reply.send(result.map_err(RaftError::from));
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
                        && let Some(waiting) = self.membership.remove(&context.request_id)
                    {
                        let answer = result.map_err(|e| RaftError::Membership(e.to_string()));
                        let _ = waiting.reply.send(answer.map(|_| ()));
                    }
                }
            }
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), StorageError> {
        let every = self.config.snapshot_every;
        let wanted = self.raw.store().take_snapshot_request();
        if self.applied < self.raw.store().snapshot_index() + every
            && !(wanted && self.applied > self.raw.store().snapshot_index())
        {
            return Ok(());
        }
        let index = self.applied;
        let term = self.raw.store().term(index).map_err(|e| corrupt_entry(index, e))?;
        let data = serde_json::to_vec(&*self.state()).map_err(|e| corrupt_entry(index, e))?;
        let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        let keep_from = index.saturating_sub(every / 2) + 1;
        self.raw.mut_store().compact(snapshot, keep_from)?;
        tracing::info!(index, keep_from, "took snapshot and compacted the log");
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
        }
    }
}

/// Starts the Raft thread and returns the handle to it and the thread's join handle.
pub(crate) fn spawn(
    node_config: NodeConfig,
    storage: RaftStorage,
    state: Arc<RwLock<ClusterState>>,
    transport_for: impl FnOnce(Sender<Input>) -> Arc<PeerTransport>,
) -> Result<(RaftHandle, std::thread::JoinHandle<Result<(), StorageError>>), raft::Error> {
    let (inputs, receiver) = std::sync::mpsc::channel();
    let transport = transport_for(inputs.clone());
    let wait_limit = node_config.request_timeout + Duration::from_secs(1);
    let id = node_config.id;
    let leader = Arc::new(AtomicU64::new(0));
    let (applied_shared, applied) = watch::channel(storage.snapshot_index());
    let node =
        Node::new(node_config, storage, Arc::clone(&state), transport, Arc::clone(&leader), applied_shared)?;
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || node.run(receiver))
        .map_err(raft::Error::Io)?;
    Ok((RaftHandle { inputs, state, wait_limit, id, leader, applied }, thread))
}
