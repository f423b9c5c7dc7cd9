//! A server's TLS: the cluster CA (certificate and key) and the server's
//! own certificate, kept in `DATA_DIR/tls/`. The first server of a cluster
//! makes the CA; founders of a bigger cluster share one made by `flotilla
//! ca create`; a server that joins later receives it with a server token.
//! The server renews its own certificate once two thirds of its life have
//! passed, with no restart: new handshakes present the new one. A CA
//! rotation reaches it through the replicated state (`converge`): it
//! trusts what the state says, issues from the CA the state says, and
//! presents a certificate from that CA.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use flotilla_api::{Joiner, TlsReport, join::join};
use flotilla_security::{
    ClusterCa, ClusterKey, Credentials, CurrentCertificate, CurrentTrust, ExpectedPeer, Identity, JoinToken,
    SecurityError, Trust, following_client_config, issuer_digest, server_config,
};

use crate::server::ServerError;
use crate::state::{CaState, StoredCa, sealing_name};

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
    /// The CA this server issues from: the founding one, or the one a
    /// rotation made issuing.
    ca: RwLock<Arc<ClusterCa>>,
    /// What secrets and rotated CAs' keys are sealed with; the servers alone hold it.
    pub cluster_key: ClusterKey,
    /// The CAs this server trusts: one, two during a rotation.
    pub trust: Arc<CurrentTrust>,
    /// What this server presents, to clients and to its peers.
    pub certificate: Arc<CurrentCertificate>,
    /// The digest of the CA this server's own certificate is from: a
    /// rotation waits until every server's is from the new CA.
    issued_by: RwLock<Option<String>>,
    /// Serializes `converge` and `renew`: both replace the certificate and
    /// the files, and the renewal task runs beside the state follower.
    changing: std::sync::Mutex<()>,
    /// The CA state's progress this server last converged to (stored in
    /// `ca.progress`): an older state, met while replaying the log after a
    /// restart, is not converged to.
    converged: AtomicU64,
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
                    let trust = Trust::new(ca.certificate_pem());
                    ((ca, trust), ClusterKey::generate().map_err(security)?)
                }
                CaSource::Directory(shared) => {
                    let ca_pem = read(&shared.join("ca.pem"))?;
                    let ca =
                        ClusterCa::from_pem(&ca_pem, &read(&shared.join("ca.key"))?).map_err(security)?;
                    let cluster_key =
                        ClusterKey::from_hex(&read(&shared.join("cluster.key"))?).map_err(security)?;
                    ((ca, Trust::new(ca_pem)), cluster_key)
                }
                CaSource::Join { seed, token } => join_cluster(&seed, &token, id, &addresses).await?,
            };
            write_private(&cluster_key_path, &cluster_key.to_hex())?;
            write_private(&key_pem, &ca.0.key_pem())?;
            write_private(&dir.join("trust.pem"), &ca.1.pem)?;
            write_private(&ca_pem, ca.0.certificate_pem())?;
        }
        let cluster_key = ClusterKey::from_hex(&read(&cluster_key_path)?).map_err(security)?;
        // A data dir from before CA rotation existed holds no trust.pem:
        // it trusted its one CA.
        let trust = match read(&dir.join("trust.pem")) {
            Ok(pem) => Trust::new(pem),
            Err(_) => Trust::new(read(&ca_pem)?),
        };
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
        let leaf = credentials.chain().map_err(security)?.remove(0);
        let issued_by = issuer_digest(&trust, &leaf).map_err(security)?;
        let tls = ServerTls {
            certificate: CurrentCertificate::new(&credentials).map_err(security)?,
            ca: RwLock::new(Arc::new(ca)),
            cluster_key,
            trust: CurrentTrust::new(&trust).map_err(security)?,
            issued_by: RwLock::new(issued_by),
            changing: std::sync::Mutex::new(()),
            converged: AtomicU64::new(
                read(&dir.join("ca.progress")).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0),
            ),
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

    /// The CA this server issues from now.
    pub fn issuing(&self) -> Arc<ClusterCa> {
        Arc::clone(&self.ca.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// What this server trusts and which CA its certificate is from.
    pub fn report(&self) -> TlsReport {
        TlsReport {
            trusted: self.trust.digests(),
            issuer: self.issued_by.read().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Brings this server's TLS to what the replicated CA state says:
    /// trust the CAs it names, issue from the one it names, present a
    /// certificate from that one. Idempotent; every step is stored before
    /// it takes effect, so a restart resumes from the files.
    pub fn converge(&self, state: &CaState) -> Result<(), ServerError> {
        let Some((trusted, issuing)) = desired_tls(state) else {
            return Ok(());
        };
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let progress = state.progress();
        if progress < self.converged.load(Ordering::Relaxed) {
            return Ok(());
        }
        let trust = Trust::joined(trusted.iter().map(String::as_str));
        let digests: Vec<String> = trust
            .certificates()
            .map_err(security)?
            .iter()
            .map(|c| flotilla_security::certificate_digest(c))
            .collect();
        if !flotilla_api::same_cas(&digests, &self.trust.digests()) {
            write_private(&self.dir.join("trust.pem"), &trust.pem)?;
            self.trust.replace(&trust).map_err(security)?;
            tracing::info!(id = self.id, trusted = ?digests, "now trusting the CAs the cluster names");
        }
        if let Some(issuing) = issuing
            && issuing.digest != self.issuing().digest()
        {
            let key = self
                .cluster_key
                .open(&sealing_name(&issuing.digest), &issuing.sealed_key)
                .map_err(security)?;
            let key = String::from_utf8(key)
                .map_err(|_| ServerError::Config("the sealed CA key is not PEM text".into()))?;
            let ca = ClusterCa::from_pem(&issuing.certificate_pem, &key).map_err(security)?;
            write_private(&self.dir.join("ca.key"), &ca.key_pem())?;
            write_private(&self.dir.join("ca.pem"), ca.certificate_pem())?;
            tracing::info!(id = self.id, digest = %ca.digest(), "now issuing from the rotated CA");
            *self.ca.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ca);
        }
        let issuing = self.issuing().digest();
        if self.report().issuer.as_deref() != Some(issuing.as_str()) {
            self.renew_locked()?;
        }
        if progress > self.converged.load(Ordering::Relaxed) {
            write_private(&self.dir.join("ca.progress"), &progress.to_string())?;
            self.converged.store(progress, Ordering::Relaxed);
        }
        Ok(())
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
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        self.renew_locked()
    }

    fn renew_locked(&self) -> Result<(), ServerError> {
        let ca = self.issuing();
        let (credentials, not_after) = Self::issue_for(&ca, self.id, &self.addresses, self.lifetime)?;
        self.store(&credentials, not_after)?;
        self.certificate.replace(&credentials).map_err(security)?;
        *self.issued_by.write().unwrap_or_else(|p| p.into_inner()) = Some(ca.digest());
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

    /// Converges to the replicated CA state whenever it changes, until the
    /// Raft node stops. A failed step (a file that cannot be written) is
    /// tried again a second later.
    pub async fn follow_ca_state(self: Arc<Self>, raft: crate::raft::RaftHandle) {
        let mut applied = raft.applied_watch();
        let mut converged: Option<CaState> = None;
        loop {
            let current = {
                let state = raft.state();
                (converged.as_ref() != Some(state.ca())).then(|| state.ca().clone())
            };
            if let Some(current) = current {
                match self.converge(&current) {
                    Ok(()) => converged = Some(current),
                    Err(error) => tracing::error!(%error, "cannot follow the cluster's CA; retrying"),
                }
            }
            // A closed watch means the Raft node stopped.
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await {
                return;
            }
        }
    }

    /// How long the certificates this server issues last.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, ServerError> {
        server_config(Arc::clone(&self.certificate), Arc::clone(&self.trust)).map_err(security)
    }

    /// What this server reads agents' logs with: its own certificate, and
    /// an agent of the cluster at the other end.
    pub fn agent_client_config(&self) -> Result<rustls::ClientConfig, ServerError> {
        following_client_config(
            Arc::clone(&self.trust),
            Some(Arc::clone(&self.certificate)),
            ExpectedPeer::AnyNode,
        )
        .map_err(security)
    }

    /// What this server speaks to its peers with: its own certificate,
    /// and any server of the cluster at the other end.
    pub fn member_client_config(&self) -> Result<rustls::ClientConfig, ServerError> {
        following_client_config(
            Arc::clone(&self.trust),
            Some(Arc::clone(&self.certificate)),
            ExpectedPeer::AnyServer,
        )
        .map_err(security)
    }
}

/// The CA certificates a server should trust and the CA it should issue
/// from, as the replicated state says; `None`: the state says nothing (no
/// rotation ever), so the founding CA in the data dir stands.
fn desired_tls(state: &CaState) -> Option<(Vec<String>, Option<StoredCa>)> {
    match &state.rotation {
        Some(rotation) => {
            let issuing = match rotation.phase {
                flotilla_api::CaRotationPhase::Trusting => state.current.clone(),
                flotilla_api::CaRotationPhase::Reissuing => Some(rotation.to.clone()),
            };
            Some((vec![rotation.from_pem.clone(), rotation.to.certificate_pem.clone()], issuing))
        }
        None => {
            let current = state.current.clone()?;
            Some((vec![current.certificate_pem.clone()], Some(current)))
        }
    }
}

/// Receives the CA from a member with a server join token. An unreachable
/// seed is tried again (founders start together); a refusal is final.
async fn join_cluster(
    seed: &str,
    token: &JoinToken,
    id: u64,
    addresses: &[String],
) -> Result<((ClusterCa, Trust), ClusterKey), ServerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match join(seed, token, Joiner::Server(id), addresses.to_vec()).await {
            Ok(joined) => {
                let key = joined.answer.ca_key_pem.ok_or_else(|| {
                    ServerError::Config(format!("{seed} admitted this server but sent no CA key"))
                })?;
                let ca_pem = joined.answer.ca_pem.as_deref().unwrap_or(&joined.answer.trust_pem);
                let ca = ClusterCa::from_pem(ca_pem, &key).map_err(security)?;
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
                return Ok(((ca, Trust::new(joined.answer.trust_pem)), cluster_key));
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
        assert_eq!(again.issuing().digest(), first.issuing().digest(), "the CA is made once");
        assert_eq!(std::fs::read_to_string(dir.path().join("tls/server.pem")).expect("pem"), certificate);
    }

    #[tokio::test]
    async fn a_server_follows_a_rotation_through_its_phases_and_restarts_where_it_stood() {
        use flotilla_api::CaRotationPhase;

        use crate::state::CaRotation;

        let dir = tempfile::tempdir().expect("dir");
        let lifetime = Duration::from_secs(3600);
        let tls = ServerTls::prepare(dir.path(), 1, vec![], CaSource::Create, lifetime).await.expect("start");
        let old = tls.issuing();
        let new = ClusterCa::create().expect("new CA");
        let sealed_key =
            tls.cluster_key.seal(&sealing_name(&new.digest()), new.key_pem().as_bytes()).expect("seal");
        let to = StoredCa { certificate_pem: new.certificate_pem().into(), digest: new.digest(), sealed_key };
        let mut rotation = CaRotation {
            from_pem: old.certificate_pem().into(),
            from_digest: old.digest(),
            to: to.clone(),
            phase: CaRotationPhase::Trusting,
            started_ms: 0,
        };
        let in_phase =
            |rotation: &CaRotation| CaState { current: None, rotation: Some(rotation.clone()), rotations: 0 };
        let both = vec![old.digest(), new.digest()];

        tls.converge(&in_phase(&rotation)).expect("trusting");
        assert_eq!(tls.report(), TlsReport { trusted: both.clone(), issuer: Some(old.digest()) });
        assert_eq!(tls.issuing().digest(), old.digest(), "the old CA issues while the new one is learnt");

        rotation.phase = CaRotationPhase::Reissuing;
        tls.converge(&in_phase(&rotation)).expect("reissuing");
        assert_eq!(tls.report(), TlsReport { trusted: both.clone(), issuer: Some(new.digest()) });
        assert_eq!(tls.issuing().digest(), new.digest());

        let restarted =
            ServerTls::prepare(dir.path(), 1, vec![], CaSource::Stored, lifetime).await.expect("restart");
        assert_eq!(restarted.report(), TlsReport { trusted: both, issuer: Some(new.digest()) });
        assert_eq!(restarted.issuing().digest(), new.digest(), "the files say where it stood");

        let done = CaState { current: Some(to), rotation: None, rotations: 1 };
        restarted.converge(&done).expect("done");
        assert_eq!(restarted.report(), TlsReport { trusted: vec![new.digest()], issuer: Some(new.digest()) });
        let replaying =
            ServerTls::prepare(dir.path(), 1, vec![], CaSource::Stored, lifetime).await.expect("restart");
        replaying.converge(&in_phase(&rotation)).expect("an older state, met replaying the log");
        assert_eq!(
            replaying.report().trusted,
            vec![new.digest()],
            "a restarted server replaying its log does not trust the old CA again"
        );
        let certificate = std::fs::read_to_string(dir.path().join("tls/server.pem")).expect("pem");
        restarted.converge(&done).expect("again");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("tls/server.pem")).expect("pem"),
            certificate,
            "converging twice changes nothing"
        );
    }
}
