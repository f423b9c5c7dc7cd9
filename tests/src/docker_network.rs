//! A Docker network of a test's own, for replicas that reach each other
//! (and their agents' DNS) on it; removed on drop, after the cluster that
//! used it has removed its containers.

use std::process::Command;

pub struct DockerNetwork {
    pub name: String,
}

impl DockerNetwork {
    /// Creates a network named after `prefix` and this test process.
    pub fn create(prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let output = Command::new("docker")
            .args(["network", "create", "--label", "flotilla.test=1", &name])
            .output()
            .expect("the docker CLI runs");
        assert!(
            output.status.success(),
            "docker network create: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        DockerNetwork { name }
    }

    /// The host's address on it: where its containers reach the agents
    /// that run on the host.
    pub fn gateway(&self) -> std::net::IpAddr {
        let output = Command::new("docker")
            .args(["network", "inspect", "--format", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", &self.name])
            .output()
            .expect("docker network inspect");
        String::from_utf8_lossy(&output.stdout).trim().parse().expect("the network has a gateway")
    }
}

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["network", "rm", &self.name]).output();
    }
}
