//! The cluster page: every server's own view of Raft (role, term, commit
//! and applied index, faults in force), and what the state holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flotilla_api::{Member, ServerStatus};

use super::markup::escape;
use crate::state::ClusterState;

/// One member and what it said of itself, or why it said nothing.
#[derive(Debug)]
pub struct MemberReport {
    pub member: Member,
    pub status: Result<ServerStatus, String>,
}

/// Counts by a label, for the summary tiles.
fn tally<'a>(labels: impl Iterator<Item = String> + 'a) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for label in labels {
        *counts.entry(label).or_default() += 1;
    }
    counts
}

fn tile(out: &mut String, id: &str, label: &str, value: usize, detail: &BTreeMap<String, usize>) {
    let detail: Vec<String> = detail.iter().map(|(k, n)| format!("{n} {}", escape(k))).collect();
    let _ = write!(
        out,
        "<div class=\"tile\" id=\"{id}\"><span class=\"value\">{value}</span><span class=\"label\">{label}</span>\
         <span class=\"detail\">{}</span></div>",
        detail.join(" · ")
    );
}

pub fn render(reports: &[MemberReport], here: &ServerStatus, state: &ClusterState) -> String {
    let mut out = String::new();
    let leader = here.leader.map_or_else(|| "none".to_owned(), |l| format!("server {l}"));
    let _ = write!(
        out,
        "<h1>Cluster</h1><p class=\"summary\">Leader: <strong id=\"leader\">{leader}</strong> · term <strong>{}</strong> \
         · {} servers</p><div class=\"tiles\">",
        here.term,
        reports.len()
    );
    let nodes = tally(state.nodes().map(|n| n.status.to_string()));
    tile(&mut out, "tile-nodes", "nodes", state.node_count(), &nodes);
    let workloads = state.workloads().count();
    tile(&mut out, "tile-workloads", "workloads", workloads, &BTreeMap::new());
    let allocations = tally(state.allocations().filter(|a| a.is_replica()).map(|a| a.state.to_string()));
    tile(&mut out, "tile-replicas", "replicas", allocations.values().sum(), &allocations);
    out.push_str(
        "</div><h2>Servers</h2><table id=\"servers\"><thead><tr><th>id</th><th>address</th><th>voter</th>\
         <th>role</th><th>term</th><th>commit</th><th>applied</th><th>log</th><th>snapshot</th>\
         <th>matched (leader's view)</th><th>faults in force</th></tr></thead><tbody>",
    );
    for report in reports {
        let member = &report.member;
        let matched = here
            .members
            .iter()
            .find(|m| m.id == member.id)
            .and_then(|m| m.matched)
            .map_or_else(String::new, |m| m.to_string());
        let _ = write!(
            out,
            "<tr data-server=\"{}\"><td>{}</td><td>{}</td><td>{}</td>",
            member.id,
            member.id,
            escape(&member.address),
            if member.voter { "yes" } else { "learner" }
        );
        match &report.status {
            Ok(status) => {
                let faults = if status.blocked_peers.is_empty() {
                    String::new()
                } else {
                    let peers: Vec<String> = status.blocked_peers.iter().map(u64::to_string).collect();
                    format!("<span class=\"fault\">cut off from {}</span>", peers.join(", "))
                };
                let _ = write!(
                    out,
                    "<td class=\"role {role}\">{role}</td><td>{}</td><td>{}</td><td>{}</td><td>{}–{}</td><td>{}</td>\
                     <td>{matched}</td><td>{faults}</td></tr>",
                    status.term,
                    status.commit,
                    status.applied,
                    status.first_index,
                    status.last_index,
                    status.snapshot_index,
                    role = status.role,
                );
            }
            Err(reason) => {
                let _ = write!(
                    out,
                    "<td class=\"role unreachable\" colspan=\"8\">unreachable: {}</td></tr>",
                    escape(reason)
                );
            }
        }
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use flotilla_api::RaftRole;

    use super::*;

    fn member(id: u64) -> Member {
        Member { id, address: format!("127.0.0.1:{}", 7000 + id), voter: true, matched: None }
    }

    fn status(id: u64, role: RaftRole, blocked_peers: Vec<u64>) -> ServerStatus {
        ServerStatus {
            id,
            address: member(id).address,
            role,
            leader: Some(1),
            term: 4,
            commit: 90,
            applied: 88,
            first_index: 10,
            last_index: 90,
            snapshot_index: 9,
            members: (1..=3).map(member).collect(),
            blocked_peers,
        }
    }

    #[test]
    fn each_server_shows_its_own_raft_view_its_faults_and_why_one_said_nothing() {
        let reports = vec![
            MemberReport { member: member(1), status: Ok(status(1, RaftRole::Leader, vec![])) },
            MemberReport { member: member(2), status: Ok(status(2, RaftRole::Follower, vec![1, 3])) },
            MemberReport { member: member(3), status: Err("timed out after 1s <no answer>".to_owned()) },
        ];
        let page = render(&reports, &status(1, RaftRole::Leader, vec![]), &ClusterState::default());
        assert!(page.contains("<strong id=\"leader\">server 1</strong>"), "{page}");
        assert!(page.contains("<td>88</td><td>10–90</td><td>9</td>"), "applied, log and snapshot: {page}");
        assert!(page.contains("<span class=\"fault\">cut off from 1, 3</span>"), "{page}");
        assert_eq!(page.matches("class=\"fault\"").count(), 1, "no fault where none is in force");
        assert!(page.contains("unreachable: timed out after 1s &lt;no answer&gt;"), "{page}");
    }
}
