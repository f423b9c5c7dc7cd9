//! The CA rotation controller: on the leader, it moves a rotation from one
//! phase to the next once every party has caught up with the current one.
//! Trusting ends when every server and every agent trusts the new CA (so
//! no one refuses a certificate from it); reissuing ends when every server
//! and every agent presents a certificate from it (so no one is left
//! holding one the old CA signed). Agents of down nodes are not waited
//! for: a node down through a whole rotation joins again with a new token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::{CaRotationPhase, NodeStatus, TlsReport};

use super::node_health::Liveness;
use crate::member_http::MemberHttp;
use crate::raft::RaftHandle;
use crate::server_tls::ServerTls;
use crate::state::{CaRotation, Command};

/// How often the leader looks at a rotation in progress.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How long a member has to say what it trusts before it counts as
/// unreachable this round.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a rotation still waits for, as the leader last assessed it:
/// `ca status` shows it.
#[derive(Debug, Default)]
pub struct RotationProgress {
    waiting_for: Mutex<Vec<String>>,
}

impl RotationProgress {
    pub fn waiting_for(&self) -> Vec<String> {
        self.waiting_for.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, waiting_for: Vec<String>) {
        *self.waiting_for.lock().unwrap_or_else(|p| p.into_inner()) = waiting_for;
    }
}

/// What the leader should do about a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Someone has not caught up; each entry says who and how.
    Wait(Vec<String>),
    /// Everyone has caught up with the phase: move to the next.
    Advance,
}

/// Whether one party has caught up with `rotation`'s phase; if not, why.
fn lagging(rotation: &CaRotation, report: Option<&TlsReport>) -> Option<&'static str> {
    let Some(report) = report else {
        return Some("has not reported its TLS");
    };
    let to = &rotation.to.digest;
    match rotation.phase {
        CaRotationPhase::Trusting => {
            (!report.trusted.contains(to)).then_some("does not trust the new CA yet")
        }
        CaRotationPhase::Reissuing => {
            (report.issuer.as_ref() != Some(to)).then_some("holds a certificate from the old CA")
        }
    }
}

/// The decision, from every server's and node's report: a pure function,
/// for its own tests.
pub fn assess(
    rotation: &CaRotation,
    servers: &[(u64, Option<TlsReport>)],
    nodes: &[(String, NodeStatus, Option<TlsReport>)],
) -> Step {
    let mut waiting = Vec::new();
    for (id, report) in servers {
        if let Some(why) = lagging(rotation, report.as_ref()) {
            waiting.push(format!("server {id}: {why}"));
        }
    }
    for (name, status, report) in nodes {
        if *status == NodeStatus::Down {
            continue;
        }
        if let Some(why) = lagging(rotation, report.as_ref()) {
            waiting.push(format!("node {name}: {why}"));
        }
    }
    if waiting.is_empty() { Step::Advance } else { Step::Wait(waiting) }
}

