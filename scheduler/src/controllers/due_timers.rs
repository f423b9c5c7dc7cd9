//! One timer per workload, kept in order of when each falls due: the
//! rollout judge asks every pass which are due and when the next one is,
//! and thousands of rollouts in progress each hold a deadline minutes
//! away. Asking costs the timers that are due, not every timer.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::WorkloadName;

#[derive(Debug, Default)]
pub struct DueTimers {
    /// Each workload's timer (ms since the epoch): to move or drop it by name.
    by_workload: BTreeMap<WorkloadName, u64>,
    /// The same timers ordered by when they fall due: the due ones are a
    /// prefix, the next one the first.
    by_time: BTreeSet<(u64, WorkloadName)>,
}

impl DueTimers {
    /// Sets `workload`'s timer to `at`, replacing the one it had.
    pub fn set(&mut self, workload: WorkloadName, at: u64) {
        if let Some(was) = self.by_workload.insert(workload.clone(), at) {
            self.by_time.remove(&(was, workload.clone()));
        }
        self.by_time.insert((at, workload));
    }

    pub fn remove(&mut self, workload: &WorkloadName) {
        if let Some(at) = self.by_workload.remove(workload) {
            self.by_time.remove(&(at, workload.clone()));
        }
    }

    /// The workloads whose timer has come by `now_ms`, still set.
    pub fn due(&self, now_ms: u64) -> impl Iterator<Item = &WorkloadName> {
        self.by_time.iter().take_while(move |(at, _)| *at <= now_ms).map(|(_, workload)| workload)
    }

    /// When the next timer falls due.
    pub fn next(&self) -> Option<u64> {
        self.by_time.first().map(|(at, _)| *at)
    }

    pub fn clear(&mut self) {
        self.by_workload.clear();
        self.by_time.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> WorkloadName {
        WorkloadName::parse(n).expect("name")
    }

    #[test]
    fn timers_fall_due_in_order_and_a_timer_set_again_moves() {
        let mut timers = DueTimers::default();
        assert_eq!(timers.next(), None);
        timers.set(name("late"), 300);
        timers.set(name("early"), 100);
        timers.set(name("moved"), 50);
        timers.set(name("moved"), 200);
        let due = |timers: &DueTimers, now| timers.due(now).map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(timers.next(), Some(100));
        assert_eq!(due(&timers, 99), Vec::<String>::new());
        assert_eq!(due(&timers, 200), ["early", "moved"], "the first setting of `moved` is gone");
        timers.remove(&name("early"));
        assert_eq!(timers.next(), Some(200));
        assert_eq!(due(&timers, 1_000), ["moved", "late"]);
        timers.clear();
        assert_eq!((timers.next(), due(&timers, u64::MAX).len()), (None, 0));
    }
}
