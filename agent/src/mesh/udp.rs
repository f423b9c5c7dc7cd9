//! UDP through the mesh: each client address is a flow, pinned to one
//! replica through a socket of its own, so the replica's answers come back
//! to that client; a flow idle for `FLOW_IDLE` is forgotten.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::spec::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::balancer::pick;
use super::endpoints::{ActiveConnection, Pools};

const FLOW_IDLE: Duration = Duration::from_secs(60);
const DATAGRAM: usize = 65_535;

/// Binds a service port's UDP socket, shareable with the other agents on
/// this host (`SO_REUSEPORT` hashes each client to one of them).
pub fn bind(address: SocketAddr) -> std::io::Result<UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let family = if address.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &address)?;
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// A UDP socket of its own, connected to `peer` (so only its answers arrive).
pub async fn connect(peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if peer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(peer).await?;
    Ok(socket)
}

/// One client's flow: the socket connected to its replica.
struct Flow {
    upstream: Arc<UdpSocket>,
    last_seen: Instant,
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// Serves one UDP service port on one address until the task is aborted.
pub async fn serve(socket: UdpSocket, port: u16, pools: watch::Receiver<Arc<Pools>>) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buffer = vec![0u8; DATAGRAM];
    let mut sweep = tokio::time::interval(FLOW_IDLE / 2);
    loop {
        let (len, client) = tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(port, %error, "mesh UDP receive failed");
                    continue;
                }
            },
            _ = sweep.tick() => {
                flows.retain(|_, f| f.last_seen.elapsed() < FLOW_IDLE && !f.relay.is_finished());
                continue;
            }
        };
        if flows.get(&client).is_some_and(|f| f.relay.is_finished()) {
            flows.remove(&client);
        }
        let flow = match flows.entry(client) {
            std::collections::hash_map::Entry::Occupied(flow) => flow.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let pool = pools.borrow().get(&(port, Protocol::Udp)).cloned();
                let Some(pool) = pool else { continue };
                let Some(flow) = open_flow(&pool, client, Arc::clone(&socket)).await else { continue };
                vacant.insert(flow)
            }
        };
        flow.last_seen = Instant::now();
        let _ = flow.upstream.send(&buffer[..len]).await;
    }
}

async fn open_flow(
    pool: &super::endpoints::Pool,
    client: SocketAddr,
    listener: Arc<UdpSocket>,
) -> Option<Flow> {
    let target = pick(pool, &[], Instant::now())?;
    let upstream = Arc::new(connect(target.address).await.ok()?);
    let active = target.connection();
    let relay = tokio::spawn(relay_answers(Arc::clone(&upstream), listener, client, target, active));
    Some(Flow { upstream, last_seen: Instant::now(), relay })
}

/// Sends the replica's answers back to the client. An ICMP "port
/// unreachable" surfaces as a refused receive: the replica is ejected and
/// the flow ends, so the client's next datagram picks another.
async fn relay_answers(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    target: Arc<super::endpoints::Target>,
    _active: ActiveConnection,
) {
    let mut buffer = vec![0u8; DATAGRAM];
    loop {
        match upstream.recv(&mut buffer).await {
            Ok(len) => {
                let _ = listener.send_to(&buffer[..len], client).await;
            }
            Err(error) => {
                tracing::info!(allocation = target.allocation, %error, "ejected: UDP flow refused");
                target.eject();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use flotilla_api::spec::Balance;

    use super::*;
    use crate::mesh::endpoints::{Pool, Target};

    /// A UDP server that answers every datagram with its name.
    async fn answering(name: &'static str) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let address = socket.local_addr().expect("address");
        tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            while let Ok((_, from)) = socket.recv_from(&mut buffer).await {
                let _ = socket.send_to(name.as_bytes(), from).await;
            }
        });
        address
    }

    async fn ask(client: &UdpSocket) -> String {
        client.send(b"?").await.expect("send");
        let mut buffer = [0u8; 512];
        let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buffer))
            .await
            .expect("an answer in time")
            .expect("recv");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    }

    #[tokio::test]
    async fn each_client_is_a_flow_pinned_to_one_replica_and_flows_are_balanced() {
        let (a, b) = (answering("a").await, answering("b").await);
        let pool = Pool {
            service: "dns".into(),
            balance: Balance::RoundRobin,
            targets: vec![Arc::new(Target::new(1, a, None)), Arc::new(Target::new(2, b, None))],
            turn: AtomicUsize::new(0),
        };
        let pools: Pools = [((53, Protocol::Udp), Arc::new(pool))].into();
        let (_tx, pools) = watch::channel(Arc::new(pools));
        let socket = bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let mesh = socket.local_addr().expect("address");
        let serving = tokio::spawn(serve(socket, 53, pools));

        let mut answers = Vec::new();
        for _ in 0..2 {
            let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
            client.connect(mesh).await.expect("connect");
            let first = ask(&client).await;
            for _ in 0..3 {
                assert_eq!(ask(&client).await, first, "a client's datagrams stay with its replica");
            }
            answers.push(first);
        }
        answers.sort();
        assert_eq!(answers, vec!["a", "b"], "two clients, two replicas");
        serving.abort();
    }
}
