//! What a server tells Prometheus at `/metrics` (OpenMetrics text, through
//! `prometheus-client`): Raft progress and latency, the reconciler's and
//! the placer's work, the autoscaler's decisions, what the state holds, and
//! every API route's traffic. Counters and histograms are recorded where
//! things happen; gauges of the state are read when scraped, so they cost
//! nothing between scrapes. README.md's METRICS section lists them all.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::ClusterState;

/// One label: its name and value.
pub type Label = (&'static str, String);

/// Seconds from 0.5 ms to about 33 s: fsyncs, commits, passes and API
/// calls all fall in it.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    pub raft_term: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_leader: Gauge,
    /// How often this server saw the leader change: elections a fault did
    /// not cause show up here first.
    pub raft_leader_changes: Counter,
    /// A write's wait from its proposal to its answer (committed and applied).
    pub raft_proposal_seconds: Histogram,
    /// On the leader, from entries appended to its log to their commit by a
    /// majority: replication and the followers' fsyncs.
    pub raft_commit_seconds: Histogram,
    /// Writing a ready's entries and hard state to disk, fsyncs included:
    /// every commit waits on it, on the leader and on a majority.
    pub raft_persist_seconds: Histogram,
    /// One turn of the Raft loop, from the input that woke it to its end:
    /// one longer than a heartbeat interval delays heartbeats, and the
    /// turn's log line names which part took the time.
    pub raft_loop_turn_seconds: Histogram,
    pub raft_snapshots: Counter,
    pub raft_snapshot_bytes: Gauge,
    pub reconcile_pass_seconds: Histogram,
    pub placements: Counter,
    /// From a pass's start to its plan's commit: how long placing takes
    /// end to end, Raft included.
    pub placement_seconds: Histogram,
    /// Scale decisions by direction (`up`, `down`).
    pub autoscale_decisions: Family<[Label; 1], Counter>,
    pub pending_replicas: Family<[Label; 2], Gauge>,
    pub nodes: Family<[Label; 1], Gauge>,
    pub allocations: Family<[Label; 1], Gauge>,
    pub workloads: Gauge,
    /// API requests by route pattern (never the raw path: bounded), method
    /// and status.
    pub http_requests: Family<[Label; 3], Counter>,
    pub http_request_seconds: Family<[Label; 2], Histogram, fn() -> Histogram>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let metrics = ServerMetrics {
            registry: Registry::with_prefix("flotilla"),
            raft_term: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_leader_changes: Counter::default(),
            raft_proposal_seconds: latency_histogram(),
            raft_commit_seconds: latency_histogram(),
            raft_loop_turn_seconds: latency_histogram(),
            raft_persist_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            raft_snapshots: Counter::default(),
            raft_snapshot_bytes: Gauge::default(),
            reconcile_pass_seconds: latency_histogram(),
            placements: Counter::default(),
            placement_seconds: latency_histogram(),
            autoscale_decisions: Family::default(),
            pending_replicas: Family::default(),
            nodes: Family::default(),
            allocations: Family::default(),
            workloads: Gauge::default(),
            http_requests: Family::default(),
            http_request_seconds: Family::new_with_constructor(latency_histogram),
        };
        metrics.registered()
    }
}

impl ServerMetrics {
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register("raft_term", "Current Raft term", self.raft_term.clone());
        r.register("raft_commit_index", "Highest log index known committed", self.raft_commit_index.clone());
        r.register("raft_applied_index", "Highest log index applied here", self.raft_applied_index.clone());
        r.register("raft_leader", "1 if this server leads", self.raft_leader.clone());
        r.register(
            "raft_leader_changes",
            "Changes of the leader this server saw",
            self.raft_leader_changes.clone(),
        );
        r.register(
            "raft_proposal_seconds",
            "Time from a write's proposal to its answer",
            self.raft_proposal_seconds.clone(),
        );
        r.register(
            "raft_commit_seconds",
            "On the leader, time from appending entries to their commit",
            self.raft_commit_seconds.clone(),
        );
        r.register(
            "raft_persist_seconds",
            "Time to write entries and hard state to disk, fsyncs included",
            self.raft_persist_seconds.clone(),
        );
        r.register(
            "raft_loop_turn_seconds",
            "Time one turn of the Raft loop took, from the input that woke it",
            self.raft_loop_turn_seconds.clone(),
        );
        r.register("raft_snapshots", "Snapshots taken", self.raft_snapshots.clone());
        r.register(
            "raft_snapshot_bytes",
            "Size of the last snapshot taken",
            self.raft_snapshot_bytes.clone(),
        );
        r.register(
            "reconcile_pass_seconds",
            "Duration of a reconciler pass",
            self.reconcile_pass_seconds.clone(),
        );
        r.register("placements", "Replicas placed on nodes", self.placements.clone());
        r.register(
            "placement_seconds",
            "Time from a pass's start to the commit of its placements",
            self.placement_seconds.clone(),
        );
        r.register("autoscale_decisions", "Scale decisions by direction", self.autoscale_decisions.clone());
        r.register(
            "pending_replicas",
            "Replicas no node can take, by workload and reason",
            self.pending_replicas.clone(),
        );
        r.register("nodes", "Nodes by status", self.nodes.clone());
        r.register("allocations", "Live allocations by state", self.allocations.clone());
        r.register("workloads", "Workloads stored", self.workloads.clone());
        r.register("http_requests", "API requests by route, method and status", self.http_requests.clone());
        r.register(
            "http_request_seconds",
            "Time to answer an API request (to its headers, for streams)",
            self.http_request_seconds.clone(),
        );
        self
    }

    pub fn observe(histogram: &Histogram, elapsed: Duration) {
        histogram.observe(elapsed.as_secs_f64());
    }

    /// Reads the state's gauges: what it holds now, so label sets that no
    /// longer apply (a status no node has) disappear.
    pub fn read_state(&self, state: &ClusterState) {
        self.nodes.clear();
        for node in state.nodes() {
            self.nodes.get_or_create(&[("status", node.status.to_string())]).inc();
        }
        self.allocations.clear();
        for allocation in state.allocations().filter(|a| a.state.is_live()) {
            self.allocations.get_or_create(&[("state", allocation.state.to_string())]).inc();
        }
        self.pending_replicas.clear();
        for (workload, unplaced) in state.unplaced() {
            let labels = [("workload", workload.to_string()), ("reason", unplaced.reason.clone())];
            self.pending_replicas.get_or_create(&labels).set(i64::from(unplaced.count));
        }
        self.workloads.set(state.workloads().count() as i64);
    }

    /// The OpenMetrics text of everything.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_with_the_prefix_and_documented() {
        let metrics = ServerMetrics::default();
        metrics.raft_leader_changes.inc();
        metrics
            .http_requests
            .get_or_create(&[
                ("route", "/v1/workloads".into()),
                ("method", "GET".into()),
                ("status", "200".into()),
            ])
            .inc();
        ServerMetrics::observe(&metrics.raft_commit_seconds, Duration::from_millis(3));
        let text = metrics.encode();
        assert!(text.contains("# HELP flotilla_raft_leader_changes Changes of the leader this server saw."));
        assert!(text.contains("flotilla_raft_leader_changes_total 1"));
        assert!(text.contains(
            "flotilla_http_requests_total{route=\"/v1/workloads\",method=\"GET\",status=\"200\"} 1"
        ));
        assert!(text.contains("flotilla_raft_commit_seconds_bucket{le=\"0.004\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
