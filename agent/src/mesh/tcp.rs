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
/// for, which would otherwise hold the client for seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.address)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                let _active = target.connection();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Ok(Err(error)) => {
                tracing::info!(service = %pool.service, allocation = target.allocation, address = %target.address, %error, "ejected: connection failed");
                target.eject();
            }
            Err(_) => {
                tracing::info!(service = %pool.service, allocation = target.allocation, address = %target.address, "ejected: connection timed out");
                target.eject();
            }
        }
    }
    tracing::debug!(service = %pool.service, "no replica took the connection");
}
