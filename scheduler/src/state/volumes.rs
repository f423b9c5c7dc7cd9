//! Slot volumes: where each replica slot's named volumes live. A slot goes
//! back to the node holding its data while that node is up (as a Nomad
//! sticky disk or a Kubernetes local PersistentVolume); a slot whose node is
//! down or draining moves, and the copy it leaves is kept (stale) until the
//! workload's volumes are deleted.

use flotilla_api::spec::slot_volume_name;
use flotilla_api::{Event, NodeStatus, SlotVolume, WorkloadName, WorkloadSpec};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

/// The key prefix of one workload's slot volumes (`flotilla-web.`): dots
/// end a workload's name, so no other workload's keys share it.
fn workload_prefix(workload: &WorkloadName) -> String {
    format!("flotilla-{workload}.")
}

impl ClusterState {
    pub fn slot_volumes(&self) -> impl Iterator<Item = &SlotVolume> + '_ {
        self.volumes.values()
    }

    fn workload_volumes(&self, workload: &WorkloadName) -> impl Iterator<Item = &SlotVolume> + '_ {
        let prefix = workload_prefix(workload);
        self.volumes
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .map(|(_, v)| v)
    }

    /// The node a slot must go back to: the one holding its volumes, while
    /// that node is up and in service. None: the slot may go anywhere (it
    /// has no data yet, or its node is down or draining).
    pub fn pinned_node(&self, spec: &WorkloadSpec, slot: u32) -> Option<&str> {
        let home = spec.slot_volumes().find_map(|v| {
            let record = self.volumes.get(&slot_volume_name(&spec.name, slot, &v.name))?;
            (!record.removing).then_some(record.node.as_str())
        })?;
        let node = self.nodes.get(home)?;
        (node.status == NodeStatus::Ready).then_some(home)
    }

    /// A replica of `slot` was placed on `node`: its volumes live there now.
    /// A volume that lived elsewhere leaves a stale copy on its old node.
    pub(super) fn claim_slot_volumes(
        &mut self,
        index: u64,
        spec: &WorkloadSpec,
        slot: u32,
        node: &str,
        now_ms: u64,
    ) {
        let mut moved = Vec::new();
        for volume in spec.slot_volumes() {
            let key = slot_volume_name(&spec.name, slot, &volume.name);
            let record = self.volumes.entry(key).or_insert_with(|| SlotVolume {
                workload: spec.name.clone(),
                slot,
                volume: volume.name.clone(),
                node: node.to_owned(),
                stale_nodes: Default::default(),
                removing: false,
                created_at_ms: now_ms,
            });
            if record.node != node {
                let old = std::mem::replace(&mut record.node, node.to_owned());
                record.stale_nodes.remove(node);
                moved.push(format!(
                    "volume {} of replica {slot} moved from node {old} (not ready) to {node}",
                    volume.name
                ));
                record.stale_nodes.insert(old);
            }
        }
        for message in moved {
            let workload = Some(spec.name.to_string());
            self.record(Event { index, at_ms: now_ms, workload, node: Some(node.to_owned()), message });
        }
    }

    /// Refuses a deploy of a workload whose volumes of an earlier life are
    /// still being removed: its new replicas would mount them as they go.
    pub(super) fn check_no_volumes_removing(&self, name: &WorkloadName) -> Result<(), Rejection> {
        let removing = self.workload_volumes(name).filter(|v| v.removing).count();
        if removing > 0 {
            return Err(Rejection::VolumesBeingRemoved { name: name.clone(), count: removing as u32 });
        }
        Ok(())
    }

    /// `delete --volumes`: every copy of the workload's slot volumes is to
    /// be removed by the agent of the node that holds it.
    pub(super) fn remove_workload_volumes(&mut self, name: &WorkloadName) -> u32 {
        let prefix = workload_prefix(name);
        let mut count = 0;
        for (_, volume) in
            self.volumes.range_mut(prefix.clone()..).take_while(|(key, _)| key.starts_with(&prefix))
        {
            volume.removing = true;
            count += 1;
            for holder in volume.holders() {
                self.node_changes.mark(holder);
            }
        }
        count
    }

    /// `volumes rm`: the kept volumes of a deleted workload go.
    pub(super) fn remove_kept_volumes(&mut self, name: &WorkloadName) -> Result<CommandOutput, Rejection> {
        if self.workloads.contains_key(name) {
            return Err(Rejection::WorkloadStillDeployed(name.clone()));
        }
        match self.remove_workload_volumes(name) {
            0 => Err(Rejection::NoVolumes(name.clone())),
            count => Ok(CommandOutput::VolumesRemoving(count)),
        }
    }

    /// The slot volumes `node`'s agent is to remove, by Docker name.
    pub fn volumes_to_remove(&self, node: &str) -> Vec<String> {
        self.volumes
            .iter()
            .filter(|(_, v)| v.removing && v.holders().any(|holder| holder == node))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// `node`'s agent removed these volumes; a volume no node holds any more
    /// is forgotten. Volumes not being removed are left alone: an agent
    /// reports only what it was asked to remove, and a late report must not
    /// forget a volume a new deploy claimed since.
    pub(super) fn volumes_removed(&mut self, node: &str, names: Vec<String>) -> CommandOutput {
        let mut forgotten = 0;
        for name in names {
            let Some(volume) = self.volumes.get_mut(&name) else { continue };
            if !volume.removing {
                continue;
            }
            self.node_changes.mark(node);
            volume.stale_nodes.remove(node);
            if volume.node == node {
                match volume.stale_nodes.pop_first() {
                    Some(other) => volume.node = other,
                    None => {
                        self.volumes.remove(&name);
                        forgotten += 1;
                    }
                }
            }
        }
        CommandOutput::VolumesForgotten(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::parse_yaml;

    use super::*;
    use crate::state::{Command, Placement, Plan};

    const DB: &str =
        "name: db\nimage: x\nreplicas: 2\nvolumes: [{name: data, path: /data}, {name: logs, path: /logs}]\n";

    fn name() -> WorkloadName {
        WorkloadName::parse("db").expect("name")
    }

    /// `db` deployed with slot 0 placed on `a` and slot 1 on `b`.
    fn placed() -> ClusterState {
        let mut state = ClusterState::default();
        for node in ["a", "b"] {
            state.apply(1, Command::register_docker_node(node, "", 1000, 1 << 30)).expect("register");
        }
        state.apply(2, Command::put_workload(parse_yaml(DB).expect("spec"), 0)).expect("deploy");
        let placement = |replica, node: &str| Placement {
            workload: name(),
            replica,
            node: node.into(),
            version: 1,
            cpu: 100,
            memory: 1 << 20,
            ports: vec![],
        };
        let plan =
            Plan { placements: vec![placement(0, "a"), placement(1, "b")], now_ms: 5, ..Plan::default() };
        state.apply(3, Command::ApplyPlan { plan }).expect("plan");
        state
    }

    #[test]
    fn placing_a_slot_records_each_of_its_volumes_on_its_node() {
        let state = placed();
        let volumes: Vec<(String, &str)> =
            state.slot_volumes().map(|v| (v.docker_name(), v.node.as_str())).collect();
        assert_eq!(
            volumes,
            [
                ("flotilla-db.0.data".to_owned(), "a"),
                ("flotilla-db.0.logs".to_owned(), "a"),
                ("flotilla-db.1.data".to_owned(), "b"),
                ("flotilla-db.1.logs".to_owned(), "b"),
            ]
        );
        let spec = parse_yaml(DB).expect("spec");
        assert_eq!(state.pinned_node(&spec, 1), Some("b"));
        assert_eq!(state.pinned_node(&spec, 2), None, "a slot never placed goes anywhere");
    }

    #[test]
    fn a_deleted_workload_keeps_its_volumes_unless_told_and_they_go_once_every_holder_removed_them() {
        let mut state = placed();
        state.apply(4, Command::DeleteWorkload { name: name(), volumes: false }).expect("delete");
        assert_eq!(state.slot_volumes().count(), 4, "kept");
        assert!(state.volumes_to_remove("a").is_empty());
        // Deployed again, the slots go back to their data.
        state.apply(5, Command::put_workload(parse_yaml(DB).expect("spec"), 0)).expect("deploy");
        assert_eq!(state.pinned_node(&parse_yaml(DB).expect("spec"), 0), Some("a"));
        let refused = state.apply(6, Command::RemoveVolumes { workload: name() });
        assert!(matches!(refused, Err(Rejection::WorkloadStillDeployed(_))), "{refused:?}");

        state.apply(7, Command::DeleteWorkload { name: name(), volumes: true }).expect("delete");
        assert_eq!(state.volumes_to_remove("a"), ["flotilla-db.0.data", "flotilla-db.0.logs"]);
        assert_eq!(state.volumes_to_remove("b"), ["flotilla-db.1.data", "flotilla-db.1.logs"]);
        let before = state.clone();
        let again = state.apply(8, Command::put_workload(parse_yaml(DB).expect("spec"), 0));
        assert!(matches!(again, Err(Rejection::VolumesBeingRemoved { count: 4, .. })), "{again:?}");
        assert_eq!(state, before, "a refused deploy changes nothing");

        let removed = |node: &str, names: &[&str]| Command::VolumesRemoved {
            node: node.into(),
            volumes: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        state.apply(9, removed("a", &["flotilla-db.0.data", "flotilla-db.0.logs"])).expect("a removed");
        // A report naming what another node holds changes nothing of it.
        state.apply(10, removed("a", &["flotilla-db.1.data"])).expect("stray report");
        assert_eq!(
            state.slot_volumes().map(|v| v.docker_name()).collect::<Vec<_>>(),
            ["flotilla-db.1.data", "flotilla-db.1.logs"]
        );
        state.apply(11, removed("b", &["flotilla-db.1.data", "flotilla-db.1.logs"])).expect("b removed");
        assert_eq!(state.slot_volumes().count(), 0);
        state.apply(12, Command::put_workload(parse_yaml(DB).expect("spec"), 0)).expect("deploys again");
        let none =
            state.apply(13, Command::RemoveVolumes { workload: WorkloadName::parse("web").expect("name") });
        assert!(matches!(none, Err(Rejection::NoVolumes(_))), "{none:?}");
    }

    #[test]
    fn kept_volumes_are_removed_by_volumes_rm_and_stale_copies_too() {
        let mut state = placed();
        // Slot 0 moved to b while a was down: a keeps a stale copy.
        let ready_index = state.node("a").expect("a").ready_index;
        state.apply(4, Command::MarkNodeDown { name: "a".into(), ready_index, now_ms: 9 }).expect("down");
        let spec = parse_yaml(DB).expect("spec");
        state.claim_slot_volumes(5, &spec, 0, "b", 9);
        state.apply(6, Command::DeleteWorkload { name: name(), volumes: false }).expect("delete");
        assert_eq!(
            state.apply(7, Command::RemoveVolumes { workload: name() }),
            Ok(CommandOutput::VolumesRemoving(4))
        );
        assert_eq!(
            state.volumes_to_remove("a"),
            ["flotilla-db.0.data", "flotilla-db.0.logs"],
            "the stale copies"
        );
        assert_eq!(state.volumes_to_remove("b").len(), 4);
        let removed = |node: &str| Command::VolumesRemoved {
            node: node.into(),
            volumes: vec!["flotilla-db.0.data".into(), "flotilla-db.0.logs".into()],
        };
        state.apply(8, removed("b")).expect("b removed slot 0's");
        assert_eq!(state.volumes_to_remove("a").len(), 2, "a still holds its copies");
        state.apply(9, removed("a")).expect("a removed its copies");
        assert!(state.volumes_to_remove("a").is_empty());
        assert_eq!(state.slot_volumes().count(), 2, "slot 1's, on b, remain to be removed");
    }
}
