//! The replicated state machine. Every server applies the same committed
//! commands in the same order and so holds the same [`ClusterState`].

mod cluster_state;
mod command;

pub use cluster_state::ClusterState;
pub use command::{Command, CommandOutput, Envelope, Rejection};
