//! What the metrics cost the write path: 64 clients' committed writes/s on
//! a three-server cluster of this build against the same cluster of a
//! build without metrics (FLOTILLA_BASELINE_BINARY: a `flotilla` built from
//! the commit before them), side by side in alternating rounds so that the
//! machine's drift hits both alike. The goal: under 5% fewer writes.
//!
//! ```sh
//! git worktree add /tmp/flotilla-baseline ec0585a
//! (cd /tmp/flotilla-baseline && cargo build --release -p flotilla-cli --target-dir /tmp/baseline-target)
//! FLOTILLA_BASELINE_BINARY=/tmp/baseline-target/release/flotilla \
//!   cargo bench -p flotilla-tests --bench metrics_overhead
//! ```

use std::time::{Duration, Instant};

use flotilla_api::{Client, parse_yaml};
use flotilla_tests::{ClusterOptions, TestCluster};

const ROUNDS: usize = 10;
const CLIENTS: usize = 64;
const WRITES_EACH: usize = 150;

/// 64 clients, each deploying its own workload again and again (every
/// deploy a committed, fsynced entry; the state does not grow): writes/s.
async fn write_rate(client: &Client, round: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        let spec =
            parse_yaml(&format!("name: w-{c}\nimage: busybox\nreplicas: 0\nenv: {{ROUND: \"{round}\"}}\n"))
                .expect("spec");
        tasks.push(tokio::spawn(async move {
            for i in 0..WRITES_EACH {
                let mut spec = spec.clone();
                spec.env.insert("WRITE".into(), flotilla_api::spec::EnvValue::Text(i.to_string()));
                client.deploy(&spec, None).await.expect("write");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    (CLIENTS * WRITES_EACH) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let Some(baseline) = std::env::var_os("FLOTILLA_BASELINE_BINARY") else {
        eprintln!(
            "set FLOTILLA_BASELINE_BINARY to a flotilla built without metrics (see this bench's doc comment)"
        );
        std::process::exit(2);
    };
    let with_metrics = TestCluster::start(ClusterOptions::default()).await;
    let without = TestCluster::start(ClusterOptions {
        server_binary: Some(baseline.into()),
        ..ClusterOptions::default()
    })
    .await;
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let cluster = if i == 0 { &with_metrics } else { &without };
            let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
            rates[i].push(write_rate(&cluster.client_of(leader), round).await);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (a, b) = (mean(&rates[0]), mean(&rates[1]));
    println!("metrics' cost on the write path: 3 servers on loopback, {CLIENTS} clients, alternating rounds");
    println!("{:<44} {:>12} {:>12} {:>8}", "metric", "metrics", "baseline", "ratio");
    println!("{:<44} {:>12.0} {:>12.0} {:>8.3}", format!("writes/s (mean of {ROUNDS} rounds)"), a, b, a / b);
    let mut ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(x, y)| x / y).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "{:<44} {:>12} {:>12} {:>8.3}",
        "median of the rounds' ratios",
        "",
        "",
        ratios[ratios.len() / 2]
    );
    for (round, (x, y)) in rates[0].iter().zip(&rates[1]).enumerate() {
        println!("{:<44} {:>12.0} {:>12.0} {:>8.3}", format!("  round {}", round + 1), x, y, x / y);
    }
    println!("  (the issue's bound: under 5% fewer writes, ratio >= 0.95)");
}
