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
}
