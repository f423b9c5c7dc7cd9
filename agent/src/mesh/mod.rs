//! The routing mesh: every agent serves every service port (its ingress,
//! or the one the cluster chose) and passes each connection to a ready
//! replica anywhere in the cluster, by the service's `balance`. The table
//! comes from the servers' registry, followed with a blocking query, so a
//! replica that stops being ready (a failing check, a stop that drains
//! it) leaves every pool as soon as the servers know. Replicas reach
//! services by name through the DNS responder here, and by the
//! `FLOTILLA_SERVICE_*` variables they start with.

pub mod balancer;
pub mod dns;
pub mod endpoints;
pub(crate) mod setup;
pub mod tcp;
pub mod udp;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::spec::{Driver, Protocol};
use flotilla_api::{Client, Service, UnservedPort};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use endpoints::{Dialling, HostNames, Pools, build_pools};

/// How long one blocking query for the registry waits for a change.
const REGISTRY_WAIT: Duration = Duration::from_secs(20);

/// How often a port another program holds is tried again.
const REBIND_EVERY: Duration = Duration::from_secs(2);

/// How the mesh of one agent is set up.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Addresses every service port is served on (`0.0.0.0`: every interface).
    pub listen: Vec<IpAddr>,
    /// The address this agent has on its replicas' Docker network: where
    /// containers reach the mesh and the DNS responder. `None` when the
    /// replicas are on Docker's default bridge, which is shared with
    /// everything else on the host.
    pub container_facing: Option<IpAddr>,
    /// This host's Docker engine id, to dial replicas it made directly.
    pub engine: Option<String>,
}

/// What replicas are told about services when they start.
#[derive(Debug, Clone)]
pub struct Directory {
    services: watch::Receiver<Arc<Vec<Service>>>,
    /// This agent's pools, for ejecting a replica it saw exit.
    pools: watch::Receiver<Arc<Pools>>,
    /// Where containers reach the mesh, if they can.
    container_facing: Option<IpAddr>,
    /// Where processes on this host reach it.
    process_facing: IpAddr,
}

impl Directory {
    /// `FLOTILLA_SERVICE_<WORKLOAD>_<PORT>=host:port` for every service
    /// port known now, at the mesh address a replica of `driver` reaches.
    pub fn environment(&self, driver: Driver) -> BTreeMap<String, String> {
        let host = match driver {
            Driver::Docker => match self.container_facing {
                Some(ip) => ip,
                None => return BTreeMap::new(),
            },
            Driver::Process => self.process_facing,
        };
        let services = self.services.borrow();
        services
            .iter()
            .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
            .map(|(service, port)| {
                let name =
                    format!("FLOTILLA_SERVICE_{}_{}", env_part(service.name.as_str()), env_part(&port.name));
                (name, SocketAddr::new(host, port.port).to_string())
            })
            .collect()
    }

    /// A replica of this node exited: this mesh sends it nothing more at
    /// once, without waiting for the registry (which tells the others).
    pub fn eject(&self, allocation: u64) {
        for pool in self.pools.borrow().values() {
            for target in pool.targets.iter().filter(|t| t.allocation == allocation) {
                target.eject();
            }
        }
    }

    /// The DNS server a container should use: this agent's responder.
    pub fn dns(&self) -> Option<IpAddr> {
        self.container_facing
    }
}

