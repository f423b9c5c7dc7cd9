//! One check's verdict from its consecutive results: `successes` passes in
//! a row make it healthy, `failures` failures in a row unhealthy, and
//! failures during the start period do not count until a first pass ends
//! that period early (Docker's rule).

use std::time::{Duration, Instant};

use flotilla_api::Health;
use flotilla_api::spec::Check;

#[derive(Debug, Clone)]
pub struct CheckTracker {
    successes_needed: u32,
    failures_needed: u32,
    /// Until then failures are forgiven, unless a pass came first.
    grace_until: Instant,
    passed_once: bool,
    successes: u32,
    failures: u32,
    health: Health,
}

impl CheckTracker {
    pub fn new(check: &Check, started: Instant) -> Self {
        CheckTracker {
            successes_needed: check.successes.max(1),
            failures_needed: check.failures.max(1),
            grace_until: started + Duration::from_millis(check.start_period.as_millis()),
            passed_once: false,
            successes: 0,
            failures: 0,
            health: Health::Unknown,
        }
    }

    /// Records one result; answers the check's new health when it changes.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<Health> {
        let next = if passed {
            self.passed_once = true;
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.successes_needed).then_some(Health::Healthy)
        } else {
            self.successes = 0;
            if now < self.grace_until && !self.passed_once {
                return None;
            }
            self.failures += 1;
            (self.failures >= self.failures_needed).then_some(Health::Unhealthy)
        };
        match next {
            Some(health) if health != self.health => {
                self.health = health;
                Some(health)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::spec::SpecDuration;

    use super::*;

    #[test]
    fn consecutive_results_decide_and_the_start_period_forgives() {
        let check = |failures, successes, start_period_ms| {
            let mut check: Check = serde_json::from_str(r#"{"name": "c", "exec": ["true"]}"#).expect("check");
            check.failures = failures;
            check.successes = successes;
            check.start_period = SpecDuration(start_period_ms);
            check
        };
        let start = Instant::now();
        let late = start + Duration::from_secs(100);
        // (what, failures, successes, start period ms, results at `late` unless in grace, health after each)
        let u = None;
        let h = Some(Health::Healthy);
        let x = Some(Health::Unhealthy);
        type Row = (&'static str, u32, u32, u64, bool, Vec<bool>, Vec<Option<Health>>);
        let table: [Row; 5] = [
            ("one pass is healthy", 3, 1, 0, false, vec![true, true], vec![h, u]),
            (
                "three failures are unhealthy",
                3,
                1,
                0,
                false,
                vec![false, false, false, false],
                vec![u, u, x, u],
            ),
            ("a pass resets the failures", 2, 1, 0, false, vec![false, true, false, false], vec![u, h, u, x]),
            ("two passes needed", 1, 2, 0, false, vec![true, false, true, true], vec![u, x, u, h]),
            ("failures in the start period are forgiven", 1, 1, 10_000, true, vec![false, false], vec![u, u]),
        ];
        for (what, failures, successes, start_period, in_grace, results, want) in table {
            let mut tracker = CheckTracker::new(&check(failures, successes, start_period), start);
            let now = if in_grace { start } else { late };
            let got: Vec<Option<Health>> = results.iter().map(|r| tracker.record(*r, now)).collect();
            assert_eq!(got, want, "{what}");
        }
        let mut tracker = CheckTracker::new(&check(1, 1, 10_000), start);
        assert_eq!(tracker.record(true, start), h);
        assert_eq!(tracker.record(false, start), x, "a pass ends the start period early");
    }
}
