//! The agent's TLS: the cluster CA and this node's certificate, kept in
//! `DATA_DIR/tls/`. On its first start the agent joins with an agent token
//! (pinning the CA's digest before it sends the secret) and receives a
//! certificate for its node name; afterwards it renews that certificate
//! through its own node's route once two thirds of its life have passed.
//! A CA rotation reaches it in the servers' answers to its heartbeats: it
//! trusts the CAs they name, and renews at once when its certificate is
//! from a CA other than the one that issues now.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use flotilla_api::join::join;
use flotilla_api::{Client, Joiner, TlsReport, TrustAdvice};
use flotilla_security::{
    Credentials, CurrentCertificate, CurrentTrust, ExpectedPeer, JoinToken, SecurityError, Trust,
    following_client_config, issuer_digest, new_key, server_config,
};

#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("TLS: {0}")]
    Security(#[from] SecurityError),
    #[error(
        "this agent has no certificate for node `{0}` yet: start it with --join-token (an agent join token from `flotilla token create --role agent`)"
    )]
    NeedsToken(String),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
}

#[derive(Debug)]
pub struct NodeTls {
    /// The CAs this agent trusts: one, two during a CA rotation.
    pub trust: Arc<CurrentTrust>,
    /// What this agent presents to the servers and on its own API.
    pub certificate: Arc<CurrentCertificate>,
    /// The digest of the CA its certificate is from, reported with each
    /// heartbeat so a CA rotation knows when every agent has renewed.
    issued_by: RwLock<Option<String>>,
    /// One renewal at a time: the timer and a rotation's advice may both
    /// ask, and the key and certificate files must come from one renewal.
    renewing: tokio::sync::Mutex<()>,
    name: String,
    dir: PathBuf,
    not_after_unix: AtomicU64,
    /// How long the servers make certificates last, as seen at the last issue.
    lifetime_secs: AtomicU64,
}

fn read(path: &Path) -> Result<String, NodeTlsError> {
    std::fs::read_to_string(path)
        .map_err(|e| NodeTlsError::Io { path: path.display().to_string(), reason: e.to_string() })
}

