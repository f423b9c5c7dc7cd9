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
        Self::new(builder, tls, false)
    }

    /// For reading logs from agents: a followed log streams for as long
    /// as the user watches, so there is no overall timeout.
    pub fn for_agents(tls: Option<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        Self::new(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)), tls, false)
    }

    /// For requests passed on to the leader (agents' heartbeats among
    /// them): over HTTP/2, so that a follower serving thousands of agents
    /// holds one connection to the leader, not one per heartbeat in flight.
    pub fn for_requests(tls: Option<rustls::ClientConfig>) -> Result<Self, reqwest::Error> {
        Self::new(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)), tls, true)
    }

    fn new(
        builder: reqwest::ClientBuilder,
        tls: Option<rustls::ClientConfig>,
        http2: bool,
    ) -> Result<Self, reqwest::Error> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let builder = if http2 {
            flotilla_api::client::speaking_http2(builder, tls)
        } else {
            // Plain HTTP too gets a configuration (one that trusts nothing),
            // so reqwest never looks for the system's CAs: a container has none.
            match tls.or_else(|| flotilla_security::plain_client_config().ok()) {
                Some(config) => builder.no_proxy().tls_backend_preconfigured(config),
                None => builder.no_proxy(),
            }
        };
        Ok(MemberHttp { client: builder.build()?, scheme })
    }

    pub fn url(&self, address: &str, path: &str) -> String {
        format!("{}://{address}{path}", self.scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version each request arrived in, as the server saw it.
    async fn serve_versions() -> String {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|request: axum::extract::Request| async move {
                format!("{:?}", request.version())
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    #[tokio::test]
    async fn requests_for_the_leader_go_over_http2_and_raft_stays_on_http1() {
        let address = serve_versions().await;
        let requests = MemberHttp::for_requests(None).expect("client");
        let answers = futures_util::future::join_all(
            (0..20).map(|_| requests.client.get(requests.url(&address, "/")).send()),
        )
        .await;
        for answer in answers {
            let answer = answer.expect("answered");
            assert_eq!(answer.version(), reqwest::Version::HTTP_2);
            assert_eq!(answer.text().await.expect("body"), "HTTP/2.0");
        }
        let raft = MemberHttp::for_raft(None).expect("client");
        let answer = raft.client.get(raft.url(&address, "/")).send().await.expect("answered");
        assert_eq!(answer.version(), reqwest::Version::HTTP_11, "a stalled request drops its connection");
    }
}
