//! `flotilla`: one binary for the server and every client verb.

mod agent;
mod certificate_authority;
mod cluster;
mod connection;
mod dev;
mod events;
mod logs;
mod nodes;
mod open_files;
mod output;
mod rollout;
mod secrets;
mod server;
mod services;
mod tokens;
mod top;
mod volumes;
mod workloads;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about = "A Raft-replicated container orchestrator")]
struct Cli {
    /// Servers to talk to (comma-separated host:port); the next is tried when one is down.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    addr: Vec<String>,
    /// API token sent to the servers (from `acl bootstrap`, `token create`
    /// or `cluster env`).
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA's certificate (PEM) to check the servers against.
    #[arg(long, global = true, env = "FLOTILLA_CACERT")]
    cacert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a one-process cluster and deploy the given specs into it.
    Dev(dev::DevArgs),
    /// Run the agent that runs a host's allocations.
    Agent(agent::AgentArgs),
    /// What the cluster did on its own: autoscaling, lost nodes, failures.
    Events(events::EventsArgs),
    /// Stream an allocation's output.
    Logs(logs::LogsArgs),
    /// Run a scheduler server.
    Server(server::ServerArgs),
    /// Create or update workloads from spec files.
    Deploy(workloads::DeployArgs),
    /// Show one workload.
    Get(workloads::GetArgs),
    /// List workloads.
    List(workloads::ListArgs),
    /// Set a workload's replica count.
    Scale(workloads::ScaleArgs),
    /// Delete a workload.
    Delete(workloads::DeleteArgs),
    /// Follow and steer rollouts: status, history, undo, promote, pause, resume.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// List allocations: which replica runs where, and how.
    Ps(nodes::PsArgs),
    /// List services: the port every node serves each on, and its replicas.
    Services(services::ServicesArgs),
    /// List nodes with their capacity and what is allocated.
    Nodes(nodes::NodesArgs),
    /// A live full-screen view of nodes, workloads and events; `q` quits.
    Top(top::TopArgs),
    /// List replica slots' volumes and the node holding each; `volumes rm
    /// WORKLOAD` removes those a deleted workload kept.
    Volumes(volumes::VolumesArgs),
    /// Drain or undrain a node.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Inspect and change the server cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// The cluster's access control: `acl bootstrap` makes the management token.
    #[command(subcommand)]
    Acl(tokens::AclCommand),
    /// API tokens (roles admin, deploy, read) and join tokens (agent, server).
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Secrets for workloads' env and files: put, list, delete (values are never shown).
    #[command(subcommand)]
    Secret(secrets::SecretCommand),
    /// The cluster CA: `ca create DIR` for the founders of a cluster of
    /// several servers; `ca status`; `ca rotate` to replace it without downtime.
    #[command(subcommand)]
    Ca(certificate_authority::CaCommand),
    /// Holds back what a member of a local cluster sends its peers (started
    /// by `cluster slow --delay` inside the member's namespace).
    #[command(hide = true)]
    DelayLink(flotilla_cli::chaos::delay::DelayLinkArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let client = || connection::client(&cli.addr, cli.token.as_deref(), cli.cacert.as_deref());
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Server(args) => server::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Events(args) => events::events(&client()?, args).await,
            Command::Logs(args) => logs::logs(&client()?, args).await,
            Command::Deploy(args) => workloads::deploy(&client()?, args).await,
            Command::Get(args) => workloads::get(&client()?, args).await,
            Command::List(args) => workloads::list(&client()?, args).await,
            Command::Scale(args) => workloads::scale(&client()?, args).await,
            Command::Delete(args) => workloads::delete(&client()?, args).await,
            Command::Rollout(command) => rollout::run(&client()?, command).await,
            Command::Ps(args) => nodes::ps(&client()?, args).await,
            Command::Nodes(args) => nodes::nodes(&client()?, args).await,
            Command::Top(args) => top::top(&client()?, args).await,
            Command::Services(args) => services::services(&client()?, args).await,
            Command::Node(command) => nodes::node(&client()?, command).await,
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut std::io::stdout());
                Ok(())
            }
            Command::Cluster(command) => cluster::run(client, command).await,
            Command::Acl(command) => tokens::acl(&client()?, command).await,
            Command::Token(command) => tokens::token(&client()?, command).await,
            Command::Ca(command) => certificate_authority::run(command, client, cli.cacert.as_deref()).await,
            Command::Secret(command) => secrets::run(&client()?, command).await,
            Command::DelayLink(args) => flotilla_cli::chaos::delay::delay_link(args).await,
            Command::Volumes(args) => volumes::run(&client()?, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
