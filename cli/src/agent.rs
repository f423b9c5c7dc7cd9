//! `flotilla agent`: runs the host daemon in the foreground.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use flotilla_agent::restart::RestartConfig;
use flotilla_agent::{AgentConfig, RuntimeKind};
use flotilla_api::{CpuMillis, HostVolume, MemoryBytes};
use flotilla_security::JoinToken;

use crate::server::{init_logging, shutdown_signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DriverArg {
    Docker,
    Process,
    Sim,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Servers to register with (comma-separated host:port).
    #[arg(long, env = "FLOTILLA_ADDR", value_delimiter = ',', default_value = "127.0.0.1:7001")]
    servers: Vec<String>,
    /// Where the agent keeps its state (process runtime records and logs).
    #[arg(long)]
    data_dir: PathBuf,
    /// The node's name; defaults to the host name.
    #[arg(long)]
    name: Option<String>,
    /// A node label as key=value; repeat for more.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// CPU to offer (250m, 2); defaults to the host's, less --reserve-cpu.
    #[arg(long, value_parser = CpuMillis::parse)]
    cpu: Option<CpuMillis>,
    /// Memory to offer (512Mi, 2Gi); defaults to the host's, less --reserve-memory.
    #[arg(long, value_parser = MemoryBytes::parse)]
    memory: Option<MemoryBytes>,
    #[arg(long, value_parser = CpuMillis::parse, default_value = "100m")]
    reserve_cpu: CpuMillis,
    #[arg(long, value_parser = MemoryBytes::parse, default_value = "256Mi")]
    reserve_memory: MemoryBytes,
    /// Runtimes to offer (comma-separated); default: docker if it answers, and process.
    #[arg(long = "driver", value_enum, value_delimiter = ',')]
    drivers: Vec<DriverArg>,
    /// A directory of this host offered to replicas as a host volume,
    /// NAME=PATH or NAME=PATH:ro; repeat for more.
    #[arg(long = "host-volume", value_parser = host_volume)]
    host_volumes: Vec<(String, HostVolume)>,
    /// Where the agent's API (logs) listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Delay before the second restart of a failing allocation; doubles from there.
    #[arg(long, default_value_t = 1000)]
    restart_backoff_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    restart_max_backoff_ms: u64,
    /// Failures within --failure-window-s after which an allocation is failed and placed elsewhere.
    #[arg(long, default_value_t = 10)]
    max_failures: usize,
    #[arg(long, default_value_t = 600)]
    failure_window_s: u64,
    /// How long a container labelled with this node but owned by no
    /// allocation may stay before the agent removes it.
    #[arg(long, default_value_t = 60_000)]
    orphan_grace_ms: u64,
    /// The Docker network replicas join; the engine's default bridge if absent.
    /// An agent that runs in a container names its own network, so that its
    /// health checks reach the replicas.
    #[arg(long, env = "FLOTILLA_DOCKER_NETWORK")]
    docker_network: Option<String>,
    /// Drivers that are off unless allowed: `process` runs any command a
    /// spec names on this host (as --process-user).
    #[arg(long = "allow-driver", value_enum, value_delimiter = ',')]
    allow_drivers: Vec<AllowedDriver>,
    /// The user process replicas run as (the agent must be root to switch;
    /// otherwise they run as the agent's user).
    #[arg(long, default_value = "nobody")]
    process_user: String,
    /// A process replica's output is rotated past this size; two older
    /// files are kept (as Docker's max-size and max-file).
    #[arg(long, value_parser = MemoryBytes::parse_size, default_value = "10Mi")]
    process_log_max_size: MemoryBytes,
    /// Addresses the routing mesh serves every service port on (ingress
    /// and assigned), comma-separated; `none` for no mesh. Several agents on
    /// one host may share them. With --docker-network the mesh (and the DNS
    /// for `*.flotilla`) also serves on this host's address on that network.
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0", value_parser = mesh_address)]
    mesh_listen: Vec<MeshAddress>,
    /// An agent join token (`flotilla token create --role agent`), needed
    /// until the agent holds a certificate for its node.
    #[arg(long, env = "FLOTILLA_JOIN_TOKEN", hide_env_values = true, conflicts_with = "insecure")]
    join_token: Option<String>,
    /// Plain HTTP to servers started --insecure: no certificate, and logs
    /// served to anyone.
    #[arg(long)]
    insecure: bool,
    /// Runs this many simulated nodes in this one process (`--driver sim`
    /// only), named NAME-1 to NAME-N after --name, each offering --cpu and
    /// --memory and registering, heartbeating, long-polling and reporting
    /// as an agent of its own: a fleet of thousands on one machine. They
    /// serve no logs API (they have no logs), and under --insecure they
    /// share one connection pool.
    #[arg(long, requires = "name", value_parser = clap::value_parser!(u32).range(1..))]
    fleet: Option<u32>,
}

/// A driver that `--allow-driver` can turn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AllowedDriver {
    Process,
}

