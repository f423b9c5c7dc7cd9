//! The routing table: for every service port, the pool of ready replicas
//! behind it, with what the balancer needs to know of each (connections
//! in flight, whether it was ejected), rebuilt from each registry answer.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flotilla_api::spec::{Balance, Protocol};
use flotilla_api::{Endpoint, Service, ServicePort};

/// How long an endpoint that refused a connection stays out of its pool
/// when no passing check brings it back sooner; after that it is tried
/// again (a refusal costs no request: the mesh moves on to the next one).
pub const EJECTION: Duration = Duration::from_secs(10);

/// Connects in a row that time out before a replica is ejected. One slow
/// connect is a busy replica dropping SYNs (busybox httpd's backlog is
/// nine): the client goes to the next, but the replica stays in; a replica
/// that never answers (a dead container's address) is out after a few.
pub const TIMEOUTS_TO_EJECT: u32 = 3;

/// One replica behind one service port, as the mesh dials it.
#[derive(Debug)]
pub struct Target {
    pub allocation: u64,
    pub address: SocketAddr,
    /// Connections through this mesh in flight to it: least_connections' measure.
    pub active: AtomicUsize,
    /// When a connection to it was last refused, while that keeps it out.
    ejected_at: std::sync::Mutex<Option<Instant>>,
    /// Connects that timed out since the last one that succeeded.
    timeouts: std::sync::atomic::AtomicU32,
    /// The registry's `healthy_since_ms` when the target was made: a new
    /// value means it passed its checks anew, which re-admits it.
    healthy_since_ms: Option<u64>,
}

impl Target {
    pub fn new(allocation: u64, address: SocketAddr, healthy_since_ms: Option<u64>) -> Self {
        Target {
            allocation,
            address,
            active: AtomicUsize::new(0),
            ejected_at: std::sync::Mutex::new(None),
            timeouts: std::sync::atomic::AtomicU32::new(0),
            healthy_since_ms,
        }
    }

    /// Passive ejection: it refused a connection, so it gets no more until
    /// a check passes anew or `EJECTION` is over.
    pub fn eject(&self) {
        *self.ejected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// A connect to it timed out: ejected once that happened
    /// `TIMEOUTS_TO_EJECT` times in a row. Whether it was.
    pub fn timed_out(&self) -> bool {
        let in_a_row = self.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= TIMEOUTS_TO_EJECT {
            self.eject();
        }
        in_a_row >= TIMEOUTS_TO_EJECT
    }

    /// A connect to it succeeded.
    pub fn connected(&self) {
        self.timeouts.store(0, Ordering::Relaxed);
    }

    pub fn admitted(&self, now: Instant) -> bool {
        match *self.ejected_at.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(at) => now.duration_since(at) >= EJECTION,
            None => true,
        }
    }

    /// Counts a connection in flight until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ActiveConnection {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(Arc::clone(self))
    }
}

