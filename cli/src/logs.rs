//! `flotilla logs`: an allocation's output, streamed from its node's agent
//! through a server.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use flotilla_api::{AllocationState, Client};
use futures_util::StreamExt;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A workload (its first running replica) or an allocation id.
    target: String,
    /// Keep streaming as the allocation writes.
    #[arg(short = 'f', long)]
    follow: bool,
}

pub async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<()> {
    let allocations = match args.target.parse::<u64>() {
        Ok(id) => {
            client.allocations(None, None).await?.into_iter().filter(|a| a.id == id).collect::<Vec<_>>()
        }
        Err(_) => client.allocations(Some(&args.target), None).await?,
    };
    let allocation = allocations
        .iter()
        .find(|a| a.is_replica() && a.state == AllocationState::Running)
        .or_else(|| allocations.iter().find(|a| a.is_replica()))
        .or_else(|| allocations.first())
        .with_context(|| format!("no allocation of `{}` exists", args.target))?;
    let response = client.logs(allocation.id, args.follow).await?;
    let mut stream = response.bytes_stream();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        stdout.write_all(&chunk?)?;
        stdout.flush()?;
    }
    Ok(())
}
