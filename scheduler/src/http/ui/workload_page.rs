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
