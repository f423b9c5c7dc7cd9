//! A workload's page: its replicas (node, state, health, restarts), its
//! rollout and history with the actions a deployer may take, the tail of a
//! replica's log, its events, and charts of each replica's CPU and memory
//! against the autoscale target with the scale decisions marked on the
//! time axis. The charts are drawn in the browser from the leader's
//! samples (`/v1/workloads/NAME/utilisation`), as Nomad's UI does: the
//! leader keeps the latest sample per replica, not a history.

use std::fmt::Write as _;

use flotilla_api::{Allocation, DeploymentStatus, Workload};

use super::markup::{age, escape, path_segment};
use super::workloads_page::{health_counts, runs};
use crate::state::ClusterState;

/// The autoscaler's decisions are what a chart's time axis marks.
fn marks_scale(message: &str) -> bool {
    message.starts_with("autoscaled")
}

fn rollout_actions(out: &mut String, name: &str, status: DeploymentStatus) {
    let path = |action: &str| format!("/v1/workloads/{}/rollout/{action}", path_segment(name));
    let mut button = |action: &str, label: &str| {
        let _ = write!(
            out,
            "<button class=\"action\" data-method=\"POST\" data-path=\"{}\" data-body=\"{{}}\">{label}</button>",
            path(action)
        );
    };
    match status {
        DeploymentStatus::WaitingForPromotion => button("promote", "Promote"),
        DeploymentStatus::Running => button("pause", "Pause"),
        DeploymentStatus::Paused => button("resume", "Resume"),
        _ => {}
    }
    button("undo", "Undo");
}

fn replica_row(out: &mut String, allocation: &Allocation, now_ms: u64) {
    let state = if allocation.stopping {
        format!("{} (stopping)", allocation.state)
    } else {
        allocation.state.to_string()
    };
    let _ = write!(
        out,
        "<tr data-allocation=\"{id}\" data-state=\"{state_attr}\"><td>{id}</td><td>{replica}</td>\
         <td><a href=\"/ui/nodes#node-{node_link}\">{node}</a></td><td class=\"state {state_attr}\">{state}</td>\
         <td class=\"health {health}\" title=\"{health_output}\">{health}</td><td>{restarts}</td><td>{version}</td>\
         <td>{age}</td><td>{message}</td></tr>",
        id = allocation.id,
        replica = allocation.replica,
        node_link = path_segment(&allocation.node),
        node = escape(&allocation.node),
        state_attr = allocation.state,
        state = escape(&state),
        health = allocation.health,
        health_output = escape(&allocation.health_output),
        restarts = allocation.restarts,
        version = allocation.version,
        age = age(now_ms, allocation.created_at_ms),
        message = escape(&allocation.message),
    );
}

