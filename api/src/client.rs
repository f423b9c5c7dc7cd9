//! Typed HTTP client for the public API.
//!
//! It is given every server's address and tries them in turn: a server that
//! does not answer, or answers that there is no leader yet (an election is
//! under way), is skipped, and the whole list is retried for a short while
//! before the client gives up with an error that names every address tried.
//!
//! A client sticks to the server that answered last, and a new client
//! starts at a random one: as a Nomad client does with its server list, so
//! that ten thousand agents spread over the servers and each keeps one
//! connection, instead of all of them crowding the first address and
//! holding a second connection to wherever they were last sent past it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::allocation::{
    Allocation, AllocationReport, AllocationUpdate, Heartbeat, HeartbeatAnswer, NodeAllocations,
};
use crate::model::{
    AddMemberRequest, ApiErrorBody, DeployResult, EventPage, Member, ScaleRequest, ServerStatus, Utilisation,
    Workload,
};
use crate::node::{Node, NodeRegistered, NodeRegistration, NodeStatus, NodeStatusRequest};
use crate::spec::WorkloadSpec;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no flotilla server answered (tried {tried}): {last}; check that a server runs there and FLOTILLA_ADDR or --addr is right"
    )]
    Unreachable { tried: String, last: String },
    #[error("{}", .body.message)]
    Api { status: u16, body: ApiErrorBody },
    #[error("unexpected answer from {address}: {reason}")]
    Protocol { address: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// An event stream broke off or sent a message that cannot be read.
    #[error("event stream: {0}")]
    Stream(String),
}

impl ClientError {
    /// The API's error code (`not_found`, `invalid_spec`, ...), if the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    /// Every server's `host:port`, tried in order, starting from `first`.
    addresses: Vec<String>,
    /// The index in `addresses` of the server tried first: the last that
    /// answered. Shared by this client's clones, so that an agent's
    /// long-poll, heartbeats and reports move together to one server.
    first: Arc<AtomicUsize>,
    http: reqwest::Client,
    /// How long to keep trying while no server can serve the request
    /// (unreachable, or no leader during an election).
    retry_for: Duration,
    /// The idempotency key every write of this client sends, when the
    /// caller chose one; otherwise each write gets a fresh key.
    idempotency_key: Option<String>,
    /// `https` once the client speaks TLS; `http` only towards servers
    /// started `--insecure`.
    scheme: &'static str,
    /// The API token sent as `Authorization: Bearer`, if any.
    token: Option<Arc<str>>,
    /// How long one server may take to answer before the next is tried;
    /// `None`: the HTTP client's own (30 s).
    request_timeout: Option<Duration>,
    /// The runtime that sends requests and reads answers, and so drives
    /// the connections they open; `None`: the caller's. A busy runtime
    /// reads its sockets late, and an answer that waits there unread
    /// times out like one the server never sent.
    io: Option<tokio::runtime::Handle>,
}

/// How one request and its answer failed.
enum Exchange {
    /// Not sent, or no answer came (in time).
    Unsent(reqwest::Error),
    /// An answer began but could not be read.
    Unread(String),
}

/// A task on another runtime that ends when the one waiting for it stops
/// waiting (a request given up on is not left to run to its timeout).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The header under which a write carries its idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// A fresh key for one write: 128 random bits, hex. `RandomState` is
/// seeded from the OS once per thread and stepped per instance.
pub fn new_idempotency_key() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// 64 random bits, different in each call, process and instant.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// How often an idle HTTP/2 connection is pinged, and how long an answer
/// may take before the connection is dropped: one connection carries all of
/// an agent's calls, so a connection that went silent (a partition) must be
/// noticed and replaced, not waited on until TCP gives up.
const HTTP2_PING: Duration = Duration::from_secs(5);

fn http_client(tls: Option<rustls::ClientConfig>) -> Result<reqwest::Client, reqwest::Error> {
    flotilla_security::install_crypto_provider();
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(30));
    speaking_http2(builder, tls).build()
}

