//! `flotilla events [-f]`: what the cluster did on its own, and why.

use std::time::Duration;

use clap::Args;
use flotilla_api::{Client, Event};

use crate::nodes::age;
use crate::output::Format;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen.
    #[arg(short = 'f', long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

fn print(event: &Event, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string(event)?);
        return Ok(());
    }
    let subject = match (&event.workload, &event.node) {
        (Some(w), _) => format!("workload/{w}"),
        (None, Some(n)) => format!("node/{n}"),
        (None, None) => "cluster".to_owned(),
    };
    println!("{:>6} ago  {subject:<24} {}", age(event.at_ms), event.message);
    Ok(())
}

pub async fn events(client: &Client, args: EventsArgs) -> anyhow::Result<()> {
    let page = client.events(0, Duration::ZERO).await?;
    for event in &page.events {
        print(event, args.output)?;
    }
    if !args.follow {
        return Ok(());
    }
    let mut index = page.index;
    loop {
        let page = client.events(index, Duration::from_secs(20)).await?;
        for event in &page.events {
            print(event, args.output)?;
        }
        index = page.index.max(index);
    }
}
