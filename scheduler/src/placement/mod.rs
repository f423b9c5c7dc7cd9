//! Placement: pure functions from a view of the cluster and a request to
//! the nodes that take the replicas. No I/O, no clock; randomness only from
//! the caller's seed, so a placement can be replayed.
//!
//! The stack follows Nomad's: a bounded random sample of feasible nodes
//! (the limit iterator) is ranked, and the best one is picked. Sampling
//! keeps placement fast on large clusters; when fewer nodes than the limit
//! fit, every node is looked at, so nothing that fits anywhere stays pending.

pub mod feasibility;
pub mod ranking;
pub mod view;

use std::collections::BTreeMap;

use flotilla_api::WorkloadName;
use flotilla_api::spec::PlacementStrategy;

pub use feasibility::{Infeasible, Request};
pub use view::{ClusterView, NodeView};

/// How many feasible nodes are ranked for each replica.
pub const DEFAULT_CANDIDATES: usize = 16;

/// A small, fast, seedable generator (SplitMix64): placement needs only a
/// starting point per replica, and must be reproducible from a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The outcome of placing `count` replicas of one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// Index into the view's nodes, one per placed replica.
    pub nodes: Vec<usize>,
    /// Why the rest could not be placed, if any were not.
    pub unplaced_reason: Option<String>,
}

/// Places up to `count` replicas, reserving each in `view` as it goes.
pub fn place(
    view: &mut ClusterView,
    workload: &WorkloadName,
    request: &Request,
    strategy: PlacementStrategy,
    count: u32,
    candidates: usize,
    rng: &mut SplitMix64,
) -> Placed {
    let mut placed = Placed { nodes: Vec::with_capacity(count as usize), unplaced_reason: None };
    let total = view.nodes.len();
    for _ in 0..count {
        if total == 0 {
            placed.unplaced_reason = Some(feasibility::unplaced_reason(request, &BTreeMap::new()));
            break;
        }
        let start = (rng.next_u64() % total as u64) as usize;
        let mut best: Option<(usize, f64)> = None;
        let mut seen = 0;
        let mut tally: BTreeMap<Infeasible, u32> = BTreeMap::new();
        for offset in 0..total {
            let i = (start + offset) % total;
            let node = &view.nodes[i];
            match feasibility::check(node, request) {
                Ok(()) => {
                    let score = ranking::score(node, workload, request, strategy);
                    if best.is_none_or(|(_, s)| score > s) {
                        best = Some((i, score));
                    }
                    seen += 1;
                    if seen >= candidates {
                        break;
                    }
                }
                Err(why) => *tally.entry(why).or_default() += 1,
            }
        }
        match best {
            Some((i, _)) => {
                view.nodes[i].assign(workload, request);
                placed.nodes.push(i);
            }
            None => {
                // Every node was looked at and none fits; the remaining
                // replicas ask for the same, so they cannot fit either.
                placed.unplaced_reason = Some(feasibility::unplaced_reason(request, &tally));
                break;
            }
        }
    }
    placed
}
