//! What an agent tells Prometheus at `/metrics` on its API port (OpenMetrics
//! text, through `prometheus-client`): the containers it started, restarted
//! and lost to the OOM killer, how long starts take, each allocation's CPU
//! and memory, and how long the engine takes to answer. README.md's METRICS
//! section lists them all.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// One label: its name and value.
pub type Label = (&'static str, String);

/// Seconds from 1 ms to about 65 s: engine calls, and starts that pull an image.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Starts that came up, by driver; a restart counts here and below.
    pub starts: Family<[Label; 1], Counter>,
    pub restarts: Family<[Label; 1], Counter>,
    pub out_of_memory_kills: Counter,
    /// From the start call to the replica running, by driver.
    pub start_seconds: Family<[Label; 1], Histogram, fn() -> Histogram>,
    /// Each running allocation's CPU (millicores) and memory, by allocation id.
    pub allocation_cpu_millis: Family<[Label; 1], Gauge<f64, AtomicU64>>,
    pub allocation_memory_bytes: Family<[Label; 1], Gauge>,
    /// The Docker engine's answers, by call.
    pub engine_call_seconds: Family<[Label; 1], Histogram, fn() -> Histogram>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut metrics = AgentMetrics {
            registry: Registry::with_prefix("flotilla_agent"),
            starts: Family::default(),
            restarts: Family::default(),
            out_of_memory_kills: Counter::default(),
            start_seconds: Family::new_with_constructor(latency_histogram),
            allocation_cpu_millis: Family::default(),
            allocation_memory_bytes: Family::default(),
            engine_call_seconds: Family::new_with_constructor(latency_histogram),
        };
        let r = &mut metrics.registry;
        r.register("starts", "Replicas started, by driver", metrics.starts.clone());
        r.register("restarts", "Replicas restarted on this node, by driver", metrics.restarts.clone());
        r.register(
            "out_of_memory_kills",
            "Replicas the kernel killed for memory",
            metrics.out_of_memory_kills.clone(),
        );
        r.register(
            "start_seconds",
            "Time from the start call to running, by driver",
            metrics.start_seconds.clone(),
        );
        r.register(
            "allocation_cpu_millis",
            "CPU each allocation uses, in millicores",
            metrics.allocation_cpu_millis.clone(),
        );
        r.register(
            "allocation_memory_bytes",
            "Memory each allocation uses",
            metrics.allocation_memory_bytes.clone(),
        );
        r.register(
            "engine_call_seconds",
            "Time the Docker engine takes to answer, by call",
            metrics.engine_call_seconds.clone(),
        );
        metrics
    }
}

impl AgentMetrics {
    pub fn started(&self, driver: &str, restart: bool, took: Duration) {
        let labels = [("driver", driver.to_owned())];
        self.starts.get_or_create(&labels).inc();
        if restart {
            self.restarts.get_or_create(&labels).inc();
        }
        self.start_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn engine_call(&self, call: &'static str, took: Duration) {
        self.engine_call_seconds.get_or_create(&[("call", call.to_owned())]).observe(took.as_secs_f64());
    }

    /// Replaces the per-allocation gauges with this sample: an allocation
    /// gone from it is gone from the metrics.
    pub fn allocation_usage(&self, usage: &[flotilla_api::AllocationUsage]) {
        self.allocation_cpu_millis.clear();
        self.allocation_memory_bytes.clear();
        for sample in usage {
            let labels = [("allocation", sample.id.to_string())];
            self.allocation_cpu_millis.get_or_create(&labels).set(sample.cpu_millis);
            let memory = i64::try_from(sample.memory_bytes).unwrap_or(i64::MAX);
            self.allocation_memory_bytes.get_or_create(&labels).set(memory);
        }
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
    fn a_restart_counts_as_a_start_too_and_usage_replaces_the_last_sample() {
        let metrics = AgentMetrics::default();
        metrics.started("docker", false, Duration::from_millis(300));
        metrics.started("docker", true, Duration::from_millis(200));
        let usage = |id, memory_bytes| flotilla_api::AllocationUsage { id, cpu_millis: 1.0, memory_bytes };
        metrics.allocation_usage(&[usage(7, 1024)]);
        metrics.allocation_usage(&[usage(8, 2048)]);
        let text = metrics.encode();
        assert!(text.contains("flotilla_agent_starts_total{driver=\"docker\"} 2"), "{text}");
        assert!(text.contains("flotilla_agent_restarts_total{driver=\"docker\"} 1"));
        assert!(text.contains("flotilla_agent_start_seconds_count{driver=\"docker\"} 2"));
        assert!(!text.contains("allocation=\"7\""), "the old sample's allocation is gone");
        assert!(text.contains("flotilla_agent_allocation_memory_bytes{allocation=\"8\"} 2048"), "{text}");
    }
}
