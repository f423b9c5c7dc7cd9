//! Ranking: of the nodes that can take a replica, which is best? Each step
//! adds to a score; the highest score wins, ties go to the node seen first.

use flotilla_api::WorkloadName;
use flotilla_api::spec::PlacementStrategy;

use super::feasibility::Request;
use super::view::NodeView;

/// Bin-packing prefers the fuller node (keeping whole nodes free for big
/// replicas); spread prefers the emptier one (less blast radius and noise).
pub fn fit_score(node: &NodeView, request: &Request, strategy: PlacementStrategy) -> f64 {
    let after = node.utilisation_with(request.cpu, request.memory);
    match strategy {
        PlacementStrategy::Binpack => after,
        PlacementStrategy::Spread => 1.0 - after,
    }
}

/// Replicas of one workload on one node fail together: every replica
/// already there costs as much as the whole fit score can give, so a node
/// without one always wins over a node with one, and bin-packing only
/// decides among equally crowded nodes (Nomad's job anti-affinity, made strict).
pub fn anti_affinity_penalty(node: &NodeView, workload: &WorkloadName) -> f64 {
    f64::from(node.workload_counts.get(workload).copied().unwrap_or(0))
}

/// A replica that failed on a node is placed elsewhere if anywhere else
/// will do: the node may be the cause (a bad disk, a missing device).
pub fn failed_here_penalty(node: &NodeView, request: &Request) -> f64 {
    if request.avoid_nodes.contains(&node.name) { 100.0 } else { 0.0 }
}

pub fn score(
    node: &NodeView,
    workload: &WorkloadName,
    request: &Request,
    strategy: PlacementStrategy,
) -> f64 {
    fit_score(node, request, strategy)
        - anti_affinity_penalty(node, workload)
        - failed_here_penalty(node, request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::NodeStatus;
    use flotilla_api::spec::Driver;
    use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

    fn node(used_cpu: u64, replicas_of_web: u32) -> NodeView {
        let web = WorkloadName::parse("web").expect("name");
        NodeView {
            held: false,
            name: format!("n{used_cpu}"),
            status: NodeStatus::Ready,
            drivers: BTreeSet::from([Driver::Docker]),
            labels: BTreeMap::new(),
            capacity_cpu: 1000,
            capacity_memory: 1 << 30,
            used_cpu,
            used_memory: 0,
            ports: HashSet::new(),
            workload_counts: HashMap::from([(web, replicas_of_web)]),
            host_volumes: BTreeMap::new(),
        }
    }

    #[test]
    fn ranking_steps() {
        let web = WorkloadName::parse("web").expect("name");
        let mut request = Request {
            cpu: 100,
            memory: 1 << 20,
            driver: Driver::Docker,
            constraints: vec![],
            host_ports: vec![],
            host_volumes: Vec::new(),
            avoid_nodes: Default::default(),
            pinned_node: None,
        };
        // (what, fuller node, emptier node, strategy, the fuller node should win)
        let table = [
            ("binpack prefers the fuller node", node(600, 0), node(100, 0), PlacementStrategy::Binpack, true),
            ("spread prefers the emptier node", node(600, 0), node(100, 0), PlacementStrategy::Spread, false),
            ("anti-affinity beats binpack", node(600, 1), node(100, 0), PlacementStrategy::Binpack, false),
            ("equal crowding: binpack decides", node(600, 1), node(100, 1), PlacementStrategy::Binpack, true),
        ];
        for (what, fuller, emptier, strategy, fuller_wins) in table {
            let a = score(&fuller, &web, &request, strategy);
            let b = score(&emptier, &web, &request, strategy);
            assert_eq!(a > b, fuller_wins, "{what}: {a} vs {b}");
        }
        request.avoid_nodes.insert("n600".into());
        let (failed_on, other) = (node(600, 0), node(100, 3));
        assert!(
            score(&failed_on, &web, &request, PlacementStrategy::Binpack)
                < score(&other, &web, &request, PlacementStrategy::Binpack),
            "a node where it failed comes last"
        );
    }
}
