//! `flotilla dev`: a one-process cluster for trying flotilla out: one
//! server on a throwaway data dir, with the given specs deployed into it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flotilla_api::Client;
use flotilla_scheduler::ServerConfig;
use flotilla_scheduler::raft::NodeConfig;

use crate::server::{init_logging, shutdown_signal};
use crate::workloads::read_spec;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Spec files to deploy once the server is up.
    specs: Vec<PathBuf>,
    /// host:port for the server (the CLI's default address).
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: String,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    init_logging("warn");
    let specs = args.specs.iter().map(read_spec).collect::<anyhow::Result<Vec<_>>>()?;
    let data =
        tempfile::Builder::new().prefix("flotilla-dev-").tempdir().context("cannot create a data dir")?;
    eprintln!("flotilla dev: server on {} with data in {}", args.listen, data.path().display());
    let config = ServerConfig {
        id: 1,
        listen: args.listen.clone(),
        data_dir: data.path().to_path_buf(),
        peers: [(1, args.listen.clone())].into(),
        join: None,
        node: NodeConfig::new(1),
        health: Default::default(),
        fault_injection: false,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(flotilla_scheduler::run(config, async move {
        let _ = stop_rx.await;
    }));
    let client = Client::new([args.listen.clone()]).with_retry_for(Duration::from_secs(10));
    for spec in &specs {
        let result = client.deploy(spec, None).await?;
        eprintln!("workload/{} deployed (version {})", result.workload.spec.name, result.workload.version);
    }
    for workload in client.list(false).await? {
        eprintln!(
            "  {}: {} replicas of {}",
            workload.spec.name,
            workload.spec.replicas,
            workload.spec.image.clone().unwrap_or_else(|| workload.spec.command.join(" "))
        );
    }
    eprintln!("ready; in another shell: flotilla list   (Ctrl-C stops the server and deletes its data)");
    tokio::select! {
        () = shutdown_signal() => {
            let _ = stop_tx.send(());
            server.await.context("server task")??;
        }
        result = &mut server => result.context("server task")??,
    }
    Ok(())
}
