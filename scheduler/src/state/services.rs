//! Service ports: every named port of a workload is served by the routing
//! mesh on one port on every node, its `ingress` or one the cluster chose
//! from its range, kept across deploys; and the registry of services read
//! from the state.

use std::collections::BTreeMap;

use flotilla_api::spec::{Driver, Protocol};
use flotilla_api::{AllocationState, Endpoint, Health, Service, ServicePort, WorkloadName, WorkloadSpec};
use serde::{Deserialize, Serialize};

use super::cluster_state::ClusterState;
use super::command::Rejection;

/// The ports service ports are chosen from when a server is given none.
pub const DEFAULT_SERVICE_PORTS: ServicePortRange = ServicePortRange { low: 20000, high: 29999 };

/// A range of ports the cluster may choose service ports from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortRange {
    pub low: u16,
    pub high: u16,
}

impl Default for ServicePortRange {
    fn default() -> Self {
        DEFAULT_SERVICE_PORTS
    }
}

impl ServicePortRange {
    /// Parses `20000-29999`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{text}` is not a port range such as 20000-29999");
        let (low, high) = text.split_once('-').ok_or_else(invalid)?;
        let (low, high): (u16, u16) =
            (low.trim().parse().map_err(|_| invalid())?, high.trim().parse().map_err(|_| invalid())?);
        if low == 0 || low > high {
            return Err(invalid());
        }
        Ok(ServicePortRange { low, high })
    }
}

/// A workload's service ports, by port name.
pub type ServicePorts = BTreeMap<String, (u16, Protocol)>;

impl ClusterState {
    /// The service ports `spec` gets: its ingress ports, and for the other
    /// named ports the ones it had, or the lowest free in `range`. Refused,
    /// naming the field, when an ingress port is another workload's.
    pub(super) fn choose_service_ports(
        &self,
        spec: &WorkloadSpec,
        range: ServicePortRange,
    ) -> Result<ServicePorts, Rejection> {
        let taken: BTreeMap<(u16, Protocol), &WorkloadName> = self
            .service_ports
            .iter()
            .filter(|(owner, _)| **owner != spec.name)
            .flat_map(|(owner, ports)| ports.values().map(move |p| (*p, owner)))
            .collect();
        let had = self.service_ports.get(&spec.name);
        let mut chosen = ServicePorts::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let (Some(name), Some(ingress)) = (&port.name, port.ingress) else { continue };
            if let Some(owner) = taken.get(&(ingress, port.protocol)) {
                return Err(Rejection::ServicePortTaken {
                    field: format!("ports[{i}].ingress"),
                    port: ingress,
                    owner: (*owner).clone(),
                });
            }
            chosen.insert(name.to_string(), (ingress, port.protocol));
        }
        for (name, port) in spec.service_ports().filter(|(_, p)| p.ingress.is_none()) {
            let free = |candidate: u16| {
                let key = (candidate, port.protocol);
                !taken.contains_key(&key) && !chosen.values().any(|p| *p == key)
            };
            let kept = had.and_then(|h| h.get(name.as_str())).map(|p| p.0).filter(|p| free(*p));
            let number = kept
                .or_else(|| (range.low..=range.high).find(|p| free(*p)))
                .ok_or(Rejection::NoServicePortLeft { low: range.low, high: range.high })?;
            chosen.insert(name.to_string(), (number, port.protocol));
        }
        Ok(chosen)
    }

    pub(super) fn set_service_ports(&mut self, name: &WorkloadName, chosen: ServicePorts) {
        if chosen.is_empty() {
            self.service_ports.remove(name);
        } else {
            self.service_ports.insert(name.clone(), chosen);
        }
    }

    /// Every service with its ports and replicas.
    pub fn services(&self) -> Vec<Service> {
        self.service_ports.keys().filter_map(|name| self.service(name)).collect()
    }

    pub fn service(&self, name: &WorkloadName) -> Option<Service> {
        let workload = self.workloads.get(name)?;
        let chosen = self.service_ports.get(name)?;
        let spec = &workload.spec;
        let ports: Vec<ServicePort> = spec
            .service_ports()
            .filter_map(|(port_name, p)| {
                let (port, protocol) = *chosen.get(port_name.as_str())?;
                Some(ServicePort {
                    name: port_name.to_string(),
                    protocol,
                    container: p.container,
                    port,
                    ingress: p.ingress.is_some(),
                })
            })
            .collect();
        let endpoints = self
            .workload_allocations(name)
            .filter(|a| a.state.is_live())
            .map(|a| {
                let address = self.nodes.get(&a.node).map(|n| node_host(&n.address)).unwrap_or_default();
                let host_ports = ports
                    .iter()
                    .filter_map(|p| {
                        let bound = a
                            .ports
                            .iter()
                            .find(|b| b.container == p.container && b.protocol == p.protocol)?;
                        // A process listens on the node itself, on its own port.
                        let host = if bound.host == 0 && spec.driver == Driver::Process {
                            p.container
                        } else {
                            bound.host
                        };
                        (host != 0).then(|| (p.name.clone(), host))
                    })
                    .collect();
                Endpoint {
                    allocation: a.id,
                    node: a.node.to_string(),
                    address,
                    ports: host_ports,
                    health: a.health,
                    ready: a.state == AllocationState::Running && a.health == Health::Healthy && !a.stopping,
                    container_address: a.container_address.clone(),
                    healthy_since_ms: a.healthy_since_ms,
                }
            })
            .collect();
        let unserved = self
            .nodes
            .values()
            .flat_map(|n| &n.unserved_ports)
            .filter(|u| ports.iter().any(|p| p.port == u.port && p.protocol == u.protocol))
            .cloned()
            .collect();
        Some(Service {
            name: name.clone(),
            ports,
            balance: spec.service.balance,
            drain: spec.service.drain,
            endpoints,
            unserved,
        })
    }
}

