//! `flotilla secret put|list|delete`: values go to the servers, which seal
//! them with the cluster key; nothing ever shows a value again.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use flotilla_api::{Client, MAX_SECRET_BYTES};

use crate::output::{Format, print_json, table};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret: the value from --from-file, or from stdin.
    Put {
        name: String,
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// List secrets: names, versions and sizes, never values.
    List {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Delete a secret no workload names.
    Delete { name: String },
}

fn read_value(from_file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    let mut value = Vec::new();
    match from_file {
        Some(path) => {
            value =
                std::fs::read(path).with_context(|| format!("--from-file: cannot read {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .take(MAX_SECRET_BYTES as u64 + 1)
                .read_to_end(&mut value)
                .context("cannot read stdin")?;
        }
    }
    if value.len() > MAX_SECRET_BYTES {
        bail!("the value is larger than {MAX_SECRET_BYTES} bytes");
    }
    if value.is_empty() {
        bail!("the value is empty (give it on stdin or with --from-file)");
    }
    Ok(value)
}

pub async fn run(client: &Client, command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Put { name, from_file } => {
            let value = read_value(from_file.as_ref())?;
            let info = client.put_secret(&name, &value).await?;
            println!("secret/{} stored (version {}, {} bytes)", info.name, info.version, info.size);
        }
        SecretCommand::List { output } => {
            let secrets = client.secrets().await?;
            if output == Format::Json {
                return print_json(&secrets);
            }
            let mut t = table(&["NAME", "VERSION", "BYTES"]);
            for info in &secrets {
                t.add_row(vec![info.name.clone(), info.version.to_string(), info.size.to_string()]);
            }
            println!("{t}");
        }
        SecretCommand::Delete { name } => {
            let info = client.delete_secret(&name).await?;
            println!("secret/{} deleted", info.name);
        }
    }
    Ok(())
}