/// A connection in flight to a target, counted while it lives.
#[derive(Debug)]
pub struct ActiveConnection(Arc<Target>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ready replicas behind one service port.
#[derive(Debug)]
pub struct Pool {
    pub service: String,
    pub balance: Balance,
    pub targets: Vec<Arc<Target>>,
    /// Round robin's position, and least_connections' tie breaker.
    pub turn: AtomicUsize,
}

/// Every pool this mesh serves, by service port.
pub type Pools = HashMap<(u16, Protocol), Arc<Pool>>;

/// Where this mesh dials replicas.
#[derive(Debug, Clone, Default)]
pub struct Dialling {
    /// This host's Docker engine: replicas made by it are dialled at their
    /// container address and port, without the host port's extra hop.
    pub engine: Option<String>,
}

impl Dialling {
    /// The address of one endpoint's port: its container address when this
    /// host's engine made it, else its node's address and host port.
    /// `None` when neither is known yet (a host port still being bound).
    pub fn address(&self, endpoint: &Endpoint, port: &ServicePort, hosts: &HostNames) -> Option<SocketAddr> {
        if let (Some(engine), Some(container)) = (&self.engine, &endpoint.container_address)
            && *engine == container.engine
        {
            return Some(SocketAddr::new(container.ip, port.container));
        }
        let host_port = endpoint.ports.iter().find(|(name, _)| *name == port.name).map(|(_, p)| *p)?;
        let ip = endpoint.address.parse::<IpAddr>().ok().or_else(|| hosts.get(&endpoint.address).copied())?;
        Some(SocketAddr::new(ip, host_port))
    }
}

/// Node host names resolved to addresses, for nodes registered by name.
pub type HostNames = HashMap<String, IpAddr>;

/// Builds the pools of `services`, keeping the targets (and their
/// connection counts and ejections) of replicas that were already there.
pub fn build_pools(services: &[Service], previous: &Pools, dialling: &Dialling, hosts: &HostNames) -> Pools {
    let mut pools = Pools::new();
    for service in services {
        for port in &service.ports {
            let key = (port.port, port.protocol);
            let before: BTreeMap<u64, &Arc<Target>> = previous
                .get(&key)
                .map(|p| p.targets.iter().map(|t| (t.allocation, t)).collect())
                .unwrap_or_default();
            let targets = service
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .filter_map(|e| {
                    let address = dialling.address(e, port, hosts)?;
                    let kept = before
                        .get(&e.allocation)
                        .filter(|t| t.address == address && t.healthy_since_ms == e.healthy_since_ms);
                    Some(match kept {
                        Some(target) => Arc::clone(target),
                        None => Arc::new(Target::new(e.allocation, address, e.healthy_since_ms)),
                    })
                })
                .collect();
            let turn = previous.get(&key).map_or(0, |p| p.turn.load(Ordering::Relaxed));
            let pool = Pool {
                service: service.name.to_string(),
                balance: service.balance,
                targets,
                turn: AtomicUsize::new(turn),
            };
            pools.insert(key, Arc::new(pool));
        }
    }
    pools
}

#[cfg(test)]
mod tests {
    use flotilla_api::{ContainerAddress, Health};

    use super::*;

    fn endpoint(allocation: u64, ready: bool, since: u64) -> Endpoint {
        Endpoint {
            allocation,
            node: "n".into(),
            address: "127.0.0.1".into(),
            ports: vec![("http".into(), 40000 + allocation as u16)],
            health: Health::Healthy,
            ready,
            container_address: Some(ContainerAddress {
                engine: "E".into(),
                ip: [10, 0, 0, allocation as u8].into(),
            }),
            healthy_since_ms: Some(since),
        }
    }

    fn service(endpoints: Vec<Endpoint>) -> Service {
        crate::mesh::web_service(20000, endpoints)
    }

    fn addresses(pools: &Pools) -> Vec<String> {
        pools[&(20000, Protocol::Tcp)].targets.iter().map(|t| t.address.to_string()).collect()
    }

    #[test]
    fn same_engine_dials_the_container_other_engines_the_host_port() {
        let services = [service(vec![endpoint(1, true, 5), endpoint(2, false, 5)])];
        let local = Dialling { engine: Some("E".into()) };
        let pools = build_pools(&services, &Pools::new(), &local, &HostNames::new());
        assert_eq!(addresses(&pools), vec!["10.0.0.1:80"], "only the ready endpoint, at its container");
        let remote = Dialling { engine: Some("other".into()) };
        let pools = build_pools(&services, &Pools::new(), &remote, &HostNames::new());
        assert_eq!(addresses(&pools), vec!["127.0.0.1:40001"]);
    }

    #[test]
    fn an_ejected_target_stays_out_until_its_checks_pass_anew() {
        let local = Dialling { engine: Some("E".into()) };
        let first =
            build_pools(&[service(vec![endpoint(1, true, 5)])], &Pools::new(), &local, &HostNames::new());
        let target = Arc::clone(&first[&(20000, Protocol::Tcp)].targets[0]);
        target.eject();
        assert!(!target.admitted(Instant::now()));
        assert!(target.admitted(Instant::now() + EJECTION));

        let slow = Target::new(2, ([10, 0, 0, 2], 80).into(), None);
        assert!(!slow.timed_out() && !slow.timed_out(), "a slow connect or two is a busy replica");
        slow.connected();
        assert!(!slow.timed_out() && !slow.timed_out());
        assert!(slow.admitted(Instant::now()));
        assert!(slow.timed_out(), "three in a row: it does not answer at all");
        assert!(!slow.admitted(Instant::now()));

        let same = build_pools(&[service(vec![endpoint(1, true, 5)])], &first, &local, &HostNames::new());
        assert!(!same[&(20000, Protocol::Tcp)].targets[0].admitted(Instant::now()), "kept, ejection and all");
        let passed = build_pools(&[service(vec![endpoint(1, true, 9)])], &same, &local, &HostNames::new());
        assert!(passed[&(20000, Protocol::Tcp)].targets[0].admitted(Instant::now()), "re-admitted");
    }
}
