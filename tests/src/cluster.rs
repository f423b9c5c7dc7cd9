//! A cluster of real server processes on 127.0.0.1.

use std::time::Duration;

use flotilla_api::{Client, NodeStatus, RaftRole, ServerStatus};
use flotilla_cli::cluster_credentials::{StartingTokens, bootstrap, create_ca, secure_client};
use flotilla_cli::process_layout::{ServerCa, peers_flag};
use flotilla_security::{
    CERTIFICATE_LIFETIME, ClusterCa, Credentials, CurrentCertificate, ExpectedPeer, Identity, Trust,
    client_config,
};
use tempfile::TempDir;

use crate::agent_process::AgentProcess;
use crate::binary::free_port;
use crate::server_process::ServerProcess;
use crate::wait::wait_until;

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub servers: u64,
    /// Passed as `--snapshot-every`; small values exercise snapshots.
    pub snapshot_every: u64,
    /// More flags for every server, such as `--node-ttl-ms`.
    pub server_args: Vec<String>,
    /// Plain HTTP, no certificates or tokens (`--insecure` everywhere).
    pub insecure: bool,
    /// Each server in a network namespace of its own, so that the fault
    /// suites can partition, slow and cut them for real (needs root).
    pub namespaces: bool,
    /// Each server's data dir on a tmpfs of this many MiB of its own, so
    /// that a fault run can fill it (needs root).
    pub small_disks_mib: Option<u64>,
    /// Servers run this `flotilla` binary instead of the one under test:
    /// a bench compares a build of an earlier commit with this one.
    pub server_binary: Option<std::path::PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            servers: 3,
            snapshot_every: 10_000,
            server_args: Vec::new(),
            insecure: false,
            namespaces: false,
            small_disks_mib: None,
            server_binary: None,
        }
    }
}

impl ClusterOptions {
    /// For simulated nodes that never heartbeat: they must not be marked down.
    pub fn without_node_health(mut self) -> Self {
        self.server_args.extend(["--node-ttl-ms".to_owned(), "3600000".to_owned()]);
        self
    }
}

pub struct TestCluster {
    /// Data dirs and logs; deleted on drop, after the processes are killed.
    pub dir: TempDir,
    pub servers: Vec<ServerProcess>,
    pub agents: Vec<AgentProcess>,
    /// The loopback address this cluster's agents serve service ports on:
    /// its own, so clusters of tests running at once never share a mesh.
    pub mesh: std::net::IpAddr,
    /// The CA the founders share (`ca.pem`, `ca.key`); `None` when insecure.
    pub ca_dir: Option<std::path::PathBuf>,
    /// The management token from `acl bootstrap`, and the agents' join token.
    pub tokens: Option<StartingTokens>,
    /// Clients with a node's certificate, for simulated nodes, by node name.
    node_clients: std::sync::Mutex<std::collections::HashMap<String, Client>>,
    options: ClusterOptions,
    /// The servers' namespaces and their bridge, with `namespaces`: last,
    /// so it goes after the processes in it.
    pub network: Option<crate::faults::Network>,
}

/// A loopback address no other test cluster uses: 127.128.0.0/9, from the
/// test process's id and a count of the clusters it made.
fn unique_loopback() -> std::net::IpAddr {
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x3f;
    let bits = ((std::process::id() & 0x1ffff) << 6) | count;
    std::net::Ipv4Addr::from((127 << 24) | (1 << 23) | bits).into()
}

/// The shared CA when the cluster has one, else `--insecure`.
pub fn server_ca(ca_dir: Option<&std::path::Path>) -> ServerCa {
    ca_dir.map_or(ServerCa::Insecure, |dir| ServerCa::Shared(dir.to_path_buf()))
}

