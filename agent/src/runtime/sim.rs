//! The simulated runtime: accepts every allocation and reports it running,
//! without running anything, so one machine can stand in for thousands of
//! nodes in benchmarks and tests.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Launch, Observed};

#[derive(Debug, Default)]
pub struct SimRuntime {
    running: Mutex<BTreeMap<String, Observed>>,
}

impl SimRuntime {
    pub fn start(&self, launch: Launch<'_>) -> Observed {
        let observed = Observed {
            allocation: launch.allocation.id,
            handle: format!("sim-{}", launch.allocation.id),
            running: true,
            exit_code: None,
            oom_killed: false,
            ports: launch.allocation.ports.clone(),
            address: None,
            healthcheck: false,
            image: None,
        };
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(observed.handle.clone(), observed.clone());
        observed
    }

    pub fn stop(&self, handle: &str) {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(handle);
    }

    pub fn inspect(&self, handle: &str) -> Option<Observed> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).get(handle).cloned()
    }

    pub fn list(&self) -> Vec<Observed> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}
