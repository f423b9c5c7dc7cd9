//! A server's TLS: the cluster CA (certificate and key) and the server's
//! own certificate, kept in `DATA_DIR/tls/`. The first server of a cluster
//! makes the CA; founders of a bigger cluster share one made by `flotilla
//! ca create`; a server that joins later receives it with a server token.
//! The server renews its own certificate once two thirds of its life have
//! passed, with no restart: new handshakes present the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use flotilla_api::{Joiner, join::join};
use flotilla_security::{
    ClusterCa, ClusterKey, Credentials, CurrentCertificate, ExpectedPeer, Identity, JoinToken, SecurityError,
    Trust, client_config, server_config,
};

use crate::server::ServerError;

/// Where a server without TLS material of its own gets the CA.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// The data dir holds it already: a restart, whatever flags founded it.
    Stored,
    /// Make a new CA: the first server of a new cluster.
    Create,
    /// `ca.pem` and `ca.key` in a directory `flotilla ca create` wrote:
    /// founders of a cluster of several servers share it.
    Directory(PathBuf),
    /// Ask a member, with a server join token.
    Join { seed: String, token: JoinToken },
}

#[derive(Debug)]
pub struct ServerTls {
    pub ca: ClusterCa,
    /// What secrets are sealed with; the servers alone hold it.
    pub cluster_key: ClusterKey,
    pub trust: Trust,
    /// What this server presents, to clients and to its peers.
    pub certificate: Arc<CurrentCertificate>,
    id: u64,
    /// Extra names for its certificate: the address it listens on.
    addresses: Vec<String>,
    dir: PathBuf,
    lifetime: Duration,
    not_after_unix: AtomicU64,
}

fn security(error: SecurityError) -> ServerError {
    ServerError::Config(error.to_string())
}

fn io_error(path: &Path, error: std::io::Error) -> ServerError {
    ServerError::Config(format!("{}: {error}", path.display()))
}

/// Writes a key or certificate, readable by the owner alone.
pub fn write_private(path: &Path, text: &str) -> Result<(), ServerError> {
    flotilla_security::write_private(path, text).map_err(|e| io_error(path, e))
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a certificate ending at `not_after` with `lifetime` should be
/// renewed at `now`: once two thirds of its life have passed.
fn due_for_renewal(now: u64, not_after: u64, lifetime: Duration) -> bool {
    now + lifetime.as_secs() / 3 >= not_after
}

impl ServerTls {
    /// The server's TLS material: found in its data dir, or made from
    /// `source` on its first start.
    pub async fn prepare(
        data_dir: &Path,
        id: u64,
        addresses: Vec<String>,
        source: CaSource,
        lifetime: Duration,
    ) -> Result<Arc<Self>, ServerError> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let (ca_pem, key_pem) = (dir.join("ca.pem"), dir.join("ca.key"));
        let cluster_key_path = dir.join("cluster.key");
        if !ca_pem.exists() {
            let (ca, cluster_key) = match source {
                CaSource::Stored => {
                    return Err(ServerError::Config(format!("{} holds no CA", dir.display())));
                }
                CaSource::Create => {
                    let ca = ClusterCa::create().map_err(security)?;
                    tracing::info!(digest = %ca.digest(), "created the cluster CA");
                    (ca, ClusterKey::generate().map_err(security)?)
                }
                CaSource::Directory(shared) => (
                    ClusterCa::from_pem(&read(&shared.join("ca.pem"))?, &read(&shared.join("ca.key"))?)
                        .map_err(security)?,
                    ClusterKey::from_hex(&read(&shared.join("cluster.key"))?).map_err(security)?,
                ),
                CaSource::Join { seed, token } => join_cluster(&seed, &token, id, &addresses).await?,
            };
            write_private(&cluster_key_path, &cluster_key.to_hex())?;
            write_private(&key_pem, &ca.key_pem())?;
            write_private(&ca_pem, ca.certificate_pem())?;
        }
        let cluster_key = ClusterKey::from_hex(&read(&cluster_key_path)?).map_err(security)?;
        let trust = Trust::new(read(&ca_pem)?);
        let ca = ClusterCa::from_pem(&read(&ca_pem)?, &read(&key_pem)?).map_err(security)?;
        let not_after_path = dir.join("server.not_after");
        let stored = read(&not_after_path).ok().and_then(|t| t.trim().parse::<u64>().ok());
        let usable = stored.filter(|not_after| !due_for_renewal(now_unix(), *not_after, lifetime));
        let (credentials, not_after) = match usable {
            Some(not_after) => (
                Credentials {
                    certificate_pem: read(&dir.join("server.pem"))?,
                    key_pem: read(&dir.join("server.key"))?,
                },
                not_after,
            ),
            None => Self::issue_for(&ca, id, &addresses, lifetime)?,
        };
        let tls = ServerTls {
            certificate: CurrentCertificate::new(&credentials).map_err(security)?,
            ca,
            cluster_key,
            trust,
            id,
            addresses,
            dir,
            lifetime,
            not_after_unix: AtomicU64::new(not_after),
        };
        if usable.is_none() {
            tls.store(&credentials, not_after)?;
        }
        Ok(Arc::new(tls))
    }

    /// A certificate for this server: leaf, then the CA, so a joiner that
    /// pins the CA's digest finds it in the chain.
    fn issue_for(
        ca: &ClusterCa,
        id: u64,
        addresses: &[String],
        lifetime: Duration,
    ) -> Result<(Credentials, u64), ServerError> {
        let (mut credentials, not_after) =
            ca.issue_with_new_key(&Identity::Server(id), addresses, lifetime).map_err(security)?;
        credentials.certificate_pem.push_str(ca.certificate_pem());
        Ok((credentials, not_after))
    }

    fn store(&self, credentials: &Credentials, not_after: u64) -> Result<(), ServerError> {
        write_private(&self.dir.join("server.key"), &credentials.key_pem)?;
        write_private(&self.dir.join("server.pem"), &credentials.certificate_pem)?;
        write_private(&self.dir.join("server.not_after"), &not_after.to_string())?;
        tracing::info!(id = self.id, not_after, "issued this server's certificate");
        Ok(())
    }

    /// Issues, stores and presents a new certificate for this server.
    fn renew(&self) -> Result<(), ServerError> {
        let (credentials, not_after) = Self::issue_for(&self.ca, self.id, &self.addresses, self.lifetime)?;
        self.store(&credentials, not_after)?;
        self.certificate.replace(&credentials).map_err(security)?;
        self.not_after_unix.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// Renews the certificate whenever it is due, until the task is dropped.
    pub async fn renew_when_due(self: Arc<Self>) {
        loop {
            let not_after = self.not_after_unix.load(Ordering::Relaxed);
            let due_at = not_after.saturating_sub(self.lifetime.as_secs() / 3);
            let wait = due_at.saturating_sub(now_unix()).clamp(1, 3600);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            if due_for_renewal(now_unix(), self.not_after_unix.load(Ordering::Relaxed), self.lifetime)
                && let Err(error) = self.renew()
            {
                tracing::error!(%error, "cannot renew this server's certificate; retrying");
            }
        }
    }

    /// How long the certificates this server issues last.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, ServerError> {
        server_config(Arc::clone(&self.certificate), &self.trust).map_err(security)
    }

    /// What this server reads agents' logs with: its own certificate, and
    /// an agent of the cluster at the other end.
    pub fn agent_client_config(&self) -> Result<rustls::ClientConfig, ServerError> {
        client_config(&self.trust, Some(Arc::clone(&self.certificate)), ExpectedPeer::AnyNode)
            .map_err(security)
    }

    /// What this server speaks to its peers with: its own certificate,
    /// and any server of the cluster at the other end.
    pub fn member_client_config(&self) -> Result<rustls::ClientConfig, ServerError> {
        client_config(&self.trust, Some(Arc::clone(&self.certificate)), ExpectedPeer::AnyServer)
            .map_err(security)
    }
}