pub fn render(state: &ClusterState, workload: Workload, now_ms: u64, may_deploy: bool) -> String {
    let mut out = String::new();
    let workload = state.with_status(workload);
    let name = workload.spec.name.as_str();
    let status = &workload.status;
    let (healthy, unhealthy) = health_counts(state, &workload);
    let _ = write!(
        out,
        "<h1>{title}</h1><p class=\"summary\"><span class=\"runs\">{runs}</span> · version {version} · \
         <strong id=\"running\">{running}</strong> of <strong id=\"replicas\">{replicas}</strong> running · \
         {healthy} healthy, {unhealthy} unhealthy · {restarting} restarting</p>",
        title = escape(name),
        runs = escape(&runs(&workload)),
        version = workload.version,
        running = status.running,
        replicas = workload.spec.replicas,
        restarting = status.restarting,
    );
    if let Some(reason) = status.unplaced_reason.as_ref().filter(|_| status.unplaced > 0) {
        let _ = write!(out, "<p class=\"pending\">{} pending: {}</p>", status.unplaced, escape(reason));
    }
    if let Some(failure) = &status.rollout_failure {
        let _ = write!(out, "<p class=\"failure\">{}</p>", escape(failure));
    }

    out.push_str("<h2>Replicas</h2><table id=\"replicas-table\"><thead><tr><th>allocation</th><th>replica</th><th>node</th>\
                  <th>state</th><th>health</th><th>restarts</th><th>version</th><th>age</th><th>message</th></tr></thead><tbody>");
    let mut allocations: Vec<&Allocation> = state.workload_allocations(&workload.spec.name).collect();
    allocations.sort_by_key(|a| (!a.is_replica(), a.replica, std::cmp::Reverse(a.id)));
    for allocation in allocations.iter().take(200) {
        replica_row(&mut out, allocation, now_ms);
    }
    out.push_str("</tbody></table>");

    let scale_marks: Vec<String> = state
        .events_after(0)
        .filter(|e| e.workload.as_deref() == Some(name) && marks_scale(&e.message))
        .map(|e| e.at_ms.to_string())
        .collect();
    let target = |percent: Option<u32>| percent.map_or_else(String::new, |p| p.to_string());
    let auto = workload.spec.autoscale.as_ref();
    let _ = write!(
        out,
        "<h2>Use against requests</h2><div class=\"charts\" data-workload=\"{link}\" data-marks=\"{marks}\">\
         <figure class=\"chart\" data-resource=\"cpu\" data-target=\"{cpu_target}\"><figcaption>CPU, % of request</figcaption></figure>\
         <figure class=\"chart\" data-resource=\"memory\" data-target=\"{memory_target}\"><figcaption>memory, % of request</figcaption></figure></div>",
        link = path_segment(name),
        marks = scale_marks.join(","),
        cpu_target = target(auto.and_then(|a| a.cpu).map(|p| p.0)),
        memory_target = target(auto.and_then(|a| a.memory).map(|p| p.0)),
    );

    out.push_str("<h2>Rollouts</h2>");
    let deployments = state.deployments_of(&workload.spec.name);
    if may_deploy && let Some(current) = deployments.iter().rev().find(|d| d.to_version == workload.version) {
        out.push_str("<p class=\"actions\">");
        rollout_actions(&mut out, name, current.status);
        out.push_str("</p>");
    }
    out.push_str(
        "<table id=\"rollouts\"><thead><tr><th>id</th><th>version</th><th>status</th><th>placed</th>\
                  <th>healthy</th><th>cause</th><th>started</th><th>reason</th></tr></thead><tbody>",
    );
    for deployment in deployments.iter().rev() {
        let from = deployment.from_version.map_or_else(String::new, |v| format!("{v} → "));
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{from}{}</td><td class=\"rollout {status}\">{status}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{} ago</td><td>{}</td></tr>",
            deployment.id,
            deployment.to_version,
            deployment.placed,
            deployment.healthy,
            escape(&deployment.cause),
            age(now_ms, deployment.started_at_ms),
            escape(deployment.reason.as_deref().unwrap_or("")),
            status = deployment.status,
        );
    }
    out.push_str("</tbody></table>");

    if let Some(running) = allocations.iter().find(|a| a.is_replica() && a.state.is_live()) {
        let _ = write!(
            out,
            "<h2>Log of allocation {id}</h2><pre class=\"logs\" data-logs=\"{id}\">loading…</pre>",
            id = running.id
        );
    }

    out.push_str("<h2>Events</h2><ul class=\"events\">");
    let events: Vec<_> = state.events_after(0).filter(|e| e.workload.as_deref() == Some(name)).collect();
    for event in events.iter().rev().take(50) {
        let _ = write!(out, "<li>{} ago · {}</li>", age(now_ms, event.at_ms), escape(&event.message));
    }
    out.push_str("</ul>");
    out
}

#[cfg(test)]
mod tests {
    use flotilla_api::{RolloutAction, WorkloadName, parse_yaml};

    use super::*;
    use crate::state::{AutoscaleDecision, Command};

