//! `/metrics` in the Prometheus text format: Raft progress and what the
//! state holds, for a scraper to chart. Written by hand: a few gauges do not
//! need a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use flotilla_api::RaftRole;

use super::AppState;
use super::error::ApiError;

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

pub async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let status = app.raft.status().await?;
    let mut out = String::new();
    let one = |v: u64| vec![(String::new(), v)];
    gauge(&mut out, "flotilla_raft_term", "Current Raft term.", &one(status.term));
    gauge(&mut out, "flotilla_raft_commit_index", "Highest log index known committed.", &one(status.commit));
    gauge(&mut out, "flotilla_raft_applied_index", "Highest log index applied here.", &one(status.applied));
    gauge(
        &mut out,
        "flotilla_raft_leader",
        "1 if this server leads.",
        &one(u64::from(status.role == RaftRole::Leader)),
    );
    let state = app.raft.state();
    gauge(&mut out, "flotilla_workloads", "Workloads stored.", &one(state.workloads().count() as u64));
    let mut allocations: BTreeMap<String, u64> = BTreeMap::new();
    for allocation in state.allocations() {
        *allocations.entry(allocation.state.to_string()).or_default() += 1;
    }
    let by_state: Vec<(String, u64)> =
        allocations.into_iter().map(|(s, n)| (format!("{{state=\"{s}\"}}"), n)).collect();
    gauge(&mut out, "flotilla_allocations", "Allocations by state.", &by_state);
    let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
    for node in state.nodes() {
        *nodes.entry(node.status.to_string()).or_default() += 1;
    }
    let by_status: Vec<(String, u64)> =
        nodes.into_iter().map(|(s, n)| (format!("{{status=\"{s}\"}}"), n)).collect();
    gauge(&mut out, "flotilla_nodes", "Nodes by status.", &by_status);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