/// `builder` speaking HTTP/2 to flotilla servers (TLS with `tls`: by ALPN;
/// plain: from the first byte, which servers detect), so that all of a
/// client's calls share one connection: an agent's long-poll, heartbeats
/// and reports, or a server's requests passed on to the leader, instead of
/// a connection per call in flight. That is what lets ten thousand agents
/// fit under a server's file descriptor limit.
pub fn speaking_http2(
    builder: reqwest::ClientBuilder,
    tls: Option<rustls::ClientConfig>,
) -> reqwest::ClientBuilder {
    let mut builder = builder
        .http2_keep_alive_interval(HTTP2_PING)
        .http2_keep_alive_timeout(HTTP2_PING)
        .http2_keep_alive_while_idle(true)
        .no_proxy();
    let config = match tls {
        Some(mut config) => {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(config)
        }
        None => {
            builder = builder.http2_prior_knowledge();
            // Plain clients get a configuration too, which trusts nothing:
            // left to itself reqwest looks for the system's CAs, and a
            // scratch container has none.
            flotilla_security::plain_client_config().ok()
        }
    };
    match config {
        Some(config) => builder.tls_backend_preconfigured(config),
        None => builder,
    }
}

impl Client {
    /// A client speaking plain HTTP: only servers started `--insecure` answer it.
    pub fn new(addresses: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let addresses: Vec<String> = addresses
            .into_iter()
            .map(|a| {
                let a = a.into();
                let a = a.trim();
                let a = a.strip_prefix("https://").or_else(|| a.strip_prefix("http://")).unwrap_or(a);
                a.trim_end_matches('/').to_owned()
            })
            .filter(|a| !a.is_empty())
            .collect();
        let first = random_u64() as usize % addresses.len().max(1);
        Client {
            addresses,
            first: Arc::new(AtomicUsize::new(first)),
            http: http_client(None).unwrap_or_default(),
            retry_for: Duration::from_secs(5),
            idempotency_key: None,
            scheme: "http",
            token: None,
            request_timeout: None,
            io: None,
        }
    }

    /// Speaks TLS with `config` (from `flotilla_security::client_config`).
    pub fn with_tls(mut self, config: rustls::ClientConfig) -> Result<Self, reqwest::Error> {
        self.http = http_client(Some(config))?;
        self.scheme = "https";
        Ok(self)
    }