fn env_part(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Starts the mesh: it follows the registry and serves what it says until
/// the returned task is aborted.
pub fn start(
    config: MeshConfig,
    client: Client,
    node: String,
    node_events: mpsc::UnboundedSender<Vec<String>>,
) -> (Directory, JoinHandle<()>) {
    let (services_tx, services_rx) = watch::channel(Arc::new(Vec::new()));
    let (pools_tx, pools_rx) = watch::channel(Arc::new(Pools::new()));
    let (unserved_tx, unserved_rx) = watch::channel(Vec::new());
    let process_facing = config
        .listen
        .iter()
        .copied()
        .find(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let directory = Directory {
        services: services_rx.clone(),
        pools: pools_rx.clone(),
        container_facing: config.container_facing,
        process_facing,
    };
    let mut mesh = Mesh {
        config,
        services: services_tx,
        pools: pools_tx,
        pools_rx,
        listeners: HashMap::new(),
        unbound: BTreeMap::new(),
        unserved: unserved_tx,
        node_events,
        hosts: HostNames::new(),
        dns: None,
    };
    let task = tokio::spawn(async move {
        let reporter = tokio::spawn(report_unserved(client.clone(), node, unserved_rx));
        mesh.start_dns(services_rx);
        mesh.follow(client).await;
        reporter.abort();
    });
    (directory, task)
}

/// One listener: an address, a service port, a protocol.
type ListenerKey = (IpAddr, u16, Protocol);

struct Mesh {
    config: MeshConfig,
    services: watch::Sender<Arc<Vec<Service>>>,
    pools: watch::Sender<Arc<Pools>>,
    /// Handed to each listener, which reads its pool per connection.
    pools_rx: watch::Receiver<Arc<Pools>>,
    /// The listener tasks serving now; aborted when their port goes.
    listeners: HashMap<ListenerKey, JoinHandle<()>>,
    /// Listeners that could not bind, with the service and why: said once
    /// in `flotilla events`, reported on the node, and tried again every
    /// `REBIND_EVERY`.
    unbound: BTreeMap<ListenerKey, (String, String)>,
    /// What the servers are told this node cannot serve.
    unserved: watch::Sender<Vec<UnservedPort>>,
    node_events: mpsc::UnboundedSender<Vec<String>>,
    /// Node names resolved, for endpoints on nodes registered by name.
    hosts: HostNames,
    dns: Option<JoinHandle<()>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for task in self.listeners.values().chain(self.dns.iter()) {
            task.abort();
        }
    }
}

impl Mesh {
    fn start_dns(&mut self, services: watch::Receiver<Arc<Vec<Service>>>) {
        let Some(ip) = self.config.container_facing else { return };
        match udp::bind(SocketAddr::new(ip, 53)) {
            Ok(socket) => {
                tracing::info!(address = %ip, "DNS for *.flotilla");
                self.dns = Some(tokio::spawn(dns::serve(socket, services, dns::host_resolver())));
            }
            Err(error) => {
                tracing::warn!(address = %ip, %error, "cannot answer DNS for replicas");
                let _ = self
                    .node_events
                    .send(vec![format!("cannot answer DNS for replicas on {ip}:53: {error}")]);
            }
        }
    }

    /// Follows the registry with blocking queries, for ever.
    async fn follow(&mut self, client: Client) {
        let mut index = 0;
        loop {
            let wait = if self.unbound.is_empty() { REGISTRY_WAIT } else { REBIND_EVERY };
            match client.services(index, wait).await {
                Ok(page) if page.index > index => {
                    index = page.index;
                    self.apply(page.services).await;
                }
                Ok(_) => self.bind_listeners(),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the service registry; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn apply(&mut self, services: Vec<Service>) {
        for endpoint in services.iter().flat_map(|s| &s.endpoints) {
            if endpoint.address.parse::<IpAddr>().is_err() && !self.hosts.contains_key(&endpoint.address) {
                let lookup = tokio::net::lookup_host((endpoint.address.as_str(), 0)).await;
                if let Some(address) = lookup.ok().and_then(|mut a| a.next()) {
                    self.hosts.insert(endpoint.address.clone(), address.ip());
                }
            }
        }
        let dialling = Dialling { engine: self.config.engine.clone() };
        let pools = build_pools(&services, &self.pools.borrow(), &dialling, &self.hosts);
        self.pools.send_replace(Arc::new(pools));
        self.services.send_replace(Arc::new(services));
        self.bind_listeners();
    }

    /// Serves every service port on every address, and stops serving the
    /// ones that are gone.
    fn bind_listeners(&mut self) {
        let services = Arc::clone(&self.services.borrow());
        let addresses: Vec<IpAddr> =
            self.config.listen.iter().copied().chain(self.config.container_facing).collect();
        let mut wanted: BTreeMap<ListenerKey, String> = BTreeMap::new();
        for service in services.iter() {
            for port in &service.ports {
                for ip in &addresses {
                    wanted.insert((*ip, port.port, port.protocol), service.name.to_string());
                }
            }
        }
        self.listeners.retain(|key, task| {
            let keep = wanted.contains_key(key) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        self.unbound.retain(|key, _| wanted.contains_key(key));
        for (key, service) in wanted {
            if self.listeners.contains_key(&key) {
                continue;
            }
            let (ip, port, protocol) = key;
            let address = SocketAddr::new(ip, port);
            let pools = self.pools_rx.clone();
            let bound = match protocol {
                Protocol::Tcp => tcp::bind(address).map(|l| tokio::spawn(tcp::serve(l, port, pools))),
                Protocol::Udp => udp::bind(address).map(|s| tokio::spawn(udp::serve(s, port, pools))),
            };
            match bound {
                Ok(task) => {
                    if self.unbound.remove(&key).is_some() {
                        let _ = self.node_events.send(vec![format!(
                            "serves service port {port}/{protocol} of `{service}` on {ip} again"
                        )]);
                    }
                    tracing::info!(%address, %protocol, %service, "serving a service port");
                    self.listeners.insert(key, task);
                }
                Err(error) => {
                    if !self.unbound.contains_key(&key) {
                        tracing::warn!(%address, %protocol, %service, %error, "cannot serve a service port");
                        let _ = self.node_events.send(vec![format!(
                            "cannot serve service port {port}/{protocol} of `{service}` on {ip}: {error}"
                        )]);
                    }
                    self.unbound.insert(key, (service, error.to_string()));
                }
            }
        }
        let unserved: Vec<UnservedPort> = self
            .unbound
            .iter()
            .map(|((ip, port, protocol), (_, reason))| UnservedPort {
                node: String::new(),
                port: *port,
                protocol: *protocol,
                address: ip.to_string(),
                reason: reason.clone(),
            })
            .collect();
        self.unserved.send_if_modified(|before| {
            let changed = *before != unserved;
            *before = unserved;
            changed
        });
    }
}

/// Tells the servers what this node's mesh cannot serve, each time that
/// changes, until they have heard it.
async fn report_unserved(client: Client, node: String, mut unserved: watch::Receiver<Vec<UnservedPort>>) {
    while unserved.changed().await.is_ok() {
        loop {
            let ports = unserved.borrow_and_update().clone();
            match client.report_unserved(&node, &ports).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot report the service ports this node cannot serve; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// A service for the mesh's tests: `web`, round robin, whose port `http`
/// (container 80) is served on `port`.
#[cfg(test)]
pub(crate) fn web_service(port: u16, endpoints: Vec<flotilla_api::Endpoint>) -> Service {
    Service {
        name: flotilla_api::WorkloadName::parse("web").expect("name"),
        ports: vec![flotilla_api::ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            container: 80,
            port,
            ingress: false,
        }],
        balance: flotilla_api::spec::Balance::RoundRobin,
        drain: Default::default(),
        endpoints,
        unserved: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::spec::Balance;
    use flotilla_api::{ServicePort, WorkloadName};

    use super::*;

    fn directory(container_facing: Option<IpAddr>) -> (watch::Sender<Arc<Vec<Service>>>, Directory) {
        let service = Service {
            name: WorkloadName::parse("my-api").expect("name"),
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    container: 80,
                    port: 20000,
                    ingress: false,
                },
                ServicePort {
                    name: "stats-udp".into(),
                    protocol: Protocol::Udp,
                    container: 81,
                    port: 30081,
                    ingress: true,
                },
            ],
            balance: Balance::RoundRobin,
            drain: Default::default(),
            endpoints: Vec::new(),
            unserved: Vec::new(),
        };
        let (tx, rx) = watch::channel(Arc::new(vec![service]));
        let (_, pools) = watch::channel(Arc::new(Pools::new()));
        let directory =
            Directory { services: rx, pools, container_facing, process_facing: [127, 0, 0, 1].into() };
        (tx, directory)
    }

    #[test]
    fn replicas_are_told_each_service_port_at_the_mesh_address_they_reach() {
        let (_tx, directory) = directory(Some([172, 20, 0, 1].into()));
        let docker: Vec<(String, String)> = directory.environment(Driver::Docker).into_iter().collect();
        assert_eq!(
            docker,
            vec![
                ("FLOTILLA_SERVICE_MY_API_HTTP".into(), "172.20.0.1:20000".into()),
                ("FLOTILLA_SERVICE_MY_API_STATS_UDP".into(), "172.20.0.1:30081".into()),
            ]
        );
        let process = directory.environment(Driver::Process);
        assert_eq!(process.get("FLOTILLA_SERVICE_MY_API_HTTP").map(String::as_str), Some("127.0.0.1:20000"));
        assert_eq!(directory.dns(), Some([172, 20, 0, 1].into()));
    }

    #[test]
    fn containers_without_a_network_of_their_own_get_no_address_they_cannot_reach() {
        let (_tx, directory) = directory(None);
        assert!(directory.environment(Driver::Docker).is_empty());
        assert_eq!(directory.environment(Driver::Process).len(), 2);
        assert_eq!(directory.dns(), None);
    }
}
