//! Workload verbs: deploy, get, list, scale, delete.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use flotilla_api::{Client, ClientError, DeployChange, Workload, WorkloadSpec};

use crate::output::{Format, print_json, table};

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Spec files (YAML); each is one workload.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Only deploy if the stored workload is at this version (0: must be new).
    #[arg(long)]
    version: Option<u64>,
    /// Follow the rollout, a line per change, until it ends; exit 0 only if
    /// it succeeded, 1 if it failed, was reverted or timed out.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    name: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
    /// Read the answering server's state without confirming it is current.
    #[arg(long)]
    stale: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
    #[arg(long)]
    stale: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    name: String,
    replicas: u32,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    name: String,
    /// Remove its replica slots' volumes too; without, they are kept for a
    /// workload of the same name (`flotilla volumes` lists them).
    #[arg(long)]
    volumes: bool,
}

/// Reads and validates a spec file, with errors as `file:line:column`.
pub fn read_spec(path: &PathBuf) -> anyhow::Result<WorkloadSpec> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {shown}"))?;
    if bytes.len() > flotilla_api::spec::MAX_SPEC_BYTES {
        bail!("{shown}: is larger than {} bytes", flotilla_api::spec::MAX_SPEC_BYTES);
    }
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{shown}: is not UTF-8 text"))?;
    flotilla_api::parse_yaml(&text).map_err(|e| anyhow::anyhow!("{}", e.render(&shown)))
}

fn api_error(error: ClientError, file: Option<&str>) -> anyhow::Error {
    match (&error, file) {
        (ClientError::Api { body, .. }, Some(file)) if body.spec.is_some() => {
            let spec = body.spec.as_ref().map(|s| s.render(file)).unwrap_or_default();
            anyhow::anyhow!("{spec}")
        }
        _ => anyhow::anyhow!(error),
    }
}

pub async fn deploy(client: &Client, args: DeployArgs) -> anyhow::Result<()> {
    let specs =
        args.files.iter().map(|f| read_spec(f).map(|s| (f, s))).collect::<anyhow::Result<Vec<_>>>()?;
    let mut results = Vec::new();
    for (file, spec) in specs {
        let result = client
            .deploy(&spec, args.version)
            .await
            .map_err(|e| api_error(e, Some(&file.display().to_string())))?;
        if args.output == Format::Table {
            let verb = match result.change {
                DeployChange::Created => "created",
                DeployChange::Updated => "updated",
                DeployChange::Unchanged => "unchanged",
            };
            println!("workload/{} {verb} (version {})", result.workload.spec.name, result.workload.version);
        }
        results.push(result);
    }
    if args.output == Format::Json {
        print_json(&results)?;
    }
    if args.wait {
        let deployed: Vec<(String, u64)> =
            results.iter().map(|r| (r.workload.spec.name.to_string(), r.workload.version)).collect();
        wait_for_rollout(client, &deployed, std::time::Duration::from_secs(args.timeout)).await?;
    }
    Ok(())
}

