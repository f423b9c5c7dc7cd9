//! `flotilla dev`: a one-process cluster for trying flotilla out: one
//! server and one agent on a throwaway data dir, with the given specs
//! deployed into it. Ctrl-C stops the containers it started and deletes it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flotilla_agent::AgentConfig;
use flotilla_agent::restart::RestartConfig;
use flotilla_api::{Client, CpuMillis, MemoryBytes};
use flotilla_cli::cluster_credentials::{bootstrap, secure_client};
use flotilla_scheduler::ServerConfig;
use flotilla_scheduler::raft::NodeConfig;
use flotilla_scheduler::server::{CaSource, TlsSetup};
use flotilla_security::{CERTIFICATE_LIFETIME, JoinToken};
use tokio::sync::watch;

use crate::server::{init_logging, shutdown_signal};
use crate::workloads::read_spec;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Spec files to deploy once the cluster is up.
    specs: Vec<PathBuf>,
    /// host:port for the server (the CLI's default address).
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: String,
    /// How long to wait for the replicas to run before saying so, in seconds.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Plain HTTP, no certificates, no tokens: anyone who reaches the port
    /// owns this cluster and, through the process driver, this user's account.
    #[arg(long)]
    insecure: bool,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    init_logging("warn");
    let specs = args.specs.iter().map(read_spec).collect::<anyhow::Result<Vec<_>>>()?;
    let data =
        tempfile::Builder::new().prefix("flotilla-dev-").tempdir().context("cannot create a data dir")?;
    eprintln!("flotilla dev: server on {}, data in {}", args.listen, data.path().display());
    let (stop_tx, stop_rx) = watch::channel(false);

    let server = ServerConfig {
        id: 1,
        listen: args.listen.clone(),
        data_dir: data.path().join("server"),
        peers: [(1, args.listen.clone())].into(),
        join: None,
        node: NodeConfig::new(1),
        health: Default::default(),
        fault_injection: false,
        service_ports: Default::default(),
        tls: (!args.insecure)
            .then_some(TlsSetup { source: CaSource::Create, lifetime: CERTIFICATE_LIFETIME }),
    };
    let mut server = tokio::spawn(flotilla_scheduler::run(server, stopped(stop_rx.clone())));
    let ca_dir = data.path().join("server/tls");
    let (client, join_token) = if args.insecure {
        eprintln!("INSECURE: plain HTTP, no tokens; export FLOTILLA_ADDR=http://{}", args.listen);
        (Client::new([format!("http://{}", args.listen)]), None)
    } else {
        let addresses = [args.listen.clone()];
        let tokens = tokio::select! {
            tokens = bootstrap(&addresses, &ca_dir, Duration::from_secs(30)) => tokens?,
            result = &mut server => { result.context("server task")??; anyhow::bail!("the server stopped") }
        };
        eprintln!("to use this cluster from another shell:");
        eprintln!("  export FLOTILLA_ADDR={}", args.listen);
        eprintln!("  export FLOTILLA_CACERT={}", ca_dir.join("trust.pem").display());
        eprintln!("  export FLOTILLA_TOKEN={}", tokens.admin);
        (secure_client(&addresses, &ca_dir, Some(&tokens.admin))?, Some(tokens.agent_join))
    };
    let join_token = join_token.as_deref().map(JoinToken::parse).transpose()?;
    let agent = AgentConfig {
        servers: vec![args.listen.clone()],
        data_dir: data.path().join("agent"),
        name: "dev".into(),
        labels: BTreeMap::new(),
        host_volumes: BTreeMap::new(),
        cpu: None,
        memory: None,
        reserve_cpu: CpuMillis(100),
        reserve_memory: MemoryBytes(256 << 20),
        runtimes: None,
        // A playground on the user's own machine: where Docker does not
        // answer, specs run as processes (as the user who ran `dev`).
        allow_process: true,
        process_user: "nobody".into(),
        process_log_max_bytes: 10 << 20,
        listen: Some("127.0.0.1:0".into()),
        heartbeat: Duration::from_secs(1),
        restart: RestartConfig::default(),
        orphan_grace: std::time::Duration::from_secs(60),
        docker_network: None,
        mesh_listen: vec![std::net::Ipv4Addr::LOCALHOST.into()],
        stop_on_exit: true,
        insecure: args.insecure,
        join_token,
        io: None,
    };
    let mut agent = tokio::spawn(flotilla_agent::run(agent, stopped(stop_rx.clone())));

    let client = client.with_retry_for(Duration::from_secs(10));
    for spec in &specs {
        let result = client.deploy(spec, None).await?;
        eprintln!("workload/{} deployed (version {})", result.workload.spec.name, result.workload.version);
    }
    print_service_addresses(&client).await;
    let watching = show_progress(&client, Duration::from_secs(args.wait));
    tokio::select! {
        () = shutdown_signal() => {}
        result = &mut server => { result.context("server task")??; return Ok(()) }
        result = &mut agent => { result.context("agent task")??; return Ok(()) }
        () = async { watching.await; shutdown_signal().await } => {}
    }
    eprintln!("stopping: the agent stops its containers, then the server");
    let _ = stop_tx.send(true);
    agent.await.context("agent task")??;
    // Its replicas are stopped; their cgroups' parent goes too.
    flotilla_cli::process_layout::remove_agent_leftovers(&data.path().join("agent"), "dev");
    server.await.context("server task")??;
    Ok(())
}

/// Where each service answers: the mesh serves every service port on
/// 127.0.0.1 here.
async fn print_service_addresses(client: &Client) {
    let Ok(page) = client.services(0, Duration::ZERO).await else { return };
    for service in &page.services {
        for port in &service.ports {
            let scheme = match port.protocol {
                flotilla_api::spec::Protocol::Tcp if port.name.starts_with("http") => "http",
                flotilla_api::spec::Protocol::Tcp => "tcp",
                flotilla_api::spec::Protocol::Udp => "udp",
            };
            eprintln!("  {} ({}): {scheme}://127.0.0.1:{}", service.name, port.name, port.port);
        }
    }
}

/// Prints each workload's replicas as they come up, until all run.
async fn show_progress(client: &Client, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    loop {
        let Ok(workloads) = client.list(true).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let line = workloads
            .iter()
            .map(|w| {
                let mut text = format!("{} {}/{} running", w.spec.name, w.status.running, w.spec.replicas);
                if let Some(reason) = &w.status.unplaced_reason {
                    text.push_str(&format!(" ({} unplaced: {reason})", w.status.unplaced));
                }
                text
            })
            .collect::<Vec<_>>()
            .join(", ");
        if line != last {
            eprintln!("  {line}");
            last = line;
        }
        if workloads.iter().all(|w| w.status.running >= w.spec.replicas) {
            eprintln!(
                "ready. In another shell: flotilla ps   (Ctrl-C stops everything and deletes the data)"
            );
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("not every replica runs yet; `flotilla ps` shows why (Ctrl-C stops everything)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
