//! A cluster of real server processes on 127.0.0.1.

use std::time::Duration;

use flotilla_api::{Client, RaftRole, ServerStatus};
use flotilla_cli::process_layout::peers_flag;
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
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { servers: 3, snapshot_every: 10_000, server_args: Vec::new() }
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
    options: ClusterOptions,
}

/// A loopback address no other test cluster uses: 127.128.0.0/9, from the
/// test process's id and a count of the clusters it made.
fn unique_loopback() -> std::net::IpAddr {
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x3f;
    let bits = ((std::process::id() & 0x1ffff) << 6) | count;
    std::net::Ipv4Addr::from((127 << 24) | (1 << 23) | bits).into()
}

impl TestCluster {
    /// Starts the servers and waits until they agree on a leader.
    pub async fn start(options: ClusterOptions) -> Self {
        let dir = tempfile::Builder::new().prefix("flotilla-cluster-").tempdir().expect("temp dir");
        let addresses: Vec<(u64, String)> =
            (1..=options.servers).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        let peers = peers_flag(&addresses.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>());
        let servers = addresses
            .into_iter()
            .map(|(id, address)| {
                let mut args = peers.clone();
                args.extend(["--snapshot-every".to_owned(), options.snapshot_every.to_string()]);
                args.extend(options.server_args.iter().cloned());
                ServerProcess::new(id, address, dir.path(), args)
            })
            .collect();
        let mut cluster = TestCluster { dir, servers, agents: Vec::new(), mesh: unique_loopback(), options };
        for server in &mut cluster.servers {
            server.start();
        }
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster
    }

    pub fn server(&mut self, id: u64) -> &mut ServerProcess {
        self.servers.iter_mut().find(|s| s.id == id).expect("no server with that id")
    }

    pub fn address(&self, id: u64) -> String {
        self.servers.iter().find(|s| s.id == id).map(|s| s.address.clone()).expect("no server with that id")
    }

    /// A client that knows every server, as a user's FLOTILLA_ADDR would.
    pub fn client(&self) -> Client {
        Client::new(self.servers.iter().map(|s| s.address.clone())).with_retry_for(Duration::from_secs(10))
    }

    /// A client bound to one server, with no failover and no retries.
    /// Runs the `flotilla` CLI against this cluster's servers.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::binary::flotilla_binary())
            .args(args)
            .args(["--addr", &self.client().addresses().join(",")])
            .output()
            .expect("flotilla runs")
    }

    pub fn client_of(&self, id: u64) -> Client {
        Client::new([self.address(id)]).with_retry_for(Duration::ZERO)
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
        let body = serde_json::json!({ "blocked_peers": peers });
        let response = reqwest::Client::new()
            .put(format!("http://{}/debug/v1/faults", self.address(id)))
            .json(&body)
            .send()
            .await
            .expect("fault endpoint answers");
        assert!(response.status().is_success(), "fault endpoint: {}", response.status());
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
        self.servers.push(ServerProcess::new(id, address, self.dir.path(), args));
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
        self.agents.push(AgentProcess::new(name, &servers, self.dir.path(), &flags));
        let agent = self.agents.last_mut().expect("just pushed");
        agent.start();
        agent
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
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
