//! Node and allocation verbs: `nodes`, `ps`, `node drain|undrain`.

use clap::{Args, Subcommand};
use flotilla_api::{Client, CpuMillis, MemoryBytes, NodeStatus, now_ms};

use crate::output::{Format, print_json, table};

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only this workload's allocations.
    workload: Option<String>,
    /// Only allocations on this node.
    #[arg(long)]
    node: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Move a node's allocations elsewhere and place nothing new on it.
    Drain { node: String },
    /// Return a drained node to service.
    Undrain { node: String },
}

fn percent(used: u64, capacity: u64) -> String {
    (used * 100).checked_div(capacity).map_or_else(|| "-".to_owned(), |p| format!("{p}%"))
}

/// The status with what a user must know beside it: a node held back after
/// flapping, or one booking more than it now offers.
fn node_status(node: &flotilla_api::Node) -> String {
    let mut text = node.status.to_string();
    let now = now_ms();
    if node.eligible_at_ms > now {
        text.push_str(&format!(
            " (flapping: {} downs lately, no new work for {}s)",
            node.recent_downs_ms.len(),
            (node.eligible_at_ms - now).div_ceil(1000)
        ));
    }
    if node.is_overcommitted() {
        text.push_str(" (overcommitted: moving replicas away)");
    }
    text
}

pub async fn nodes(client: &Client, args: NodesArgs) -> anyhow::Result<()> {
    let nodes = client.nodes(false).await?;
    if args.output == Format::Json {
        return print_json(&nodes);
    }
    let mut t = table(&[
        "NAME",
        "STATUS",
        "CPU",
        "MEMORY",
        "ALLOCATED CPU",
        "ALLOCATED MEMORY",
        "ALLOCS",
        "DRIVERS",
        "LABELS",
    ]);
    for n in &nodes {
        t.add_row(vec![
            n.name.clone(),
            node_status(n),
            n.capacity_cpu.to_string(),
            n.capacity_memory.to_string(),
            format!("{} ({})", CpuMillis(n.allocated_cpu), percent(n.allocated_cpu, n.capacity_cpu.0)),
            format!(
                "{} ({})",
                MemoryBytes(n.allocated_memory),
                percent(n.allocated_memory, n.capacity_memory.0)
            ),
            n.allocations.to_string(),
            n.drivers.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","),
            n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// "45s", "12m", "3h", "2d": how long ago `ms` was.
pub fn age(ms: u64) -> String {
    let seconds = now_ms().saturating_sub(ms) / 1000;
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn ps(client: &Client, args: PsArgs) -> anyhow::Result<()> {
    let mut allocations = client.allocations(args.workload.as_deref(), args.node.as_deref()).await?;
    allocations
        .sort_by(|a, b| (a.workload.as_str(), a.replica, a.id).cmp(&(b.workload.as_str(), b.replica, b.id)));
    if args.output == Format::Json {
        return print_json(&allocations);
    }
    let mut t = table(&[
        "ID", "WORKLOAD", "REPLICA", "VERSION", "NODE", "STATE", "HEALTH", "RESTARTS", "EXIT", "PORTS",
        "AGE", "MESSAGE",
    ]);
    for a in &allocations {
        let exit = match (a.exit_code, a.oom_killed) {
            (_, true) => "OOM-killed".to_owned(),
            (Some(code), false) => code.to_string(),
            (None, false) => "-".to_owned(),
        };
        let ports = a
            .ports
            .iter()
            .map(|p| {
                if p.host == 0 { format!("{}", p.container) } else { format!("{}->{}", p.host, p.container) }
            })
            .collect::<Vec<_>>()
            .join(",");
        t.add_row(vec![
            a.id.to_string(),
            a.workload.to_string(),
            a.replica.to_string(),
            a.version.to_string(),
            a.node.to_string(),
            allocation_state(a),
            health_text(a),
            a.restarts.to_string(),
            exit,
            ports,
            age(a.created_at_ms),
            a.message.clone(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// The health, with what the check that last changed it said.
fn health_text(a: &flotilla_api::Allocation) -> String {
    if a.health_output.is_empty() || !a.state.is_live() {
        a.health.to_string()
    } else {
        format!("{} ({})", a.health, a.health_output)
    }
}

/// The state as `ps` shows it: a stop under way, and when a restart is due.
fn allocation_state(a: &flotilla_api::Allocation) -> String {
    let mut text = a.state.to_string();
    if a.stopping && a.state.is_live() {
        text.push_str(" (stopping)");
    }
    if let Some(at) = a.next_restart_at_ms {
        text.push_str(&format!(" (next in {:.1}s)", at.saturating_sub(now_ms()) as f64 / 1000.0));
    }
    text
}

pub async fn node(client: &Client, command: NodeCommand) -> anyhow::Result<()> {
    let (name, status) = match command {
        NodeCommand::Drain { node } => (node, NodeStatus::Draining),
        NodeCommand::Undrain { node } => (node, NodeStatus::Ready),
    };
    let node = client.set_node_status(&name, status).await?;
    println!("node/{} is {}", node.name, node.status);
    Ok(())
}
