//! The listener servers and agents serve their HTTP on: TLS handshakes run
//! in tasks of their own (a slow or silent client holds up nobody), and a
//! connection reaches the router only once its handshake is done, with the
//! client's certificate, if it offered one, attached. Plain HTTP sent to it
//! gets no answer: the handshake fails and the connection is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// A handshake that has not finished in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 256;

/// A client's certificate, verified against the cluster CA during the
/// handshake, with the answers to the identity questions asked of it: one
/// connection carries thousands of Raft requests, and each would otherwise
/// parse the certificate again to ask the same thing.
#[derive(Debug)]
pub struct PeerCertificate {
    der: CertificateDer<'static>,
    answers: Mutex<Vec<(String, bool)>>,
}

impl PeerCertificate {
    pub fn new(der: CertificateDer<'static>) -> Self {
        PeerCertificate { der, answers: Mutex::new(Vec::new()) }
    }

    /// Whether the certificate is valid for `name` (see `peer_vouches_for`).
    pub fn vouches_for(&self, name: &str) -> bool {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, answer)) = answers.iter().find(|(asked, _)| asked == name) {
            return *answer;
        }
        let answer = crate::peer_vouches_for(&self.der, name);
        answers.push((name.to_owned(), answer));
        answer
    }
}

/// Who is at the other end of a connection, as the router sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// The client's certificate, verified against the cluster CA during
    /// the handshake; `None` over plain HTTP or when none was offered.
    pub certificate: Option<Arc<PeerCertificate>>,
    /// Whether the connection is TLS; a plain one exists only on a daemon
    /// started `--insecure`.
    pub secure: bool,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer { address: *stream.remote_addr(), certificate: None, secure: false }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
    /// Ends the accept task when the listener is dropped.
    _accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS on `listener` with `config`; renewed certificates reach
    /// new handshakes through the configuration's certificate resolver.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, config, sender));
        Ok(TlsListener { ready, local, _accepting: accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(PeerCertificate::new(c.clone())));
                    let _ = ready.send((tls, Peer { address, certificate, secure: true })).await;
                }
                Ok(Err(error)) => tracing::debug!(%address, %error, "TLS handshake refused"),
                Err(_) => tracing::debug!(%address, "TLS handshake timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer { address: self.local, certificate: None, secure: true })
    }
}
