//! Node health: the leader marks a node down once it has missed heartbeats
//! for a TTL plus a grace period; its allocations become lost and the
//! reconciler places them elsewhere.
//!
//! Liveness is leader memory, not Raft state: heartbeats every second from
//! every node would flood the log. A new leader has no history, so it gives
//! every node a full TTL before it marks any down.

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
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { ttl: Duration::from_secs(3), grace: Duration::from_millis(500) }
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
}

impl Liveness {
    pub fn beat(&self, node: &str, usage: &[AllocationUsage], tls: Option<&TlsReport>) {
        let now = Instant::now();
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_owned(), now);
        if let Some(report) = tls {
            self.tls.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_owned(), report.clone());
        }
        let mut samples = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for sample in usage {
            samples.insert(sample.id, (*sample, now));
        }
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
    config: &HealthConfig,
) -> Vec<String> {
    nodes
        .filter(|(_, status)| *status != NodeStatus::Down)
        .filter(|(name, _)| now.duration_since(last_seen(name)) > config.ttl + config.grace)
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
        let now = Instant::now();
        let down: Vec<(String, u64)> = {
            let state = raft.state();
            let overdue = overdue(
                state.nodes().map(|n| (n.name.as_str(), n.status)),
                |n| liveness.last_seen(n, now),
                now,
                &config,
            );
            overdue.into_iter().filter_map(|name| state.node(&name).map(|n| (name, n.ready_index))).collect()
        };
        for (name, ready_index) in down {
            // The state read above may be old by now: a heartbeat that came
            // meanwhile saves the node (and the state refuses the decision
            // if the node registered or came back since `ready_index`).
            if Instant::now().duration_since(liveness.last_seen(&name, Instant::now()))
                <= config.ttl + config.grace
            {
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
        let down = overdue(nodes.iter().map(|(n, s)| (*n, *s)), seen, start, &config);
        assert_eq!(down, vec!["gone".to_owned(), "draining-gone".to_owned()]);
    }
}