/// Follows each workload's rollout of the version just deployed, with a
/// bar per workload (a line per change where stderr is no terminal);
/// succeeds only when every rollout did, and fails (with the reason) when
/// one failed, was reverted or superseded, or did not end within `timeout`.
async fn wait_for_rollout(
    client: &Client,
    deployed: &[(String, u64)],
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let progress = flotilla_cli::progress::Progress::on_stderr();
    let tasks: Vec<_> = deployed.iter().map(|_| progress.counted(1)).collect();
    let mut finished = vec![false; deployed.len()];
    loop {
        for (((name, version), task), finished) in deployed.iter().zip(&tasks).zip(finished.iter_mut()) {
            if *finished {
                continue;
            }
            let workload = client.get(name).await?;
            let deployments = client.deployments(name).await?;
            let Some(deployment) = deployments.iter().find(|d| d.to_version == *version) else {
                bail!("the rollout of {name} version {version} is no longer in its history");
            };
            let s = &workload.status;
            let mut line = crate::rollout::describe(deployment, workload.spec.replicas);
            if s.outdated > 0 {
                line.push_str(&format!(", {} old", s.outdated));
            }
            if let Some(reason) = &s.unplaced_reason {
                line.push_str(&format!(" ({} unplaced: {reason})", s.unplaced));
            }
            let outcome = crate::rollout::outcome(deployment);
            if outcome.is_none()
                && let Some(pulling) = pull_in_progress(client, name).await
            {
                line.push_str(&format!(" ({pulling})"));
            }
            task.update(u64::from(deployment.healthy), u64::from(workload.spec.replicas), &line);
            match outcome {
                Some(Ok(())) => {
                    task.finish(&line);
                    *finished = true;
                }
                Some(Err(reason)) => {
                    task.finish(&line);
                    let what = match deployment.status {
                        flotilla_api::DeploymentStatus::Reverted => "failed and was reverted",
                        flotilla_api::DeploymentStatus::Cancelled => "was superseded",
                        _ => "failed",
                    };
                    let kept =
                        if s.outdated > 0 && deployment.status == flotilla_api::DeploymentStatus::Failed {
                            format!("; {} replicas of the previous version keep running", s.outdated)
                        } else {
                            String::new()
                        };
                    bail!("rollout of {name} version {version} {what}: {reason}{kept}");
                }
                None => {}
            }
        }
        if finished.iter().all(|f| *f) {
            progress.println("rollout complete");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let last: Vec<String> = tasks.iter().map(flotilla_cli::progress::Task::last_said).collect();
            bail!("the rollout did not end within {}s: {}", timeout.as_secs(), last.join("; "));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// What a starting replica of `name` says of its image's pull, if one is
/// being pulled: the layers and bytes so far.
async fn pull_in_progress(client: &Client, name: &str) -> Option<String> {
    let allocations = client.allocations(Some(name), None).await.ok()?;
    allocations
        .into_iter()
        .find(|a| {
            a.state == flotilla_api::AllocationState::Starting && a.message.starts_with("pulling image")
        })
        .map(|a| a.message)
}

fn workload_row(w: &Workload) -> Vec<String> {
    let spec = &w.spec;
    vec![
        spec.name.to_string(),
        spec.driver.to_string(),
        spec.image.clone().unwrap_or_else(|| spec.command.join(" ")),
        running_text(w),
        w.status.unplaced.to_string(),
        spec.resources.cpu.to_string(),
        spec.resources.memory.to_string(),
        w.version.to_string(),
    ]
}

/// Running against wanted, and `degraded` while replicas are restarting.
fn running_text(w: &Workload) -> String {
    let mut text = format!("{}/{}", w.status.running, w.spec.replicas);
    if w.status.rollout_failure.is_some() {
        text.push_str(" (rollout failed)");
    } else if w.status.restarting > 0 {
        text.push_str(&format!(" (degraded: {} restarting)", w.status.restarting));
    }
    text
}

const WORKLOAD_HEADER: [&str; 8] =
    ["NAME", "DRIVER", "IMAGE/COMMAND", "RUNNING", "UNPLACED", "CPU", "MEMORY", "VERSION"];

pub async fn get(client: &Client, args: GetArgs) -> anyhow::Result<()> {
    let workload = if args.stale {
        client
            .list(true)
            .await?
            .into_iter()
            .find(|w| w.spec.name.as_str() == args.name)
            .ok_or_else(|| anyhow::anyhow!("workload `{}` does not exist", args.name))?
    } else {
        client.get(&args.name).await?
    };
    match args.output {
        Format::Json => print_json(&workload),
        Format::Table => {
            let mut t = table(&WORKLOAD_HEADER);
            t.add_row(workload_row(&workload));
            println!("{t}");
            let status = &workload.status;
            println!(
                "\nreplicas: {} wanted, {} placed, {} running, {} restarting, {} on an older version",
                workload.spec.replicas, status.placed, status.running, status.restarting, status.outdated
            );
            if status.restarting > 0 {
                println!(
                    "degraded: {} replicas are restarting (see `flotilla ps {}`)",
                    status.restarting, args.name
                );
            }
            if let Some(reason) = &status.rollout_failure {
                println!("rollout of version {} failed: {reason}", workload.version);
            } else if let Some(rollout) = status.rollout {
                println!(
                    "rollout of version {}: {rollout} (see `flotilla rollout status {}`)",
                    workload.version, args.name
                );
            }
            if let Some(reason) = &status.unplaced_reason {
                println!("pending: {} replicas cannot be placed: {reason}", status.unplaced);
            }
            if let Some(auto) = &workload.spec.autoscale {
                let use_of =
                    |p: Option<f64>| p.map_or_else(|| "no samples yet".to_owned(), |p| format!("{p:.0}%"));
                let now = client.utilisation(&args.name).await.ok();
                let (cpu, memory) = now.map_or((None, None), |u| (u.cpu_percent, u.memory_percent));
                print!("autoscale: {}..{} replicas", auto.min, auto.max);
                if let Some(target) = auto.cpu {
                    print!("; cpu {} of request (target {}%)", use_of(cpu), target.0);
                }
                if let Some(target) = auto.memory {
                    print!("; memory {} of request (target {}%)", use_of(memory), target.0);
                }
                println!();
            }
            if let Ok(page) = client.events(0, std::time::Duration::ZERO).await {
                let mine: Vec<_> =
                    page.events.iter().filter(|e| e.workload.as_deref() == Some(&args.name)).collect();
                if !mine.is_empty() {
                    println!("events:");
                    for event in mine.iter().rev().take(5).rev() {
                        println!("  {:>6} ago  {}", crate::nodes::age(event.at_ms), event.message);
                    }
                }
            }
            Ok(())
        }
    }
}

pub async fn list(client: &Client, args: ListArgs) -> anyhow::Result<()> {
    let workloads = client.list(args.stale).await?;
    match args.output {
        Format::Json => print_json(&workloads),
        Format::Table => {
            let mut t = table(&WORKLOAD_HEADER);
            for w in &workloads {
                t.add_row(workload_row(w));
            }
            println!("{t}");
            Ok(())
        }
    }
}

pub async fn scale(client: &Client, args: ScaleArgs) -> anyhow::Result<()> {
    let workload = client.scale(&args.name, args.replicas).await?;
    println!("workload/{} scaled to {} replicas", workload.spec.name, workload.spec.replicas);
    Ok(())
}

pub async fn delete(client: &Client, args: DeleteArgs) -> anyhow::Result<()> {
    let workload = if args.volumes {
        client.delete_with_volumes(&args.name).await?
    } else {
        client.delete(&args.name).await?
    };
    let kept = workload.spec.slot_volumes().count();
    match (args.volumes, kept) {
        (_, 0) => println!("workload/{} deleted", workload.spec.name),
        (true, _) => println!("workload/{} deleted; its volumes are being removed", workload.spec.name),
        (false, _) => println!(
            "workload/{} deleted; its volumes are kept (`flotilla volumes rm {}` removes them)",
            workload.spec.name, workload.spec.name
        ),
    }
    Ok(())
}