    /// Sends `token` with every request.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(Arc::from);
        self
    }

    /// The URL of `path` on `address`, in this client's scheme.
    pub fn url(&self, address: &str, path: &str) -> String {
        format!("{}://{address}{path}", self.scheme)
    }

    /// The underlying HTTP client (its TLS), for streams the typed
    /// methods do not cover; send `authorize` on what it builds.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Adds this client's token to a request built on `http()`.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sets how long requests keep retrying while no server can serve them.
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Gives the server `timeout` to answer; one that does not ends the
    /// call, and the next call starts at the next server. For a call made
    /// again on a clock (an agent's heartbeat), where the next call is the
    /// retry: waiting out each server in turn within one call would outlast
    /// the beats after it, and under load it left a connection to every
    /// server behind each agent (ten thousand agents ran out of descriptors).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Sends requests and reads their answers on `io`, whatever runtime
    /// calls: a process of thousands of simulated nodes keeps their
    /// exchanges with the servers (heartbeats among them) on a runtime
    /// that their supervisors' work cannot hold up.
    pub fn driven_on(mut self, io: tokio::runtime::Handle) -> Self {
        self.io = Some(io);
        self
    }

    /// A client that talks to one server only, with no failover.
    pub fn for_server(&self, address: &str) -> Client {
        Client {
            addresses: vec![address.to_owned()],
            first: Arc::new(AtomicUsize::new(0)),
            http: self.http.clone(),
            retry_for: Duration::ZERO,
            idempotency_key: self.idempotency_key.clone(),
            scheme: self.scheme,
            token: self.token.clone(),
            request_timeout: self.request_timeout,
            io: self.io.clone(),
        }
    }

    /// A client whose writes all carry `key`: sending the same write again
    /// through it is answered with the first outcome, never applied twice.
    pub fn with_idempotency_key(&self, key: &str) -> Client {
        Client { idempotency_key: Some(key.to_owned()), ..self.clone() }
    }

    /// A write: sent with an idempotency key (the caller's, or a fresh one
    /// kept for every retry), so that retrying one whose outcome is unknown
    /// (504) or whose answer was lost can never apply it twice.
    /// The server to try first, and the servers with their indexes in the
    /// order to try them: that one first.
    fn in_turn(&self) -> (usize, impl Iterator<Item = (usize, &String)>) {
        let first = self.first.load(Ordering::Relaxed);
        let count = self.addresses.len();
        let turns = (0..count).map(move |turn| (first + turn) % count);
        (first, turns.map(|index| (index, &self.addresses[index])))
    }

    /// Makes the server at `index`, which answered a request that started
    /// at `first`, the one to try first, unless another request moved on
    /// meanwhile: a long-poll that a slow server answers at last must not
    /// take the client back to it.
    fn answered_by(&self, first: usize, index: usize) {
        let _ = self.first.compare_exchange(first, index, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Makes the server after the one at `index`, which did not answer in
    /// time, the one to try first, unless another call moved on meanwhile.
    fn move_past(&self, index: usize) {
        let next = (index + 1) % self.addresses.len().max(1);
        let _ = self.first.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let key = self.idempotency_key.clone().unwrap_or_else(new_idempotency_key);
        self.send(method, path, json_payload(body).map_err(encoding_error)?, Some(&key)).await
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.send(method, path, json_payload(body).map_err(encoding_error)?, None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Payload>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        loop {
            let mut last_error = String::from("no address given");
            let (first, turns) = self.in_turn();
            for (index, address) in turns {
                let mut request = self.authorize(self.http.request(method.clone(), self.url(address, path)));
                if let Some(payload) = &body {
                    request =
                        request.header("content-type", payload.content_type).body(payload.bytes.clone());
                }
                if let Some(key) = idempotency_key {
                    request = request.header(IDEMPOTENCY_HEADER, key);
                }
                if let Some(timeout) = self.request_timeout {
                    request = request.timeout(timeout);
                }
                let (status, bytes) = match self.exchange(request).await {
                    Ok(answer) => answer,
                    Err(Exchange::Unsent(error)) => {
                        last_error = format!("{address}: {}", describe_send_error(&error));
                        if error.is_timeout() && self.request_timeout.is_some() {
                            self.move_past(index);
                            return Err(ClientError::Unreachable {
                                tried: address.clone(),
                                last: last_error,
                            });
                        }
                        continue;
                    }
                    Err(Exchange::Unread(reason)) => {
                        return Err(ClientError::Protocol { address: address.clone(), reason });
                    }
                };
                if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::GATEWAY_TIMEOUT {
                    self.answered_by(first, index);
                }
                if status.is_success() {
                    return serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                        address: address.clone(),
                        reason: e.to_string(),
                    });
                }
                let body: ApiErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiErrorBody {
                    code: "http".into(),
                    message: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
                    spec: None,
                });
                // 503: not done, try elsewhere. 504: done or not, nobody
                // knows; only a write with its key may be sent again.
                if status == StatusCode::SERVICE_UNAVAILABLE
                    || (status == StatusCode::GATEWAY_TIMEOUT && idempotency_key.is_some())
                {
                    last_error = format!("{address}: {}", body.message);
                    continue;
                }
                return Err(ClientError::Api { status: status.as_u16(), body });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Unreachable { tried: self.addresses.join(", "), last: last_error });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `request` and reads its whole answer, on the `io` runtime
    /// when there is one. A caller that gives up aborts the exchange.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes), Exchange> {
        let exchange = async move {
            let response = request.send().await.map_err(Exchange::Unsent)?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|e| Exchange::Unread(e.to_string()))?;
            Ok((status, bytes))
        };
        let Some(io) = &self.io else { return exchange.await };
        let mut task = AbortOnDrop(io.spawn(exchange));
        match (&mut task.0).await {
            Ok(answer) => answer,
            Err(error) => Err(Exchange::Unread(format!("the exchange ended early: {error}"))),
        }
    }

    pub async fn deploy(
        &self,
        spec: &WorkloadSpec,
        expected_version: Option<u64>,
    ) -> Result<DeployResult, ClientError> {
        let path = match expected_version {
            Some(v) => format!("/v1/workloads?version={v}"),
            None => "/v1/workloads".to_owned(),
        };
        self.write(Method::POST, &path, Some(spec)).await
    }

    pub async fn get(&self, name: &str) -> Result<Workload, ClientError> {
        self.request::<(), _>(Method::GET, &format!("/v1/workloads/{name}"), None).await
    }

    /// Lists workloads; `stale` reads the answering server's state without
    /// confirming with the leader that it is current.
    pub async fn list(&self, stale: bool) -> Result<Vec<Workload>, ClientError> {
        let path = if stale { "/v1/workloads?stale=true" } else { "/v1/workloads" };
        self.request::<(), _>(Method::GET, path, None).await
    }

    pub async fn scale(&self, name: &str, replicas: u32) -> Result<Workload, ClientError> {
        self.write(Method::POST, &format!("/v1/workloads/{name}/scale"), Some(&ScaleRequest { replicas }))
            .await
    }

    /// Every service, once the state is past `index` (or `wait` passes).
    pub async fn services(
        &self,
        index: u64,
        wait: std::time::Duration,
    ) -> Result<crate::ServicePage, ClientError> {
        let path = format!("/v1/services?index={index}&wait_ms={}", wait.as_millis());
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// The service ports this node's mesh cannot serve (empty: it serves all).
    pub async fn report_unserved(
        &self,
        node: &str,
        ports: &[crate::UnservedPort],
    ) -> Result<(), ClientError> {
        self.write(Method::PUT, &format!("/v1/nodes/{node}/unserved"), Some(&ports)).await
    }

    /// One service: its ports and the replicas behind them.
    pub async fn service(&self, name: &str) -> Result<crate::Service, ClientError> {
        self.request::<(), _>(Method::GET, &format!("/v1/services/{name}"), None).await
    }

    /// The workload's deployments (its version history), newest first.
    pub async fn deployments(&self, name: &str) -> Result<Vec<crate::Deployment>, ClientError> {
        self.request::<(), _>(Method::GET, &format!("/v1/workloads/{name}/deployments"), None).await
    }

    /// `rollout promote|pause|resume`: the deployment as it stands after.
    pub async fn rollout(
        &self,
        name: &str,
        action: crate::RolloutAction,
    ) -> Result<crate::Deployment, ClientError> {
        self.write::<(), _>(Method::POST, &format!("/v1/workloads/{name}/rollout/{action}"), None).await
    }

    /// `rollout undo`: deploys an earlier version's spec as a new version.
    pub async fn undo(&self, name: &str, to_version: Option<u64>) -> Result<Workload, ClientError> {
        let body = crate::UndoRequest { to_version };
        self.write(Method::POST, &format!("/v1/workloads/{name}/rollout/undo"), Some(&body)).await
    }

    pub async fn delete(&self, name: &str) -> Result<Workload, ClientError> {
        self.write::<(), _>(Method::DELETE, &format!("/v1/workloads/{name}"), None).await
    }

    /// Deletes the workload and its replica slots' volumes (`delete --volumes`).
    pub async fn delete_with_volumes(&self, name: &str) -> Result<Workload, ClientError> {
        self.write::<(), _>(Method::DELETE, &format!("/v1/workloads/{name}?volumes=true"), None).await
    }

    /// The replica slots' volumes, of one workload or of all.
    pub async fn volumes(&self, workload: Option<&str>) -> Result<Vec<crate::SlotVolume>, ClientError> {
        let path = match workload {
            Some(workload) => format!("/v1/volumes?workload={workload}"),
            None => "/v1/volumes".to_owned(),
        };
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// Removes the volumes a workload deleted without `--volumes` kept;
    /// answers how many are being removed.
    pub async fn remove_volumes(&self, workload: &str) -> Result<u32, ClientError> {
        self.write::<(), _>(Method::DELETE, &format!("/v1/volumes/{workload}"), None).await
    }

    /// The answering server's own view of the cluster.
    pub async fn server_status(&self) -> Result<ServerStatus, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/cluster/status", None).await
    }

    pub async fn add_member(&self, id: u64, address: &str) -> Result<Member, ClientError> {
        let body = AddMemberRequest { id, address: address.to_owned() };
        self.write(Method::POST, "/v1/cluster/members", Some(&body)).await
    }

    /// A new certificate for this agent's node, over the public half of a
    /// key it just made; the request is authenticated by its current one.
    pub async fn renew_node_certificate(
        &self,
        node: &str,
        public_key: &flotilla_security::PublicKey,
    ) -> Result<flotilla_security::IssuedCertificate, ClientError> {
        let body = crate::RenewRequest { public_key: public_key.clone() };
        self.request(Method::POST, &format!("/v1/nodes/{node}/certificate"), Some(&body)).await
    }

    /// Stores `value` as secret `name` (a new version if it exists).
    pub async fn put_secret(&self, name: &str, value: &[u8]) -> Result<crate::SecretInfo, ClientError> {
        let payload =
            Payload { bytes: bytes::Bytes::copy_from_slice(value), content_type: "application/octet-stream" };
        let key = self.idempotency_key.clone().unwrap_or_else(new_idempotency_key);
        self.send(Method::PUT, &format!("/v1/secrets/{name}"), Some(payload), Some(&key)).await
    }

    /// Every secret's name, version and size (never a value).
    pub async fn secrets(&self) -> Result<Vec<crate::SecretInfo>, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/secrets", None).await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<crate::SecretInfo, ClientError> {
        self.write::<(), _>(Method::DELETE, &format!("/v1/secrets/{name}"), None).await
    }

    /// What the cluster's CA trusts and issues from, and any rotation's progress.
    pub async fn ca_status(&self) -> Result<crate::CaStatus, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/ca", None).await
    }

    /// Starts replacing the cluster CA (`flotilla ca rotate`).
    pub async fn rotate_ca(&self, from: &str) -> Result<crate::CaStatus, ClientError> {
        let request = crate::RotateCaRequest { from: from.to_owned() };
        self.write(Method::POST, "/v1/ca/rotate", Some(&request)).await
    }

    /// `acl bootstrap`: the management token, once in a cluster's life.
    pub async fn bootstrap_acl(&self) -> Result<crate::BootstrapAnswer, ClientError> {
        self.request::<(), _>(Method::POST, "/v1/acl/bootstrap", None).await
    }

    pub async fn create_token(
        &self,
        request: &crate::CreateTokenRequest,
    ) -> Result<crate::CreatedToken, ClientError> {
        self.request(Method::POST, "/v1/tokens", Some(request)).await
    }

    pub async fn tokens(&self) -> Result<Vec<crate::TokenInfo>, ClientError> {
        self.request::<(), _>(Method::GET, "/v1/tokens", None).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<crate::TokenInfo, ClientError> {
        self.request::<(), _>(Method::DELETE, &format!("/v1/tokens/{id}"), None).await
    }

    pub async fn remove_member(&self, id: u64) -> Result<Member, ClientError> {
        self.write::<(), _>(Method::DELETE, &format!("/v1/cluster/members/{id}"), None).await
    }
}