/// Receives the CA from a member with a server join token. An unreachable
/// seed is tried again (founders start together); a refusal is final.
async fn join_cluster(
    seed: &str,
    token: &JoinToken,
    id: u64,
    addresses: &[String],
) -> Result<(ClusterCa, ClusterKey), ServerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match join(seed, token, Joiner::Server(id), addresses.to_vec()).await {
            Ok(joined) => {
                let key = joined.answer.ca_key_pem.ok_or_else(|| {
                    ServerError::Config(format!("{seed} admitted this server but sent no CA key"))
                })?;
                let ca = ClusterCa::from_pem(&joined.answer.trust_pem, &key).map_err(security)?;
                if ca.digest() != token.ca_digest {
                    return Err(ServerError::Config(format!(
                        "{seed} sent a CA with digest {} but the token pins {}",
                        ca.digest(),
                        token.ca_digest
                    )));
                }
                let cluster_key = joined.answer.cluster_key.ok_or_else(|| {
                    ServerError::Config(format!("{seed} admitted this server but sent no cluster key"))
                })?;
                let cluster_key = ClusterKey::from_hex(&cluster_key).map_err(security)?;
                tracing::info!(%seed, "joined: received the cluster CA and key");
                return Ok((ca, cluster_key));
            }
            Err(flotilla_api::ClientError::Api { body, .. }) => {
                return Err(ServerError::Config(format!(
                    "{seed} refused to admit this server: {}",
                    body.message
                )));
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%seed, %error, "cannot join yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(ServerError::Config(format!("cannot join through {seed}: {error}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_after_two_thirds_of_their_life() {
        let lifetime = Duration::from_secs(300);
        assert!(!due_for_renewal(1_000, 1_300, lifetime), "just issued");
        assert!(!due_for_renewal(1_199, 1_300, lifetime));
        assert!(due_for_renewal(1_200, 1_300, lifetime), "a third left");
        assert!(due_for_renewal(1_400, 1_300, lifetime), "expired");
    }

    #[tokio::test]
    async fn a_server_keeps_its_ca_and_certificate_across_restarts() {
        let dir = tempfile::tempdir().expect("dir");
        let lifetime = Duration::from_secs(3600);
        let first = ServerTls::prepare(dir.path(), 1, vec!["127.0.0.1".into()], CaSource::Create, lifetime)
            .await
            .expect("first start");
        let key = std::fs::metadata(dir.path().join("tls/ca.key")).expect("key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key.permissions().mode() & 0o777, 0o600, "the CA key is the owner's alone");
        let certificate = std::fs::read_to_string(dir.path().join("tls/server.pem")).expect("pem");
        let again =
            ServerTls::prepare(dir.path(), 1, vec![], CaSource::Create, lifetime).await.expect("restart");
        assert_eq!(again.ca.digest(), first.ca.digest(), "the CA is made once");
        assert_eq!(std::fs::read_to_string(dir.path().join("tls/server.pem")).expect("pem"), certificate);
    }
}
