//! The async side's way into the Raft thread: a channel of inputs, and the
//! shared state, leader and applied index that the thread publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use flotilla_api::ServerStatus;
use parking_lot::RwLock;
use raft::eraftpb::Message;
use tokio::sync::{oneshot, watch};

use super::error::RaftError;
use super::membership::MembershipChange;
use super::node_directory::NodeDirectory;
use super::node_watches::SharedNodeWatches;
use super::pending::Reply;
use super::snapshot_files::SnapshotFile;
use super::state_read::StateRead;
use super::storage::StorageError;
use crate::metrics::ServerMetrics;
use crate::state::{ClusterState, Command, CommandOutput, Idempotency};

pub(crate) enum Input {
    Propose {
        command: Box<Command>,
        once: Option<Idempotency>,
        reply: Reply<CommandOutput>,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: Reply<()>,
    },
    ReadIndex {
        reply: Reply<()>,
    },
    Messages(Vec<Message>),
    Unreachable(u64),
    SnapshotReported {
        to: u64,
        ok: bool,
    },
    /// The persist thread wrote what it was handed; the Raft thread asks it how far.
    Persisted,
    /// The snapshot thread has its own copy of the state, made in this
    /// long: applies go on.
    SnapshotCopied(Duration),
    /// The snapshot thread's file, or why it could not write it.
    SnapshotWritten(Result<SnapshotFile, StorageError>),
    Status {
        reply: oneshot::Sender<ServerStatus>,
    },
    Shutdown,
}

/// The async side's way into the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    pub(super) inputs: Sender<Input>,
    pub(super) state: Arc<RwLock<ClusterState>>,
    /// Upper bound on waiting for a reply, a little above the node's own
    /// timeout so the node's clearer error normally wins.
    pub(super) wait_limit: Duration,
    pub(super) id: u64,
    /// The leader this server last heard of (0: none), for leader-only loops.
    pub(super) leader: Arc<AtomicU64>,
    /// The applied index, for loops and blocking queries that wait for change.
    pub(super) applied: watch::Receiver<u64>,
    /// What this server measures; the Raft thread records into it too.
    pub(super) metrics: Arc<ServerMetrics>,
    /// Each node's latest change, for its agent's long-poll.
    pub(super) node_watches: SharedNodeWatches,
    /// Each node's status as applied here, read without the state's lock.
    pub(super) node_directory: Arc<NodeDirectory>,
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
        self.propose_once(command, None).await
    }

    /// Proposes a client's write, applied at most once for its idempotency
    /// key. Once the write is handed to Raft, any failure but a refusal is
    /// `OutcomeUnknown`: the client may retry only with the same key.
    pub async fn propose_once(
        &self,
        command: Command,
        once: Option<Idempotency>,
    ) -> Result<CommandOutput, RaftError> {
        let (reply, answer) = oneshot::channel();
        let proposed = std::time::Instant::now();
        self.inputs
            .send(Input::Propose { command: Box::new(command), once, reply })
            .map_err(|_| RaftError::Stopped)?;
        let answered = match tokio::time::timeout(self.wait_limit, answer).await {
            Ok(Ok(result)) => result.map_err(RaftError::after_proposal),
            Ok(Err(_)) => Err(RaftError::Stopped.after_proposal()),
            Err(_) => Err(RaftError::Timeout(self.wait_limit).after_proposal()),
        };
        ServerMetrics::observe(&self.metrics.raft_proposal_seconds, proposed.elapsed());
        answered
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
    ///
    /// The lock may be held (or, being fair, waited for) by the Raft thread
    /// applying entries, for up to its apply budget. A request handler
    /// that waited for it on one of the runtime's two workers stopped that
    /// worker serving anything else meanwhile, heartbeats among them (at a
    /// million replicas, 64 clients deploying and listing read the state on
    /// the leader's workers while it applied). On a worker, the wait now
    /// hands the worker's other requests to another thread
    /// (`block_in_place`); elsewhere (the Raft and blocking threads, a
    /// single-threaded runtime in tests) it waits in place.
    #[track_caller]
    pub fn state(&self) -> StateRead<'_> {
        let caller = std::panic::Location::caller();
        if let Some(guard) = self.state.try_read() {
            return StateRead::new(guard, caller);
        }
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let guard =
            if on_worker { tokio::task::block_in_place(|| self.state.read()) } else { self.state.read() };
        StateRead::new(guard, caller)
    }

    pub(crate) fn deliver(&self, messages: Vec<Message>) -> Result<(), RaftError> {
        self.inputs.send(Input::Messages(messages)).map_err(|_| RaftError::Stopped)
    }

    pub fn shutdown(&self) {
        let _ = self.inputs.send(Input::Shutdown);
    }

    /// Where this server's counters and histograms are recorded.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// This server's Raft id.
    pub fn id(&self) -> u64 {
        self.id
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

    /// The index at which what `node`'s agent is told last changed, as it
    /// changes: an agent's long-poll waits on this, not on every write.
    pub fn node_watch(&self, node: &str) -> watch::Receiver<u64> {
        self.node_watches.subscribe(node, &self.state)
    }

    /// `node`'s status as this server applied it (`None`: not registered),
    /// without waiting for the state's lock: for heartbeats.
    pub fn node_status(&self, node: &str) -> Option<flotilla_api::NodeStatus> {
        self.node_directory.status(node)
    }

    /// The number of registered nodes, without the state's lock.
    pub fn node_count(&self) -> usize {
        self.node_directory.len()
    }
}
