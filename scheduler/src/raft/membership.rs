//! Changes of the Raft configuration: learners added and promoted once
//! caught up, members removed (the leader hands over first), and the
//! addresses every server learns from the entries that change membership.

use raft::StateRole;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

use super::error::RaftError;
use super::node::Node;
use super::pending::Reply;

/// A change of the Raft configuration requested through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a non-voting learner; the leader promotes it once it has caught up.
    AddLearner {
        id: u64,
        address: String,
    },
    Remove {
        id: u64,
    },
}

/// Carried in a conf change entry's context: who to answer, and the address
/// every server must learn for an added member.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ConfChangeContext {
    pub(super) origin: u64,
    pub(super) request_id: u64,
    pub(super) address: Option<String>,
}

/// How far behind the leader's last entry a learner may be and still be
/// promoted: about a tenth of a second of writes at full rate.
const PROMOTE_WITHIN: u64 = 1000;

impl Node {
    pub(super) fn change_membership(&mut self, change: MembershipChange, reply: Reply<()>) {
        // Only the leader knows whether a change is under way (raft-rs turns
        // a second one into an empty entry, whose caller would wait for a
        // timeout): the HTTP layer forwards changes to it, and it answers a
        // concurrent change at once.
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(RaftError::NoLeader));
            return;
        }
        if self.raw.raft.has_pending_conf() || !self.membership.is_empty() {
            let _ = reply.send(Err(RaftError::Membership(
                "another membership change is in progress; retry once it completes".into(),
            )));
            return;
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let is_member = |id: u64| conf.voters.contains(&id) || conf.learners.contains(&id);
        let (change_type, id, address) = match change {
            MembershipChange::AddLearner { id, address } => {
                if is_member(id) {
                    let known = self.state().member(id).map(|m| m.address.clone());
                    let result = if known.as_deref() == Some(address.as_str()) {
                        Ok(())
                    } else {
                        Err(RaftError::Membership(format!(
                            "server {id} is already a member at {}",
                            known.unwrap_or_default()
                        )))
                    };
                    let _ = reply.send(result);
                    return;
                }
                (ConfChangeType::AddLearnerNode, id, Some(address))
            }
            MembershipChange::Remove { id } => {
                if !is_member(id) {
                    let _ = reply.send(Err(RaftError::Membership(format!("server {id} is not a member"))));
                    return;
                }
                if conf.voters == [id] {
                    let _ = reply.send(Err(RaftError::Membership(format!(
                        "server {id} is the only voter; removing it would leave no cluster"
                    ))));
                    return;
                }
                if self.raw.raft.leader_id == id {
                    // Voters refuse a candidate with a log no longer than
                    // theirs whose id is lower than their own (the election
                    // priority, node.rs), and Raft catches the transferee up
                    // before it stands: so the highest id left stands, and
                    // this leader, on its way out, steps back from the
                    // priority that would make it refuse too.
                    let transferee = conf.voters.iter().copied().filter(|v| *v != id).max();
                    if let Some(transferee) = transferee {
                        self.raw.raft.set_priority(0);
                        self.raw.transfer_leader(transferee);
                    }
                    let _ = reply.send(Err(RaftError::LeaderMoving));
                    return;
                }
                (ConfChangeType::RemoveNode, id, None)
            }
        };
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(RaftError::NoLeader));
            return;
        }
        let request_id = self.new_request_id();
        let context = ConfChangeContext { origin: self.config.id, request_id, address };
        match self.propose_conf_change(change_type, id, &context) {
            Ok(()) => {
                let deadline = self.deadline();
                self.membership.insert(request_id, reply, deadline);
            }
            Err(error) => {
                let _ =
                    reply.send(Err(RaftError::Membership(format!("cannot change membership now: {error}"))));
            }
        }
    }

    pub(super) fn propose_conf_change(
        &mut self,
        change_type: ConfChangeType,
        id: u64,
        context: &ConfChangeContext,
    ) -> Result<(), raft::Error> {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![single].into());
        let context = serde_json::to_vec(context).unwrap_or_default();
        self.raw.propose_conf_change(context, change)
    }

    /// A learner becomes a voter once it is within `PROMOTE_WITHIN` entries
    /// of the leader's log: close enough that it will not hold up commits,
    /// and reachable under a steady stream of writes (where "holds all that
    /// is committed" may never be true at the instant of a tick). It must
    /// also have acknowledged something and be heard from lately: in a
    /// young log a learner that never answered is "within" reach too, and
    /// promoting it would make a voter that can only cost the quorum.
    pub(super) fn promote_caught_up_learner(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() || !self.membership.is_empty() {
            return;
        }
        let last = raft.raft_log.last_index();
        let learners = raft.prs().conf().to_conf_state().learners;
        let ready = learners.into_iter().find(|id| {
            raft.prs()
                .get(*id)
                .is_some_and(|p| p.matched > 0 && p.recent_active && p.matched + PROMOTE_WITHIN >= last)
        });
        if let Some(id) = ready {
            tracing::info!(member = id, "promoting caught-up learner to voter");
            let context = ConfChangeContext { origin: 0, request_id: 0, address: None };
            if let Err(error) = self.propose_conf_change(ConfChangeType::AddNode, id, &context) {
                tracing::warn!(member = id, %error, "cannot promote learner yet");
            }
        }
    }
}
