//! Starting an agent's mesh: where it serves, and what it knows of the
//! host's Docker engine and the replicas' network.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_api::Client;
use flotilla_api::spec::Driver;
use tokio::sync::mpsc;

use crate::agent::AgentConfig;
use crate::runtime::Runtime;

/// Starts the routing mesh, unless it has no address to serve on. With
/// Docker replicas on a network of their own, it also serves on this
/// host's address there (the gateway, or this agent's address when the
/// agent is itself a container on that network), where the replicas'
/// DNS questions and connections come.
pub(crate) async fn start_mesh(
    config: &AgentConfig,
    runtimes: &HashMap<Driver, Arc<Runtime>>,
    client: &Client,
    node_events: &mpsc::UnboundedSender<Vec<String>>,
) -> Option<(crate::mesh::Directory, tokio::task::JoinHandle<()>)> {
    if config.mesh_listen.is_empty() {
        return None;
    }
    let (mut container_facing, mut engine) = (None, None);
    if let Some(runtime) = runtimes.get(&Driver::Docker)
        && let Runtime::Docker(docker) = &**runtime
    {
        engine = Some(docker.engine().to_owned());
        container_facing = docker.network_gateway().await.and_then(local_address_towards);
    }
    let mesh_config =
        crate::mesh::MeshConfig { listen: config.mesh_listen.clone(), container_facing, engine };
    tracing::info!(listen = ?mesh_config.listen, ?container_facing, "routing mesh");
    Some(crate::mesh::start(mesh_config, client.clone(), config.name.clone(), node_events.clone()))
}

/// The address this host sends from to reach `peer`: on the host, the
/// gateway itself; in a container on the gateway's network, its own
/// address there. (A connected UDP socket sends nothing.)
fn local_address_towards(peer: std::net::IpAddr) -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect((peer, 53)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}
