//! Sampling the CPU and memory each running allocation uses, for the
//! leader's autoscaler, without ever holding up a heartbeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::AllocationUsage;
use flotilla_api::spec::Driver;

use crate::metrics::AgentMetrics;
use crate::runtime::Runtime;
use crate::supervisor::Handles;

/// The latest usage samples, waiting for the next heartbeat.
pub(crate) type Samples = Arc<std::sync::Mutex<Vec<AllocationUsage>>>;

/// Samples every running allocation's usage, every `every`.
pub(crate) async fn sample(
    every: Duration,
    handles: Handles,
    runtimes: HashMap<Driver, Arc<Runtime>>,
    samples: Samples,
    metrics: Arc<AgentMetrics>,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let fresh = sample_usage(&handles, &runtimes).await;
        metrics.allocation_usage(&fresh);
        if !fresh.is_empty() {
            *samples.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
    }
}

/// One usage sample of every running allocation, taken in parallel.
async fn sample_usage(handles: &Handles, runtimes: &HashMap<Driver, Arc<Runtime>>) -> Vec<AllocationUsage> {
    let running: Vec<(u64, Driver, String)> = handles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, (driver, handle))| (*id, *driver, handle.clone()))
        .collect();
    let mut tasks = Vec::new();
    for (id, driver, handle) in running {
        let Some(runtime) = runtimes.get(&driver).cloned() else { continue };
        tasks.push(tokio::spawn(async move {
            runtime.usage(&handle).await.map(|u| AllocationUsage {
                id,
                cpu_millis: u.cpu_millis,
                memory_bytes: u.memory_bytes,
            })
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        if let Ok(Some(sample)) = task.await {
            samples.push(sample);
        }
    }
    samples
}
