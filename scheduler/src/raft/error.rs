//! What can go wrong with a request to the Raft thread.

use std::time::Duration;

use crate::state::Rejection;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RaftError {
    #[error("no leader is elected right now; retry shortly")]
    NoLeader,
    #[error("the leader changed before the request was committed; it may or may not have been applied")]
    LeaderChanged,
    #[error("the request was not committed within {0:?}")]
    Timeout(Duration),
    #[error("this server is shutting down")]
    Stopped,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("{0}")]
    Membership(String),
    #[error("leadership is moving to another server before this one is removed; retry")]
    LeaderMoving,
    /// A write was handed to Raft but its fate is unknown (the leader
    /// changed, it timed out, the server stopped): it may yet be applied.
    #[error("{0}; the write may or may not have been applied: retry with the same idempotency key")]
    OutcomeUnknown(String),
}

impl RaftError {
    /// What a failure means for a write that was already proposed: unless
    /// it was refused outright, nobody knows whether it will apply.
    pub(super) fn after_proposal(self) -> RaftError {
        match self {
            RaftError::LeaderChanged => RaftError::OutcomeUnknown("the leader changed".into()),
            RaftError::Timeout(limit) => {
                RaftError::OutcomeUnknown(format!("the write was not committed within {limit:?}"))
            }
            RaftError::Stopped => RaftError::OutcomeUnknown("this server stopped".into()),
            other => other,
        }
    }
}
