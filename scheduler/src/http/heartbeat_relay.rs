//! How a follower passes its agents' heartbeats on to the leader, which
//! alone keeps liveness: in batches, one request carrying every heartbeat
//! that arrived while the batches before it were in flight, each heartbeat
//! still getting the leader's own answer.
//!
//! One request a heartbeat ran into the leader's limit of 200 streams on a
//! connection (hyper's default), and a follower holds one connection to the
//! leader: with ten thousand nodes, heartbeats queued on the followers for
//! seconds (18 % of those through a follower took over 8 s) while the leader
//! answered each it received in under a millisecond, and nodes were marked
//! down. A batch costs the leader one request instead of hundreds, and adds
//! no wait when the leader is quick: a batch leaves as soon as a slot is free.

use std::future::Future;
use std::sync::Arc;

use flotilla_api::{ApiErrorBody, Heartbeat, HeartbeatAnswer};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::error::ApiError;
use super::leader::LeaderLink;
use crate::member_http::MemberHttp;
use crate::raft::{PeerTransport, RaftHandle};

/// Where a follower sends its batches on the leader.
pub const RELAY_PATH: &str = "/v1/relay/heartbeats";

/// The most heartbeats in one batch: the body stays well under the node
/// body limit (16 MiB) for nodes of a few hundred allocations each.
const MAX_BATCH: usize = 256;

/// Batches in flight at once: enough that one slow answer does not hold up
/// the heartbeats behind it, few enough that the rest wait and join a batch.
const MAX_IN_FLIGHT: usize = 4;

/// One node's heartbeat, as a follower passes it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayedHeartbeat {
    pub node: String,
    pub heartbeat: Heartbeat,
}

/// The leader's answer to one heartbeat of a batch: what it answers a
/// heartbeat sent to it directly, or its refusal (404: register again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayedAnswer {
    Answered(HeartbeatAnswer),
    Refused { status: u16, error: ApiErrorBody },
}

impl RelayedAnswer {
    /// The answer as a heartbeat handler on the leader gave it.
    pub fn from_result(result: Result<HeartbeatAnswer, ApiError>) -> Self {
        match result {
            Ok(answer) => RelayedAnswer::Answered(answer),
            Err(error) => {
                let (status, error) = error.status_and_body();
                RelayedAnswer::Refused { status: status.as_u16(), error }
            }
        }
    }

    /// What the follower answers its agent.
    fn into_result(self) -> Result<HeartbeatAnswer, ApiError> {
        match self {
            RelayedAnswer::Answered(answer) => Ok(answer),
            RelayedAnswer::Refused { status, error } => Err(ApiError::from_status(status, error)),
        }
    }
}

/// How batches reach the leader: over HTTP in a server, in memory in tests.
pub trait LeaderHeartbeats: Send + Sync + 'static {
    /// The leader's answers, one for each heartbeat and in their order.
    fn send(
        &self,
        batch: Vec<RelayedHeartbeat>,
    ) -> impl Future<Output = Result<Vec<RelayedAnswer>, ApiError>> + Send;
}

/// Batches sent over HTTP to whichever server leads.
pub struct HttpLeader {
    pub raft: RaftHandle,
    pub transport: Arc<PeerTransport>,
    pub http: MemberHttp,
}

impl LeaderHeartbeats for HttpLeader {
    async fn send(&self, batch: Vec<RelayedHeartbeat>) -> Result<Vec<RelayedAnswer>, ApiError> {
        let link = LeaderLink { raft: &self.raft, transport: &self.transport, http: &self.http };
        link.forward(axum::http::Method::POST, RELAY_PATH, Some(&batch)).await
    }
}

/// A heartbeat waiting for its batch, and where its answer goes.
struct Waiting {
    beat: RelayedHeartbeat,
    answer: oneshot::Sender<Result<HeartbeatAnswer, ApiError>>,
}

/// The follower's side: handlers hand heartbeats to it and wait for the
/// leader's answer. Its task ends when the last handle is dropped.
#[derive(Clone)]
pub struct HeartbeatRelay {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl HeartbeatRelay {
    /// Starts the task that sends batches through `leader`.
    pub fn start(leader: impl LeaderHeartbeats) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(Arc::new(leader), waiting));
        HeartbeatRelay { queue }
    }

    /// Queues `heartbeat` from `node` at once; the leader's answer.
    pub fn relay(
        &self,
        node: String,
        heartbeat: Heartbeat,
    ) -> impl Future<Output = Result<HeartbeatAnswer, ApiError>> + use<> {
        let (answer, answered) = oneshot::channel();
        let queued = self.queue.send(Waiting { beat: RelayedHeartbeat { node, heartbeat }, answer });
        async move {
            let stopped =
                || ApiError::Unavailable { code: "stopping", message: "this server is stopping".into() };
            queued.map_err(|_| stopped())?;
            answered.await.map_err(|_| stopped())?
        }
    }
}

