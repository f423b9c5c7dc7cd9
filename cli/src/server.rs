//! `flotilla server`: runs one scheduler server in the foreground.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use flotilla_api::MemoryBytes;
use flotilla_scheduler::ServerConfig;
use flotilla_scheduler::controllers::node_health::HealthConfig;
use flotilla_scheduler::raft::NodeConfig;
use flotilla_scheduler::server::{CaSource, TlsSetup};
use flotilla_scheduler::state::ServicePortRange;
use flotilla_security::JoinToken;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// This server's Raft id (unique, more than 0).
    #[arg(long)]
    id: u64,
    /// host:port to listen on; peers and clients reach this server there.
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: String,
    /// Where the Raft log and snapshots live.
    #[arg(long)]
    data_dir: PathBuf,
    /// Founding voters as id=host:port, comma-separated, this server included.
    #[arg(long, value_delimiter = ',', conflicts_with = "join")]
    peers: Vec<String>,
    /// Address of a member of an existing cluster, to join it instead of founding one.
    #[arg(long)]
    join: Option<String>,
    /// Take a snapshot and compact the log every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// ... or once the log's entries take this much (256Mi, 1Gi); a
    /// compaction for size keeps at most half of it.
    #[arg(long, value_parser = MemoryBytes::parse_size, default_value = "256Mi")]
    snapshot_bytes: MemoryBytes,
    /// Milliseconds per Raft tick (a heartbeat every 2 ticks).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Milliseconds without a leader's word before a follower asks for votes
    /// (each waits a random 1 to 1.3 times this). Shorter fails over sooner;
    /// too short for the machine's stalls elects leaders no fault removed.
    #[arg(long, default_value_t = 750)]
    election_timeout_ms: u64,
    /// Mark a node down after this many milliseconds without a heartbeat (plus --node-grace-ms).
    #[arg(long, default_value_t = 3000)]
    node_ttl_ms: u64,
    #[arg(long, default_value_t = 500)]
    node_grace_ms: u64,
    /// The most heartbeats per second the leader asks of all nodes
    /// together: past this many nodes, each beats less often (and its TTL
    /// grows to three of its intervals).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeats_per_second: u32,
    /// Bytes per request to a peer; bigger snapshots go in chunks of this
    /// size (tests make it small to send even small snapshots in chunks).
    #[arg(long, hide = true, default_value_t = 8 << 20)]
    raft_chunk_bytes: usize,
    /// Allow tests to cut this server off from peers through /debug/v1/faults.
    #[arg(long, hide = true)]
    fault_injection: bool,
    /// Ports the cluster chooses service ports from, for named ports without an ingress.
    #[arg(long, default_value = "20000-29999")]
    service_ports: String,
    /// Plain HTTP, no certificates, no tokens: anyone who reaches the port
    /// owns the cluster. For trying things out and measuring TLS's cost.
    #[arg(long)]
    insecure: bool,
    /// A CA made by `flotilla ca create`, shared by the founders of a
    /// cluster of several servers (one founder alone makes its own).
    #[arg(long, conflicts_with = "insecure")]
    ca_dir: Option<PathBuf>,
    /// A server join token (`flotilla token create --role server`), with --join.
    #[arg(
        long,
        env = "FLOTILLA_JOIN_TOKEN",
        hide_env_values = true,
        requires = "join",
        conflicts_with = "insecure"
    )]
    join_token: Option<String>,
    /// How long the certificates this server issues last, in seconds; they
    /// are renewed after two thirds of that.
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    cert_lifetime_secs: u64,
}

/// Where this server gets the cluster CA if its data dir has none yet.
fn ca_source(args: &ServerArgs, founders: usize) -> anyhow::Result<Option<TlsSetup>> {
    if args.insecure {
        return Ok(None);
    }
    if args.cert_lifetime_secs < 30 {
        bail!("--cert-lifetime-secs: must be at least 30");
    }
    let stored = args.data_dir.join("tls/ca.pem").exists();
    let source = match (&args.ca_dir, &args.join, &args.join_token) {
        _ if stored => CaSource::Stored,
        (Some(dir), _, _) => CaSource::Directory(dir.clone()),
        (None, Some(seed), Some(token)) => CaSource::Join {
            seed: seed.clone(),
            token: JoinToken::parse(token).map_err(|e| anyhow::anyhow!("--join-token: {e}"))?,
        },
        (None, None, _) if founders <= 1 => CaSource::Create,
        (None, None, _) => bail!(
            "--peers: founding a secure cluster of {founders} servers needs one CA for all: run `flotilla ca create DIR` and give each founder --ca-dir DIR (or found with one server and --join the others with a server token)"
        ),
        (None, Some(_), None) => bail!(
            "--join: a secure cluster admits a server with a join token; pass --join-token (from `flotilla token create --role server`) or --ca-dir"
        ),
    };
    Ok(Some(TlsSetup { source, lifetime: Duration::from_secs(args.cert_lifetime_secs) }))
}

fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for peer in peers {
        let (id, address) =
            peer.split_once('=').with_context(|| format!("--peers: `{peer}` is not id=host:port"))?;
        let id: u64 = id.trim().parse().with_context(|| format!("--peers: `{id}` is not a server id"))?;
        if id == 0 {
            bail!("--peers: server ids start at 1");
        }
        if out.insert(id, address.trim().to_owned()).is_some() {
            bail!("--peers: server id {id} is listed twice");
        }
    }
    Ok(out)
}