fn write_private(path: &Path, text: &str) -> Result<(), NodeTlsError> {
    flotilla_security::write_private(path, text)
        .map_err(|e| NodeTlsError::Io { path: path.display().to_string(), reason: e.to_string() })
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl NodeTls {
    /// This node's TLS material: found in the data dir (for this node
    /// name), or obtained by joining through one of `servers` with `token`.
    pub async fn prepare(
        data_dir: &Path,
        name: &str,
        servers: &[String],
        token: Option<&JoinToken>,
    ) -> Result<Arc<Self>, NodeTlsError> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir)
            .map_err(|e| NodeTlsError::Io { path: dir.display().to_string(), reason: e.to_string() })?;
        let stored_name = read(&dir.join("node.name")).ok();
        let stored = match stored_name.as_deref() {
            Some(stored) if stored == name => Some((
                Trust::new(read(&dir.join("ca.pem"))?),
                Credentials {
                    certificate_pem: read(&dir.join("node.pem"))?,
                    key_pem: read(&dir.join("node.key"))?,
                },
                read(&dir.join("node.not_after"))?.trim().parse::<u64>().unwrap_or(0),
            )),
            _ => None,
        };
        // A token pinning a CA the stored trust does not hold means the
        // cluster's CA was rotated while this node was away: join again.
        let pins_another_ca = |trust: &Trust| {
            token.is_some_and(|token| {
                trust.certificates().map_or(true, |cas| {
                    !cas.iter().any(|ca| flotilla_security::certificate_digest(ca) == token.ca_digest)
                })
            })
        };
        let (trust, credentials, not_after) = match (stored, token) {
            (Some(stored), _) if stored.2 > now_unix() && !pins_another_ca(&stored.0) => stored,
            (_, Some(token)) => join_through(servers, name, token).await?,
            (_, None) => return Err(NodeTlsError::NeedsToken(name.to_owned())),
        };
        let issued_by = issuer_digest(&trust, &credentials.chain()?.remove(0))?;
        let tls = NodeTls {
            certificate: CurrentCertificate::new(&credentials)?,
            trust: CurrentTrust::new(&trust)?,
            issued_by: RwLock::new(issued_by),
            renewing: tokio::sync::Mutex::new(()),
            name: name.to_owned(),
            dir,
            not_after_unix: AtomicU64::new(not_after),
            lifetime_secs: AtomicU64::new(not_after.saturating_sub(now_unix()).max(60)),
        };
        tls.store(&credentials, not_after)?;
        Ok(Arc::new(tls))
    }

    fn store(&self, credentials: &Credentials, not_after: u64) -> Result<(), NodeTlsError> {
        write_private(&self.dir.join("ca.pem"), &self.trust.trust().pem)?;
        write_private(&self.dir.join("node.key"), &credentials.key_pem)?;
        write_private(&self.dir.join("node.pem"), &credentials.certificate_pem)?;
        write_private(&self.dir.join("node.not_after"), &not_after.to_string())?;
        write_private(&self.dir.join("node.name"), &self.name)
    }

    /// How the agent speaks to the servers.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, SecurityError> {
        following_client_config(
            Arc::clone(&self.trust),
            Some(Arc::clone(&self.certificate)),
            ExpectedPeer::AnyServer,
        )
    }

    /// The agent's own API (logs): this node's certificate.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, SecurityError> {
        server_config(Arc::clone(&self.certificate), Arc::clone(&self.trust))
    }

    /// What this agent trusts and which CA its certificate is from.
    pub fn report(&self) -> TlsReport {
        TlsReport {
            trusted: self.trust.digests(),
            issuer: self.issued_by.read().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Takes the servers' word on whom to trust (stored before it takes
    /// effect) and renews at once if its certificate is not from the CA
    /// that issues now. Idempotent: the advice repeats until it is followed.
    pub async fn follow(&self, advice: &TrustAdvice, client: &Client) -> Result<(), NodeTlsError> {
        let trust = Trust::new(advice.trust_pem.clone());
        let digests: Vec<String> =
            trust.certificates()?.iter().map(|c| flotilla_security::certificate_digest(c)).collect();
        if !flotilla_api::same_cas(&digests, &self.trust.digests()) {
            write_private(&self.dir.join("ca.pem"), &trust.pem)?;
            self.trust.replace(&trust)?;
            tracing::info!(trusted = ?digests, "now trusting the CAs the servers name");
        }
        if self.report().issuer.as_ref() != Some(&advice.issuing) {
            self.renew(client).await?;
        }
        Ok(())
    }

    /// Renews the certificate through the servers whenever it is due.
    pub async fn renew_when_due(self: Arc<Self>, client: Client) {
        loop {
            let lifetime = self.lifetime_secs.load(Ordering::Relaxed);
            let due_at = self.not_after_unix.load(Ordering::Relaxed).saturating_sub(lifetime / 3);
            let wait = due_at.saturating_sub(now_unix()).clamp(1, 3600);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            if now_unix() < due_at {
                continue;
            }
            if let Err(error) = self.renew(&client).await {
                tracing::warn!(%error, "cannot renew this node's certificate yet; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }

    async fn renew(&self, client: &Client) -> Result<(), NodeTlsError> {
        let _renewing = self.renewing.lock().await;
        let (key_pem, public_key) = new_key()?;
        let issued = client
            .renew_node_certificate(&self.name, &public_key)
            .await
            .map_err(|e| NodeTlsError::Join(e.to_string()))?;
        let credentials = Credentials { certificate_pem: issued.certificate_pem, key_pem };
        self.store(&credentials, issued.not_after_unix)?;
        self.certificate.replace(&credentials)?;
        let issuer = issuer_digest(&self.trust.trust(), &credentials.chain()?.remove(0))?;
        *self.issued_by.write().unwrap_or_else(|p| p.into_inner()) = issuer;
        self.lifetime_secs.store(issued.not_after_unix.saturating_sub(now_unix()).max(60), Ordering::Relaxed);
        self.not_after_unix.store(issued.not_after_unix, Ordering::Relaxed);
        tracing::info!(not_after = issued.not_after_unix, "renewed this node's certificate");
        Ok(())
    }
}

/// Joins through each server in turn until one admits this node; a
/// refusal (wrong token, wrong CA) is final and says why.
async fn join_through(
    servers: &[String],
    name: &str,
    token: &JoinToken,
) -> Result<(Trust, Credentials, u64), NodeTlsError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut last = String::from("no server address given");
        for server in servers {
            match join(server, token, Joiner::Node(name.to_owned()), Vec::new()).await {
                Ok(joined) => {
                    tracing::info!(%server, "joined the cluster with an agent token");
                    let credentials = Credentials {
                        certificate_pem: joined.answer.certificate.certificate_pem,
                        key_pem: joined.key_pem,
                    };
                    return Ok((
                        Trust::new(joined.answer.trust_pem),
                        credentials,
                        joined.answer.certificate.not_after_unix,
                    ));
                }
                Err(flotilla_api::ClientError::Api { body, .. }) => {
                    return Err(NodeTlsError::Join(format!("{server} refused: {}", body.message)));
                }
                Err(error) => last = error.to_string(),
            }
        }
        if tokio::time::Instant::now() >= deadline || last.contains("join token pins") {
            return Err(NodeTlsError::Join(last));
        }
        tracing::warn!(reason = %last, "cannot join yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
