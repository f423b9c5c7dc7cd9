//! Agents' long-polls for their allocations, answered in batches under one
//! read of the state each.
//!
//! A plan wakes the long-polls of every node it places on, thousands at
//! once. Each read once waited for the state's lock on a blocking thread of
//! its own (on the runtime's few workers it would have held up every other
//! request, heartbeats among them): at a million replicas the leader ran
//! hundreds of such threads, all made runnable together whenever the Raft
//! thread let go of the state. Now the reads queue, and a few blocking
//! tasks answer them a batch at a time, letting go of the state between
//! slices so that the Raft thread's applies are not held up behind a long
//! queue. (That bounds the threads; it did not make a million replicas
//! start faster on two cores: see BENCHMARKS.md.)

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_api::NodeAllocations;
use tokio::sync::oneshot;

use super::AppState;
use super::error::ApiError;

/// How long one slice of the queue holds the state: a tenth of the time a
/// Raft turn waits for readers before it leaves its entries for later.
const SLICE: Duration = Duration::from_millis(1);

/// Tasks answering at once, at most.
const DRAINERS: usize = 4;

/// Reads one task takes from the queue at a time, so that a long queue is
/// shared among the tasks.
const BATCH: usize = 256;

/// One long-poll's read: the node, the state index its answer is at, and
/// whether it wants only what changed after an index.
struct NodeRead {
    node: String,
    index: u64,
    since: Option<u64>,
    answer: oneshot::Sender<Result<NodeAllocations, ApiError>>,
}

#[derive(Default)]
struct Queue {
    /// Oldest first.
    waiting: VecDeque<NodeRead>,
    /// Tasks answering the queue: a read that arrives while fewer than
    /// `DRAINERS` are starts one more.
    draining: usize,
}

#[derive(Default)]
pub struct NodeReads {
    queue: Mutex<Queue>,
}

impl NodeReads {
    /// What `node`'s agent is to be told at `index` (only what changed
    /// after `since`, when set), read with whatever else is queued.
    pub async fn read(
        app: &AppState,
        node: String,
        index: u64,
        since: Option<u64>,
    ) -> Result<NodeAllocations, ApiError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = app.node_reads.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push_back(NodeRead { node, index, since, answer });
            let start = queue.draining < DRAINERS;
            if start {
                queue.draining += 1;
            }
            start
        };
        if start {
            let app = app.clone();
            tokio::task::spawn_blocking(move || drain(&app));
        }
        answered
            .await
            .map_err(|_| ApiError::Internal("the read of a node's allocations was dropped".into()))?
    }
}

/// Answers the queue until it is empty, a slice of reads per read of the
/// state.
fn drain(app: &AppState) {
    let _draining = Draining(app);
    loop {
        let batch = {
            let mut queue = app.node_reads.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.waiting.is_empty() {
                queue.draining -= 1;
                return;
            }
            let taken = queue.waiting.len().min(BATCH);
            queue.waiting.drain(..taken).collect::<Vec<_>>()
        };
        let mut reads = batch.into_iter().peekable();
        while reads.peek().is_some() {
            let state = app.raft.state();
            let started = Instant::now();
            for read in reads.by_ref() {
                let answer =
                    super::nodes::node_allocations_at(app, &state, &read.node, read.index, read.since);
                // A long-poll whose agent went away no longer waits for it.
                let _ = read.answer.send(answer);
                if started.elapsed() >= SLICE {
                    break;
                }
            }
        }
    }
}

/// Gives up this task's place should it panic, so that one bad read does
/// not leave the later ones to fewer tasks, or none.
struct Draining<'a>(&'a AppState);

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.node_reads.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.draining = queue.draining.saturating_sub(1);
        }
    }
}
