//! What the `flotilla` binary shares with the test harness: how local
//! clusters are laid out and started, so that `flotilla cluster up` and the
//! end-to-end suites run servers and agents the same way.

pub mod chaos;
pub mod cluster_credentials;
pub mod docker_cluster;
pub mod local_cluster;
pub mod process_layout;
pub mod progress;
