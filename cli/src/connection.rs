//! How the CLI reaches the servers: TLS 1.3, trusting the cluster's CA
//! (`FLOTILLA_CACERT`) and sending an API token (`FLOTILLA_TOKEN`), or
//! plain HTTP to a cluster started `--insecure`, whose addresses are
//! written `http://host:port`.

use std::path::Path;

use anyhow::{Context, bail};
use flotilla_api::Client;
use flotilla_security::{ExpectedPeer, Trust, client_config};

/// Whether every address names plain HTTP.
fn plain(addresses: &[String]) -> bool {
    !addresses.is_empty() && addresses.iter().all(|a| a.trim().starts_with("http://"))
}

pub fn client(addresses: &[String], token: Option<&str>, cacert: Option<&Path>) -> anyhow::Result<Client> {
    let client = Client::new(addresses.iter().cloned());
    if plain(addresses) {
        return Ok(client.with_token(token));
    }
    let Some(cacert) = cacert else {
        bail!(
            "FLOTILLA_CACERT (or --cacert) must name the cluster's CA certificate to speak TLS to {}: `flotilla cluster env` prints it for a local cluster (a cluster started --insecure is reached at http://HOST:PORT)",
            addresses.join(",")
        );
    };
    let pem = std::fs::read_to_string(cacert)
        .with_context(|| format!("FLOTILLA_CACERT: cannot read {}", cacert.display()))?;
    let trust = Trust::new(pem);
    trust.certificates().with_context(|| format!("FLOTILLA_CACERT: {}", cacert.display()))?;
    let tls = client_config(&trust, None, ExpectedPeer::AnyServer)?;
    Ok(client.with_tls(tls).context("cannot set up TLS")?.with_token(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_needs_the_ca_and_plain_http_is_asked_for_by_scheme() {
        let error = client(&["127.0.0.1:7001".into()], None, None).expect_err("needs a CA").to_string();
        assert!(error.contains("FLOTILLA_CACERT"), "{error}");
        assert!(client(&["http://127.0.0.1:7001".into()], None, None).is_ok());
        let missing = client(&["127.0.0.1:7001".into()], None, Some(Path::new("/nonexistent/ca.pem")))
            .expect_err("unreadable")
            .to_string();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
    }
}
