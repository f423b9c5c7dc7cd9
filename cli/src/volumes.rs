//! `flotilla volumes`: each replica slot's named volumes, the node holding
//! its data, and `volumes rm` for those a deleted workload kept.

use clap::{Args, Subcommand};
use flotilla_api::{Client, SlotVolume};

use crate::nodes::age;
use crate::output::{Format, print_json, table};

#[derive(Debug, Args)]
pub struct VolumesArgs {
    #[command(subcommand)]
    command: Option<VolumesCommand>,
    /// Only this workload's volumes.
    #[arg(long)]
    workload: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Subcommand)]
enum VolumesCommand {
    /// Remove the volumes a workload deleted without `--volumes` kept.
    Rm { workload: String },
}

/// What became of a volume: in use by its workload, kept after it was
/// deleted, or on its way out.
fn status(volume: &SlotVolume, deployed: &[String]) -> &'static str {
    if volume.removing {
        "removing"
    } else if deployed.iter().any(|w| w == volume.workload.as_str()) {
        "in use"
    } else {
        "kept"
    }
}

pub async fn run(client: &Client, args: VolumesArgs) -> anyhow::Result<()> {
    if let Some(VolumesCommand::Rm { workload }) = args.command {
        let count = client.remove_volumes(&workload).await?;
        println!("{count} volumes of workload/{workload} are being removed");
        return Ok(());
    }
    let volumes = client.volumes(args.workload.as_deref()).await?;
    if args.output == Format::Json {
        return print_json(&volumes);
    }
    let deployed: Vec<String> =
        client.list(false).await?.into_iter().map(|w| w.spec.name.to_string()).collect();
    let mut t = table(&["SLOT", "VOLUME", "NODE", "STATUS", "STALE COPIES", "AGE", "DOCKER VOLUME"]);
    for volume in &volumes {
        let stale: Vec<&str> = volume.stale_nodes.iter().map(String::as_str).collect();
        t.add_row(vec![
            format!("{}-{}", volume.workload, volume.slot),
            volume.volume.to_string(),
            volume.node.clone(),
            status(volume, &deployed).to_owned(),
            if stale.is_empty() { "-".to_owned() } else { stale.join(",") },
            age(volume.created_at_ms),
            volume.docker_name(),
        ]);
    }
    println!("{t}");
    Ok(())
}
