//! Node health: the leader marks a node down once it has missed heartbeats
//! for a TTL plus a grace period; its allocations become lost and the
//! reconciler places them elsewhere.
//!
//! Liveness is leader memory, not Raft state: heartbeats every second from
//! every node would flood the log. A new leader has no history, so it gives
//! every node a full TTL before it marks any down.
//!
//! The leader answers every heartbeat, so their rate is bounded as Nomad
//! bounds it: past `heartbeats_per_second` nodes, each node is asked to
//! beat less often (10,000 nodes at 2,000 beats/s: every 5 s), and the TTL
//! grows with the interval, so that a large cluster costs the leader a fixed
//! budget rather than one answer per node per second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_api::{AllocationUsage, NodeStatus, TlsReport};

use crate::raft::RaftHandle;
use crate::state::Command;

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// A node that has not sent a heartbeat for this long is overdue.
    pub ttl: Duration,
    /// Extra slack past the TTL before it is marked down.
    pub grace: Duration,
    /// The most heartbeats per second the leader asks of all nodes together.
    pub heartbeats_per_second: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            ttl: Duration::from_secs(3),
            grace: Duration::from_millis(500),
            heartbeats_per_second: 2000,
        }
    }
}

/// How often an agent beats unless asked to beat less often.
const AGENT_HEARTBEAT: Duration = Duration::from_secs(1);

/// Heartbeat intervals a node may be missing before it is overdue.
const MISSED_BEATS: u32 = 3;

impl HealthConfig {
    /// How often each of `nodes` nodes is asked to heartbeat, so that all of
    /// them together stay within the budget; an agent's own interval when
    /// that is within it.
    pub fn heartbeat_every(&self, nodes: usize) -> Duration {
        let budget = self.heartbeats_per_second.max(1) as f64;
        AGENT_HEARTBEAT.max(Duration::from_secs_f64(nodes as f64 / budget))
    }

    /// How long a node of a cluster of `nodes` may go unheard before it is
    /// overdue: the configured TTL, or a few of its heartbeat intervals when
    /// the budget has stretched them.
    pub fn ttl_for(&self, nodes: usize) -> Duration {
        let stretched = self.heartbeat_every(nodes);
        if stretched <= AGENT_HEARTBEAT { self.ttl } else { self.ttl.max(stretched * MISSED_BEATS) }
    }

    /// How long past its last heartbeat a node of a cluster of `nodes` is
    /// marked down: its TTL and the grace.
    pub fn down_after(&self, nodes: usize) -> Duration {
        self.ttl_for(nodes) + self.grace
    }
}

/// What the leader has heard from nodes lately.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: Mutex<HashMap<String, Instant>>,
    /// The latest usage sample of each allocation, for autoscaling.
    usage: Mutex<HashMap<u64, (AllocationUsage, Instant)>>,
    /// Each node's TLS as its agent last reported it, for a CA rotation.
    tls: Mutex<HashMap<String, TlsReport>>,
    /// Wakes the autoscaler when a beat brought samples, so that a load
    /// is acted on when it is seen, not at the autoscaler's next second.
    sampled: tokio::sync::Notify,
}

impl Liveness {
    pub fn beat(&self, node: &str, usage: &[AllocationUsage], tls: Option<&TlsReport>) {
        let now = Instant::now();
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_owned(), now);
        if let Some(report) = tls {
            self.tls.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_owned(), report.clone());
        }
        if usage.is_empty() {
            return;
        }
        let mut samples = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for sample in usage {
            samples.insert(sample.id, (*sample, now));
        }
        drop(samples);
        self.sampled.notify_one();
    }

    /// Returns once a beat has brought samples since the last call (at
    /// once if one did meanwhile).
    pub async fn sampled(&self) {
        self.sampled.notified().await;
    }

    /// Usage samples newer than `max_age`, by allocation.
    pub fn usage(&self, max_age: Duration) -> HashMap<u64, AllocationUsage> {
        let now = Instant::now();
        let mut samples = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|_, (_, at)| now.duration_since(*at) <= max_age * 4);
        samples
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) <= max_age)
            .map(|(id, (u, _))| (*id, *u))
            .collect()
    }

    /// The node's TLS as its agent last reported it while this server led.
    pub fn tls(&self, node: &str) -> Option<TlsReport> {
        self.tls.lock().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    fn forget_all(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.tls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// When the node was last heard from; a node never heard from counts as
    /// heard now (it just registered, or this server just became leader).
    fn last_seen(&self, node: &str, now: Instant) -> Instant {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()).entry(node.to_owned()).or_insert(now)
    }
}

/// Nodes overdue at `now`: a pure decision, for its own tests.
pub fn overdue<'a>(
    nodes: impl Iterator<Item = (&'a str, NodeStatus)>,
    last_seen: impl Fn(&str) -> Instant,
    now: Instant,
    down_after: Duration,
) -> Vec<String> {
    nodes
        .filter(|(_, status)| *status != NodeStatus::Down)
        .filter(|(name, _)| now.duration_since(last_seen(name)) > down_after)
        .map(|(name, _)| name.to_owned())
        .collect()
}

