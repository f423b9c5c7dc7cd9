//! `flotilla ca create|status|rotate`: the cluster CA. A rotation replaces
//! it without downtime: the servers and agents first trust both CAs, then
//! take certificates from the new one, then drop the old. This command
//! starts one (or picks up one in progress), watches it to the end, and
//! keeps the CA file it was given (`FLOTILLA_CACERT`) trusting what the
//! cluster trusts, so it and later commands can still check the servers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use flotilla_api::{CaStatus, Client};
use flotilla_security::ClusterCa;

use flotilla_cli::cluster_credentials::write_ca;
use flotilla_scheduler::server_tls::write_private;

use crate::output::{Format, print_json};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a cluster CA in DIR (ca.pem, ca.key, and cluster.key for
    /// secrets) for the founders of a cluster of several servers to share
    /// (`server --ca-dir DIR`).
    Create { dir: PathBuf },
    /// Show the CAs the cluster trusts and issues from, and a rotation's progress.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Replace the cluster CA with a new one, without downtime, and wait
    /// until no one trusts or holds a certificate from the old one. Join
    /// tokens pin the CA: make new ones afterwards.
    Rotate {
        /// Give up watching after this many seconds (the rotation goes on;
        /// `ca rotate` again picks it up).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

pub async fn run(
    command: CaCommand,
    client: impl Fn() -> anyhow::Result<Client>,
    cacert: Option<&Path>,
) -> anyhow::Result<()> {
    match command {
        CaCommand::Create { dir } => {
            let ca = ClusterCa::create()?;
            write_ca(&dir, &ca).with_context(|| format!("cannot write the CA to {}", dir.display()))?;
            println!("CA {} written to {} (ca.pem, ca.key, cluster.key)", ca.digest(), dir.display());
            Ok(())
        }
        CaCommand::Status { output } => {
            let status = client()?.ca_status().await?;
            if output == Format::Json {
                return print_json(&status);
            }
            print_status(&status);
            Ok(())
        }
        CaCommand::Rotate { timeout } => rotate(client, cacert, Duration::from_secs(timeout)).await,
    }
}

fn print_status(status: &CaStatus) {
    println!("issuing  {}", status.issuing);
    for digest in &status.trusted {
        println!("trusted  {digest}");
    }
    println!("rotations completed: {}", status.rotations);
    if let Some(rotation) = &status.rotation {
        let age = flotilla_api::now_ms().saturating_sub(rotation.started_ms) / 1000;
        println!("rotation {} -> {}: {} (for {age}s)", rotation.from, rotation.to, rotation.phase);
        for waiting in &rotation.waiting_for {
            println!("  waiting for {waiting}");
        }
    }
}

/// Makes the client's CA file trust what the cluster trusts now.
fn write_trust(cacert: Option<&Path>, status: &CaStatus) -> anyhow::Result<()> {
    let Some(path) = cacert else {
        return Ok(());
    };
    if std::fs::read_to_string(path).is_ok_and(|pem| pem == status.trust_pem) {
        return Ok(());
    }
    write_private(path, &status.trust_pem)
        .with_context(|| format!("cannot update the CA file {}", path.display()))?;
    eprintln!("{} now trusts {}", path.display(), status.trusted.join(" and "));
    Ok(())
}

async fn rotate(
    client: impl Fn() -> anyhow::Result<Client>,
    cacert: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let status = client()?.ca_status().await?;
    let started = match &status.rotation {
        Some(rotation) => {
            eprintln!("a rotation to {} is in progress; watching it", rotation.to);
            status
        }
        None => client()?.rotate_ca(&status.issuing).await?,
    };
    let Some(rotation) = started.rotation.clone() else {
        bail!("the servers started no rotation");
    };
    eprintln!("rotating the cluster CA: {} replaces {}", rotation.to, rotation.from);
    write_trust(cacert, &started)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_phase = None;
    loop {
        // Rebuilt each time: the CA file changes under it.
        let status = client()?.ca_status().await?;
        match &status.rotation {
            Some(now) if now.to == rotation.to => {
                if last_phase != Some(now.phase) {
                    eprintln!("{}", now.phase);
                    last_phase = Some(now.phase);
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "the rotation is still {} after {}s, waiting for: {}; it goes on, and `flotilla ca rotate` picks it up again",
                        now.phase,
                        timeout.as_secs(),
                        now.waiting_for.join("; ")
                    );
                }
            }
            Some(other) => bail!("another rotation (to {}) replaced this one", other.to),
            None => {
                if status.issuing != rotation.to {
                    bail!(
                        "the rotation ended but the cluster issues from {}, not {}",
                        status.issuing,
                        rotation.to
                    );
                }
                write_trust(cacert, &status)?;
                println!("the cluster CA is now {}", status.issuing);
                eprintln!(
                    "join tokens made before this pinned the old CA: make new ones with `flotilla token create`"
                );
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
