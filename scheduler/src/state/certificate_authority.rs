//! The cluster CA in the replicated state. The founding CA lives only in
//! each server's data dir; a rotation puts its successor here, its key
//! sealed with the cluster key, so every server (and one restored from a
//! snapshot, or joining later) can trust it and then issue from it. The
//! leader's rotation controller moves a rotation through its phases once
//! every server and agent has caught up with the one before.

use flotilla_api::{CaRotationPhase, Event};
use serde::{Deserialize, Serialize};

use super::cluster_state::ClusterState;
use super::command::{CommandOutput, Rejection};

/// A CA the state carries: its certificate, and its key sealed with the
/// cluster key (the servers alone can open it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCa {
    pub certificate_pem: String,
    pub digest: String,
    pub sealed_key: String,
}

/// A rotation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    /// The CA being replaced (certificate PEM): trusted until the rotation ends.
    pub from_pem: String,
    pub from_digest: String,
    pub to: StoredCa,
    pub phase: CaRotationPhase,
    pub started_ms: u64,
}

/// The name a CA's key is sealed under, so a sealed key cannot be passed
/// off as a secret's value or another CA's key.
pub fn sealing_name(digest: &str) -> String {
    format!("ca-key:{digest}")
}

/// The CA state every server converges its TLS to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaState {
    /// The CA the cluster issues from since its last completed rotation;
    /// `None`: the founding CA in each server's data dir.
    pub current: Option<StoredCa>,
    pub rotation: Option<CaRotation>,
    /// Rotations completed.
    pub rotations: u64,
}

impl CaState {
    /// How far the cluster's CA has come, counted in steps that only grow
    /// (each rotation has three: started, reissuing, finished). A server
    /// replaying its log after a restart passes through older states; it
    /// must not go back to trusting a CA it had already dropped.
    pub fn progress(&self) -> u64 {
        let phase = match self.rotation.as_ref().map(|r| r.phase) {
            None => 0,
            Some(CaRotationPhase::Trusting) => 1,
            Some(CaRotationPhase::Reissuing) => 2,
        };
        self.rotations * 3 + phase
    }
}

impl ClusterState {
    pub(super) fn start_ca_rotation(
        &mut self,
        index: u64,
        rotation: CaRotation,
    ) -> Result<CommandOutput, Rejection> {
        if let Some(running) = &self.ca.rotation {
            return Err(Rejection::CaRotationInProgress { to: running.to.digest.clone() });
        }
        let message =
            format!("CA rotation started: {} replaces {}", rotation.to.digest, rotation.from_digest);
        self.record(Event { index, at_ms: rotation.started_ms, workload: None, node: None, message });
        self.ca.rotation = Some(rotation);
        Ok(CommandOutput::CaChanged)
    }

    /// The leader's decision that every server and agent trusts the new
    /// CA, so it may issue.
    pub(super) fn reissue_from_new_ca(
        &mut self,
        index: u64,
        to_digest: &str,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let rotation = self.rotation_in(to_digest, CaRotationPhase::Trusting)?;
        rotation.phase = CaRotationPhase::Reissuing;
        let message = format!("CA rotation: every server and agent trusts {to_digest}; it issues now");
        self.record(Event { index, at_ms: now_ms, workload: None, node: None, message });
        Ok(CommandOutput::CaChanged)
    }

    /// The leader's decision that every certificate is from the new CA, so
    /// the old one is trusted no more.
    pub(super) fn finish_ca_rotation(
        &mut self,
        index: u64,
        to_digest: &str,
        now_ms: u64,
    ) -> Result<CommandOutput, Rejection> {
        let to = self.rotation_in(to_digest, CaRotationPhase::Reissuing)?.to.clone();
        let message = format!("CA rotation done: {} alone is trusted", to.digest);
        self.ca.current = Some(to);
        self.ca.rotation = None;
        self.ca.rotations += 1;
        self.record(Event { index, at_ms: now_ms, workload: None, node: None, message });
        Ok(CommandOutput::CaChanged)
    }

    /// The rotation to `to_digest`, if it is in `phase`: a decision taken
    /// on another rotation, or on this one at another step, changes nothing.
    fn rotation_in(&mut self, to_digest: &str, phase: CaRotationPhase) -> Result<&mut CaRotation, Rejection> {
        let rotation = self
            .ca
            .rotation
            .as_mut()
            .filter(|rotation| rotation.to.digest == to_digest)
            .ok_or_else(|| Rejection::NoCaRotation(to_digest.to_owned()))?;
        if rotation.phase != phase {
            return Err(Rejection::CaRotationPhase { to: to_digest.to_owned(), phase: rotation.phase });
        }
        Ok(rotation)
    }

    pub fn ca(&self) -> &CaState {
        &self.ca
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn stored(digest: &str) -> StoredCa {
        StoredCa {
            certificate_pem: format!("pem {digest}"),
            digest: digest.into(),
            sealed_key: "sealed".into(),
        }
    }

    fn start(to: &str) -> Command {
        Command::StartCaRotation {
            rotation: CaRotation {
                from_pem: "pem old".into(),
                from_digest: "old".into(),
                to: stored(to),
                phase: CaRotationPhase::Trusting,
                started_ms: 1,
            },
        }
    }

    #[test]
    fn a_rotation_moves_through_its_phases_in_order_and_nothing_else_changes_the_state() {
        let reissue = |to: &str| Command::ReissueFromNewCa { to_digest: to.into(), now_ms: 2 };
        let finish = |to: &str| Command::FinishCaRotation { to_digest: to.into(), now_ms: 3 };
        // (command, expected rejection or None for success), applied in turn.
        let steps: Vec<(Command, Option<&str>)> = vec![
            (reissue("new"), Some("no CA rotation to new")),
            (finish("new"), Some("no CA rotation to new")),
            (start("new"), None),
            (start("newer"), Some("in progress")),
            (finish("new"), Some("trusting")),
            (reissue("other"), Some("no CA rotation to other")),
            (reissue("new"), None),
            (reissue("new"), Some("reissuing")),
            (finish("new"), None),
            (finish("new"), Some("no CA rotation to new")),
            (start("newer"), None),
        ];
        let mut state = ClusterState::default();
        for (index, (command, refused)) in steps.into_iter().enumerate() {
            let before = state.clone();
            let outcome = state.apply(index as u64 + 1, command.clone());
            assert!(state.ca().progress() >= before.ca().progress(), "{command:?} goes back");
            match refused {
                Some(reason) => {
                    let error = outcome.expect_err(&format!("{command:?} refused")).to_string();
                    assert!(error.contains(reason), "{command:?}: {error}");
                    assert_eq!(state, before, "a refused {command:?} changes nothing");
                }
                None => assert_eq!(outcome, Ok(CommandOutput::CaChanged), "{command:?}"),
            }
        }
        assert_eq!(state.ca().current.as_ref().map(|c| c.digest.as_str()), Some("new"));
        assert_eq!(state.ca().progress(), 4, "one rotation done (3 steps), the next started");
        assert_eq!(state.ca().rotations, 1);
        let rotation = state.ca().rotation.as_ref().expect("the second rotation");
        assert_eq!((rotation.to.digest.as_str(), rotation.phase), ("newer", CaRotationPhase::Trusting));
    }
}