/// Takes what has queued up, up to a batch, whenever a slot is free.
async fn send_batches(leader: Arc<impl LeaderHeartbeats>, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let leader = Arc::clone(&leader);
        tokio::spawn(async move {
            send_batch(&*leader, batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch and hands each heartbeat its answer: the leader's, or,
/// when the batch failed as a whole, why.
async fn send_batch(leader: &impl LeaderHeartbeats, batch: Vec<Waiting>) {
    let (beats, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.beat, w.answer)).unzip();
    let count = beats.len();
    match leader.send(beats).await {
        Ok(results) if results.len() == count => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result.into_result());
            }
        }
        Ok(results) => {
            let error = ApiError::Unavailable {
                code: "leader_unreachable",
                message: format!("the leader answered {} of {count} heartbeats", results.len()),
            };
            answers.into_iter().for_each(|answer| drop(answer.send(Err(error.clone()))));
        }
        Err(error) => answers.into_iter().for_each(|answer| drop(answer.send(Err(error.clone())))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use flotilla_api::NodeStatus;
    use tokio::sync::Notify;

    use super::*;

    /// A leader that holds every batch until let go, records the batches'
    /// sizes, and answers each heartbeat with its node's number in `stop`,
    /// so that each caller can tell its own answer.
    struct HeldLeader {
        sizes: Mutex<Vec<usize>>,
        arrived: Notify,
        let_go: Semaphore,
        refuse: Option<ApiError>,
    }

    fn held_leader(refuse: Option<ApiError>) -> Arc<HeldLeader> {
        Arc::new(HeldLeader {
            sizes: Mutex::default(),
            arrived: Notify::new(),
            let_go: Semaphore::new(0),
            refuse,
        })
    }

    impl LeaderHeartbeats for Arc<HeldLeader> {
        async fn send(&self, batch: Vec<RelayedHeartbeat>) -> Result<Vec<RelayedAnswer>, ApiError> {
            self.sizes.lock().expect("sizes").push(batch.len());
            self.arrived.notify_one();
            self.let_go.acquire().await.expect("open").forget();
            if let Some(error) = &self.refuse {
                return Err(error.clone());
            }
            Ok(batch
                .iter()
                .map(|beat| {
                    if beat.node == "unknown" {
                        return RelayedAnswer::from_result(Err(ApiError::NotFound("not registered".into())));
                    }
                    let number = beat.node.trim_start_matches("n-").parse().expect("a node number");
                    RelayedAnswer::Answered(HeartbeatAnswer {
                        status: NodeStatus::Ready,
                        stop: vec![number],
                        trust: None,
                        next_in_ms: None,
                    })
                })
                .collect())
        }
    }

    async fn until_batches(leader: &HeldLeader, count: usize) {
        while leader.sizes.lock().expect("sizes").len() < count {
            leader.arrived.notified().await;
        }
    }

    #[tokio::test]
    async fn heartbeats_that_arrive_while_batches_are_in_flight_go_together_and_each_gets_its_own_answer() {
        const CALLS: u64 = 300;
        let leader = held_leader(None);
        let relay = HeartbeatRelay::start(Arc::clone(&leader));
        let queued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..CALLS {
            let (relay, queued) = (relay.clone(), Arc::clone(&queued));
            calls.spawn(async move {
                // `relay` queues the heartbeat before its first wait.
                let answer = relay.relay(format!("n-{n}"), Heartbeat::default());
                queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (n, answer.await)
            });
            if n < MAX_IN_FLIGHT as u64 {
                until_batches(&leader, n as usize + 1).await;
            }
        }
        // Every slot is taken: what arrived since waits, and leaves together.
        while queued.load(std::sync::atomic::Ordering::SeqCst) < CALLS {
            tokio::task::yield_now().await;
        }
        leader.let_go.add_permits(1000);
        let mut answered = 0;
        while let Some(call) = calls.join_next().await {
            let (n, result) = call.expect("no panic");
            assert_eq!(result.expect("answered").stop, vec![n], "node n-{n} got another node's answer");
            answered += 1;
        }
        assert_eq!(answered, CALLS);
        let sizes = leader.sizes.lock().expect("sizes").clone();
        assert_eq!(&sizes[..MAX_IN_FLIGHT], &[1; MAX_IN_FLIGHT], "{sizes:?}");
        let most = MAX_IN_FLIGHT + (CALLS as usize - MAX_IN_FLIGHT).div_ceil(MAX_BATCH);
        assert!(sizes.len() <= most, "the rest went in full batches: {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), CALLS as usize);
    }

    #[tokio::test]
    async fn a_refusal_reaches_only_its_own_heartbeat() {
        let leader = held_leader(None);
        leader.let_go.add_permits(10);
        let relay = HeartbeatRelay::start(Arc::clone(&leader));
        let error = relay.relay("unknown".into(), Heartbeat::default()).await.expect_err("unknown node");
        assert!(matches!(error, ApiError::NotFound(_)), "{error:?}");
        let answer = relay.relay("n-7".into(), Heartbeat::default()).await.expect("answered");
        assert_eq!(answer.stop, vec![7]);
    }

    #[tokio::test]
    async fn a_batch_the_leader_cannot_take_fails_every_heartbeat_in_it_as_retryable() {
        let refusal =
            ApiError::Unavailable { code: "no_leader", message: "no leader is elected right now".into() };
        let leader = held_leader(Some(refusal));
        leader.let_go.add_permits(10);
        let relay = HeartbeatRelay::start(Arc::clone(&leader));
        let error = relay.relay("n-1".into(), Heartbeat::default()).await.expect_err("no leader");
        assert!(matches!(error, ApiError::Unavailable { code: "no_leader", .. }), "{error:?}");
    }
}
