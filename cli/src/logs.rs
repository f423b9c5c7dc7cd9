//! `flotilla logs`: an allocation's output, streamed from its node's agent.

use std::io::Write;

use anyhow::{Context, bail};
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
    let node = client
        .nodes(false)
        .await?
        .into_iter()
        .find(|n| n.name == allocation.node)
        .with_context(|| format!("node `{}` is not registered", allocation.node))?;
    if node.address.is_empty() {
        bail!("node `{}` has no agent API to read logs from", node.name);
    }
    let url = format!("http://{}/v1/allocations/{}/logs?follow={}", node.address, allocation.id, args.follow);
    let response =
        reqwest::get(&url).await.with_context(|| format!("cannot reach the agent at {}", node.address))?;
    if !response.status().is_success() {
        bail!("agent at {}: {}", node.address, response.text().await.unwrap_or_default().trim());
    }
    let mut stream = response.bytes_stream();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        stdout.write_all(&chunk?)?;
        stdout.flush()?;
    }
    Ok(())
}