/// The election timeout in whole ticks. Raft needs it well past the
/// heartbeat: a follower must be able to miss a few heartbeats (a slow tick,
/// a busy machine) without calling an election, so at least four fit in it.
fn election_ticks(timeout_ms: u64, tick: Duration, heartbeat_ticks: usize) -> anyhow::Result<usize> {
    let tick_ms = tick.as_millis().max(1) as u64;
    let ticks = timeout_ms.div_ceil(tick_ms);
    let least = 4 * heartbeat_ticks as u64;
    if ticks < least {
        bail!(
            "--election-timeout-ms: {timeout_ms} ms is under four heartbeats; at --tick-ms {tick_ms} it must be \
             at least {} ms",
            least * tick_ms
        );
    }
    usize::try_from(ticks).with_context(|| format!("--election-timeout-ms: {timeout_ms} ms is too long"))
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Logs to stderr, filtered by `FLOTILLA_LOG` (else `default`), coloured
/// only on a terminal and never with `NO_COLOR`.
pub fn init_logging(default: &str) {
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging("info,raft=warn");
    crate::open_files::raise_limit(crate::open_files::FOR_SERVER);
    if args.id == 0 {
        bail!("--id: server ids start at 1");
    }
    if args.snapshot_every < 10 {
        bail!("--snapshot-every: must be at least 10");
    }
    let mut node = NodeConfig::new(args.id);
    node.snapshot_every = args.snapshot_every;
    if args.snapshot_bytes.0 < 64 << 10 {
        bail!("--snapshot-bytes: must be at least 64Ki");
    }
    node.snapshot_bytes = args.snapshot_bytes.0;
    if args.raft_chunk_bytes < 1024 {
        bail!("--raft-chunk-bytes: must be at least 1024");
    }
    node.peer_request_bytes = args.raft_chunk_bytes;
    node.tick = Duration::from_millis(args.tick_ms.max(1));
    node.election_ticks = election_ticks(args.election_timeout_ms, node.tick, node.heartbeat_ticks)?;
    let peers = parse_peers(&args.peers)?;
    let tls = ca_source(&args, peers.len())?;
    let config = ServerConfig {
        id: args.id,
        listen: args.listen,
        data_dir: args.data_dir,
        peers,
        join: args.join,
        tls,
        node,
        health: HealthConfig {
            ttl: Duration::from_millis(args.node_ttl_ms),
            grace: Duration::from_millis(args.node_grace_ms),
            heartbeats_per_second: args.heartbeats_per_second,
        },
        fault_injection: args.fault_injection,
        service_ports: ServicePortRange::parse(&args.service_ports)
            .map_err(|reason| anyhow::anyhow!("--service-ports: {reason}"))?,
    };
    flotilla_scheduler::run(config, shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn args(data_dir: &std::path::Path, extra: &[&str]) -> ServerArgs {
        let mut argv = vec!["server", "--id", "1", "--data-dir", data_dir.to_str().unwrap_or_default()];
        argv.extend(extra);
        match Command::try_parse_from(argv) {
            Ok(command) => command.server,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn founders_of_a_bigger_cluster_share_a_ca_unless_their_data_dir_holds_one_already() {
        let dir = tempfile::tempdir().expect("dir");
        let peers = ["--peers", "1=a:1,2=b:1,3=c:1"];
        let refused = ca_source(&args(dir.path(), &peers), 3).expect_err("three founders, no shared CA");
        assert!(refused.to_string().contains("flotilla ca create DIR"), "{refused}");
        let alone = ca_source(&args(dir.path(), &["--peers", "1=a:1"]), 1).expect("one founder");
        assert!(matches!(alone.map(|s| s.source), Some(CaSource::Create)));
        let joining = ca_source(&args(dir.path(), &["--join", "a:1"]), 0).expect_err("no join token");
        assert!(joining.to_string().contains("--join-token"), "{joining}");

        // A restart: the data dir holds the CA, and the flags that founded it no longer matter.
        std::fs::create_dir_all(dir.path().join("tls")).expect("tls dir");
        std::fs::write(dir.path().join("tls/ca.pem"), "stored").expect("ca");
        let restarted = ca_source(&args(dir.path(), &peers), 3).expect("a restart");
        assert!(matches!(restarted.map(|s| s.source), Some(CaSource::Stored)));
        assert!(ca_source(&args(dir.path(), &["--insecure"]), 1).expect("insecure").is_none());
    }

    #[test]
    fn the_election_timeout_becomes_whole_ticks_and_must_hold_four_heartbeats() {
        let cases: [(u64, u64, Result<usize, &str>); 7] = [
            (750, 50, Ok(15)),
            (1000, 50, Ok(20)),
            (760, 50, Ok(16)),
            (400, 50, Ok(8)),
            (399, 50, Ok(8)),
            (350, 50, Err("at least 400 ms")),
            (300, 100, Err("at --tick-ms 100 it must be at least 800 ms")),
        ];
        for (timeout_ms, tick_ms, expected) in cases {
            let got = election_ticks(timeout_ms, Duration::from_millis(tick_ms), 2);
            match (got, expected) {
                (Ok(ticks), Ok(want)) => assert_eq!(ticks, want, "{timeout_ms} ms at {tick_ms} ms ticks"),
                (Err(error), Err(reason)) => {
                    let error = error.to_string();
                    assert!(error.starts_with("--election-timeout-ms: "), "{error}");
                    assert!(error.contains(reason), "{error}");
                }
                (got, want) => panic!("{timeout_ms} ms at {tick_ms} ms ticks: {got:?}, expected {want:?}"),
            }
        }
        let defaults = args(std::path::Path::new("/d"), &[]);
        assert_eq!(defaults.election_timeout_ms, 750);
    }
}
