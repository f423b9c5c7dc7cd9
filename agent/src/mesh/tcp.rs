//! TCP through the mesh: accept on a service port, connect to a replica
//! chosen by the balancer, and copy both ways until either side closes.
//! A replica that refuses (or does not answer) the connection is ejected
//! and the next one is tried, so the client never sees that failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::spec::Protocol;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use super::balancer::pick;
use super::endpoints::Pools;

/// How long a replica gets to accept a connection before the next is tried.
/// A container that has just died leaves an address nobody answers ARP
/// for, which would otherwise hold the client for seconds; a live replica
/// in the cluster's network accepts in well under a millisecond.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The connect timeout when no other replica is left to try: a busy
/// replica whose backlog dropped the SYN answers the retransmission a
/// second later, which beats failing the client.
const LAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds a service port so that every agent on this host can bind it too
/// (`SO_REUSEPORT`: the kernel spreads connections over them, and each
/// serves the same services).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Serves one service port on one address until the task is aborted.
pub async fn serve(listener: TcpListener, port: u16, pools: watch::Receiver<Arc<Pools>>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(port, %error, "mesh accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pool = pools.borrow().get(&(port, Protocol::Tcp)).cloned();
        if let Some(pool) = pool {
            tokio::spawn(async move { proxy(client, &pool).await });
        }
    }
}

async fn proxy(mut client: TcpStream, pool: &super::endpoints::Pool) {
    let _ = client.set_nodelay(true);
    let mut tried = Vec::new();
    while let Some(target) = pick(pool, &tried, Instant::now()) {
        tried.push(target.allocation);
        let last = pool.targets.iter().all(|t| tried.contains(&t.allocation));
        let timeout = if last { LAST_CONNECT_TIMEOUT } else { CONNECT_TIMEOUT };
        // Counted from the connect on: a replica slow to accept is busy,
        // and least_connections sends the next clients elsewhere.
        let _active = target.connection();
        match tokio::time::timeout(timeout, TcpStream::connect(target.address)).await {
            Ok(Ok(mut upstream)) => {
                target.connected();
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Ok(Err(error)) => {
                tracing::info!(service = %pool.service, allocation = target.allocation, address = %target.address, %error, "ejected: connection failed");
                target.eject();
            }
            Err(_) => {
                tracing::debug!(service = %pool.service, allocation = target.allocation, "connect timed out; trying the next");
                if target.timed_out() {
                    tracing::info!(service = %pool.service, allocation = target.allocation, address = %target.address, "ejected: connections time out");
                }
            }
        }
    }
    tracing::debug!(service = %pool.service, "no replica took the connection");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use flotilla_api::spec::Balance;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::mesh::endpoints::{Pool, Target};

    /// A TCP server that writes its name to every connection and closes it.
    async fn answering(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(name.as_bytes()).await;
            }
        });
        address
    }

    /// A port nothing listens on: connections to it are refused.
    fn refusing() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    }

    #[tokio::test]
    async fn a_refusing_replica_is_ejected_and_the_client_served_by_the_next() {
        let dead = refusing();
        let alive = answering("alive").await;
        let pool = Pool {
            service: "web".into(),
            balance: Balance::RoundRobin,
            targets: vec![Arc::new(Target::new(1, dead, None)), Arc::new(Target::new(2, alive, None))],
            turn: AtomicUsize::new(0),
        };
        let dead_target = Arc::clone(&pool.targets[0]);
        let pools: Pools = [((80, Protocol::Tcp), Arc::new(pool))].into();
        let (_tx, pools) = watch::channel(Arc::new(pools));
        let listener = bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let mesh = listener.local_addr().expect("address");
        let serving = tokio::spawn(serve(listener, 80, pools));

        for _ in 0..10 {
            let mut client = TcpStream::connect(mesh).await.expect("the mesh accepts");
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.expect("read");
            assert_eq!(reply, "alive", "every connection is served, the refusal never seen");
        }
        assert!(!dead_target.admitted(Instant::now()), "the refusing replica is out of the pool");
        serving.abort();
    }
}