/// One `--mesh-listen` value.
#[derive(Debug, Clone, Copy)]
enum MeshAddress {
    Ip(std::net::IpAddr),
    None,
}

fn mesh_address(text: &str) -> Result<MeshAddress, String> {
    if text == "none" {
        return Ok(MeshAddress::None);
    }
    text.parse().map(MeshAddress::Ip).map_err(|_| format!("`{text}` is not an IP address (or `none`)"))
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_owned())
}

/// One `--host-volume NAME=PATH[:ro]`: the name as a spec writes it, and
/// an absolute directory that exists now (a typo is caught at start, not
/// at a replica's first start).
fn host_volume(text: &str) -> Result<(String, HostVolume), String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=PATH[:ro]"))?;
    let (path, read_only) = match rest.strip_suffix(":ro") {
        Some(path) => (path, true),
        None => (rest.strip_suffix(":rw").unwrap_or(rest), false),
    };
    flotilla_api::spec::DnsLabel::parse(name).map_err(|reason| format!("name `{name}`: {reason}"))?;
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!("path `{}` is not absolute", path.display()));
    }
    if !path.is_dir() {
        return Err(format!("path `{}` is not a directory on this host", path.display()));
    }
    Ok((name.to_owned(), HostVolume { path: path.display().to_string(), read_only }))
}

pub fn config(args: AgentArgs) -> anyhow::Result<AgentConfig> {
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) =
            label.split_once('=').with_context(|| format!("--label: `{label}` is not key=value"))?;
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    if args.servers.is_empty() {
        bail!("--servers: give at least one server address");
    }
    let runtimes = (!args.drivers.is_empty()).then(|| {
        args.drivers
            .iter()
            .map(|d| match d {
                DriverArg::Docker => RuntimeKind::Docker,
                DriverArg::Process => RuntimeKind::Process,
                DriverArg::Sim => RuntimeKind::Sim,
            })
            .collect()
    });
    let simulated = args.drivers.iter().all(|d| matches!(d, DriverArg::Sim)) && !args.drivers.is_empty();
    let mesh_listen = if simulated {
        Vec::new()
    } else {
        args.mesh_listen
            .iter()
            .filter_map(|a| match a {
                MeshAddress::Ip(ip) => Some(*ip),
                MeshAddress::None => None,
            })
            .collect()
    };
    Ok(AgentConfig {
        servers: args.servers,
        data_dir: args.data_dir,
        name: args.name.unwrap_or_else(host_name),
        labels,
        host_volumes: host_volumes(args.host_volumes)?,
        cpu: args.cpu,
        memory: args.memory,
        reserve_cpu: args.reserve_cpu,
        reserve_memory: args.reserve_memory,
        runtimes,
        allow_process: args.allow_drivers.contains(&AllowedDriver::Process),
        process_user: args.process_user,
        process_log_max_bytes: args.process_log_max_size.0,
        listen: Some(args.listen),
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(50)),
        restart: RestartConfig {
            initial_backoff: Duration::from_millis(args.restart_backoff_ms),
            max_backoff: Duration::from_millis(args.restart_max_backoff_ms),
            max_failures: args.max_failures,
            window: Duration::from_secs(args.failure_window_s),
            ..RestartConfig::default()
        },
        orphan_grace: Duration::from_millis(args.orphan_grace_ms),
        docker_network: args.docker_network,
        mesh_listen,
        stop_on_exit: false,
        insecure: args.insecure,
        join_token: args
            .join_token
            .as_deref()
            .map(JoinToken::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--join-token: {e}"))?,
        io: None,
    })
}

/// The offers by name; one name offered twice is a mistake, not a choice.
fn host_volumes(offers: Vec<(String, HostVolume)>) -> anyhow::Result<BTreeMap<String, HostVolume>> {
    let mut by_name = BTreeMap::new();
    for (name, volume) in offers {
        if by_name.insert(name.clone(), volume).is_some() {
            bail!("--host-volume: `{name}` is offered twice");
        }
    }
    Ok(by_name)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging("info");
    let fleet = args.fleet;
    let config = config(args)?;
    match fleet {
        Some(size) => run_fleet(config, size).await,
        None => Ok(flotilla_agent::run(config, shutdown_signal()).await?),
    }
}

