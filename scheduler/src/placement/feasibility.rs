//! Feasibility: can this node take this replica at all? A chain of small
//! checks, cheapest and most selective first (as Nomad's feasibility
//! iterators); the first that fails gives the node's reason.

use flotilla_api::spec::{Driver, Protocol};
use flotilla_api::{Constraint, CpuMillis, MemoryBytes, NodeStatus};

use super::view::NodeView;

/// What one replica of a workload asks of a node.
#[derive(Debug, Clone)]
pub struct Request {
    pub cpu: u64,
    pub memory: u64,
    pub driver: Driver,
    pub constraints: Vec<Constraint>,
    /// Fixed host ports; a replica with none may share a node with any other.
    pub host_ports: Vec<(u16, Protocol)>,
    /// Host volumes the replica mounts, by name, and whether it writes to them.
    pub host_volumes: Vec<(String, bool)>,
    /// Nodes where this workload's replicas failed lately: ranked last, not excluded.
    pub avoid_nodes: std::collections::BTreeSet<String>,
    /// The node holding the replica slot's volumes: the only one it may go to.
    pub pinned_node: Option<String>,
}

/// Why a node cannot take a replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Infeasible {
    /// Not the node holding the slot's volumes.
    NotVolumesNode,
    NotReady(NodeStatus),
    Held,
    MissingDriver(Driver),
    NoHostVolume(String),
    HostVolumeReadOnly(String),
    Constraint(String),
    Memory,
    Cpu,
    PortInUse(u16),
}

impl Infeasible {
    /// "3 nodes have too little memory", "1 node fails constraint zone == b".
    pub fn describe(&self, count: u32) -> String {
        let one = count == 1;
        let nodes = if one { "node" } else { "nodes" };
        let (is, has, lacks, fails, offers) = if one {
            ("is", "has", "lacks", "fails", "offers")
        } else {
            ("are", "have", "lack", "fail", "offer")
        };
        match self {
            Infeasible::NotVolumesNode => format!("{count} {nodes} {lacks} the replica's volumes"),
            Infeasible::NoHostVolume(name) => format!("{count} {nodes} {offers} no host volume {name}"),
            Infeasible::HostVolumeReadOnly(name) => {
                format!("{count} {nodes} {offers} host volume {name} only read-only")
            }
            Infeasible::NotReady(status) => format!("{count} {nodes} {is} {status}"),
            Infeasible::Held => format!("{count} {nodes} {is} back from flapping and held"),
            Infeasible::MissingDriver(driver) => format!("{count} {nodes} {lacks} the {driver} driver"),
            Infeasible::Constraint(c) => format!("{count} {nodes} {fails} constraint {c}"),
            Infeasible::Memory => format!("{count} {nodes} {has} too little memory"),
            Infeasible::Cpu => format!("{count} {nodes} {has} too little CPU"),
            Infeasible::PortInUse(port) => format!("{count} {nodes} {has} host port {port} in use"),
        }
    }

    /// The same, of the one node named: "has too little memory".
    pub fn of_one_node(&self) -> String {
        let described = self.describe(1);
        described.strip_prefix("1 node ").unwrap_or(&described).to_owned()
    }
}

type Check = fn(&NodeView, &Request) -> Result<(), Infeasible>;

/// The chain, in order. Each entry's comment says why it stands where it does.
pub const CHECKS: [Check; 8] = [
    // A slot pinned to its volumes' node rules out every other node at once: first.
    on_volumes_node,
    // A down or draining node takes nothing, whatever it has free.
    node_ready,
    // A missing driver is a property of the node, cheap and absolute.
    driver_available,
    // So is a host volume the node does not offer.
    host_volumes_offered,
    // Constraints are the user's explicit wish: report them before capacity.
    constraints_hold,
    // Capacity: memory first, as it cannot be overcommitted at run time.
    fits_memory,
    fits_cpu,
    // Ports last: only workloads with fixed host ports pay for the lookup.
    host_ports_free,
];

/// Runs the whole chain; the first failure is the node's reason.
pub fn check(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    CHECKS.iter().try_for_each(|check| check(node, request))
}