pub async fn run_node_health(raft: RaftHandle, liveness: std::sync::Arc<Liveness>, config: HealthConfig) {
    let mut was_leader = false;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        if raft.is_stopped() {
            return;
        }
        let leader = raft.is_leader();
        if leader && !was_leader {
            liveness.forget_all();
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        let (reader, seen, health) = (raft.clone(), std::sync::Arc::clone(&liveness), config.clone());
        // A look at every node, under the state's read lock: off the workers.
        let Some((down, limit)) = super::off_the_workers(move || {
            let now = Instant::now();
            let state = reader.state();
            let limit = health.down_after(state.node_count());
            let overdue = overdue(
                state.nodes().map(|n| (n.name.as_str(), n.status)),
                |n| seen.last_seen(n, now),
                now,
                limit,
            );
            let down: Vec<(String, u64)> = overdue
                .into_iter()
                .filter_map(|name| state.node(&name).map(|n| (name, n.ready_index)))
                .collect();
            (down, limit)
        })
        .await
        else {
            return;
        };
        for (name, ready_index) in down {
            // The state read above may be old by now: a heartbeat that came
            // meanwhile saves the node (and the state refuses the decision
            // if the node registered or came back since `ready_index`).
            if Instant::now().duration_since(liveness.last_seen(&name, Instant::now())) <= limit {
                continue;
            }
            tracing::warn!(node = %name, ready_index, "node missed its heartbeats; marking it down");
            let command =
                Command::MarkNodeDown { name: name.clone(), ready_index, now_ms: flotilla_api::now_ms() };
            if let Err(error) = raft.propose(command).await {
                tracing::warn!(node = %name, %error, "node not marked down");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_beat_with_samples_wakes_the_autoscaler_and_a_bare_beat_does_not() {
        let liveness = Liveness::default();
        let soon = Duration::from_millis(50);
        liveness.beat("a", &[], None);
        assert!(tokio::time::timeout(soon, liveness.sampled()).await.is_err(), "a beat without samples");
        let sample = AllocationUsage { id: 7, cpu_millis: 80.0, memory_bytes: 1 << 20 };
        liveness.beat("a", &[sample], None);
        tokio::time::timeout(soon, liveness.sampled()).await.expect("a beat with a sample wakes the waiter");
        assert_eq!(liveness.usage(Duration::from_secs(3)).get(&7), Some(&sample));
        assert!(tokio::time::timeout(soon, liveness.sampled()).await.is_err(), "one wake per beat");
    }

    #[test]
    fn a_node_is_down_only_past_ttl_plus_grace() {
        let config = HealthConfig::default();
        let start = Instant::now();
        let seen = |name: &str| match name {
            "fresh" => start,
            "late" => start - Duration::from_millis(3400),
            _ => start - Duration::from_millis(3600),
        };
        let nodes = [
            ("fresh", NodeStatus::Ready),
            ("late", NodeStatus::Ready),
            ("gone", NodeStatus::Ready),
            ("draining-gone", NodeStatus::Draining),
            ("already-down", NodeStatus::Down),
        ];
        let down = overdue(nodes.iter().map(|(n, s)| (*n, *s)), seen, start, config.down_after(nodes.len()));
        assert_eq!(down, vec!["gone".to_owned(), "draining-gone".to_owned()]);
    }

    #[test]
    fn a_large_cluster_beats_less_often_within_the_budget_and_waits_longer() {
        let config = HealthConfig { heartbeats_per_second: 2000, ..HealthConfig::default() };
        // (nodes, each node's interval, TTL before the grace)
        let table = [
            (0, 1.0, 3.0),
            (100, 1.0, 3.0),
            (2000, 1.0, 3.0),
            (4000, 2.0, 6.0),
            (10_000, 5.0, 15.0),
            (100_000, 50.0, 150.0),
        ];
        for (nodes, every, ttl) in table {
            assert_eq!(config.heartbeat_every(nodes), Duration::from_secs_f64(every), "{nodes} nodes");
            assert_eq!(config.ttl_for(nodes), Duration::from_secs_f64(ttl), "{nodes} nodes");
            let rate = nodes as f64 / config.heartbeat_every(nodes).as_secs_f64();
            assert!(rate <= 2000.0, "{nodes} nodes beat {rate}/s");
        }
    }

    #[test]
    fn a_node_of_a_large_cluster_is_overdue_only_past_its_longer_ttl() {
        let config = HealthConfig { heartbeats_per_second: 10, ..HealthConfig::default() };
        let start = Instant::now();
        let names: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
        // 50 nodes at 10 beats/s: every 5 s, overdue after 15 s + 0.5 s.
        let seen = |name: &str| match name {
            "n0" => start - Duration::from_secs(15),
            "n1" => start - Duration::from_secs(16),
            _ => start,
        };
        let limit = config.down_after(names.len());
        let down = overdue(names.iter().map(|n| (n.as_str(), NodeStatus::Ready)), seen, start, limit);
        assert_eq!(down, vec!["n1".to_owned()]);
    }
}
