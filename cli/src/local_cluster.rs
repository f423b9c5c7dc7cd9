//! `flotilla cluster up|down|env`: a multi-node test cluster on this
//! machine. Servers and agents run as background processes on 127.0.0.1
//! ports, or with `--docker` as containers on a private Docker network made
//! for the cluster, from flotilla's own image built here. What a cluster is
//! made of is written to `$XDG_DATA_HOME/flotilla/clusters/<name>/cluster.json`
//! (default `~/.local/share/...`), so `down` removes exactly that.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use flotilla_api::Client;
use serde::{Deserialize, Serialize};

use crate::docker_cluster;
use crate::process_layout::{ServerCa, agent_command, peers_flag, server_command};

#[derive(Debug, Args)]
pub struct UpArgs {
    #[arg(long, default_value_t = 3)]
    pub servers: u64,
    #[arg(long, default_value_t = 3)]
    pub agents: u64,
    /// Run each server and agent as a container on a private Docker network.
    #[arg(long)]
    pub docker: bool,
    #[arg(long, default_value = "local")]
    pub name: String,
    /// CPU each agent offers.
    #[arg(long, default_value = "2")]
    pub agent_cpu: String,
    /// Memory each agent offers.
    #[arg(long, default_value = "2Gi")]
    pub agent_memory: String,
    /// Labels per agent, `;`-separated lists of k=v,k=v, cycled over the
    /// agents (default: zone=a, zone=b, zone=c).
    #[arg(long, default_value = "zone=a;zone=b;zone=c")]
    pub agent_labels: String,
    /// Plain HTTP, no certificates, no tokens (for measuring TLS's cost).
    #[arg(long)]
    pub insecure: bool,
    /// Each server and agent in a network namespace of its own on a private
    /// bridge (needs root), so that `cluster partition` and `cluster slow`
    /// can cut and degrade its links; the host reaches them at 10.x.y.z.
    #[arg(long, conflicts_with = "docker")]
    pub isolated: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    #[arg(long, default_value = "local")]
    pub name: String,
}

/// What `up` made, so that `down` can take exactly that away.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    /// Addresses the CLI reaches the servers at.
    pub addresses: Vec<String>,
    /// Background processes (process mode).
    #[serde(default)]
    pub pids: Vec<u32>,
    /// Agent node names, whose workload containers `down` removes.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Docker mode: the network and the label on everything made.
    #[serde(default)]
    pub docker: bool,
    /// The CA certificate the CLI trusts; `None`: an `--insecure` cluster.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Each background process (process mode), by member name, with how it
    /// was started, so `cluster restart` starts it again the same way.
    #[serde(default)]
    pub members: Vec<MemberProcess>,
    /// The members' namespaces, with `--isolated`.
    #[serde(default)]
    pub network: Option<crate::chaos::network::Network>,
    /// Faults in force (`cluster partition`, `pause`, `kill`, `slow`).
    #[serde(default)]
    pub faults: Vec<crate::chaos::Fault>,
}

/// One server or agent of a process cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberProcess {
    /// A server's id (`1`) or an agent's node name.
    pub name: String,
    /// Its `flotilla` arguments.
    pub args: Vec<String>,
    pub log: PathBuf,
    /// The network namespace it runs in, with `--isolated`.
    pub namespace: Option<String>,
    pub pid: u32,
}

/// The record of the local cluster whose servers are at any of `addresses`.
pub fn record_for(addresses: &[String]) -> Option<ClusterRecord> {
    let clusters = std::fs::read_dir(clusters_dir()).ok()?;
    clusters
        .flatten()
        .filter_map(|entry| load(&entry.file_name().to_string_lossy()).ok())
        .find(|record| record.addresses.iter().any(|a| addresses.iter().any(|b| b.ends_with(a.as_str()))))
}

/// The management token of a secure local cluster, kept beside its record
/// and readable by its owner alone.
fn token_path(name: &str) -> PathBuf {
    clusters_dir().join(name).join("token")
}

/// A client for the cluster `record` describes, with its management token.
pub fn record_client(record: &ClusterRecord) -> anyhow::Result<Client> {
    match &record.ca_cert {
        Some(ca_cert) => {
            let token = std::fs::read_to_string(token_path(&record.name)).ok();
            let ca_dir = ca_cert.parent().context("the CA certificate's directory")?;
            crate::cluster_credentials::secure_client(
                &record.addresses,
                ca_dir,
                token.as_deref().map(str::trim),
            )
        }
        None => Ok(Client::new(record.addresses.iter().map(|a| format!("http://{a}")))),
    }
}

/// For a secure cluster: bootstraps its ACL, keeps the management token,
/// and returns the agents' join token.
pub async fn bootstrap_tokens(record: &ClusterRecord) -> anyhow::Result<Option<String>> {
    let Some(ca_cert) = &record.ca_cert else {
        return Ok(None);
    };
    let ca_dir = ca_cert.parent().context("the CA certificate's directory")?;
    let tokens =
        crate::cluster_credentials::bootstrap(&record.addresses, ca_dir, Duration::from_secs(60)).await?;
    flotilla_scheduler::server_tls::write_private(&token_path(&record.name), &tokens.admin)?;
    Ok(Some(tokens.agent_join))
}

