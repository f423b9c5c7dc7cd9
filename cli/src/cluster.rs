//! `flotilla cluster`: the servers' Raft status and membership.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use flotilla_api::{Client, ServerStatus};
use flotilla_cli::chaos;
use serde::Serialize;

use crate::output::{Format, print_json, table};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, and each member's role, commit and applied index.
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Add a server as id=host:port: a learner first, a voter once caught up.
    Add {
        member: String,
        /// Return once it is a learner instead of waiting for it to become a voter.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the promotion to voter, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Remove a server from the cluster.
    Remove { id: u64 },
    /// Start a local multi-node test cluster (processes, or containers with --docker).
    Up(flotilla_cli::local_cluster::UpArgs),
    /// Stop a local cluster and remove everything it made.
    Down(flotilla_cli::local_cluster::NameArgs),
    /// Print the FLOTILLA_ADDR to export for a local cluster.
    Env(flotilla_cli::local_cluster::NameArgs),
    /// Cut members (server ids, agent node names; comma-separated) off from
    /// the rest of a local `--isolated` cluster, or only from `--from`.
    Partition {
        members: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long, default_value = "local")]
        name: String,
    },
    /// Remove every network fault of a local cluster (partitions, loss, delay).
    Heal {
        #[arg(long, default_value = "local")]
        name: String,
    },
    /// Stop a member with SIGSTOP: it keeps its sockets and answers nothing.
    Pause {
        member: String,
        #[arg(long, default_value = "local")]
        name: String,
    },
    /// Continue a paused member.
    Resume {
        member: String,
        #[arg(long, default_value = "local")]
        name: String,
    },
    /// Kill a member with SIGKILL.
    Kill {
        member: String,
        #[arg(long, default_value = "local")]
        name: String,
    },
    /// Start a killed member again, as it was started first.
    Restart {
        member: String,
        #[arg(long, default_value = "local")]
        name: String,
    },
    /// Delay (`--delay 200ms`, each packet by a draw from `--jitter 50ms`
    /// either side of it) or lose (`--loss 5%`) what a member sends its peers.
    Slow {
        member: String,
        #[arg(long, value_parser = milliseconds, default_value = "0ms")]
        delay: u32,
        #[arg(long, value_parser = milliseconds, default_value = "0ms")]
        jitter: u32,
        #[arg(long, value_parser = percent, default_value = "0%")]
        loss: u32,
        #[arg(long, default_value = "local")]
        name: String,
    },
}

/// `200ms` or `2s`, in milliseconds.
fn milliseconds(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix("ms") {
        Some(number) => (number, 1),
        None => (
            text.strip_suffix('s').ok_or_else(|| format!("`{text}` is not a duration like 200ms or 2s"))?,
            1000,
        ),
    };
    number
        .trim()
        .parse::<u32>()
        .map(|n| n.saturating_mul(scale))
        .map_err(|_| format!("`{text}` is not a duration like 200ms or 2s"))
}

/// `5%` or `5`, a percent from 0 to 100.
fn percent(text: &str) -> Result<u32, String> {
    let number = text.trim().trim_end_matches('%');
    match number.parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!("`{text}` is not a percent from 0 to 100")),
    }
}

/// One member as seen by itself (or why it could not be asked).
#[derive(Debug, Serialize)]
struct MemberView {
    id: u64,
    address: String,
    voter: bool,
    matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<ServerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ClusterView {
    leader: Option<u64>,
    term: u64,
    members: Vec<MemberView>,
    /// Faults in force, when these servers are a local cluster's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    faults: Vec<String>,
}

/// A paused or cut-off member never answers: each is given this long.
const MEMBER_ANSWER: Duration = Duration::from_secs(2);

async fn status_of(client: &Client, address: &str) -> Result<ServerStatus, String> {
    match tokio::time::timeout(MEMBER_ANSWER, client.for_server(address).server_status()).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("{address} did not answer within {} s", MEMBER_ANSWER.as_secs())),
    }
}

