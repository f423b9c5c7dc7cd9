//! Looking at the Docker engine directly, to check what agents did to it.

use std::process::Command;

use flotilla_api::Allocation;

use crate::cluster::TestCluster;

/// `docker inspect --format FORMAT CONTAINER`, trimmed; empty if it is gone.
pub fn docker_inspect(container: &str, format: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub fn is_running(container: &str) -> bool {
    docker_inspect(container, "{{.State.Running}}") == "true"
}

/// The container of an allocation, found by its label on its node's agent.
pub fn container_of(cluster: &TestCluster, allocation: &Allocation) -> String {
    let agent = cluster.agents.iter().find(|a| a.name == allocation.node).expect("the allocation's agent");
    agent
        .containers()
        .into_iter()
        .find(|c| {
            docker_inspect(c, "{{index .Config.Labels \"flotilla.alloc\"}}") == allocation.id.to_string()
        })
        .expect("a container for the allocation")
}
