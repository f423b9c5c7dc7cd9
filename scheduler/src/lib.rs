//! flotilla's scheduler server: the Raft-replicated store of desired state,
//! the placement that turns it into allocations, and the HTTP API.

pub mod controllers;
pub mod http;
mod member_http;
pub mod metrics;
pub mod placement;
pub mod raft;
pub mod server;
pub mod server_tls;
pub mod state;

pub use server::{ServerConfig, ServerError, run};
