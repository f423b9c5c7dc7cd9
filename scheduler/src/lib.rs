//! flotilla's scheduler server: the Raft-replicated store of desired state,
//! the placement that turns it into allocations, and the HTTP API.

pub mod controllers;
pub mod http;
pub mod placement;
pub mod raft;
pub mod server;
pub mod state;

pub use server::{ServerConfig, ServerError, run};