pub fn clusters_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("flotilla").join("clusters")
}

fn valid_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 40
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("--name: `{name}` must be 1 to 40 lowercase letters, digits or '-'");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn record_path(name: &str) -> PathBuf {
    clusters_dir().join(name).join("cluster.json")
}

pub fn load(name: &str) -> anyhow::Result<ClusterRecord> {
    let path = record_path(name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no local cluster `{name}` ({} is missing); start one with `flotilla cluster up`",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a cluster record", path.display()))
}

pub(crate) fn save(record: &ClusterRecord) -> anyhow::Result<()> {
    let path = record_path(&record.name);
    std::fs::create_dir_all(path.parent().context("cluster dir")?)?;
    std::fs::write(&path, serde_json::to_vec_pretty(record)?)?;
    Ok(())
}

/// The labels of agent `i` (0-based), cycling over the `;`-separated groups.
pub fn agent_labels(spec: &str, i: usize) -> Vec<String> {
    let groups: Vec<&str> = spec.split(';').filter(|g| !g.trim().is_empty()).collect();
    if groups.is_empty() {
        return Vec::new();
    }
    groups[i % groups.len()].split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
}

/// Starts a member in the background (in its namespace, if it has one:
/// `ip netns exec` execs it, so the pid is the member's own).
pub fn spawn_member(member: &MemberProcess) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the flotilla binary")?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(&member.log)
        .with_context(|| format!("cannot create {}", member.log.display()))?;
    let mut command = match &member.namespace {
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace]).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let child = command
        .args(&member.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start a flotilla process")?;
    Ok(child.id())
}

