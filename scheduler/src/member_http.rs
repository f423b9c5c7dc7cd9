//! How a server speaks HTTP to the other servers (Raft traffic, requests
//! only the leader can answer) and to agents (logs): TLS presenting its
//! own certificate, or plain HTTP under `--insecure`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MemberHttp {
    pub client: reqwest::Client,
    scheme: &'static str,
}

impl MemberHttp {
    /// For Raft traffic: a peer that does not connect within 500 ms is
    /// reported unreachable to Raft rather than waited for.
    pub fn for_raft(tls: Option<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(2)
            .tcp_nodelay(true);
        Self::new(builder, tls)
    }

    /// For reading logs from agents: a followed log streams for as long
    /// as the user watches, so there is no overall timeout.
    pub fn for_agents(tls: Option<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        Self::new(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)), tls)
    }

    /// For requests passed on to the leader.
    pub fn for_requests(tls: Option<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        Self::new(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)), tls)
    }

    fn new(
        builder: reqwest::ClientBuilder,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, reqwest::Error> {
        let builder = builder.no_proxy();
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Plain HTTP too gets a configuration (one that trusts nothing), so
        // reqwest never looks for the system's CAs: a container has none.
        let builder = match tls.or_else(|| flotilla_security::plain_client_config().ok()) {
            Some(config) => builder.tls_backend_preconfigured(config),
            None => builder,
        };
        Ok(MemberHttp { client: builder.build()?, scheme })
    }

    pub fn url(&self, address: &str, path: &str) -> String {
        format!("{}://{address}{path}", self.scheme)
    }
}
