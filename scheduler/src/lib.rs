//! flotilla's scheduler server: the Raft-replicated store of desired state
//! and the HTTP API in front of it.

pub mod http;
pub mod raft;
pub mod server;
pub mod state;

pub use server::{ServerConfig, ServerError, run};
