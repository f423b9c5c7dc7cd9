//! Choosing the replica for a new connection (or UDP flow), by the
//! service's `balance`, among those not ejected and not yet tried for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use flotilla_api::spec::Balance;

use super::endpoints::{Pool, Target};

/// The next target for a connection that has already failed on `tried`
/// (by allocation). Ejected targets are chosen only when nothing else is
/// left: a refusal costs a retry, while no target at all fails the client.
pub fn pick(pool: &Pool, tried: &[u64], now: Instant) -> Option<Arc<Target>> {
    let untried = || pool.targets.iter().filter(|t| !tried.contains(&t.allocation));
    if untried().any(|t| t.admitted(now)) {
        choose(pool, untried().filter(|t| t.admitted(now)))
    } else {
        choose(pool, untried())
    }
}

fn choose<'a>(pool: &'a Pool, candidates: impl Iterator<Item = &'a Arc<Target>>) -> Option<Arc<Target>> {
    let candidates: Vec<&Arc<Target>> = candidates.collect();
    if candidates.is_empty() {
        return None;
    }
    let turn = pool.turn.fetch_add(1, Ordering::Relaxed);
    let chosen = match pool.balance {
        Balance::RoundRobin => candidates[turn % candidates.len()],
        // Fewest connections in flight; among equals, by turn, so that an
        // idle pool is still used round robin rather than first-listed.
        Balance::LeastConnections => {
            let fewest = candidates.iter().map(|t| t.active.load(Ordering::Relaxed)).min().unwrap_or(0);
            let least: Vec<&&Arc<Target>> =
                candidates.iter().filter(|t| t.active.load(Ordering::Relaxed) == fewest).collect();
            least[turn % least.len()]
        }
    };
    Some(Arc::clone(chosen))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn pool(balance: Balance, n: u64) -> Pool {
        Pool {
            service: "web".into(),
            balance,
            targets: (1..=n)
                .map(|i| Arc::new(Target::new(i, ([10, 0, 0, i as u8], 80).into(), None)))
                .collect(),
            turn: AtomicUsize::new(0),
        }
    }

    fn shares(pool: &Pool, picks: usize) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            let target = pick(pool, &[], Instant::now()).expect("a target");
            *counts.entry(target.allocation).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn round_robin_takes_turns() {
        let counts = shares(&pool(Balance::RoundRobin, 3), 300);
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
    }

    #[test]
    fn least_connections_prefers_the_least_busy() {
        let pool = pool(Balance::LeastConnections, 3);
        let busy: Vec<_> = (0..5).map(|_| pool.targets[0].connection()).collect();
        let _one = pool.targets[1].connection();
        for _ in 0..10 {
            assert_eq!(pick(&pool, &[], Instant::now()).expect("target").allocation, 3);
        }
        drop(busy);
        let idle = shares(&pool, 200);
        assert_eq!(idle.len(), 2, "1 and 3 share, 2 still has a connection: {idle:?}");
    }

    #[test]
    fn ejected_and_tried_targets_are_passed_over_while_others_remain() {
        let pool = pool(Balance::RoundRobin, 3);
        pool.targets[0].eject();
        for _ in 0..10 {
            let chosen = pick(&pool, &[2], Instant::now()).expect("target");
            assert_eq!(chosen.allocation, 3);
        }
        assert_eq!(
            pick(&pool, &[2, 3], Instant::now()).expect("the ejected one, as a last resort").allocation,
            1
        );
        assert!(pick(&pool, &[1, 2, 3], Instant::now()).is_none());
    }
}