/// Waits until the servers agree on a leader and every agent has registered.
pub async fn wait_ready(client: &Client, agents: usize) -> anyhow::Result<()> {
    let client = client.clone().with_retry_for(Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let progress = crate::progress::Progress::on_stderr();
    let task = progress.counted(agents as u64);
    loop {
        let leader = client.server_status().await.ok().and_then(|s| s.leader);
        let nodes = client.nodes(true).await.map(|n| n.len()).unwrap_or(0);
        let elected = leader.map_or_else(|| "no leader yet".to_owned(), |l| format!("server {l} leads"));
        task.update(nodes as u64, agents as u64, &format!("{elected}; agents registered: {nodes}/{agents}"));
        if leader.is_some() && nodes >= agents {
            task.finish(&format!("{elected}; all {agents} agents registered"));
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the cluster did not come up within 90 s (leader: {leader:?}, agents registered: {nodes}/{agents})"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    valid_name(&args.name)?;
    if record_path(&args.name).exists() {
        bail!("cluster `{}` is already up; `flotilla cluster down --name {}` first", args.name, args.name);
    }
    if args.servers == 0 {
        bail!("--servers: a cluster needs at least one server");
    }
    if args.isolated && !crate::chaos::network::namespaces_available() {
        bail!("--isolated: making network namespaces needs root (and iproute2's `ip`)");
    }
    let record = if args.docker { docker_cluster::up(&args).await? } else { up_processes(&args).await? };
    println!("cluster `{}` is up: {} servers, {} agents", record.name, args.servers, args.agents);
    print_env(&record);
    Ok(())
}

fn print_env(record: &ClusterRecord) {
    match &record.ca_cert {
        Some(ca_cert) => {
            println!("export FLOTILLA_ADDR={}", record.addresses.join(","));
            println!("export FLOTILLA_CACERT={}", ca_cert.display());
            let token = std::fs::read_to_string(token_path(&record.name)).unwrap_or_default();
            println!("export FLOTILLA_TOKEN={}", token.trim());
        }
        None => {
            let plain: Vec<String> = record.addresses.iter().map(|a| format!("http://{a}")).collect();
            println!("export FLOTILLA_ADDR={}", plain.join(","));
            println!("unset FLOTILLA_CACERT FLOTILLA_TOKEN");
        }
    }
}

async fn up_processes(args: &UpArgs) -> anyhow::Result<ClusterRecord> {
    let dir = clusters_dir().join(&args.name);
    std::fs::create_dir_all(&dir)?;
    let mut record = ClusterRecord {
        name: args.name.clone(),
        addresses: Vec::new(),
        pids: Vec::new(),
        nodes: Vec::new(),
        docker: false,
        ca_cert: None,
        members: Vec::new(),
        network: None,
        faults: Vec::new(),
    };
    let ca_dir = if args.insecure { None } else { Some(crate::cluster_credentials::create_ca(&dir)?) };
    record.ca_cert = ca_dir.as_ref().map(|d| d.join("trust.pem"));
    if args.isolated {
        record.network = Some(crate::chaos::network::Network::create()?);
        save(&record)?;
    }
    for id in 1..=args.servers {
        // In a namespace of its own a server has every port to itself.
        let address = match &mut record.network {
            Some(network) => format!("{}:7001", network.add_member(&id.to_string())?.ip),
            None => format!("127.0.0.1:{}", free_port()?),
        };
        record.addresses.push(address);
        save(&record)?;
    }
    // Replicas get a network of their own, where they reach the agents'
    // mesh and DNS by name; without Docker, processes need none.
    let network = match docker_cluster::create_network(&args.name) {
        Ok(network) => Some(network),
        Err(error) => {
            eprintln!(
                "no Docker network for the replicas ({error}); containers will not find services by name"
            );
            None
        }
    };
    for (i, address) in record.addresses.clone().iter().enumerate() {
        let id = i as u64 + 1;
        let ca = ca_dir.clone().map_or(ServerCa::Insecure, ServerCa::Shared);
        let mut args = server_command(id, address, &dir.join(format!("server-{id}")), &ca);
        args.extend(peers_flag(&record.addresses));
        let namespace =
            record.network.as_ref().and_then(|n| n.members[i].namespace.name().map(str::to_owned));
        start_member(&mut record, id.to_string(), args, dir.join(format!("server-{id}.log")), namespace)?;
    }
    let join_token =
        bootstrap_tokens(&record).await.inspect_err(|_| eprintln!("logs are in {}", dir.display()))?;
    for i in 0..args.agents as usize {
        let node = format!("{}-agent-{}", args.name, i + 1);
        let agent_dir = dir.join(format!("agent-{}", i + 1));
        let mut agent = agent_command(&record.addresses, &agent_dir, &node, join_token.as_deref());
        agent.extend(["--cpu".into(), args.agent_cpu.clone(), "--memory".into(), args.agent_memory.clone()]);
        let member = record.network.as_mut().map(|n| n.add_member(&node)).transpose()?;
        match &member {
            // Its API and mesh where the host (and the other members) reach it.
            Some(member) => agent.extend([
                "--listen".into(),
                format!("{}:7002", member.ip),
                "--mesh-listen".into(),
                member.ip.to_string(),
            ]),
            None => agent.extend(["--mesh-listen".into(), "127.0.0.1".into()]),
        }
        // A local test cluster runs the README's process example.
        agent.extend(["--allow-driver".into(), "process".into()]);
        if let Some(network) = &network {
            agent.extend(["--docker-network".into(), network.clone()]);
        }
        for label in agent_labels(&args.agent_labels, i) {
            agent.extend(["--label".into(), label]);
        }
        record.nodes.push(node.clone());
        let log = dir.join(format!("agent-{}.log", i + 1));
        let namespace = member.and_then(|m| m.namespace.name().map(str::to_owned));
        start_member(&mut record, node, agent, log, namespace)?;
    }
    if let Err(error) = wait_ready(&record_client(&record)?, args.agents as usize).await {
        eprintln!("logs are in {}", dir.display());
        return Err(error);
    }
    Ok(record)
}

/// Starts a member and records it (and its pid) at once, so that `down`
/// finds it even if a later step fails.
fn start_member(
    record: &mut ClusterRecord,
    name: String,
    args: Vec<String>,
    log: PathBuf,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let mut member = MemberProcess { name, args, log, namespace, pid: 0 };
    member.pid = spawn_member(&member)?;
    record.pids.push(member.pid);
    record.members.push(member);
    save(record)
}

fn stop_process(pid: u32) {
    // A paused member would never see the SIGTERM.
    let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).output();
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).output();
    for _ in 0..100 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
}

/// Removes the containers that agents of these nodes started.
pub fn remove_workload_containers(nodes: &[String]) {
    for node in nodes {
        let output = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=flotilla.node={node}")])
            .output();
        let ids: Vec<String> = output
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect())
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
    }
}

pub async fn down(args: NameArgs) -> anyhow::Result<()> {
    let record = load(&args.name)?;
    if record.docker {
        docker_cluster::down(&record)?;
    } else {
        // Agents first, so none restarts work while the servers go.
        for pid in record.pids.iter().rev() {
            stop_process(*pid);
        }
        let dir = clusters_dir().join(&record.name);
        for (i, node) in record.nodes.iter().enumerate() {
            crate::process_layout::remove_agent_leftovers(&dir.join(format!("agent-{}", i + 1)), node);
        }
    }
    // Its namespaces (process mode) and the processes delaying members' links.
    if let Some(mut network) = record.network.clone() {
        network.remove();
    }
    remove_workload_containers(&record.nodes);
    if !record.docker {
        let _ = docker_cluster::remove_networks(&record.name);
    }
    let dir = clusters_dir().join(&record.name);
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    println!("cluster `{}` is down; nothing of it is left", record.name);
    Ok(())
}

pub fn env(args: NameArgs) -> anyhow::Result<()> {
    print_env(&load(&args.name)?);
    Ok(())
}
