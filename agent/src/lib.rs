//! flotilla's agent: the daemon on each host that runs the allocations the
//! scheduler places on its node, restarts the ones that fail, and reports
//! what happens.

pub mod agent;
mod desired_view;
pub mod health;
pub mod host;
pub mod logs_api;
pub mod mesh;
pub mod metrics;
pub mod node_tls;
pub mod restart;
pub mod runtime;
mod server_link;
pub mod supervisor;
mod usage;

pub use agent::{AgentConfig, AgentError, RuntimeKind, run};