/// The host of an agent's `host:port` address.
fn node_host(address: &str) -> String {
    address.rsplit_once(':').map_or(address, |(host, _)| host).trim_matches(['[', ']']).to_owned()
}

#[cfg(test)]
mod tests {
    use flotilla_api::{AllocationUpdate, PortBinding, parse_yaml};

    use super::*;
    use crate::state::{Command, Placement, Plan};

    fn name(text: &str) -> WorkloadName {
        WorkloadName::parse(text).expect("name")
    }

    fn put(state: &mut ClusterState, yaml: &str, range: Option<ServicePortRange>) -> Result<(), Rejection> {
        let spec = Box::new(parse_yaml(yaml).expect("spec"));
        state
            .apply(1, Command::PutWorkload { spec, expected_version: None, now_ms: 0, service_ports: range })
            .map(|_| ())
    }

    fn ports_of(state: &ClusterState, workload: &str) -> Vec<(String, u16, bool)> {
        let service = state.service(&name(workload)).expect("a service");
        service.ports.into_iter().map(|p| (p.name, p.port, p.ingress)).collect()
    }

    #[test]
    fn service_ports_are_chosen_kept_released_and_never_shared() {
        let mut state = ClusterState::default();
        let web = "name: web\nimage: a\nports: [{name: http, container: 80}]\n";
        put(&mut state, web, None).expect("web");
        assert_eq!(ports_of(&state, "web"), vec![("http".into(), 20000, false)]);
        let api = "name: api\nimage: a\nports: [{name: http, container: 80}, {name: admin, container: 81, ingress: 30080}]\n";
        put(&mut state, api, None).expect("api");
        assert_eq!(
            ports_of(&state, "api"),
            vec![("http".into(), 20001, false), ("admin".into(), 30080, true)]
        );
        put(&mut state, &web.replace("image: a", "image: b"), None).expect("web v2");
        assert_eq!(ports_of(&state, "web"), vec![("http".into(), 20000, false)], "kept across versions");

        let before = state.clone();
        let taken = put(
            &mut state,
            "name: other\nimage: a\nports: [{name: x, container: 1, ingress: 30080}]\n",
            None,
        );
        let error = taken.expect_err("the ingress is api's");
        assert_eq!(
            error.to_string(),
            "field `ports[0].ingress`: port 30080 is already the service port of workload `api`"
        );
        assert_eq!(state, before, "nothing stored");

        state.apply(2, Command::DeleteWorkload { name: name("web"), volumes: false }).expect("delete");
        put(&mut state, "name: new\nimage: a\nports: [{name: http, container: 80}]\n", None).expect("new");
        assert_eq!(ports_of(&state, "new"), vec![("http".into(), 20000, false)], "web's port was released");

        let one = ServicePortRange::parse("25000-25000").expect("range");
        put(&mut state, "name: first\nimage: a\nports: [{name: p, container: 1}]\n", Some(one))
            .expect("first");
        assert_eq!(ports_of(&state, "first"), vec![("p".into(), 25000, false)]);
        let before = state.clone();
        let full = put(&mut state, "name: second\nimage: a\nports: [{name: p, container: 1}]\n", Some(one));
        assert_eq!(full, Err(Rejection::NoServicePortLeft { low: 25000, high: 25000 }));
        assert_eq!(state, before);
        assert!(state.service(&name("plain")).is_none());
    }