async fn cluster_view(client: &Client) -> anyhow::Result<ClusterView> {
    let first = client.server_status().await?;
    let leader_view = match first.leader {
        Some(leader) if leader != first.id => {
            let address = first.members.iter().find(|m| m.id == leader).map(|m| m.address.clone());
            match address {
                Some(address) => status_of(client, &address).await.unwrap_or(first),
                None => first,
            }
        }
        _ => first,
    };
    // Servers as the CLI reaches them (in a docker-mode cluster, members'
    // own addresses are container names that only the cluster's network knows).
    let mut reachable = std::collections::HashMap::new();
    for address in client.addresses() {
        if let Ok(status) = status_of(client, address).await {
            reachable.insert(status.id, status);
        }
    }
    let mut members = Vec::new();
    for member in &leader_view.members {
        let own = match reachable.remove(&member.id) {
            Some(status) => Ok(status),
            None => status_of(client, &member.address).await,
        };
        let (status, error) = match own {
            Ok(status) => (Some(status), None),
            Err(error) => (None, Some(error)),
        };
        members.push(MemberView {
            id: member.id,
            address: member.address.clone(),
            voter: member.voter,
            matched: member.matched,
            status,
            error,
        });
    }
    let faults = flotilla_cli::local_cluster::record_for(client.addresses())
        .map(|record| record.faults.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    Ok(ClusterView { leader: leader_view.leader, term: leader_view.term, members, faults })
}

/// `client` is made only for the verbs that talk to a cluster: `up`,
/// `down` and `env` work without one.
pub async fn run(client: impl Fn() -> anyhow::Result<Client>, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { output } => {
            let view = cluster_view(&client()?).await?;
            if output == Format::Json {
                return print_json(&view);
            }
            match view.leader {
                Some(leader) => println!("leader: {leader}   term: {}", view.term),
                None => println!("leader: none (election in progress)   term: {}", view.term),
            }
            let mut t = table(&["ID", "ADDRESS", "ROLE", "VOTER", "TERM", "COMMIT", "APPLIED", "MATCHED"]);
            for m in &view.members {
                let dash = || "-".to_owned();
                let s = m.status.as_ref();
                t.add_row(vec![
                    m.id.to_string(),
                    m.address.clone(),
                    s.map_or_else(|| "unreachable".to_owned(), |s| s.role.to_string()),
                    if m.voter { "yes" } else { "no" }.to_owned(),
                    s.map_or_else(dash, |s| s.term.to_string()),
                    s.map_or_else(dash, |s| s.commit.to_string()),
                    s.map_or_else(dash, |s| s.applied.to_string()),
                    m.matched.map_or_else(dash, |v| v.to_string()),
                ]);
            }
            println!("{t}");
            for fault in &view.faults {
                println!("fault in force: {fault}");
            }
            Ok(())
        }
        ClusterCommand::Add { member, no_wait, timeout } => {
            let (id, address) =
                member.split_once('=').context("expected id=host:port, as 4=127.0.0.1:7004")?;
            let id: u64 = id.parse().with_context(|| format!("`{id}` is not a server id"))?;
            let client = client()?;
            client.add_member(id, address).await?;
            println!("server {id} added as a learner");
            if no_wait {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                let status = client.server_status().await?;
                if status.members.iter().any(|m| m.id == id && m.voter) {
                    println!("server {id} is a voter");
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!("server {id} did not catch up within {timeout}s; is it running at {address}?");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        ClusterCommand::Up(args) => flotilla_cli::local_cluster::up(args).await,
        ClusterCommand::Down(args) => flotilla_cli::local_cluster::down(args).await,
        ClusterCommand::Env(args) => flotilla_cli::local_cluster::env(args),
        ClusterCommand::Partition { members, from, name } => {
            chaos::partition(&name, &members, from.as_deref())
        }
        ClusterCommand::Heal { name } => chaos::heal(&name),
        ClusterCommand::Pause { member, name } => chaos::pause(&name, &member),
        ClusterCommand::Resume { member, name } => chaos::resume(&name, &member),
        ClusterCommand::Kill { member, name } => chaos::kill(&name, &member),
        ClusterCommand::Restart { member, name } => chaos::restart(&name, &member),
        ClusterCommand::Slow { member, delay, jitter, loss, name } => {
            if jitter > delay {
                bail!(
                    "--jitter {jitter}ms is more than --delay {delay}ms: a packet cannot leave before it is sent"
                );
            }
            let millis = |ms: u32| Duration::from_millis(u64::from(ms));
            chaos::slow(&name, &member, millis(delay), millis(jitter), loss)
        }
        ClusterCommand::Remove { id } => {
            client()?.remove_member(id).await?;
            println!("server {id} removed");
            Ok(())
        }
    }
}