pub fn node_ready(node: &NodeView, _: &Request) -> Result<(), Infeasible> {
    match node.status {
        NodeStatus::Ready if node.held => Err(Infeasible::Held),
        NodeStatus::Ready => Ok(()),
        other => Err(Infeasible::NotReady(other)),
    }
}

pub fn on_volumes_node(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    match &request.pinned_node {
        Some(pinned) if *pinned != node.name => Err(Infeasible::NotVolumesNode),
        _ => Ok(()),
    }
}

pub fn host_volumes_offered(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    for (name, writes) in &request.host_volumes {
        match node.host_volumes.get(name) {
            None => return Err(Infeasible::NoHostVolume(name.clone())),
            Some(read_only) if *read_only && *writes => {
                return Err(Infeasible::HostVolumeReadOnly(name.clone()));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

pub fn driver_available(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    if node.drivers.contains(&request.driver) {
        Ok(())
    } else {
        Err(Infeasible::MissingDriver(request.driver))
    }
}

pub fn constraints_hold(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    match request.constraints.iter().find(|c| !c.matches(&node.labels)) {
        Some(failed) => Err(Infeasible::Constraint(failed.to_string())),
        None => Ok(()),
    }
}

pub fn fits_memory(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    if node.used_memory + request.memory <= node.capacity_memory { Ok(()) } else { Err(Infeasible::Memory) }
}

pub fn fits_cpu(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    if node.used_cpu + request.cpu <= node.capacity_cpu { Ok(()) } else { Err(Infeasible::Cpu) }
}

pub fn host_ports_free(node: &NodeView, request: &Request) -> Result<(), Infeasible> {
    match request.host_ports.iter().find(|p| node.ports.contains(p)) {
        Some((port, _)) => Err(Infeasible::PortInUse(*port)),
        None => Ok(()),
    }
}

/// "needs 250m CPU and 512Mi memory: 3 nodes have too little memory, 2 fail constraint zone == b"
pub fn unplaced_reason(request: &Request, tally: &std::collections::BTreeMap<Infeasible, u32>) -> String {
    let needs = format!("needs {} CPU and {} memory", CpuMillis(request.cpu), MemoryBytes(request.memory));
    if tally.is_empty() {
        return format!("{needs}: no nodes are registered");
    }
    // Every node lacks the same host volume: say so plainly, it is a
    // fact about the cluster (no agent offers it), not about capacity.
    if let [(Infeasible::NoHostVolume(name), _)] = tally.iter().collect::<Vec<_>>()[..] {
        return format!("no node offers host volume {name}");
    }
    let parts: Vec<String> = tally.iter().map(|(why, n)| why.describe(*n)).collect();
    format!("{needs}: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

    fn node() -> NodeView {
        NodeView {
            held: false,
            name: "n1".into(),
            status: NodeStatus::Ready,
            drivers: BTreeSet::from([Driver::Docker]),
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            capacity_cpu: 1000,
            capacity_memory: 1 << 30,
            used_cpu: 500,
            used_memory: 512 << 20,
            ports: HashSet::from([(80, Protocol::Tcp)]),
            workload_counts: HashMap::new(),
            host_volumes: BTreeMap::from([("config".to_owned(), true), ("scratch".to_owned(), false)]),
        }
    }

    fn request() -> Request {
        Request {
            cpu: 250,
            memory: 256 << 20,
            driver: Driver::Docker,
            constraints: vec![],
            host_ports: vec![],
            host_volumes: vec![],
            avoid_nodes: Default::default(),
            pinned_node: None,
        }
    }

    #[test]
    fn each_check_alone() {
        type Case = (&'static str, Check, fn(&mut NodeView, &mut Request), Result<(), Infeasible>);
        let table: Vec<Case> = vec![
            ("ready node", node_ready, |_, _| {}, Ok(())),
            (
                "down node",
                node_ready,
                |n, _| n.status = NodeStatus::Down,
                Err(Infeasible::NotReady(NodeStatus::Down)),
            ),
            (
                "draining node",
                node_ready,
                |n, _| n.status = NodeStatus::Draining,
                Err(Infeasible::NotReady(NodeStatus::Draining)),
            ),
            ("driver present", driver_available, |_, _| {}, Ok(())),
            (
                "driver missing",
                driver_available,
                |_, r| r.driver = Driver::Process,
                Err(Infeasible::MissingDriver(Driver::Process)),
            ),
            (
                "constraint holds",
                constraints_hold,
                |_, r| r.constraints = vec![Constraint::parse("zone == a").expect("c")],
                Ok(()),
            ),
            (
                "constraint fails",
                constraints_hold,
                |_, r| r.constraints = vec![Constraint::parse("zone in (b, c)").expect("c")],
                Err(Infeasible::Constraint("zone in (b, c)".into())),
            ),
            ("memory fits exactly", fits_memory, |_, r| r.memory = 512 << 20, Ok(())),
            ("memory one byte over", fits_memory, |_, r| r.memory = (512 << 20) + 1, Err(Infeasible::Memory)),
            ("cpu fits exactly", fits_cpu, |_, r| r.cpu = 500, Ok(())),
            ("cpu over", fits_cpu, |_, r| r.cpu = 501, Err(Infeasible::Cpu)),
            ("port free", host_ports_free, |_, r| r.host_ports = vec![(81, Protocol::Tcp)], Ok(())),
            (
                "same port, other protocol",
                host_ports_free,
                |_, r| r.host_ports = vec![(80, Protocol::Udp)],
                Ok(()),
            ),
            (
                "port in use",
                host_ports_free,
                |_, r| r.host_ports = vec![(80, Protocol::Tcp)],
                Err(Infeasible::PortInUse(80)),
            ),
            ("not pinned", on_volumes_node, |_, _| {}, Ok(())),
            ("pinned here", on_volumes_node, |_, r| r.pinned_node = Some("n1".into()), Ok(())),
            (
                "pinned elsewhere",
                on_volumes_node,
                |_, r| r.pinned_node = Some("n2".into()),
                Err(Infeasible::NotVolumesNode),
            ),
            ("no host volumes asked", host_volumes_offered, |_, _| {}, Ok(())),
            (
                "host volume offered read-write",
                host_volumes_offered,
                |_, r| r.host_volumes = vec![("scratch".into(), true)],
                Ok(()),
            ),
            (
                "read-only host volume, read-only use",
                host_volumes_offered,
                |_, r| r.host_volumes = vec![("config".into(), false)],
                Ok(()),
            ),
            (
                "read-only host volume, written to",
                host_volumes_offered,
                |_, r| r.host_volumes = vec![("config".into(), true)],
                Err(Infeasible::HostVolumeReadOnly("config".into())),
            ),
            (
                "host volume not offered",
                host_volumes_offered,
                |_, r| r.host_volumes = vec![("scratch".into(), false), ("data".into(), false)],
                Err(Infeasible::NoHostVolume("data".into())),
            ),
        ];
        for (name, check, setup, want) in table {
            let (mut n, mut r) = (node(), request());
            setup(&mut n, &mut r);
            assert_eq!(check(&n, &r), want, "{name}");
        }
    }

    #[test]
    fn the_chain_reports_the_first_failure() {
        let mut n = node();
        n.status = NodeStatus::Down;
        let mut r = request();
        r.memory = 1 << 40;
        assert_eq!(check(&n, &r), Err(Infeasible::NotReady(NodeStatus::Down)));
    }

    #[test]
    fn a_host_volume_no_node_offers_is_named_as_such() {
        let tally = BTreeMap::from([(Infeasible::NoHostVolume("shared-config".into()), 4)]);
        assert_eq!(unplaced_reason(&request(), &tally), "no node offers host volume shared-config");
        let mixed = BTreeMap::from([
            (Infeasible::NoHostVolume("shared-config".into()), 3),
            (Infeasible::NotReady(NodeStatus::Down), 1),
        ]);
        assert_eq!(
            unplaced_reason(&request(), &mixed),
            "needs 250m CPU and 256Mi memory: 1 node is down, 3 nodes offer no host volume shared-config"
        );
    }

    #[test]
    fn reasons_read_as_a_sentence() {
        let tally =
            BTreeMap::from([(Infeasible::Memory, 3), (Infeasible::Constraint("zone == b".into()), 1)]);
        assert_eq!(
            unplaced_reason(&request(), &tally),
            "needs 250m CPU and 256Mi memory: 1 node fails constraint zone == b, 3 nodes have too little memory"
        );
    }
}
