//! Sampling the CPU and memory each running allocation uses, for the
//! leader's autoscaler. Samples are read at each heartbeat, so the one a
//! beat carries covers the interval up to that beat (not a window that
//! ended up to a beat earlier), and the read is bounded so that a slow
//! engine cannot make a healthy node miss its heartbeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::AllocationUsage;
use flotilla_api::spec::Driver;

use crate::metrics::AgentMetrics;
use crate::runtime::Runtime;
use crate::supervisor::Handles;

/// The longest a beat waits for one allocation's sample; one not read by
/// then is left out of this beat (its next sample covers the longer span).
const SAMPLE_LIMIT: Duration = Duration::from_millis(250);

/// Reads every running allocation's usage when asked.
pub(crate) struct Sampler {
    /// The running allocations, by id: what there is to sample.
    pub(crate) handles: Handles,
    /// Each driver's runtime, which knows how to read its replicas' use.
    pub(crate) runtimes: HashMap<Driver, Arc<Runtime>>,
    /// Where each sample is also published, for the agent's /metrics.
    pub(crate) metrics: Arc<AgentMetrics>,
}

impl Sampler {
    /// One sample of every running allocation, read now and in parallel.
    pub(crate) async fn sample(&self) -> Vec<AllocationUsage> {
        let running: Vec<(u64, Driver, String)> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (driver, handle))| (*id, *driver, handle.clone()))
            .collect();
        let mut tasks = Vec::new();
        for (id, driver, handle) in running {
            // No task for what cannot be read: ten thousand simulated nodes
            // would spawn one per replica per beat, 200,000 a second at a
            // million replicas, on the cores the servers share.
            let Some(runtime) = self.runtimes.get(&driver).filter(|r| r.measures_usage()).cloned() else {
                continue;
            };
            tasks.push(tokio::spawn(async move {
                let usage = tokio::time::timeout(SAMPLE_LIMIT, runtime.usage(&handle)).await.ok().flatten();
                usage.map(|u| AllocationUsage { id, cpu_millis: u.cpu_millis, memory_bytes: u.memory_bytes })
            }));
        }
        let mut samples = Vec::new();
        for task in tasks {
            if let Ok(Some(sample)) = task.await {
                samples.push(sample);
            }
        }
        self.metrics.allocation_usage(&samples);
        samples
    }
}
