//! What the servers want of this node, as the agent last heard it: kept
//! between long-poll answers so that an answer need carry only what
//! changed (a node's hundred replicas, placed a few at a time, would
//! otherwise come back whole with every placement).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use flotilla_api::{Allocation, NodeAllocations, SecretValue, Workload, WorkloadName};

#[derive(Debug, Default)]
pub(crate) struct DesiredView {
    /// Shared with the supervisor's copy of the whole: passing it on after
    /// each answer copies pointers, not every allocation and spec (a sim
    /// fleet's agents spent a fifth of their time copying them).
    allocations: BTreeMap<u64, Arc<Allocation>>,
    /// The specs of the workloads of those allocations, as last sent.
    workloads: BTreeMap<WorkloadName, Arc<Workload>>,
}

/// The node's whole desired state as of one answer.
#[derive(Debug)]
pub struct Desired {
    pub allocations: Vec<Arc<Allocation>>,
    pub workloads: Vec<Arc<Workload>>,
    /// The values of the secrets the node's workloads name.
    pub secrets: BTreeMap<String, SecretValue>,
    /// Slot volumes the node is to remove.
    pub remove_volumes: Vec<String>,
}

impl DesiredView {
    /// Takes in an answer, whole or changes only, and gives the node's
    /// whole desired state as of it.
    pub(crate) fn merge(&mut self, answer: NodeAllocations) -> Desired {
        let NodeAllocations { index: _, allocations, all_ids, workloads, secrets, remove_volumes } = answer;
        match all_ids {
            Some(ids) => {
                let present: HashSet<u64> = ids.into_iter().collect();
                self.allocations.retain(|id, _| present.contains(id));
                for allocation in allocations {
                    if present.contains(&allocation.id) {
                        self.allocations.insert(allocation.id, Arc::new(allocation));
                    }
                }
            }
            None => self.allocations = allocations.into_iter().map(|a| (a.id, Arc::new(a))).collect(),
        }
        for workload in workloads {
            self.workloads.insert(workload.spec.name.clone(), Arc::new(workload));
        }
        let named: HashSet<&WorkloadName> = self.allocations.values().map(|a| &a.workload).collect();
        self.workloads.retain(|name, _| named.contains(name));
        Desired {
            allocations: self.allocations.values().cloned().collect(),
            workloads: self.workloads.values().cloned().collect(),
            secrets,
            remove_volumes,
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::{AllocationState, parse_yaml};

    use super::*;

    fn allocation(id: u64, workload: &str, state: AllocationState) -> Allocation {
        let mut allocation: Allocation = serde_json::from_value(serde_json::json!({
            "id": id, "workload": workload, "replica": 0, "node": "n", "version": 1, "cpu": 0, "memory": 0,
            "ports": [], "state": "pending", "created_index": id, "modified_index": id, "created_at_ms": 0,
            "restarts": 0,
        }))
        .expect("an allocation");
        allocation.state = state;
        allocation
    }

    fn workload(name: &str) -> Workload {
        let spec = parse_yaml(&format!("name: {name}\nimage: x\n")).expect("spec");
        serde_json::from_value(serde_json::json!({
            "spec": spec, "version": 1, "created_index": 1, "modified_index": 1,
        }))
        .expect("a workload")
    }

    fn answer(
        allocations: Vec<Allocation>,
        all_ids: Option<Vec<u64>>,
        workloads: &[&str],
    ) -> NodeAllocations {
        NodeAllocations {
            index: 9,
            allocations,
            all_ids,
            workloads: workloads.iter().map(|w| workload(w)).collect(),
            secrets: Default::default(),
            remove_volumes: Vec::new(),
        }
    }

    fn summary(desired: &Desired) -> (Vec<(u64, AllocationState)>, Vec<String>) {
        let allocations = desired.allocations.iter().map(|a| (a.id, a.state)).collect();
        let workloads = desired.workloads.iter().map(|w| w.spec.name.to_string()).collect();
        (allocations, workloads)
    }

    #[test]
    fn changes_are_merged_into_what_was_known_and_the_gone_forgotten() {
        use AllocationState::{Pending, Running};
        let mut view = DesiredView::default();
        let whole =
            answer(vec![allocation(1, "web", Pending), allocation(2, "db", Pending)], None, &["web", "db"]);
        assert_eq!(
            summary(&view.merge(whole)),
            (vec![(1, Pending), (2, Pending)], vec!["db".into(), "web".into()])
        );
        // 1 changed, 2 is gone (db with it), 3 is new; the spec of web is not sent again.
        let changes =
            answer(vec![allocation(1, "web", Running), allocation(3, "web", Pending)], Some(vec![1, 3]), &[]);
        assert_eq!(summary(&view.merge(changes)), (vec![(1, Running), (3, Pending)], vec!["web".into()]));
        // Nothing changed but 3 went.
        assert_eq!(
            summary(&view.merge(answer(vec![], Some(vec![1]), &[]))),
            (vec![(1, Running)], vec!["web".into()])
        );
        // A whole answer replaces everything.
        let whole = answer(vec![allocation(4, "db", Pending)], None, &["db"]);
        assert_eq!(summary(&view.merge(whole)), (vec![(4, Pending)], vec!["db".into()]));
    }
}
