//! Both sides of the election timeout's trade, side by side in one run: a
//! shorter timeout fails over sooner, and one too short for the machine's
//! stalls elects leaders that no fault removed. For each timeout, a
//! three-server cluster (TLS and tokens, as deployed) takes 64 writers for
//! ten minutes while the elections are counted (terms gone by: pre-vote
//! keeps a follower that only lost touch from raising the term), then the
//! leader is killed -9 in 40 trials and timed until the next acknowledged
//! write. The two timeouts run one after the other on the same machine.
//! (With 40 trials the nearest-rank p99 is the slowest trial.)
//!
//! Run with `cargo bench -p flotilla-tests --bench election_timeout`;
//! `FLOTILLA_SOAK_SECS` shortens the soak (default 600).

use std::time::{Duration, Instant};

use flotilla_tests::failover::{failover_trials, spec};
use flotilla_tests::latency::{ms, percentile};
use flotilla_tests::{ClusterOptions, TestCluster};

/// The timeout before this change and the default now, the old first.
const TIMEOUTS_MS: [u64; 2] = [1000, 750];
const WRITERS: usize = 64;
const TRIALS: usize = 40;

/// What one timeout's run measured.
struct Side {
    timeout_ms: u64,
    /// Acknowledged writes and their latencies, sorted.
    latencies: Vec<Duration>,
    /// Writes that failed (no leader, timed out): an election's cost to clients.
    failed: usize,
    soak: Duration,
    /// Terms gone by during the soak, with nothing killed or cut.
    elections: u64,
    failovers: Vec<Duration>,
}

async fn highest_term(cluster: &TestCluster) -> u64 {
    let mut term = 0;
    for server in &cluster.servers {
        if let Some(status) = cluster.status_of(server.id).await {
            term = term.max(status.term);
        }
    }
    term
}

/// 64 clients, each with every server's address (as the CLI has), each
/// deploying its own workload again and again until `duration` is over:
/// every deploy is a committed, fsynced entry, and the state stays the
/// same size however long it runs.
async fn soak(cluster: &TestCluster, duration: Duration) -> (Vec<Duration>, usize) {
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = cluster.client();
        tasks.push(tokio::spawn(async move {
            let body = spec(&format!("soak-{writer}"));
            let (mut latencies, mut failed) = (Vec::new(), 0);
            while Instant::now() < end {
                let started = Instant::now();
                match client.deploy(&body, None).await {
                    Ok(_) => latencies.push(started.elapsed()),
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (l, f) = task.await.expect("writer task");
        latencies.extend(l);
        failed += f;
    }
    latencies.sort();
    (latencies, failed)
}

async fn measure(timeout_ms: u64, soak_for: Duration) -> Side {
    let options = ClusterOptions {
        server_args: vec!["--election-timeout-ms".to_owned(), timeout_ms.to_string()],
        ..ClusterOptions::default()
    };
    let mut cluster = TestCluster::start(options).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let term_before = highest_term(&cluster).await;
    let started = Instant::now();
    let (latencies, failed) = soak(&cluster, soak_for).await;
    let soak = started.elapsed();
    let elections = highest_term(&cluster).await.saturating_sub(term_before);
    let failovers = failover_trials(&mut cluster, TRIALS).await;
    Side { timeout_ms, latencies, failed, soak, elections, failovers }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let soak_secs = std::env::var("FLOTILLA_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let soak_for = Duration::from_secs(soak_secs);
    let mut sides = Vec::new();
    for timeout_ms in TIMEOUTS_MS {
        sides.push(measure(timeout_ms, soak_for).await);
    }

    println!("election timeout: both sides of the trade, 3 servers (TLS + tokens) on loopback");
    print!("{:<46}", "--election-timeout-ms");
    for side in &sides {
        print!(" {:>12}", side.timeout_ms);
    }
    println!();
    let row = |label: &str, value: &dyn Fn(&Side) -> String| {
        print!("{label:<46}");
        for side in &sides {
            print!(" {:>12}", value(side));
        }
        println!();
    };
    row(&format!("soak: {WRITERS} writers for (s)"), &|s| format!("{:.0}", s.soak.as_secs_f64()));
    row("  writes acknowledged", &|s| s.latencies.len().to_string());
    row("  writes/s", &|s| format!("{:.0}", s.latencies.len() as f64 / s.soak.as_secs_f64()));
    row("  write p50 ms", &|s| format!("{:.1}", ms(percentile(&s.latencies, 0.50))));
    row("  write p99 ms", &|s| format!("{:.1}", ms(percentile(&s.latencies, 0.99))));
    row("  write max ms", &|s| format!("{:.0}", ms(percentile(&s.latencies, 1.0))));
    row("  writes failed", &|s| s.failed.to_string());
    row("  elections no fault caused", &|s| s.elections.to_string());
    row(&format!("failover p50 ms ({TRIALS} trials)"), &|s| {
        format!("{:.0}", ms(percentile(&s.failovers, 0.50)))
    });
    row(&format!("failover p99 ms ({TRIALS} trials)"), &|s| {
        format!("{:.0}", ms(percentile(&s.failovers, 0.99)))
    });
    row("failover min ms", &|s| format!("{:.0}", ms(percentile(&s.failovers, 0.0))));
}
