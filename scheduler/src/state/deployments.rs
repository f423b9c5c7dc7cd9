//! Applying what changes deployments: a new version's rollout begins, the
//! rollout controller's verdicts (with the automatic revert), and the
//! operator's promote, pause, resume and undo.

use flotilla_api::{
    AllocationState, Deployment, DeploymentStatus, Event, Health, RolloutAction, Workload, WorkloadName,
    WorkloadSpec,
};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

/// Versions kept per workload for `rollout history` and `rollout undo`.
pub const MAX_HISTORY: usize = 20;

impl ClusterState {
    /// Starts the rollout of `workload`'s (new) version, cancelling the one
    /// it supersedes, and trims the history.
    pub(super) fn begin_deployment(
        &mut self,
        index: u64,
        workload: &Workload,
        from_version: Option<u64>,
        cause: String,
        now_ms: u64,
    ) {
        let name = workload.spec.name.clone();
        let superseded = format!("superseded by version {}", workload.version);
        self.finish_active(&name, DeploymentStatus::Cancelled, Some(superseded), now_ms);
        let id = self.next_deployment_id.max(1);
        self.next_deployment_id = id + 1;
        let canary = if from_version.is_some() { workload.spec.update.canary } else { 0 };
        let deployment = Deployment {
            id,
            workload: name.clone(),
            from_version,
            to_version: workload.version,
            status: DeploymentStatus::Running,
            cause: cause.clone(),
            reason: None,
            placed: 0,
            healthy: 0,
            unhealthy: 0,
            canary,
            promoted: false,
            started_at_ms: now_ms,
            finished_at_ms: None,
            resumed_at_ms: None,
            spec: workload.spec.clone(),
        };
        let history = self.deployments.entry(name.clone()).or_default();
        history.push_back(deployment);
        while history.len() > MAX_HISTORY {
            history.pop_front();
        }
        let from = from_version.map_or_else(String::new, |v| format!(" from version {v}"));
        let message = format!("rollout {id} of version {}{from} started ({cause})", workload.version);
        self.record(Event { index, at_ms: now_ms, workload: Some(name.to_string()), node: None, message });
        let kept = self.keep_unchanged_replicas(index, workload);
        if kept > 0 {
            let message = format!("rollout {id}: {kept} replicas already run this spec and are kept");
            self.record(Event {
                index,
                at_ms: now_ms,
                workload: Some(name.to_string()),
                node: None,
                message,
            });
        }
    }

    /// Replicas of an earlier version that runs what the new version runs
    /// ([`runs_the_same`]) become replicas of the new version as they
    /// stand, healthy ones included: going back to a version that still
    /// runs (an automatic revert, `rollout undo`, a deploy of the old file)
    /// or changing only how the workload scales or rolls out replaces
    /// nothing, as Kubernetes scales the old ReplicaSet up again and Nomad
    /// updates in place.
    fn keep_unchanged_replicas(&mut self, index: u64, workload: &Workload) -> usize {
        let name = &workload.spec.name;
        let Some(history) = self.deployments.get(name) else { return 0 };
        let same_spec: std::collections::BTreeSet<u64> = history
            .iter()
            .filter(|d| d.to_version != workload.version)
            .filter(|d| runs_the_same(&d.spec, &workload.spec))
            .map(|d| d.to_version)
            .collect();
        if same_spec.is_empty() {
            return 0;
        }
        let ids: Vec<u64> = self
            .workload_allocations(name)
            .filter(|a| a.state.is_live() && same_spec.contains(&a.version))
            .map(|a| a.id)
            .collect();
        for id in &ids {
            if let Some(allocation) = self.allocations.get_mut(id) {
                self.tallies.remove(allocation);
                allocation.version = workload.version;
                self.tallies.add(allocation);
                allocation.modified_index = index;
                self.node_changes.mark(&allocation.node);
            }
        }
        ids.len()
    }

    /// Ends the workload's active deployment, if any, with its counts frozen.
    fn finish_active(
        &mut self,
        name: &WorkloadName,
        status: DeploymentStatus,
        reason: Option<String>,
        now_ms: u64,
    ) {
        let Some(active) = self.deployments.get(name).and_then(|d| d.back()).filter(|d| d.status.is_active())
        else {
            return;
        };
        let counted = self.with_counts(active.clone());
        if let Some(last) = self.deployments.get_mut(name).and_then(|d| d.back_mut()) {
            *last = Deployment { status, reason, finished_at_ms: Some(now_ms), ..counted };
        }
    }

