//! The cluster harness for flotilla's end-to-end suites and benchmarks:
//! real `flotilla` server processes on 127.0.0.1 ports with their own data
//! dirs, which a test can kill -9, restart, partition and corrupt. Everything
//! a harness starts is killed and deleted when it is dropped, also when the
//! test fails.

pub mod agent_process;
pub mod binary;
pub mod browser;
pub mod checker;
pub mod cluster;
pub mod containers;
pub mod daemon;
pub mod docker_available;
pub mod docker_network;
pub mod failover;
pub mod faults;
pub mod http_load;
pub mod latency;
pub mod process_connections;
pub mod process_memory;
pub mod registry;
pub mod server_process;
pub mod simulated_nodes;
pub mod terminal;
pub mod wait;
pub mod workloads;

pub use agent_process::AgentProcess;
pub use binary::{flotilla_binary, free_port};
pub use cluster::{ClusterOptions, TestCluster};
pub use docker_available::docker_available;
pub use server_process::ServerProcess;
pub use wait::wait_until;