    const AUTOSCALED: &str = "name: web\nimage: v1\nreplicas: 1\nautoscale: {min: 1, max: 4, cpu: 50%}\n";

    fn name() -> WorkloadName {
        WorkloadName::parse("web").expect("name")
    }

    fn deployed(yaml: &str) -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(1, Command::put_workload(parse_yaml(yaml).expect("spec"), 1_000)).expect("deploy");
        state
    }

    fn page(state: &ClusterState, may_deploy: bool) -> String {
        render(state, state.workload("web").expect("web"), 10_000, may_deploy)
    }

    fn set_status(state: &mut ClusterState, index: u64, status: DeploymentStatus) {
        let deployment = state.active_deployment(&name()).expect("a rollout").id;
        let command =
            Command::SetDeploymentStatus { name: name(), deployment, status, reason: None, now_ms: index };
        state.apply(index, command).expect("status");
    }

    #[test]
    fn a_deployer_gets_the_actions_the_rollouts_status_allows_and_a_reader_none() {
        let path = |action: &str| format!("data-path=\"/v1/workloads/web/rollout/{action}\"");
        let mut state = deployed("name: web\nimage: v1\nreplicas: 2\n");
        let running = page(&state, true);
        assert!(running.contains(&path("pause")) && running.contains(&path("undo")), "{running}");
        assert!(!running.contains(&path("promote")), "nothing waits for promotion: {running}");
        assert!(!page(&state, false).contains("<button"), "a reader gets no buttons");

        set_status(&mut state, 2, DeploymentStatus::Successful);
        let canary = parse_yaml("name: web\nimage: v2\nreplicas: 2\nupdate: {canary: 1}\n").expect("spec");
        state.apply(3, Command::put_workload(canary, 3_000)).expect("deploy v2");
        set_status(&mut state, 4, DeploymentStatus::WaitingForPromotion);
        let waiting = page(&state, true);
        assert!(waiting.contains(&path("promote")) && !waiting.contains(&path("pause")), "{waiting}");

        let promote = Command::Rollout { name: name(), action: RolloutAction::Promote, now_ms: 5_000 };
        state.apply(5, promote).expect("promote");
        let pause = Command::Rollout { name: name(), action: RolloutAction::Pause, now_ms: 6_000 };
        state.apply(6, pause).expect("pause");
        let paused = page(&state, true);
        assert!(paused.contains(&path("resume")), "{paused}");
        assert!(
            paused.contains("<td class=\"rollout paused\">paused</td>"),
            "the history's newest row: {paused}"
        );
        assert!(paused.contains("<td class=\"rollout successful\">successful</td>"), "and v1's: {paused}");
    }

    #[test]
    fn the_charts_mark_the_autoscalers_decisions_and_carry_its_target() {
        let mut state = deployed(AUTOSCALED);
        for (index, replicas, at_ms) in [(2, 3, 4_000), (3, 2, 7_000)] {
            let workload = state.workload("web").expect("web");
            let decision = AutoscaleDecision {
                name: name(),
                replicas,
                based_on_replicas: workload.spec.replicas,
                version: workload.version,
                reason: format!("cpu 90% of request, target 50%: {replicas} replicas"),
                now_ms: at_ms,
            };
            state.apply(index, Command::AutoscaleWorkload(decision)).expect("scale");
        }
        let page = page(&state, false);
        assert!(page.contains("data-marks=\"4000,7000\""), "each decision on the time axis: {page}");
        assert!(page.contains("data-resource=\"cpu\" data-target=\"50\""), "{page}");
        assert!(page.contains("data-resource=\"memory\" data-target=\"\""), "no memory target: {page}");
    }

    #[test]
    fn a_workload_without_autoscaling_has_charts_and_no_marks() {
        let page = page(&deployed("name: web\nimage: v1\nreplicas: 2\n"), false);
        assert!(page.contains("data-marks=\"\""), "{page}");
        assert!(page.contains("data-resource=\"cpu\" data-target=\"\""), "{page}");
    }
}
