//! `flotilla rollout`: follow, pause, resume, promote and undo a workload's
//! rollouts, and list its version history.

use anyhow::bail;
use clap::{Args, Subcommand};
use flotilla_api::{Client, Deployment, DeploymentStatus, RolloutAction};

use crate::output::{Format, print_json, table};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Where the rollout of the current version stands.
    Status(Target),
    /// Every kept version, newest first, with how its rollout ended.
    History(Target),
    /// Deploy an earlier version again, as a new version.
    Undo {
        workload: String,
        /// The version to go back to; the previous one when absent.
        #[arg(long = "to")]
        to_version: Option<u64>,
    },
    /// Let a rollout waiting on its canaries replace the rest.
    Promote(Target),
    /// Stop replacing replicas until `resume`.
    Pause(Target),
    Resume(Target),
}

#[derive(Debug, Args)]
pub struct Target {
    workload: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

pub async fn run(client: &Client, command: RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Status(target) => {
            let workload = client.get(&target.workload).await?;
            let deployments = client.deployments(&target.workload).await?;
            let Some(current) = deployments.iter().find(|d| d.to_version == workload.version) else {
                bail!("version {} of {} has no rollout in its history", workload.version, target.workload);
            };
            if target.output == Format::Json {
                return print_json(current);
            }
            println!("{}", describe(current, workload.spec.replicas));
            if let Some(reason) = &current.reason {
                println!("reason: {reason}");
            }
            Ok(())
        }
        RolloutCommand::History(target) => {
            let deployments = client.deployments(&target.workload).await?;
            if target.output == Format::Json {
                return print_json(&deployments);
            }
            let mut t =
                table(&["VERSION", "ROLLOUT", "STATUS", "FROM", "CAUSE", "IMAGE/COMMAND", "AGE", "REASON"]);
            for d in &deployments {
                t.add_row(vec![
                    d.to_version.to_string(),
                    d.id.to_string(),
                    d.status.to_string(),
                    d.from_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                    d.cause.clone(),
                    d.spec.image.clone().unwrap_or_else(|| d.spec.command.join(" ")),
                    crate::nodes::age(d.started_at_ms),
                    d.reason.clone().unwrap_or_default(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        RolloutCommand::Undo { workload, to_version } => {
            let updated = client.undo(&workload, to_version).await?;
            let deployments = client.deployments(&workload).await?;
            let cause = deployments.first().map(|d| d.cause.clone()).unwrap_or_default();
            println!("workload/{workload} version {} deployed ({cause})", updated.version);
            Ok(())
        }
        RolloutCommand::Promote(target) => act(client, target, RolloutAction::Promote).await,
        RolloutCommand::Pause(target) => act(client, target, RolloutAction::Pause).await,
        RolloutCommand::Resume(target) => act(client, target, RolloutAction::Resume).await,
    }
}

async fn act(client: &Client, target: Target, action: RolloutAction) -> anyhow::Result<()> {
    let deployment = client.rollout(&target.workload, action).await?;
    if target.output == Format::Json {
        return print_json(&deployment);
    }
    println!("rollout {} of {}: {action}d; now {}", deployment.id, target.workload, deployment.status);
    Ok(())
}

/// One line on a rollout: version, status and its new replicas.
pub fn describe(d: &Deployment, replicas: u32) -> String {
    let from = d.from_version.map_or_else(String::new, |v| format!(" from {v}"));
    let mut line = format!(
        "rollout {} of {} to version {}{from}: {}; new replicas: {} placed, {} healthy, {} unhealthy of {replicas}",
        d.id, d.workload, d.to_version, d.status, d.placed, d.healthy, d.unhealthy
    );
    if d.canary > 0 && !d.promoted {
        line.push_str(&format!(" ({} canaries)", d.canary));
    }
    line
}

/// Whether a rollout has ended, and how: `Some(Ok)` when it succeeded,
/// `Some(Err(why))` when it failed, was reverted or was superseded.
pub fn outcome(d: &Deployment) -> Option<Result<(), String>> {
    let why = || d.reason.clone().unwrap_or_else(|| d.status.to_string());
    match d.status {
        DeploymentStatus::Successful => Some(Ok(())),
        DeploymentStatus::Failed | DeploymentStatus::Reverted | DeploymentStatus::Cancelled => {
            Some(Err(why()))
        }
        _ => None,
    }
}