/// `--fleet N`: N simulated agents in this process, stopped together.
async fn run_fleet(config: AgentConfig, size: u32) -> anyhow::Result<()> {
    if config.runtimes.as_deref() != Some(&[RuntimeKind::Sim]) {
        bail!("--fleet: only simulated nodes come in fleets; add --driver sim");
    }
    crate::open_files::raise_limit(crate::open_files::for_fleet(size, config.servers.len()));
    // Each node has a client of its own, as agents on their own hosts do:
    // one HTTP/2 connection a node carries its long-poll, heartbeats and
    // reports. Those exchanges and the heartbeats run on a runtime of
    // their own: with the members' supervisors on the same one, a fleet
    // starting a million replicas fell twenty seconds behind its clock,
    // answers lay unread in its sockets, and the servers marked its
    // nodes down by the thousand. Two threads: on one, the exchanges of
    // ten thousand nodes fell eleven seconds behind on their own.
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fleet-io")
        .enable_all()
        .build()
        .context("cannot start the fleet's network runtime")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    for member in 1..=size {
        let mut node = config.clone();
        node.listen = None;
        node.name = format!("{}-{member}", config.name);
        node.data_dir = config.data_dir.join(&node.name);
        node.io = Some(io.handle().clone());
        let mut stopped = stopped.clone();
        let name = node.name.clone();
        agents.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            (name, flotilla_agent::run(node, shutdown).await)
        });
    }
    tracing::info!(nodes = size, "fleet started");
    let lag = tokio::spawn(warn_when_behind("members", "its nodes start replicas and report late"));
    let io_lag = io
        .spawn(warn_when_behind("fleet-io", "its nodes' calls leave late and heartbeats may time out here"));
    let ended = run_until_stopped(agents, stop).await;
    lag.abort();
    io_lag.abort();
    io.shutdown_background();
    ended
}

/// Runs the fleet's members until the process is told to stop or one of
/// them stops on its own (a failure of the fleet).
async fn run_until_stopped(
    mut agents: tokio::task::JoinSet<(String, Result<(), flotilla_agent::AgentError>)>,
    stop: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<()> {
    tokio::select! {
        () = shutdown_signal() => {}
        // One member stopping on its own is a failure of the fleet.
        Some(ended) = agents.join_next() => {
            let (name, result) = ended.context("a fleet member panicked")?;
            let _ = stop.send(true);
            result.with_context(|| format!("fleet member {name}"))?;
            bail!("fleet member {name} stopped on its own");
        }
    }
    let _ = stop.send(true);
    while let Some(ended) = agents.join_next().await {
        let (name, result) = ended.context("a fleet member panicked")?;
        result.with_context(|| format!("fleet member {name}"))?;
    }
    Ok(())
}

/// Warns when one of the fleet's runtimes falls behind its clock (the
/// members' or the one carrying their calls): what it runs then happens
/// late, and what the servers see late (nodes marked down, replicas slow
/// to run) is the fleet's doing, not the servers'. A timer that should
/// wake every 100 ms measures how late it is.
async fn warn_when_behind(runtime: &'static str, consequence: &'static str) {
    const TICK: Duration = Duration::from_millis(100);
    let mut watch = LagWatch::new(std::time::Instant::now());
    loop {
        let asleep = std::time::Instant::now();
        tokio::time::sleep(TICK).await;
        let now = std::time::Instant::now();
        if let Some(worst) = watch.observe(now.duration_since(asleep).saturating_sub(TICK), now) {
            tracing::warn!(
                runtime,
                worst_lag_ms = worst.as_millis() as u64,
                "the fleet is behind its clock: {consequence}"
            );
        }
    }
}

/// The worst lag over a window of ten seconds, reported when the window
/// closes if it reached half a second: less is a busy moment, while half
/// a second is a good share of a heartbeat's timeout (1.2 s at the least).
struct LagWatch {
    worst: Duration,
    since: std::time::Instant,
}

impl LagWatch {
    const WINDOW: Duration = Duration::from_secs(10);
    const WORTH_SAYING: Duration = Duration::from_millis(500);

    fn new(now: std::time::Instant) -> Self {
        LagWatch { worst: Duration::ZERO, since: now }
    }

    /// Takes one measured lag; the window's worst when it closes, if worth saying.
    fn observe(&mut self, lag: Duration, now: std::time::Instant) -> Option<Duration> {
        self.worst = self.worst.max(lag);
        if now.duration_since(self.since) < Self::WINDOW {
            return None;
        }
        let worst = std::mem::take(&mut self.worst);
        self.since = now;
        (worst >= Self::WORTH_SAYING).then_some(worst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::LagWatch;

    #[test]
    fn the_worst_lag_of_a_window_is_said_once_when_the_window_closes_and_only_if_worth_saying() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let lag = Duration::from_millis;
        let mut watch = LagWatch::new(start);
        // (lag, at, what is said)
        let table = [
            (lag(900), at(1_000), None),
            (lag(20), at(9_000), None),
            (lag(10), at(10_000), Some(lag(900))),
            (lag(499), at(15_000), None),
            (lag(30), at(20_000), None),
            (lag(500), at(25_000), None),
            (lag(0), at(30_000), Some(lag(500))),
        ];
        for (step, (lag, now, said)) in table.into_iter().enumerate() {
            assert_eq!(watch.observe(lag, now), said, "step {step}");
        }
    }
}