impl Client {
    /// An allocation's output, through a server (which reads it from the
    /// agent). `follow` keeps the stream open as the allocation writes, so
    /// it has no overall timeout.
    pub async fn logs(&self, allocation: u64, follow: bool) -> Result<reqwest::Response, ClientError> {
        self.open_stream(&format!("/v1/allocations/{allocation}/logs?follow={follow}")).await
    }

    /// The cluster's events and state changes after `index`, pushed as they
    /// happen (Server-Sent Events); see `EventStream`.
    pub async fn event_stream(&self, index: u64) -> Result<crate::EventStream, ClientError> {
        let response = self.open_stream(&format!("/v1/events/stream?index={index}")).await?;
        Ok(crate::EventStream::new(response))
    }

    /// A GET whose answer streams for as long as the caller reads it, so
    /// it has no overall timeout; the first server that answers serves it.
    async fn open_stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let mut last = String::from("no address given");
        let (first, turns) = self.in_turn();
        for (index, address) in turns {
            let request = self.authorize(self.http.get(self.url(address, path)));
            let response = match request.timeout(Duration::from_secs(365 * 24 * 3600)).send().await {
                Ok(response) => response,
                Err(error) => {
                    last = format!("{address}: {}", describe_send_error(&error));
                    continue;
                }
            };
            let status = response.status();
            if status.is_success() {
                self.answered_by(first, index);
                return Ok(response);
            }
            let bytes = response.bytes().await.unwrap_or_default();
            let body: ApiErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiErrorBody {
                code: "http".into(),
                message: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
                spec: None,
            });
            if status == StatusCode::SERVICE_UNAVAILABLE {
                last = format!("{address}: {}", body.message);
                continue;
            }
            return Err(ClientError::Api { status: status.as_u16(), body });
        }
        Err(ClientError::Unreachable { tried: self.addresses.join(", "), last })
    }

    pub async fn register_node(
        &self,
        registration: &NodeRegistration,
    ) -> Result<NodeRegistered, ClientError> {
        self.write(Method::POST, "/v1/nodes", Some(registration)).await
    }

    pub async fn nodes(&self, stale: bool) -> Result<Vec<Node>, ClientError> {
        let path = if stale { "/v1/nodes?stale=true" } else { "/v1/nodes" };
        self.request::<(), _>(Method::GET, path, None).await
    }

    /// Drains (`Draining`) or returns to service (`Ready`) a node.
    pub async fn set_node_status(&self, node: &str, status: NodeStatus) -> Result<Node, ClientError> {
        let body = NodeStatusRequest { status };
        self.write(Method::PUT, &format!("/v1/nodes/{node}/status"), Some(&body)).await
    }

    /// Reports state changes of a node's allocations, as its agent does;
    /// `seq` as in `AllocationReport`.
    pub async fn report_allocations(
        &self,
        node: &str,
        seq: u64,
        updates: &[AllocationUpdate],
    ) -> Result<u32, ClientError> {
        let report = AllocationReport { seq, updates: updates.to_vec() };
        self.write(Method::POST, &format!("/v1/nodes/{node}/allocations"), Some(&report)).await
    }

    /// Events after `index`, waiting up to `wait` for one to happen.
    pub async fn events(&self, index: u64, wait: Duration) -> Result<EventPage, ClientError> {
        let path = format!("/v1/events?index={index}&wait_ms={}", wait.as_millis());
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// A workload's CPU and memory use against its requests (the leader's samples).
    pub async fn utilisation(&self, name: &str) -> Result<Utilisation, ClientError> {
        self.request::<(), _>(Method::GET, &format!("/v1/workloads/{name}/utilisation"), None).await
    }

    /// Tells the leader the node lives; 404 means the servers do not know it (register again).
    pub async fn heartbeat(&self, node: &str, heartbeat: &Heartbeat) -> Result<HeartbeatAnswer, ClientError> {
        self.request(Method::POST, &format!("/v1/nodes/{node}/heartbeat"), Some(heartbeat)).await
    }

    /// Records what a node's agent did on its own, for `flotilla events`.
    pub async fn record_node_events(&self, node: &str, messages: &[String]) -> Result<(), ClientError> {
        self.write(Method::POST, &format!("/v1/nodes/{node}/events"), Some(&messages)).await
    }

    /// Tells the servers which of the slot volumes it was asked to remove
    /// a node's agent removed.
    pub async fn volumes_removed(&self, node: &str, volumes: Vec<String>) -> Result<(), ClientError> {
        let body = crate::VolumesRemoved { volumes };
        self.write(Method::POST, &format!("/v1/nodes/{node}/volumes/removed"), Some(&body)).await
    }

    /// A node's allocations once the state index passes `index`, waiting up to `wait`.
    /// A node's allocations once the state passes `index` (or `wait`
    /// passes); with `changes_only`, only those changed after `index`, with
    /// the ids of all.
    pub async fn node_allocations(
        &self,
        node: &str,
        index: u64,
        wait: Duration,
        changes_only: bool,
    ) -> Result<NodeAllocations, ClientError> {
        let path = format!(
            "/v1/nodes/{node}/allocations?index={index}&wait_ms={}&changes_only={changes_only}",
            wait.as_millis()
        );
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// Allocations, optionally only those of one workload or on one node.
    pub async fn allocations(
        &self,
        workload: Option<&str>,
        node: Option<&str>,
    ) -> Result<Vec<Allocation>, ClientError> {
        let mut path = String::from("/v1/allocations?stale=false");
        if let Some(workload) = workload {
            path.push_str(&format!("&workload={workload}"));
        }
        if let Some(node) = node {
            path.push_str(&format!("&node={node}"));
        }
        self.request::<(), _>(Method::GET, &path, None).await
    }
}

/// A request's body, encoded once and sent as it is to each server tried.
struct Payload {
    bytes: bytes::Bytes,
    content_type: &'static str,
}

fn json_payload<B: Serialize>(body: Option<&B>) -> Result<Option<Payload>, serde_json::Error> {
    let Some(body) = body else { return Ok(None) };
    Ok(Some(Payload { bytes: serde_json::to_vec(body)?.into(), content_type: "application/json" }))
}

fn encoding_error(error: serde_json::Error) -> ClientError {
    ClientError::Protocol { address: String::new(), reason: format!("cannot encode the request: {error}") }
}

/// Why a request got no answer, with the innermost cause (a refused
/// connection, or the TLS handshake's reason: an unknown CA, a certificate
/// for another identity) rather than reqwest's outermost wrapper.
pub(crate) fn describe_send_error(error: &reqwest::Error) -> String {
    if error.is_connect() {
        let mut cause: &dyn std::error::Error = error;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        format!("cannot connect: {cause}")
    } else if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that takes connections and never answers (paused, or cut
    /// off behind a proxy): what a heartbeat must not wait on twice.
    async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (address, task)
    }

    /// An address where nothing listens: a port just freed.
    fn refusing_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    }

    /// A client as an agent's heartbeat uses it, trying `addresses` in order.
    fn beating_client(addresses: [&str; 2]) -> Client {
        let client = Client::new(addresses)
            .with_retry_for(Duration::from_secs(30))
            .with_request_timeout(Duration::from_millis(300));
        client.first.store(0, Ordering::Relaxed);
        client
    }

    /// Sends a heartbeat nobody answers; the server the call ended at, and why.
    async fn where_a_beat_ended(client: &Client) -> (String, String) {
        match client.heartbeat("n1", &Heartbeat::default()).await {
            Err(ClientError::Unreachable { tried, last }) => (tried, last),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_in_time_ends_the_call_and_the_next_call_starts_past_it() {
        let (silent, server) = silent_server().await;
        let client = beating_client([&silent, &refusing_address()]);
        let (tried, why) = where_a_beat_ended(&client).await;
        assert_eq!(tried, silent, "the call ended at the silent server: {why}");
        assert!(why.contains("timed out"), "{why}");
        assert_eq!(client.first.load(Ordering::Relaxed), 1, "the next call starts at the next server");
        server.abort();
    }

    /// A runtime of its own, as a fleet's network runtime is.
    fn io_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
    }

    /// A server on `io` that answers every heartbeat after a tenth of a
    /// second: time for its caller to have sent it and stalled.
    async fn answering_server(io: &tokio::runtime::Handle) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("address").to_string();
        let answer = axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            axum::Json(HeartbeatAnswer {
                status: NodeStatus::Ready,
                stop: vec![7],
                trust: None,
                next_in_ms: None,
            })
        });
        let app = axum::Router::new().route("/v1/nodes/{name}/heartbeat", answer);
        io.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
        address
    }

    /// The caller's runtime stalls (busy elsewhere, as a fleet's starting
    /// a million replicas is) for longer than the heartbeat may take; the
    /// server answered in time, and the answer, read on the network
    /// runtime meanwhile, is the call's result rather than a timeout (as
    /// it is for a client on the caller's runtime, which reads it late).
    #[tokio::test(flavor = "current_thread")]
    async fn a_client_driven_on_another_runtime_reads_its_answer_while_the_callers_runtime_stalls() {
        let io = io_runtime();
        let address = answering_server(io.handle()).await;
        let client = Client::new([address])
            .with_request_timeout(Duration::from_millis(300))
            .driven_on(io.handle().clone());
        let call = tokio::spawn(async move { client.heartbeat("n1", &Heartbeat::default()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::thread::sleep(Duration::from_millis(1500));
        let answer = call.await.expect("the call's task");
        io.shutdown_background();
        assert_eq!(answer.expect("answered, not timed out").stop, [7]);
    }

    #[tokio::test]
    async fn a_refused_connection_goes_on_to_the_next_server_within_the_call() {
        let (silent, server) = silent_server().await;
        let client = beating_client([&refusing_address(), &silent]);
        let (tried, why) = where_a_beat_ended(&client).await;
        assert_eq!(tried, silent, "{why}");
        assert_eq!(client.first.load(Ordering::Relaxed), 0, "the next call starts where this one did");
        server.abort();
    }
}
