//! When to start an exited allocation again: the restart policy, an
//! exponential backoff, and a limit on failures in a window after which the
//! agent gives up and the leader places the replica elsewhere.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use flotilla_api::spec::RestartPolicy;

#[derive(Debug, Clone)]
pub struct RestartConfig {
    /// Delay before the second restart; the first is immediate.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Running this long resets the backoff: the next failure restarts at once.
    pub reset_after: Duration,
    /// More exits than this within `window` and the allocation is failed.
    pub max_failures: usize,
    pub window: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            reset_after: Duration::from_secs(600),
            max_failures: 10,
            window: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// It finished and the policy does not restart it.
    Complete,
    /// It failed too often here; the leader should place it elsewhere.
    Failed,
}

/// One allocation's restart history on this agent.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    /// Restarts so far, reported to the servers and shown by `ps`.
    pub restarts: u32,
    /// Restarts since the allocation last ran long enough to be trusted.
    consecutive: u32,
    exits: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(restarts: u32) -> Self {
        RestartTracker { restarts, ..RestartTracker::default() }
    }

    pub fn on_exit(
        &mut self,
        policy: RestartPolicy,
        exit_code: Option<i64>,
        ran_for: Duration,
        now: Instant,
        config: &RestartConfig,
    ) -> Decision {
        let succeeded = exit_code == Some(0);
        match policy {
            RestartPolicy::Never => return Decision::Complete,
            RestartPolicy::OnFailure if succeeded => return Decision::Complete,
            RestartPolicy::OnFailure | RestartPolicy::Always => {}
        }
        if ran_for >= config.reset_after {
            self.consecutive = 0;
        }
        self.exits.push_back(now);
        while self.exits.front().is_some_and(|t| now.duration_since(*t) > config.window) {
            self.exits.pop_front();
        }
        if self.exits.len() > config.max_failures {
            return Decision::Failed;
        }
        let delay = match self.consecutive {
            0 => Duration::ZERO,
            n => config.initial_backoff.saturating_mul(1 << (n - 1).min(20)).min(config.max_backoff),
        };
        self.consecutive += 1;
        self.restarts += 1;
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_second_restart_and_caps() {
        let config = RestartConfig::default();
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        let delays: Vec<Decision> = (0..9)
            .map(|i| {
                tracker.on_exit(
                    RestartPolicy::Always,
                    Some(1),
                    Duration::from_secs(1),
                    start + Duration::from_secs(i * 30),
                    &config,
                )
            })
            .collect();
        let secs = |s| Decision::RestartAfter(Duration::from_secs(s));
        assert_eq!(
            delays,
            vec![secs(0), secs(1), secs(2), secs(4), secs(8), secs(16), secs(32), secs(60), secs(60)]
        );
        assert_eq!(tracker.restarts, 9);
    }

    #[test]
    fn policies() {
        let config = RestartConfig::default();
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let table = [
            (RestartPolicy::Always, Some(0), Decision::RestartAfter(Duration::ZERO)),
            (RestartPolicy::Always, Some(1), Decision::RestartAfter(Duration::ZERO)),
            (RestartPolicy::OnFailure, Some(0), Decision::Complete),
            (RestartPolicy::OnFailure, Some(137), Decision::RestartAfter(Duration::ZERO)),
            (RestartPolicy::Never, Some(1), Decision::Complete),
            (RestartPolicy::Never, Some(0), Decision::Complete),
        ];
        for (policy, code, want) in table {
            assert_eq!(
                RestartTracker::default().on_exit(policy, code, second, now, &config),
                want,
                "{policy:?} {code:?}"
            );
        }
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let config = RestartConfig::default();
        let mut tracker = RestartTracker::default();
        let now = Instant::now();
        tracker.on_exit(RestartPolicy::Always, Some(1), Duration::from_secs(1), now, &config);
        tracker.on_exit(RestartPolicy::Always, Some(1), Duration::from_secs(1), now, &config);
        let after_long_run =
            tracker.on_exit(RestartPolicy::Always, Some(1), Duration::from_secs(700), now, &config);
        assert_eq!(after_long_run, Decision::RestartAfter(Duration::ZERO));
    }

    #[test]
    fn too_many_failures_in_the_window_fail_the_allocation() {
        let config =
            RestartConfig { max_failures: 3, window: Duration::from_secs(60), ..RestartConfig::default() };
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        let second = Duration::from_secs(1);
        for i in 0..3 {
            let d = tracker.on_exit(
                RestartPolicy::Always,
                Some(1),
                second,
                start + Duration::from_secs(i),
                &config,
            );
            assert!(matches!(d, Decision::RestartAfter(_)));
        }
        assert_eq!(
            tracker.on_exit(RestartPolicy::Always, Some(1), second, start + Duration::from_secs(4), &config),
            Decision::Failed
        );
        // Failures that have left the window no longer count.
        let mut spaced = RestartTracker::default();
        for i in 0..10 {
            let d = spaced.on_exit(
                RestartPolicy::Always,
                Some(1),
                second,
                start + Duration::from_secs(i * 61),
                &config,
            );
            assert!(matches!(d, Decision::RestartAfter(_)), "exit {i}");
        }
    }
}