/// A member's own TLS, asked over its peer connection.
async fn ask_member(http: &MemberHttp, address: &str) -> Option<TlsReport> {
    let response =
        http.client.get(http.url(address, "/v1/ca/local")).timeout(ASK_TIMEOUT).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Runs on every server; acts while this server leads and a rotation is
/// in progress, until the Raft node stops.
pub async fn run_ca_rotation(
    raft: RaftHandle,
    tls: Arc<ServerTls>,
    http: MemberHttp,
    liveness: Arc<Liveness>,
    progress: Arc<RotationProgress>,
) {
    let mut interval = tokio::time::interval(LOOK_EVERY);
    loop {
        interval.tick().await;
        if raft.is_stopped() {
            return;
        }
        let (rotation, members, nodes) = {
            let state = raft.state();
            let Some(rotation) = state.ca().rotation.clone().filter(|_| raft.is_leader()) else {
                progress.set(Vec::new());
                continue;
            };
            let members: Vec<(u64, String)> = state.members().map(|m| (m.id, m.address.clone())).collect();
            let nodes: Vec<(String, NodeStatus)> =
                state.nodes().map(|n| (n.name.clone(), n.status)).collect();
            (rotation, members, nodes)
        };
        let own = raft.leader();
        let mut servers = Vec::with_capacity(members.len());
        for (id, address) in members {
            let report = if Some(id) == own { Some(tls.report()) } else { ask_member(&http, &address).await };
            servers.push((id, report));
        }
        let nodes: Vec<_> =
            nodes.into_iter().map(|(name, status)| (name.clone(), status, liveness.tls(&name))).collect();
        match assess(&rotation, &servers, &nodes) {
            Step::Wait(waiting_for) => progress.set(waiting_for),
            Step::Advance => {
                progress.set(Vec::new());
                let to_digest = rotation.to.digest.clone();
                let now_ms = flotilla_api::now_ms();
                let command = match rotation.phase {
                    CaRotationPhase::Trusting => Command::ReissueFromNewCa { to_digest, now_ms },
                    CaRotationPhase::Reissuing => Command::FinishCaRotation { to_digest, now_ms },
                };
                match raft.propose(command).await {
                    Ok(_) => {
                        tracing::info!(phase = ?rotation.phase, to = %rotation.to.digest, "CA rotation advanced")
                    }
                    Err(error) => tracing::debug!(%error, "CA rotation not advanced; looked at again"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StoredCa;

    fn rotation(phase: CaRotationPhase) -> CaRotation {
        CaRotation {
            from_pem: String::new(),
            from_digest: "old".into(),
            to: StoredCa { certificate_pem: String::new(), digest: "new".into(), sealed_key: String::new() },
            phase,
            started_ms: 0,
        }
    }

    fn report(trusted: &[&str], issuer: &str) -> Option<TlsReport> {
        Some(TlsReport {
            trusted: trusted.iter().map(|d| d.to_string()).collect(),
            issuer: Some(issuer.into()),
        })
    }

    #[test]
    fn a_phase_ends_only_when_every_server_and_live_agent_has_caught_up() {
        use CaRotationPhase::{Reissuing, Trusting};
        use NodeStatus::{Down, Draining, Ready};
        let both = || report(&["old", "new"], "old");
        let renewed = || report(&["old", "new"], "new");
        let old_only = || report(&["old"], "old");
        // (phase, servers, nodes, who is waited for; empty: advance)
        type Case = (
            CaRotationPhase,
            Vec<Option<TlsReport>>,
            Vec<(NodeStatus, Option<TlsReport>)>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (Trusting, vec![both(), both()], vec![(Ready, both())], vec![]),
            (
                Trusting,
                vec![both(), old_only()],
                vec![(Ready, both())],
                vec!["server 2: does not trust the new CA yet"],
            ),
            (Trusting, vec![both(), None], vec![], vec!["server 2: has not reported its TLS"]),
            (Trusting, vec![both()], vec![(Ready, None)], vec!["node n0: has not reported its TLS"]),
            (
                Trusting,
                vec![both()],
                vec![(Draining, old_only())],
                vec!["node n0: does not trust the new CA yet"],
            ),
            (Trusting, vec![both()], vec![(Down, None), (Ready, both())], vec![]),
            (Reissuing, vec![both()], vec![], vec!["server 1: holds a certificate from the old CA"]),
            (
                Reissuing,
                vec![renewed()],
                vec![(Ready, both())],
                vec!["node n0: holds a certificate from the old CA"],
            ),
            (Reissuing, vec![renewed(), renewed()], vec![(Ready, renewed()), (Down, old_only())], vec![]),
        ];
        for (phase, servers, nodes, waiting) in cases {
            let servers: Vec<_> = servers.into_iter().enumerate().map(|(i, r)| (i as u64 + 1, r)).collect();
            let nodes: Vec<_> =
                nodes.into_iter().enumerate().map(|(i, (s, r))| (format!("n{i}"), s, r)).collect();
            let expected = if waiting.is_empty() {
                Step::Advance
            } else {
                Step::Wait(waiting.iter().map(|w| w.to_string()).collect())
            };
            assert_eq!(
                assess(&rotation(phase), &servers, &nodes),
                expected,
                "{phase:?} {servers:?} {nodes:?}"
            );
        }
    }
}
