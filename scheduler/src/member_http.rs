//! How a server speaks HTTP to the other servers (Raft traffic, requests
//! only the leader can answer): TLS presenting its own certificate and
//! expecting a server of the cluster, or plain HTTP under `--insecure`.

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

    /// For requests passed on to the leader.
    pub fn for_requests(tls: Option<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        Self::new(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)), tls)
    }

    fn new(
        builder: reqwest::ClientBuilder,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, reqwest::Error> {
        flotilla_security::install_crypto_provider();
        let builder = builder.no_proxy();
        Ok(match tls {
            Some(config) => {
                MemberHttp { client: builder.tls_backend_preconfigured(config).build()?, scheme: "https" }
            }
            None => MemberHttp { client: builder.build()?, scheme: "http" },
        })
    }

    pub fn url(&self, address: &str, path: &str) -> String {
        format!("{}://{address}{path}", self.scheme)
    }
}