impl TestCluster {
    /// Starts the servers and waits until they agree on a leader.
    pub async fn start(options: ClusterOptions) -> Self {
        let dir = tempfile::Builder::new().prefix("flotilla-cluster-").tempdir().expect("temp dir");
        let ca_dir = (!options.insecure).then(|| create_ca(dir.path()).expect("a cluster CA"));
        let mut network = options.namespaces.then(crate::faults::Network::create);
        // In a namespace of its own a server has every port to itself.
        let addresses: Vec<(u64, String)> = (1..=options.servers)
            .map(|id| match &mut network {
                Some(network) => (id, format!("{}:7001", network.add_member().ip)),
                None => (id, format!("127.0.0.1:{}", free_port())),
            })
            .collect();
        let peers = peers_flag(&addresses.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>());
        let servers = addresses
            .into_iter()
            .map(|(id, address)| {
                let mut args = peers.clone();
                args.extend(["--snapshot-every".to_owned(), options.snapshot_every.to_string()]);
                args.extend(options.server_args.iter().cloned());
                ServerProcess::new(id, address, dir.path(), server_ca(ca_dir.as_deref()), args)
            })
            .collect();
        let mut cluster = TestCluster {
            dir,
            servers,
            agents: Vec::new(),
            mesh: unique_loopback(),
            ca_dir,
            tokens: None,
            node_clients: Default::default(),
            options,
            network,
        };
        if let Some(network) = &cluster.network {
            for (server, member) in cluster.servers.iter_mut().zip(network.members()) {
                server.set_namespace(member.namespace.name().expect("a namespace made here"));
            }
        }
        if let Some(mib) = cluster.options.small_disks_mib {
            for server in &cluster.servers {
                crate::faults::disk::mount_small_disk(&server.data_dir, mib);
            }
        }
        for server in &mut cluster.servers {
            if let Some(binary) = &cluster.options.server_binary {
                server.set_binary(binary.clone());
            }
            server.start();
        }
        if let Some(ca_dir) = &cluster.ca_dir {
            let addresses: Vec<String> = cluster.servers.iter().map(|s| s.address.clone()).collect();
            match bootstrap(&addresses, ca_dir, Duration::from_secs(30)).await {
                Ok(tokens) => cluster.tokens = Some(tokens),
                Err(error) => {
                    panic!("cannot bootstrap the test cluster's ACL: {error:#}\n{}", cluster.logs())
                }
            }
        }
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster
    }

    /// The management token (role admin); `None` when insecure.
    pub fn admin_token(&self) -> Option<&str> {
        self.tokens.as_ref().map(|t| t.admin.as_str())
    }

    /// A client for `addresses` with `token`, speaking this cluster's protocol.
    pub fn client_for(&self, addresses: impl IntoIterator<Item = String>, token: Option<&str>) -> Client {
        let addresses: Vec<String> = addresses.into_iter().collect();
        match &self.ca_dir {
            Some(ca_dir) => secure_client(&addresses, ca_dir, token).expect("a TLS client"),
            None => Client::new(addresses.iter().map(|a| format!("http://{a}"))),
        }
    }

    /// An HTTP client for raw requests to the servers (TLS trusting the
    /// cluster's CA, no token: add one with `authorize`).
    pub fn http(&self) -> reqwest::Client {
        self.client_for(std::iter::empty(), None).http().clone()
    }

    /// An HTTP client for the agents' own API (its `/metrics`), trusting
    /// the cluster's CA for agents' certificates and presenting none, as a
    /// Prometheus would; plain when insecure.
    pub fn http_to_agents(&self) -> reqwest::Client {
        let Some(ca_dir) = &self.ca_dir else { return self.http() };
        let pem = std::fs::read_to_string(ca_dir.join("ca.pem")).expect("the cluster's CA");
        let config =
            client_config(&Trust::new(pem), None, ExpectedPeer::AnyNode).expect("a TLS configuration");
        reqwest::Client::builder().tls_backend_preconfigured(config).build().expect("an HTTP client")
    }

