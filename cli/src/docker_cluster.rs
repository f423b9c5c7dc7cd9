//! `flotilla cluster up --docker`: every server and agent a container on a
//! private Docker network made for the cluster, from flotilla's own image,
//! built here from this very binary and the shared libraries it links (no
//! registry is needed). Agents reach the host's engine through its socket
//! and keep their workloads apart by the node label.

use std::process::Command;

use anyhow::{Context, bail};
use flotilla_agent::runtime::docker::DockerRuntime;
use flotilla_agent::runtime::image;

use std::path::Path;

use crate::local_cluster::{ClusterRecord, UpArgs, agent_labels, save, wait_ready};
use crate::process_layout::{ServerCa, agent_command, peers_flag, server_command};

/// The label on every container and network a docker-mode cluster makes.
const CLUSTER_LABEL: &str = "flotilla.cluster";
const IMAGE: &str = "flotilla/flotilla:local";
const SERVER_PORT: u16 = 7001;

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker").args(args).output().context("cannot run the docker CLI")?;
    if !output.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The absolute paths of the shared libraries this binary loads.
fn shared_libraries(binary: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let output = Command::new("ldd").arg(binary).output().context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let libraries = text
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect();
    Ok(libraries)
}

/// Builds flotilla's image from the running binary, every time (it is cheap
/// next to a compile, and the image then always matches the CLI).
async fn build_image() -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("cannot find the flotilla binary")?;
    let mut files: Vec<(String, Vec<u8>, u32)> = vec![("flotilla".into(), std::fs::read(&binary)?, 0o755)];
    for library in shared_libraries(&binary)? {
        let bytes = std::fs::read(&library).with_context(|| format!("cannot read {library}"))?;
        files.push((library.trim_start_matches('/').to_owned(), bytes, 0o755));
    }
    let dockerfile = "FROM scratch\nCOPY . /\nENTRYPOINT [\"/flotilla\"]\n";
    files.push(("Dockerfile".into(), dockerfile.as_bytes().to_vec(), 0o644));
    let runtime = DockerRuntime::connect().await.context("Docker does not answer")?;
    runtime.ensure_busybox_image().await?;
    let borrowed: Vec<(&str, &[u8], u32)> =
        files.iter().map(|(p, b, m)| (p.as_str(), b.as_slice(), *m)).collect();
    image::build(runtime.client(), IMAGE, &borrowed).await?;
    Ok(())
}

pub async fn up(args: &UpArgs) -> anyhow::Result<ClusterRecord> {
    build_image().await?;
    let name = &args.name;
    let network = network_name(name);
    let label = format!("{CLUSTER_LABEL}={name}");
    let mut record = ClusterRecord {
        name: name.clone(),
        addresses: Vec::new(),
        pids: Vec::new(),
        nodes: Vec::new(),
        docker: true,
        ca_cert: None,
        members: Vec::new(),
        network: None,
        faults: Vec::new(),
    };
    let dir = crate::local_cluster::clusters_dir().join(name);
    let ca_dir = if args.insecure { None } else { Some(crate::cluster_credentials::create_ca(&dir)?) };
    record.ca_cert = ca_dir.as_ref().map(|d| d.join("trust.pem"));
    save(&record)?;
    create_network(name)?;
    let servers: Vec<String> = (1..=args.servers as usize).map(|i| server_container(name, i)).collect();
    let server_addresses: Vec<String> = servers.iter().map(|s| format!("{s}:{SERVER_PORT}")).collect();
    for (i, server) in servers.iter().enumerate() {
        let publish = format!("127.0.0.1::{SERVER_PORT}");
        let mut command: Vec<String> =
            ["run", "-d", "--name", server, "--hostname", server, "--network", &network]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        command.extend(["--label".into(), label.clone(), "-p".into(), publish]);
        if let Some(ca_dir) = &ca_dir {
            command.extend(["-v".into(), format!("{}:/ca:ro", ca_dir.display())]);
        }
        command.push(IMAGE.into());
        let container_ca = match ca_dir {
            Some(_) => ServerCa::Shared("/ca".into()),
            None => ServerCa::Insecure,
        };
        command.extend(server_command(i as u64 + 1, &server_addresses[i], Path::new("/data"), &container_ca));
        command.extend(peers_flag(&server_addresses));
        docker(&command.iter().map(String::as_str).collect::<Vec<_>>())?;
        let port = docker(&["port", server, &SERVER_PORT.to_string()])?;
        let host = port.lines().next().context("the server's port is not published")?.to_owned();
        record.addresses.push(host);
        save(&record)?;
    }
    let join_token = crate::local_cluster::bootstrap_tokens(&record).await?;
    for i in 0..args.agents as usize {
        let node = format!("{name}-agent-{}", i + 1);
        let container = agent_container(&node);
        let mut command: Vec<String> =
            ["run", "-d", "--name", &container, "--hostname", &container, "--network", &network]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        command.extend([
            "--label".into(),
            label.clone(),
            "-v".into(),
            "/var/run/docker.sock:/var/run/docker.sock".into(),
        ]);
        command.push(IMAGE.into());
        command.extend(agent_command(&server_addresses, Path::new("/data"), &node, join_token.as_deref()));
        command.extend(["--driver".into(), "docker".into(), "--listen".into(), format!("{container}:7100")]);
        command.extend(["--docker-network".into(), network.clone()]);
        command.extend([
            "--cpu".to_owned(),
            args.agent_cpu.clone(),
            "--memory".to_owned(),
            args.agent_memory.clone(),
        ]);
        for label in agent_labels(&args.agent_labels, i) {
            command.extend(["--label".to_owned(), label]);
        }
        let borrowed: Vec<&str> = command.iter().map(String::as_str).collect();
        docker(&borrowed)?;
        record.nodes.push(node);
        save(&record)?;
    }
    wait_ready(&crate::local_cluster::record_client(&record)?, args.agents as usize).await?;
    Ok(record)
}

/// The container of server `id` of cluster `name`.
pub fn server_container(name: &str, id: usize) -> String {
    format!("flotilla-{name}-server-{id}")
}

/// The container of the agent of node `node`.
pub fn agent_container(node: &str) -> String {
    format!("flotilla-{node}")
}

pub fn down(record: &ClusterRecord) -> anyhow::Result<()> {
    let label = format!("{CLUSTER_LABEL}={}", record.name);
    let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}")])?;
    let ids: Vec<&str> = ids.lines().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        docker(&args)?;
    }
    // Replicas joined the cluster's network: they go before it can.
    crate::local_cluster::remove_workload_containers(&record.nodes);
    remove_networks(&record.name)
}

/// The Docker network of cluster `name`, where its replicas (and in docker
/// mode its servers and agents) are, and where replicas reach the mesh.
pub fn network_name(name: &str) -> String {
    format!("flotilla-{name}")
}

pub fn create_network(name: &str) -> anyhow::Result<String> {
    let network = network_name(name);
    docker(&["network", "create", "--label", &format!("{CLUSTER_LABEL}={name}"), &network])?;
    Ok(network)
}

/// Removes the networks cluster `name` made (after its containers).
pub fn remove_networks(name: &str) -> anyhow::Result<()> {
    let networks = docker(&["network", "ls", "-q", "--filter", &format!("label={CLUSTER_LABEL}={name}")])?;
    for network in networks.lines() {
        docker(&["network", "rm", network])?;
    }
    Ok(())
}
