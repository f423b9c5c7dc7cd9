//! The workloads page: one row per workload with its replicas against
//! what was asked, their health, the rollout in progress, and why any
//! replica is pending, in the words the scheduler gave.

use std::fmt::Write as _;

use flotilla_api::{Health, Workload};

use super::markup::{escape, path_segment};
use crate::state::ClusterState;

/// Healthy and unhealthy replicas of a workload, by their checks.
pub fn health_counts(state: &ClusterState, workload: &Workload) -> (u32, u32) {
    let mut counts = (0, 0);
    for allocation in state.workload_allocations(&workload.spec.name).filter(|a| a.is_replica()) {
        match allocation.health {
            Health::Healthy => counts.0 += 1,
            Health::Unhealthy => counts.1 += 1,
            Health::Unknown => {}
        }
    }
    counts
}

/// What a workload runs, in a few words.
pub fn runs(workload: &Workload) -> String {
    let spec = &workload.spec;
    match &spec.image {
        Some(image) => format!("{} {}", spec.driver, image),
        None => format!("{} {}", spec.driver, spec.command.join(" ")),
    }
}

pub fn render(state: &ClusterState) -> String {
    let mut out = String::new();
    let mut workloads: Vec<Workload> = state.workloads().map(|w| state.with_status(w.clone())).collect();
    workloads.sort_by(|a, b| a.spec.name.as_str().cmp(b.spec.name.as_str()));
    let _ = write!(
        out,
        "<h1>Workloads</h1><p class=\"summary\">{} workloads</p><table id=\"workloads\"><thead><tr>\
         <th>name</th><th>runs</th><th>replicas</th><th>running</th><th>health</th><th>version</th>\
         <th>rollout</th><th>pending</th></tr></thead><tbody>",
        workloads.len()
    );
    for workload in &workloads {
        let status = &workload.status;
        let (healthy, unhealthy) = health_counts(state, workload);
        let rollout = match (&status.rollout, status.outdated) {
            (Some(rollout), outdated) if outdated > 0 => format!("{rollout}, {outdated} outdated"),
            (Some(rollout), _) => rollout.to_string(),
            (None, _) => String::new(),
        };
        let pending = match &status.unplaced_reason {
            Some(reason) if status.unplaced > 0 => format!("{} pending: {}", status.unplaced, escape(reason)),
            _ => String::new(),
        };
        let degraded =
            if status.restarting > 0 || unhealthy > 0 || status.unplaced > 0 { " degraded" } else { "" };
        let _ = write!(
            out,
            "<tr class=\"workload{degraded}\" data-workload=\"{name}\"><td><a href=\"/ui/workloads/{link}\">{name}</a></td>\
             <td class=\"runs\">{runs}</td><td class=\"replicas\">{replicas}</td><td class=\"running\">{running}/{placed}</td>\
             <td>{healthy} healthy{unhealthy_text}</td><td>{version}</td><td>{rollout}</td><td class=\"pending\">{pending}</td></tr>",
            name = escape(workload.spec.name.as_str()),
            link = path_segment(workload.spec.name.as_str()),
            runs = escape(&runs(workload)),
            replicas = workload.spec.replicas,
            running = status.running,
            placed = status.placed,
            unhealthy_text = if unhealthy > 0 { format!(", {unhealthy} unhealthy") } else { String::new() },
            version = workload.version,
            rollout = escape(&rollout),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::{WorkloadName, parse_yaml};

    use super::*;
    use crate::state::{Command, Plan, Unplaced};

    #[test]
    fn pending_replicas_show_the_schedulers_reason_and_mark_the_workload_degraded() {
        let mut state = ClusterState::default();
        let spec = parse_yaml("name: big\nimage: x\nreplicas: 2\nresources: {cpu: 64, memory: 1Gi}\n")
            .expect("spec");
        state.apply(1, Command::put_workload(spec, 1)).expect("deploy");
        let spec = parse_yaml("name: small\nimage: x\nreplicas: 1\n").expect("spec");
        state.apply(2, Command::put_workload(spec, 2)).expect("deploy");
        let reason = "no node has 64000m CPU free (<largest> 2000m)";
        let unplaced = Unplaced { count: 2, reason: reason.to_owned() };
        let plan = Plan {
            unplaced: BTreeMap::from([(WorkloadName::parse("big").expect("name"), unplaced)]),
            ..Plan::default()
        };
        state.apply(3, Command::ApplyPlan { plan }).expect("plan");

        let page = render(&state);
        assert!(page.contains("2 workloads"), "{page}");
        assert!(
            page.contains(
                "<td class=\"pending\">2 pending: no node has 64000m CPU free (&lt;largest&gt; 2000m)</td>"
            ),
            "the reason, as text: {page}"
        );
        assert!(page.contains("<tr class=\"workload degraded\" data-workload=\"big\">"), "{page}");
        assert!(page.contains("<tr class=\"workload\" data-workload=\"small\">"), "nothing pending: {page}");
    }
}