    /// The deployment with its replica counts as they stand, while it is
    /// active; a finished one keeps the counts it ended with.
    pub fn with_counts(&self, mut deployment: Deployment) -> Deployment {
        if !deployment.status.is_active() {
            return deployment;
        }
        let (mut placed, mut healthy, mut unhealthy) = (0, 0, 0);
        for a in self
            .workload_allocations(&deployment.workload)
            .filter(|a| a.is_replica() && a.version == deployment.to_version)
        {
            placed += 1;
            match a.health {
                Health::Healthy if a.state == AllocationState::Running => healthy += 1,
                Health::Unhealthy => unhealthy += 1,
                _ => {}
            }
        }
        deployment.placed = placed;
        deployment.healthy = healthy;
        deployment.unhealthy = unhealthy;
        deployment
    }

    /// The workload's deployments, newest first.
    pub fn deployments_of(&self, name: &WorkloadName) -> Vec<Deployment> {
        self.deployments.get(name).into_iter().flatten().rev().map(|d| self.with_counts(d.clone())).collect()
    }

    /// The workload's active deployment, as the controllers read it.
    pub fn active_deployment(&self, name: &WorkloadName) -> Option<&Deployment> {
        self.deployments.get(name)?.back().filter(|d| d.status.is_active())
    }

    pub(super) fn set_deployment_status(
        &mut self,
        index: u64,
        name: &WorkloadName,
        id: u64,
        status: DeploymentStatus,
        reason: Option<String>,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let workload =
            self.workloads.get(name).cloned().ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
        let stale = || Rejection::StaleDeployment { name: name.clone(), deployment: id };
        let active = self.active_deployment(name).filter(|d| d.id == id).ok_or_else(stale)?;
        let allowed = match (active.status, status) {
            (DeploymentStatus::Running, DeploymentStatus::WaitingForPromotion) => active.canary > 0,
            (DeploymentStatus::Running, DeploymentStatus::Successful | DeploymentStatus::Failed) => true,
            (DeploymentStatus::WaitingForPromotion, DeploymentStatus::Failed) => true,
            _ => false,
        };
        if !allowed {
            return Err(Rejection::RolloutRefused {
                name: name.clone(),
                action: format!("become {status}"),
                reason: format!("it is {}", active.status),
            });
        }
        let to_version = active.to_version;
        let at = |message: String| Event {
            index,
            at_ms: now_ms,
            workload: Some(name.to_string()),
            node: None,
            message,
        };
        match status {
            DeploymentStatus::WaitingForPromotion => {
                if let Some(last) = self.deployments.get_mut(name).and_then(|d| d.back_mut()) {
                    last.status = status;
                }
                let message = format!("rollout {id}: canaries healthy; waiting for `rollout promote`");
                self.record(at(message));
            }
            DeploymentStatus::Successful => {
                self.finish_active(name, status, None, now_ms);
                self.record(at(format!("rollout {id} of version {to_version} succeeded")));
            }
            _ => {
                let reason = reason.unwrap_or_else(|| "failed".into());
                let revert_to =
                    workload.spec.update.auto_revert.then(|| self.last_good_version(name, to_version));
                match revert_to {
                    Some(Some(good)) => {
                        let new_version = workload.version + 1;
                        let note = format!("{reason}; reverted to version {good} as version {new_version}");
                        self.finish_active(name, DeploymentStatus::Reverted, Some(note.clone()), now_ms);
                        self.record(at(format!("rollout {id} of version {to_version} failed: {note}")));
                        let cause =
                            format!("auto-revert to version {good} after version {to_version} failed");
                        self.deploy_earlier(index, &workload, good, cause, now_ms)?;
                    }
                    Some(None) => {
                        let note = format!("{reason}; no earlier successful version to revert to");
                        self.finish_active(name, status, Some(note.clone()), now_ms);
                        self.record(at(format!("rollout {id} of version {to_version} failed: {note}")));
                    }
                    None => {
                        self.finish_active(name, status, Some(reason.clone()), now_ms);
                        self.record(at(format!("rollout {id} of version {to_version} failed: {reason}")));
                    }
                }
            }
        }
        let latest = self.deployments_of(name).into_iter().next().ok_or_else(stale)?;
        Ok(CommandOutput::Deployment(Box::new(latest)))
    }

    /// The newest version, older than `failed`, whose rollout succeeded.
    fn last_good_version(&self, name: &WorkloadName, failed: u64) -> Option<u64> {
        self.deployments
            .get(name)?
            .iter()
            .rev()
            .find(|d| d.status == DeploymentStatus::Successful && d.to_version < failed)
            .map(|d| d.to_version)
    }

