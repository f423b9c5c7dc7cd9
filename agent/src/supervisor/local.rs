//! What the supervisor knows of one allocation on this node.

use std::time::Instant;

use flotilla_api::spec::Driver;
use flotilla_api::{Allocation, AllocationState, AllocationUpdate, Health, WorkloadSpec};

use crate::health::HealthWatch;
use crate::restart::RestartTracker;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Phase {
    Starting,
    Running,
    /// Exited; starts again at this instant.
    Backoff(Instant),
    /// A replica of a service, told to stop: it still runs, so that
    /// connections in flight finish, while the meshes send it no new ones;
    /// it is signalled at this instant.
    Draining(Instant),
    Stopping,
    /// A stop failed; it is tried again at `at`.
    StopRetry {
        at: Instant,
        attempts: u32,
    },
    /// Complete or failed: nothing more to do until the servers remove it.
    Done,
}

pub(super) struct Local {
    pub(super) allocation: Allocation,
    pub(super) spec: WorkloadSpec,
    pub(super) driver: Driver,
    pub(super) handle: Option<String>,
    pub(super) phase: Phase,
    pub(super) tracker: RestartTracker,
    pub(super) started_at: Instant,
    /// How it last exited, reported until it exits again.
    pub(super) last_exit: Option<i64>,
    pub(super) oom_killed: bool,
    /// The runtime said the kernel killed it for its memory (before the
    /// exit that follows); cleared by each start.
    pub(super) out_of_memory_seen: bool,
    /// An exit event arrived while it was still starting (a command that
    /// exits at once can beat the start call's answer); checked once started.
    pub(super) exit_seen_while_starting: bool,
    /// Counts starts, so that a check's verdict on an earlier start is ignored.
    pub(super) generation: u64,
    /// The checks of the current start, while it runs; dropping it stops them.
    pub(super) watch: Option<HealthWatch>,
    pub(super) health: Health,
    pub(super) health_output: String,
    /// A liveness check failed and the replica is being stopped to restart:
    /// why, for the restart's message.
    pub(super) kill_reason: Option<String>,
}

impl Local {
    /// A new start: nothing is known of its health yet.
    pub(super) fn forget_health(&mut self) {
        self.generation += 1;
        self.watch = None;
        self.health = Health::Unknown;
        self.health_output.clear();
    }
}

pub(super) fn update(local: &Local, state: AllocationState, message: String) -> AllocationUpdate {
    AllocationUpdate {
        id: local.allocation.id,
        state,
        restarts: local.tracker.restarts,
        exit_code: local.last_exit,
        oom_killed: local.oom_killed,
        message,
        ports: local.allocation.ports.clone(),
        next_restart_at_ms: None,
        runtime_id: local.handle.clone(),
        container_address: local.allocation.container_address.clone(),
        image_digest: local.allocation.image_digest.clone(),
        health: local.health,
        health_output: local.health_output.clone(),
    }
}
