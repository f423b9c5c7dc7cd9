//! A secure local cluster's credentials, made by `cluster up` and the
//! test harness alike: the CA its founders share (in `DIR/ca/`), the
//! management token from `acl bootstrap`, and the agent join token its
//! agents start with. `cluster env` exports the CA and the token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_api::{Client, CreateTokenRequest};
use flotilla_scheduler::server_tls::write_private;
use flotilla_security::{ClusterCa, ClusterKey, ExpectedPeer, TokenRole, Trust, client_config};

/// Writes `ca` into `dir` as `ca.pem` and `ca.key`, with a new cluster key
/// (`cluster.key`, what secrets are sealed with); keys readable by their
/// owner alone. `trust.pem` is what clients trust (`FLOTILLA_CACERT`):
/// the same certificate for now, kept apart from the founding CA's files
/// because `ca rotate` rewrites it.
pub fn write_ca(dir: &Path, ca: &ClusterCa) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_private(&dir.join("cluster.key"), &ClusterKey::generate()?.to_hex())?;
    write_private(&dir.join("ca.key"), &ca.key_pem())?;
    write_private(&dir.join("trust.pem"), ca.certificate_pem())?;
    write_private(&dir.join("ca.pem"), ca.certificate_pem())?;
    Ok(())
}

/// Makes a new CA in `dir/ca` and returns the directory the founders get
/// as `--ca-dir`.
pub fn create_ca(dir: &Path) -> anyhow::Result<PathBuf> {
    let ca_dir = dir.join("ca");
    write_ca(&ca_dir, &ClusterCa::create()?)?;
    Ok(ca_dir)
}

/// A client for `addresses` that trusts the CAs in `ca_dir/trust.pem` and
/// sends `token`.
pub fn secure_client(addresses: &[String], ca_dir: &Path, token: Option<&str>) -> anyhow::Result<Client> {
    let pem = std::fs::read_to_string(ca_dir.join("trust.pem")).context("cannot read the cluster's CA")?;
    let tls = client_config(&Trust::new(pem), None, ExpectedPeer::AnyServer)?;
    Ok(Client::new(addresses.iter().cloned()).with_tls(tls)?.with_token(token))
}

/// The tokens a new secure cluster starts with.
#[derive(Debug)]
pub struct StartingTokens {
    /// The management token (role admin).
    pub admin: String,
    /// What the cluster's agents join with.
    pub agent_join: String,
}

/// Bootstraps the ACL of the cluster at `addresses` once it has a leader,
/// and makes an agent join token with the management token.
pub async fn bootstrap(
    addresses: &[String],
    ca_dir: &Path,
    within: Duration,
) -> anyhow::Result<StartingTokens> {
    let deadline = tokio::time::Instant::now() + within;
    // A server that makes its own CA (`flotilla dev`) writes it as it starts.
    while !ca_dir.join("ca.pem").exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let anonymous = secure_client(addresses, ca_dir, None)?.with_retry_for(Duration::from_secs(2));
    let answer = loop {
        match anonymous.bootstrap_acl().await {
            Ok(answer) => break answer,
            Err(error) if tokio::time::Instant::now() < deadline && error.code().is_none() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => bail!("cannot bootstrap the cluster's ACL: {error}"),
        }
    };
    let admin = answer.token.token;
    let client = secure_client(addresses, ca_dir, Some(&admin))?.with_retry_for(within);
    let request = CreateTokenRequest {
        role: TokenRole::Agent,
        description: "the local cluster's agents".into(),
        ttl_secs: None,
    };
    let agent_join = client.create_token(&request).await.context("cannot make the agents' join token")?.token;
    Ok(StartingTokens { admin, agent_join })
}