    /// The scheme the cluster speaks: `https`, or `http` when insecure.
    pub fn scheme(&self) -> &'static str {
        if self.ca_dir.is_some() { "https" } else { "http" }
    }

    /// `path` on server `id`, in this cluster's scheme.
    pub fn url(&self, id: u64, path: &str) -> String {
        let scheme = if self.ca_dir.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.address(id))
    }

    /// An HTTP client that presents the certificate of the agent of node
    /// `name` (from its data dir), as that agent does; plain when insecure.
    pub fn http_as_agent(&self, name: &str) -> reqwest::Client {
        let agent = self.agents.iter().find(|a| a.name == name).expect("no agent of that node");
        let tls = agent.data_dir.join("tls");
        if self.ca_dir.is_none() {
            return self.http();
        }
        let read = |file: &str| std::fs::read_to_string(tls.join(file)).expect("the agent's TLS material");
        let certificate = CurrentCertificate::new(&Credentials {
            certificate_pem: read("node.pem"),
            key_pem: read("node.key"),
        })
        .expect("the agent's certificate");
        let config = client_config(&Trust::new(read("ca.pem")), Some(certificate), ExpectedPeer::AnyServer)
            .expect("a TLS configuration");
        reqwest::Client::builder().tls_backend_preconfigured(config).build().expect("an HTTP client")
    }

    /// A client TLS configuration that presents a certificate for
    /// `identity` issued by the cluster's CA (the harness holds the CA, as
    /// `cluster up` does). Panics on an insecure cluster.
    pub fn tls_as(&self, identity: &Identity) -> rustls::ClientConfig {
        let ca_dir = self.ca_dir.as_ref().expect("a secure cluster");
        let read = |file: &str| std::fs::read_to_string(ca_dir.join(file)).expect("the cluster's CA");
        let ca = ClusterCa::from_pem(&read("ca.pem"), &read("ca.key")).expect("the CA loads");
        let (credentials, _) =
            ca.issue_with_new_key(identity, &[], CERTIFICATE_LIFETIME).expect("a certificate");
        let certificate = CurrentCertificate::new(&credentials).expect("the certificate loads");
        client_config(&Trust::new(read("ca.pem")), Some(certificate), ExpectedPeer::AnyServer)
            .expect("a TLS configuration")
    }

    /// A raw HTTP client presenting a certificate for `identity`.
    pub fn http_as(&self, identity: &Identity) -> reqwest::Client {
        reqwest::Client::builder().tls_backend_preconfigured(self.tls_as(identity)).build().expect("a client")
    }

    /// A client that speaks for node `name` as its agent would, with a
    /// certificate for that node; plain when insecure.
    pub fn node_client(&self, name: &str) -> Client {
        let mut clients = self.node_clients.lock().unwrap_or_else(|p| p.into_inner());
        let client = clients.entry(name.to_owned()).or_insert_with(|| {
            let addresses: Vec<String> = self.servers.iter().map(|s| s.address.clone()).collect();
            if self.ca_dir.is_none() {
                return self.client_for(addresses, None);
            }
            let config = self.tls_as(&Identity::Node(name.to_owned()));
            Client::new(addresses).with_tls(config).expect("a TLS client")
        });
        client.clone().with_retry_for(Duration::from_secs(10))
    }

    /// A new token of `role` (`read`, `deploy`, `admin`, `agent`, `server`), made by the admin.
    pub async fn create_token(&self, role: &str) -> String {
        let request = flotilla_api::CreateTokenRequest {
            role: role.parse().expect("a role"),
            description: "test".into(),
            ttl_secs: None,
        };
        self.client().create_token(&request).await.expect("token created").token
    }

    /// Adds the management token to a raw request.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.admin_token() {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub fn server(&mut self, id: u64) -> &mut ServerProcess {
        self.servers.iter_mut().find(|s| s.id == id).expect("no server with that id")
    }

    /// The ports the servers listen on, for tests that count connections to them.
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().filter_map(|s| s.address.rsplit_once(':')?.1.parse().ok()).collect()
    }

    pub fn address(&self, id: u64) -> String {
        self.servers.iter().find(|s| s.id == id).map(|s| s.address.clone()).expect("no server with that id")
    }

    /// A client that knows every server, as a user's FLOTILLA_ADDR would,
    /// with the management token.
    pub fn client(&self) -> Client {
        self.client_for(self.servers.iter().map(|s| s.address.clone()), self.admin_token())
            .with_retry_for(Duration::from_secs(10))
    }

    /// A client bound to one server, with no failover and no retries.
    /// Runs the `flotilla` CLI against this cluster's servers.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let (environment, arguments) = self.cli_invocation(args);
        let mut command = std::process::Command::new(crate::binary::flotilla_binary());
        command.args(arguments).env_remove("FLOTILLA_TOKEN").env_remove("FLOTILLA_CACERT").envs(environment);
        command.output().expect("flotilla runs")
    }

    /// The environment and arguments that point the `flotilla` CLI at this
    /// cluster, for `args`: for callers that run it their own way (in a terminal).
    pub fn cli_invocation(&self, args: &[&str]) -> (Vec<(String, String)>, Vec<String>) {
        let mut arguments: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let mut environment = Vec::new();
        match &self.ca_dir {
            Some(ca_dir) => {
                arguments.extend(["--addr".to_owned(), self.client().addresses().join(",")]);
                environment
                    .push(("FLOTILLA_CACERT".to_owned(), ca_dir.join("trust.pem").display().to_string()));
                environment
                    .push(("FLOTILLA_TOKEN".to_owned(), self.admin_token().unwrap_or_default().to_owned()));
            }
            None => {
                let plain: Vec<String> =
                    self.servers.iter().map(|s| format!("http://{}", s.address)).collect();
                arguments.extend(["--addr".to_owned(), plain.join(",")]);
            }
        }
        (environment, arguments)
    }

    pub fn client_of(&self, id: u64) -> Client {
        self.client_for([self.address(id)], self.admin_token()).with_retry_for(Duration::ZERO)
    }

    pub async fn status_of(&self, id: u64) -> Option<ServerStatus> {
        self.client_of(id).server_status().await.ok()
    }

    /// Waits until every running server names the same leader, and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let running: Vec<u64> = self.servers.iter().filter(|s| s.is_running()).map(|s| s.id).collect();
        wait_until(timeout, "one leader that every running server agrees on", || async {
            let mut leader = None;
            for id in &running {
                let status = self.status_of(*id).await?;
                if status.role == RaftRole::Removed {
                    continue;
                }
                match (leader, status.leader) {
                    (_, None) => return None,
                    (None, Some(l)) => leader = Some(l),
                    (Some(a), Some(b)) if a != b => return None,
                    _ => {}
                }
            }
            let leader = leader?;
            let status = self.status_of(leader).await?;
            (status.role == RaftRole::Leader).then_some(leader)
        })
        .await
    }

    /// Cuts server `id` off from `peers` (its side only; call it for both
    /// sides to partition in both directions).
    pub async fn block(&self, id: u64, peers: &[u64]) {
        self.inject_faults(id, serde_json::json!({ "blocked_peers": peers })).await;
    }

    /// Makes server `id` hold a read of its replicated state for `hold`, as
    /// a slow reader would; returns once the read is held.
    pub async fn hold_state(&self, id: u64, hold: Duration) {
        self.inject_faults(id, serde_json::json!({ "hold_state_ms": hold.as_millis() as u64 })).await;
    }

    async fn inject_faults(&self, id: u64, body: serde_json::Value) {
        let response = self
            .authorize(self.http().put(self.url(id, "/debug/v1/faults")))
            .json(&body)
            .send()
            .await
            .expect("fault endpoint answers");
        assert!(response.status().is_success(), "fault endpoint: {}", response.status());
    }

    /// Cuts server `id` off from every other server, both ways; the others
    /// still reach each other. Returns the others.
    pub async fn partition(&self, id: u64) -> Vec<u64> {
        let others: Vec<u64> = self.servers.iter().map(|s| s.id).filter(|other| *other != id).collect();
        self.block(id, &others).await;
        for other in &others {
            self.block(*other, &[id]).await;
        }
        others
    }

    /// Lifts every partition.
    pub async fn heal(&self) {
        for server in &self.servers {
            self.block(server.id, &[]).await;
        }
    }

    /// Starts a new server that joins through the current members; it is
    /// added as a learner and promoted once it has caught up.
    pub fn add_joining_server(&mut self, id: u64) -> &mut ServerProcess {
        let seed =
            self.servers.iter().filter(|s| s.is_running()).map(|s| s.address.clone()).collect::<Vec<_>>();
        let address = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--join".to_owned(),
            seed.first().cloned().expect("a running server to join through"),
            "--snapshot-every".to_owned(),
            self.options.snapshot_every.to_string(),
        ];
        args.extend(self.options.server_args.iter().cloned());
        let ca = server_ca(self.ca_dir.as_deref());
        self.servers.push(ServerProcess::new(id, address, self.dir.path(), ca, args));
        let server = self.servers.last_mut().expect("just pushed");
        server.start();
        server
    }

    /// Starts an agent whose node is named `{cluster}-{suffix}` (unique to
    /// this test run), with more flags in `extra` (`--cpu 2`, `--driver process`).
    pub fn add_agent(&mut self, suffix: &str, extra: &[&str]) -> &mut AgentProcess {
        let first = self.servers.first().map_or(0, |s| s.id);
        self.add_agent_talking_first_to(first, suffix, extra)
    }

    /// Like `add_agent`, with server `first` first in the agent's list: the
    /// server it talks to while that server answers.
    pub fn add_agent_talking_first_to(
        &mut self,
        first: u64,
        suffix: &str,
        extra: &[&str],
    ) -> &mut AgentProcess {
        let unique: String = self
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let name = format!("{}-{suffix}", unique.trim_start_matches("flotillacluster"));
        let mut servers: Vec<String> = self.servers.iter().map(|s| s.address.clone()).collect();
        if let Some(position) = self.servers.iter().position(|s| s.id == first) {
            servers[..=position].rotate_right(1);
        }
        let mesh = self.mesh.to_string();
        let mut flags: Vec<&str> = extra.to_vec();
        if !extra.contains(&"--mesh-listen") {
            flags.extend(["--mesh-listen", mesh.as_str()]);
        }
        let join_token = self.tokens.as_ref().map(|t| t.agent_join.clone());
        self.agents.push(AgentProcess::new(name, &servers, self.dir.path(), join_token.as_deref(), &flags));
        let agent = self.agents.last_mut().expect("just pushed");
        agent.start();
        agent
    }

    /// A cluster of three servers and one agent process running a fleet
    /// of `nodes` simulated nodes (2 CPUs and 4Gi each), once they are all
    /// ready; with the prefix of the nodes' names (`PREFIX1`..`PREFIXn`).
    pub async fn with_sim_fleet(nodes: u32) -> (Self, String) {
        let mut cluster = TestCluster::start(ClusterOptions::default()).await;
        let count = nodes.to_string();
        let fleet = ["--driver", "sim", "--fleet", count.as_str(), "--cpu", "2", "--memory", "4Gi"];
        let prefix = format!("{}-", cluster.add_agent("fleet", &fleet).name);
        let client = cluster.client();
        wait_until(Duration::from_secs(60), "the fleet's nodes ready", || async {
            let ready =
                client.nodes(false).await.ok()?.iter().filter(|n| n.status == NodeStatus::Ready).count();
            (ready == nodes as usize).then_some(())
        })
        .await;
        (cluster, prefix)
    }

    /// A cluster of three servers and agents `suffixes`, each with `flags`,
    /// once every agent has registered.
    pub async fn with_agents(suffixes: &[&str], flags: &[&str]) -> Self {
        let mut cluster = TestCluster::start(ClusterOptions::default()).await;
        for suffix in suffixes {
            cluster.add_agent(suffix, flags);
        }
        let client = cluster.client();
        wait_until(Duration::from_secs(30), "every agent registered", || async {
            (client.nodes(false).await.ok()?.len() == suffixes.len()).then_some(())
        })
        .await;
        cluster
    }

    pub fn agent(&mut self, suffix: &str) -> &mut AgentProcess {
        self.agents
            .iter_mut()
            .find(|a| a.name.ends_with(&format!("-{suffix}")))
            .expect("no agent with that suffix")
    }

    /// Every server's and agent's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let servers = self.servers.iter().map(|s| format!("==== server {} ====\n{}", s.id, s.log_text()));
        let agents = self.agents.iter().map(|a| format!("==== agent {} ====\n{}", a.name, a.log_text()));
        servers.chain(agents).collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            agent.kill();
            agent.kill_replica_processes();
            agent.remove_containers();
        }
        for server in &mut self.servers {
            server.kill();
        }
        if self.options.small_disks_mib.is_some() {
            for server in &self.servers {
                crate::faults::disk::unmount(&server.data_dir);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