    /// Deploys `version`'s spec again as a new version, keeping today's replica count.
    fn deploy_earlier(
        &mut self,
        index: u64,
        workload: &Workload,
        version: u64,
        cause: String,
        now_ms: u64,
    ) -> Result<Workload, Rejection> {
        let name = &workload.spec.name;
        let record = self
            .deployments
            .get(name)
            .and_then(|d| d.iter().rev().find(|d| d.to_version == version))
            .ok_or_else(|| Rejection::VersionNotInHistory {
                name: name.clone(),
                version,
                kept: MAX_HISTORY,
            })?;
        let mut spec = record.spec.clone();
        spec.replicas = workload.spec.replicas;
        if spec == workload.spec {
            return Err(Rejection::RolloutRefused {
                name: name.clone(),
                action: format!("go back to version {version}"),
                reason: "it has the same spec as the current version".into(),
            });
        }
        let chosen = self.choose_service_ports(&spec, self.service_port_range)?;
        self.set_service_ports(name, chosen);
        let updated = Workload {
            spec,
            version: workload.version + 1,
            created_index: workload.created_index,
            modified_index: index,
            status: Default::default(),
        };
        self.workloads.insert(name.clone(), updated.clone());
        self.begin_deployment(index, &updated, Some(workload.version), cause, now_ms);
        Ok(updated)
    }

    pub(super) fn rollout_action(
        &mut self,
        index: u64,
        name: &WorkloadName,
        action: RolloutAction,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        if !self.workloads.contains_key(name) {
            return Err(Rejection::WorkloadNotFound(name.clone()));
        }
        let active = self.active_deployment(name).ok_or_else(|| Rejection::NoActiveRollout(name.clone()))?;
        let refuse = |reason: String| Rejection::RolloutRefused {
            name: name.clone(),
            action: action.to_string(),
            reason,
        };
        let (status, promoted) = match (action, active.status) {
            (RolloutAction::Promote, _) if active.canary == 0 => {
                return Err(refuse("it has no canaries".into()));
            }
            (RolloutAction::Promote, _) if active.promoted => {
                return Err(refuse("it is promoted already".into()));
            }
            (RolloutAction::Promote, DeploymentStatus::Running | DeploymentStatus::WaitingForPromotion) => {
                (DeploymentStatus::Running, true)
            }
            (RolloutAction::Pause, DeploymentStatus::Running | DeploymentStatus::WaitingForPromotion) => {
                (DeploymentStatus::Paused, active.promoted)
            }
            (RolloutAction::Resume, DeploymentStatus::Paused) => (DeploymentStatus::Running, active.promoted),
            (_, current) => return Err(refuse(format!("it is {current}"))),
        };
        let id = active.id;
        if let Some(last) = self.deployments.get_mut(name).and_then(|d| d.back_mut()) {
            last.status = status;
            last.promoted = promoted;
            if action == RolloutAction::Resume {
                last.resumed_at_ms = Some(now_ms);
            }
        }
        let message = format!("rollout {id}: {action}d");
        self.record(Event { index, at_ms: now_ms, workload: Some(name.to_string()), node: None, message });
        let latest =
            self.deployments_of(name).into_iter().next().ok_or(Rejection::NoActiveRollout(name.clone()))?;
        Ok(CommandOutput::Deployment(Box::new(latest)))
    }

    pub(super) fn undo_rollout(
        &mut self,
        index: u64,
        name: &WorkloadName,
        to_version: Option<u64>,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let workload =
            self.workloads.get(name).cloned().ok_or_else(|| Rejection::WorkloadNotFound(name.clone()))?;
        let target = match to_version {
            Some(version) => version,
            None => self
                .deployments
                .get(name)
                .and_then(|d| d.iter().rev().map(|d| d.to_version).find(|v| *v < workload.version))
                .ok_or_else(|| Rejection::RolloutRefused {
                    name: name.clone(),
                    action: "undo".into(),
                    reason: "there is no earlier version in its history".into(),
                })?,
        };
        if target == workload.version {
            return Err(Rejection::RolloutRefused {
                name: name.clone(),
                action: "undo".into(),
                reason: format!("version {target} is the current version"),
            });
        }
        let cause = format!("rollout undo to version {target}");
        let updated = self.deploy_earlier(index, &workload, target, cause, now_ms)?;
        Ok(CommandOutput::Workload(self.with_status(updated)))
    }
}

/// Whether replicas of one spec run exactly what replicas of the other
/// would: equal but for how many there are, how they autoscale and how a
/// change rolls out.
pub fn runs_the_same(a: &WorkloadSpec, b: &WorkloadSpec) -> bool {
    let replica_of = |spec: &WorkloadSpec| WorkloadSpec {
        replicas: 0,
        autoscale: None,
        update: Default::default(),
        ..spec.clone()
    };
    replica_of(a) == replica_of(b)
}