    #[test]
    fn endpoints_are_the_replicas_with_their_node_address_host_ports_and_readiness() {
        let mut state = ClusterState::default();
        state.apply(1, Command::register_docker_node("n", "10.0.0.5:7100", 1000, 1 << 30)).expect("node");
        put(&mut state, "name: web\nimage: a\nreplicas: 2\nports: [{name: http, container: 80}]\n", None)
            .expect("web");
        let placements = (0..2)
            .map(|replica| Placement {
                workload: name("web"),
                replica,
                node: "n".into(),
                version: 1,
                cpu: 100,
                memory: 64 << 20,
                ports: vec![PortBinding { container: 80, host: 0, protocol: Protocol::Tcp }],
            })
            .collect();
        state.apply(2, Command::ApplyPlan { plan: Plan { placements, ..Plan::default() } }).expect("plan");
        let ready = AllocationUpdate {
            health: Health::Healthy,
            ports: vec![PortBinding { container: 80, host: 32768, protocol: Protocol::Tcp }],
            ..AllocationUpdate::running(1)
        };
        let unhealthy = AllocationUpdate {
            health: Health::Unhealthy,
            ports: vec![PortBinding { container: 80, host: 32769, protocol: Protocol::Tcp }],
            ..AllocationUpdate::running(2)
        };
        let updates = vec![ready, unhealthy];
        state
            .apply(3, Command::UpdateAllocations { node: "n".into(), seq: 0, updates, now_ms: 0 })
            .expect("report");
        let endpoints = state.service(&name("web")).expect("service").endpoints;
        type Seen<'a> = (u64, &'a str, Vec<(String, u16)>, bool);
        let seen: Vec<Seen> =
            endpoints.iter().map(|e| (e.allocation, e.address.as_str(), e.ports.clone(), e.ready)).collect();
        assert_eq!(
            seen,
            vec![
                (1, "10.0.0.5", vec![("http".into(), 32768)], true),
                (2, "10.0.0.5", vec![("http".into(), 32769)], false)
            ]
        );
    }

    #[test]
    fn a_node_that_cannot_serve_a_port_is_shown_on_that_service_until_it_can() {
        let mut state = ClusterState::default();
        state.apply(1, Command::register_docker_node("n", "10.0.0.5:7100", 1000, 1 << 30)).expect("node");
        put(&mut state, "name: web\nimage: a\nports: [{name: http, container: 80, ingress: 30080}]\n", None)
            .expect("web");
        put(&mut state, "name: api\nimage: a\nports: [{name: http, container: 80}]\n", None).expect("api");
        let held = flotilla_api::UnservedPort {
            node: String::new(),
            port: 30080,
            protocol: Protocol::Tcp,
            address: "0.0.0.0".into(),
            reason: "Address in use".into(),
        };
        state.apply(4, Command::SetUnservedPorts { node: "n".into(), ports: vec![held] }).expect("report");
        let unserved = state.service(&name("web")).expect("web").unserved;
        assert_eq!(unserved.len(), 1);
        assert_eq!(
            (unserved[0].node.as_str(), unserved[0].port),
            ("n", 30080),
            "named after the reporting node"
        );
        assert!(
            state.service(&name("api")).expect("api").unserved.is_empty(),
            "only the service of that port"
        );
        state.apply(5, Command::SetUnservedPorts { node: "n".into(), ports: Vec::new() }).expect("report");
        assert!(state.service(&name("web")).expect("web").unserved.is_empty());
        let unknown = Command::SetUnservedPorts { node: "ghost".into(), ports: Vec::new() };
        assert!(matches!(state.apply(6, unknown), Err(Rejection::NodeNotFound(_))));
    }
}