#[cfg(test)]
mod tests {
    use flotilla_api::parse_yaml;

    use super::*;
    use crate::state::Command;

    fn name() -> WorkloadName {
        WorkloadName::parse("web").expect("name")
    }

    fn deploy(state: &mut ClusterState, index: u64, image: &str, extra: &str) {
        let spec = parse_yaml(&format!("name: web\nimage: {image}\nreplicas: 2\n{extra}")).expect("spec");
        state.apply(index, Command::put_workload(spec, index)).expect("deploy");
    }

    fn verdict(
        state: &mut ClusterState,
        index: u64,
        status: DeploymentStatus,
    ) -> Result<CommandOutput, Rejection> {
        let deployment = state.active_deployment(&name()).map_or(0, |d| d.id);
        let reason = Some("2 of 2 new replicas failed check web: GET /healthz -> 500".to_owned());
        state.apply(
            index,
            Command::SetDeploymentStatus { name: name(), deployment, status, reason, now_ms: index },
        )
    }

    fn image(state: &ClusterState) -> (u64, String) {
        let workload = state.workload("web").expect("web");
        (workload.version, workload.spec.image.unwrap_or_default())
    }

    #[test]
    fn a_failed_rollout_with_auto_revert_deploys_the_last_good_version_again() {
        let mut state = ClusterState::default();
        deploy(&mut state, 1, "v1", "update: {auto_revert: true}\n");
        verdict(&mut state, 2, DeploymentStatus::Successful).expect("v1 succeeds");
        deploy(&mut state, 3, "v2", "update: {auto_revert: true}\n");
        verdict(&mut state, 4, DeploymentStatus::Successful).expect("v2 succeeds");
        deploy(&mut state, 5, "v3", "update: {auto_revert: true}\n");
        verdict(&mut state, 6, DeploymentStatus::Failed).expect("v3 fails");
        assert_eq!(image(&state), (4, "v2".to_owned()), "v2's spec again, as version 4");
        let history = state.deployments_of(&name());
        assert_eq!(history[0].cause, "auto-revert to version 2 after version 3 failed");
        assert_eq!(history[0].status, DeploymentStatus::Running);
        assert_eq!(history[1].status, DeploymentStatus::Reverted);
        let reason = history[1].reason.clone().unwrap_or_default();
        assert!(
            reason.contains("GET /healthz -> 500") && reason.contains("reverted to version 2 as version 4"),
            "{reason}"
        );
        assert_eq!(
            state.workload("web").and_then(|w| w.status.rollout_failure),
            None,
            "version 4 has not failed"
        );
    }

    #[test]
    fn going_back_to_a_version_that_still_runs_keeps_its_replicas_as_they_are() {
        let mut state = ClusterState::default();
        state.apply(1, Command::register_docker_node("a", "", 4000, 4 << 30)).expect("node");
        deploy(&mut state, 2, "v1", "update: {auto_revert: true}\n");
        let placements = (0..2)
            .map(|replica| crate::state::Placement {
                workload: name(),
                replica,
                node: "a".into(),
                version: 1,
                cpu: 100,
                memory: 64 << 20,
                ports: Vec::new(),
            })
            .collect();
        let plan = crate::state::Plan { placements, now_ms: 3, ..Default::default() };
        state.apply(3, Command::ApplyPlan { plan }).expect("placed");
        let updates = [1, 2]
            .map(|id| flotilla_api::AllocationUpdate {
                health: Health::Healthy,
                ..flotilla_api::AllocationUpdate::running(id)
            })
            .to_vec();
        state
            .apply(4, Command::UpdateAllocations { node: "a".into(), seq: 0, updates, now_ms: 4 })
            .expect("healthy");
        verdict(&mut state, 5, DeploymentStatus::Successful).expect("v1 succeeds");
        deploy(&mut state, 6, "v2", "update: {auto_revert: true}\n");
        verdict(&mut state, 7, DeploymentStatus::Failed).expect("v2 fails and is reverted");
        assert_eq!(image(&state), (3, "v1".to_owned()));
        let kept: Vec<(u64, u64, Health, Option<u64>)> = state
            .workload_allocations(&name())
            .map(|a| (a.id, a.version, a.health, a.healthy_since_ms))
            .collect();
        assert_eq!(kept, vec![(1, 3, Health::Healthy, Some(4)), (2, 3, Health::Healthy, Some(4))]);
        let said: Vec<String> = state.events_after(0).map(|e| e.message.clone()).collect();
        assert!(said.iter().any(|m| m.contains("2 replicas already run this spec and are kept")), "{said:?}");
        // A change of the update strategy alone replaces nothing either.
        deploy(&mut state, 8, "v1", "update: {auto_revert: true, max_parallel: 2}\n");
        let versions: Vec<u64> = state.workload_allocations(&name()).map(|a| a.version).collect();
        assert_eq!(versions, vec![4, 4]);
    }

    #[test]
    fn a_failed_rollout_without_auto_revert_stays_failed_and_says_why() {
        let mut state = ClusterState::default();
        deploy(&mut state, 1, "v1", "");
        verdict(&mut state, 2, DeploymentStatus::Successful).expect("v1 succeeds");
        deploy(&mut state, 3, "v2", "");
        verdict(&mut state, 4, DeploymentStatus::Failed).expect("v2 fails");
        assert_eq!(image(&state), (2, "v2".to_owned()));
        let failure = state.workload("web").and_then(|w| w.status.rollout_failure).expect("failed");
        assert!(failure.contains("GET /healthz -> 500"), "{failure}");
        let before = state.clone();
        assert!(matches!(
            verdict(&mut state, 5, DeploymentStatus::Successful),
            Err(Rejection::StaleDeployment { .. })
        ));
        assert_eq!(state, before, "a verdict on a finished rollout changes nothing");
    }

    #[test]
    fn undo_goes_back_to_the_previous_or_a_named_version_as_a_new_version() {
        let mut state = ClusterState::default();
        deploy(&mut state, 1, "v1", "");
        deploy(&mut state, 2, "v2", "");
        deploy(&mut state, 3, "v3", "");
        assert_eq!(state.deployments_of(&name())[1].status, DeploymentStatus::Cancelled, "v2 was superseded");
        state.apply(4, Command::UndoRollout { name: name(), to_version: None, now_ms: 4 }).expect("undo");
        assert_eq!(image(&state), (4, "v2".to_owned()));
        state
            .apply(5, Command::UndoRollout { name: name(), to_version: Some(1), now_ms: 5 })
            .expect("undo to 1");
        assert_eq!(image(&state), (5, "v1".to_owned()));
        // Refusals change nothing.
        for (to_version, why) in
            [(Some(5), "current"), (Some(99), "not in its history"), (Some(1), "same spec")]
        {
            let before = state.clone();
            let error =
                state.apply(6, Command::UndoRollout { name: name(), to_version, now_ms: 6 }).expect_err(why);
            assert!(error.to_string().contains(why), "{error}");
            assert_eq!(state, before);
        }
    }

    #[test]
    fn the_history_keeps_the_last_versions_and_scales_make_none() {
        let mut state = ClusterState::default();
        for i in 0..(MAX_HISTORY as u64 + 5) {
            deploy(&mut state, i + 1, &format!("v{i}"), "");
        }
        state.apply(100, Command::ScaleWorkload { name: name(), replicas: 7 }).expect("scale");
        let history = state.deployments_of(&name());
        assert_eq!(history.len(), MAX_HISTORY);
        assert_eq!(history[0].to_version, MAX_HISTORY as u64 + 5);
        let error = state.apply(101, Command::UndoRollout { name: name(), to_version: Some(1), now_ms: 0 });
        assert!(matches!(error, Err(Rejection::VersionNotInHistory { .. })));
    }

    #[test]
    fn promote_pause_and_resume_move_only_from_the_states_they_name() {
        let mut state = ClusterState::default();
        state.apply(1, Command::register_docker_node("a", "", 1000, 1 << 30)).expect("node");
        deploy(&mut state, 2, "v1", "update: {canary: 1}\n");
        let act = |state: &mut ClusterState, action| {
            state.apply(9, Command::Rollout { name: name(), action, now_ms: 9 })
        };
        assert!(act(&mut state, RolloutAction::Promote).is_err(), "a first version has no canaries");
        deploy(&mut state, 3, "v2", "update: {canary: 1}\n");
        assert!(act(&mut state, RolloutAction::Resume).is_err(), "not paused");
        act(&mut state, RolloutAction::Pause).expect("pause");
        assert_eq!(state.active_deployment(&name()).map(|d| d.status), Some(DeploymentStatus::Paused));
        act(&mut state, RolloutAction::Resume).expect("resume");
        act(&mut state, RolloutAction::Promote).expect("promote");
        let before = state.clone();
        let error = act(&mut state, RolloutAction::Promote).expect_err("twice");
        assert!(error.to_string().contains("promoted already"), "{error}");
        assert_eq!(state, before);
    }
}
