//! Control-plane benchmark on a three-server cluster on loopback:
//! committed writes per second with 1 and 64 clients (and with and without
//! idempotency keys, side by side; and from 64 connections of wrk and 64
//! streams of h2load, clients light enough to leave the two cores to the
//! servers), write latency, and
//! leader failover time (kill -9 of the leader until the next write is
//! acknowledged); then the same cluster secure (mutual TLS and API
//! tokens, the default) and started `--insecure`, side by side, to price
//! TLS. Run with `cargo bench -p flotilla-tests --bench raft`.

use std::time::{Duration, Instant};

use flotilla_api::Client;
use flotilla_tests::failover::{failover_trials, spec};
use flotilla_tests::latency::{ms, percentile};
use flotilla_tests::{ClusterOptions, TestCluster};

async fn single_client(client: &Client, writes: usize) -> (f64, Vec<Duration>) {
    let mut latencies = Vec::with_capacity(writes);
    let start = Instant::now();
    for i in 0..writes {
        let t = Instant::now();
        client.deploy(&spec(&format!("one-{i}")), None).await.expect("write");
        latencies.push(t.elapsed());
    }
    let rate = writes as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

async fn many_clients(client: &Client, clients: usize, writes_each: usize) -> (f64, Vec<Duration>) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(writes_each);
            for i in 0..writes_each {
                let t = Instant::now();
                client.deploy(&spec(&format!("many-{c}-{i}")), None).await.expect("write");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// 64 clients deploying over plain HTTP, each write with or without an
/// `Idempotency-Key`: the same requests, so the difference is the key's
/// cost (remembering the outcome in the state machine). Each client deploys
/// its own workload again and again (every deploy is still a committed,
/// fsynced entry), so the state does not grow from one run to the next and
/// both variants run against the same state.
async fn raw_writes(cluster: &TestCluster, id: u64, clients: usize, writes_each: usize, keyed: bool) -> f64 {
    let http = cluster.http();
    let url = cluster.url(id, "/v1/workloads");
    let token = cluster.admin_token().map(str::to_owned);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let body = spec(&format!("raw-{c}"));
            for _ in 0..writes_each {
                let mut request = http.post(&url).json(&body);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                if keyed {
                    request = request.header("Idempotency-Key", flotilla_api::client::new_idempotency_key());
                }
                let response = request.send().await.expect("write");
                let status = response.status();
                // Read to the end, as a client does: a response dropped
                // unread resets its stream, and the frames still coming
                // for it count against h2's limit of 1,024 resets per
                // connection, after which the client closes it (GOAWAY
                // too_many_internal_resets, hyperium/h2#856).
                let body = response.bytes().await.expect("the answer's body");
                assert!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    (clients * writes_each) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let to_leader = cluster.client_of(leader);
    // Warm up connections and the allocator.
    single_client(&to_leader, 200).await;

    let (rate1, lat1) = single_client(&to_leader, 2000).await;
    let (rate64, lat64) = many_clients(&to_leader, 64, 300).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let (rate64f, _) = many_clients(&cluster.client_of(follower), 64, 100).await;
    // Keyed and unkeyed writes, alternated so that drift hits both alike.
    let (mut keyed, mut unkeyed) = (Vec::new(), Vec::new());
    raw_writes(&cluster, leader, 64, 20, true).await;
    for round in 0..6 {
        // Alternate which goes first, so that neither always follows the other.
        let first_keyed = round % 2 == 1;
        for keyed_now in [first_keyed, !first_keyed] {
            let rate = raw_writes(&cluster, leader, 64, 100, keyed_now).await;
            if keyed_now { keyed.push(rate) } else { unkeyed.push(rate) }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (keyed, unkeyed) = (mean(&keyed), mean(&unkeyed));
    let light = light_client_writes(&cluster, leader);
    let multiplexed = multiplexed_writes(&cluster, leader).await;
    let failover = failover_trials(&mut cluster, 20).await;

    println!("flotilla control plane, 3 servers on loopback (fsync on every Raft write)");
    println!("{:<44} {:>12}", "metric", "value");
    println!("{:<44} {:>12.0}", "writes/s, 1 client", rate1);
    println!("{:<44} {:>12.2}", "write latency p50 ms, 1 client", ms(percentile(&lat1, 0.50)));
    println!("{:<44} {:>12.2}", "write latency p99 ms, 1 client", ms(percentile(&lat1, 0.99)));
    println!("{:<44} {:>12.0}", "writes/s, 64 clients (to the leader)", rate64);
    println!("{:<44} {:>12.0}", "writes/s, 64 clients (to a follower)", rate64f);
    println!("{:<44} {:>12.0}", "writes/s, 64 clients, no idempotency key", unkeyed);
    println!("{:<44} {:>12.0}", "writes/s, 64 clients, idempotency key", keyed);
    println!("{:<44} {:>12.3}", "  keyed / unkeyed", keyed / unkeyed);
    match &light {
        Some(w) => {
            println!("{:<44} {:>12.0}", "writes/s, 64 connections of wrk (to the leader)", w.rate);
            println!("{:<44} {:>12}", "  wrk latency p50 / p99 ms", format!("{} / {}", w.p50, w.p99));
        }
        None => println!("{:<44} {:>12}", "writes/s, 64 connections of wrk", "no wrk here"),
    }
    match &multiplexed {
        Some(h) => {
            println!("{:<44} {:>12.0}", "writes/s, h2load: 4 connections x 16 streams", h.rate);
            println!("{:<44} {:>12}", "  h2load mean latency", h.mean);
        }
        None => println!("{:<44} {:>12}", "writes/s, h2load", "no h2load here"),
    }
    println!("{:<44} {:>12.2}", "write latency p50 ms, 64 clients", ms(percentile(&lat64, 0.50)));
    println!("{:<44} {:>12.2}", "write latency p99 ms, 64 clients", ms(percentile(&lat64, 0.99)));
    println!(
        "{:<44} {:>12.0}",
        format!("failover p50 ms ({} trials)", failover.len()),
        ms(percentile(&failover, 0.50))
    );
    println!(
        "{:<44} {:>12.0}",
        format!("failover p99 ms ({} trials)", failover.len()),
        ms(percentile(&failover, 0.99))
    );
    println!("{:<44} {:>12.0}", "failover max ms", ms(failover[failover.len() - 1]));
    drop(cluster);
    compare_tls_with_insecure().await;
}

/// What wrk measured.
struct WrkRun {
    rate: f64,
    p50: String,
    p99: String,
}

/// The 64-writer load from a client that costs little: wrk (C, one
/// connection each, TLS, the admin token) posting deploys of 64 workloads to
/// the leader for 10 s. The clients above run in this process, on the same
/// two cores as the servers, and reqwest with rustls costs about as much CPU
/// per write as a server does; this figure is closer to what the servers
/// alone can take. `None` where wrk is not installed (`apt-get install wrk`).
fn light_client_writes(cluster: &TestCluster, leader: u64) -> Option<WrkRun> {
    let script = tempfile::NamedTempFile::new().expect("a temp file");
    let token =
        cluster.admin_token().map(|t| format!(r#"["Authorization"]="Bearer {t}","#)).unwrap_or_default();
    std::fs::write(
        script.path(),
        format!(
            "counter = 0\nrequest = function()\n  counter = counter + 1\n  local body = \
             string.format('{{\"name\":\"wrk-%d\",\"image\":\"busybox\",\"replicas\":2}}', counter % 64)\n  \
             return wrk.format(\"POST\", \"/v1/workloads\", {{{token}[\"Content-Type\"]=\"application/json\"}}, body)\nend\n"
        ),
    )
    .expect("write the wrk script");
    let url = cluster.url(leader, "/");
    let output = std::process::Command::new("wrk")
        .args(["-t2", "-c64", "-d10s", "--latency", "-s"])
        .arg(script.path())
        .arg(url.trim_end_matches('/'))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!text.contains("Non-2xx"), "wrk's writes were refused: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let rate = field("Requests/sec:").parse().expect("wrk prints its rate");
    Some(WrkRun { rate, p50: field("50%"), p99: field("99%") })
}

/// What h2load measured.
struct H2loadRun {
    rate: f64,
    mean: String,
}

/// 64 writers as HTTP/2 streams, as flotilla's own clients talk (agents,
/// the CLI, a follower passing writes on): h2load (C, nghttp2; `apt-get
/// install nghttp2-client`) over 4 TLS connections of 16 streams each, with
/// the admin token, for 10 s. Every request redeploys one workload, each a
/// committed, fsynced entry: the leader's commit index must move by at
/// least the count. `None` where h2load is not installed.
async fn multiplexed_writes(cluster: &TestCluster, leader: u64) -> Option<H2loadRun> {
    let body = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(body.path(), serde_json::to_vec(&spec("h2load")).expect("the spec as JSON"))
        .expect("write the body");
    let mut args: Vec<String> =
        ["-c", "4", "-m", "16", "-D", "10", "--warm-up-time", "1"].map(str::to_owned).into();
    args.extend(["-H".to_owned(), "content-type: application/json".to_owned()]);
    if let Some(token) = cluster.admin_token() {
        args.extend(["-H".to_owned(), format!("authorization: Bearer {token}")]);
    }
    args.extend(["-d".to_owned(), body.path().display().to_string(), cluster.url(leader, "/v1/workloads")]);
    let before = cluster.status_of(leader).await.expect("the leader's status").commit;
    let output = tokio::process::Command::new("h2load").args(&args).output().await.ok()?;
    let after = cluster.status_of(leader).await.expect("the leader's status").commit;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "h2load failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    let line = |prefix: &str| text.lines().find(|l| l.trim_start().starts_with(prefix)).unwrap_or_default();
    // "finished in 10.00s, 20447.02 req/s, 7.39MB/s"
    let rate: f64 = line("finished in")
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))
        .and_then(|r| r.parse().ok())
        .expect("h2load prints its rate");
    // "status codes: 200000 2xx, 0 3xx, 0 4xx, 0 5xx"
    let codes = line("status codes:");
    let succeeded: u64 = codes
        .trim_start()
        .strip_prefix("status codes: ")
        .and_then(|c| c.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("h2load prints its status codes");
    assert!(codes.contains(", 0 3xx, 0 4xx, 0 5xx"), "h2load's writes were refused: {text}");
    assert!(
        after - before >= succeeded,
        "{succeeded} writes answered, the commit index moved {}",
        after - before
    );
    // "time for request:   1.23ms  45.6ms  3.1ms ..." (min, max, mean)
    let mean = line("time for request:").split_whitespace().nth(5).unwrap_or("?").to_owned();
    Some(H2loadRun { rate, mean })
}

/// The same measurements on a secure cluster and an `--insecure` one, in
/// alternating rounds so that the machine's drift hits both alike: 64
/// clients' committed writes/s (each client a connection pool of its own
/// to the leader, TLS sessions kept alive as a real client's are) and
/// failover until the next acknowledged write (new connections, so new
/// TLS handshakes, to the surviving servers).
async fn compare_tls_with_insecure() {
    let mut secure = TestCluster::start(ClusterOptions::default()).await;
    let mut insecure =
        TestCluster::start(ClusterOptions { insecure: true, ..ClusterOptions::default() }).await;
    let (mut rates, mut p99s, mut failovers) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    for round in 0..4 {
        // Alternate which goes first, so that neither always follows the other.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let cluster = if i == 0 { &mut secure } else { &mut insecure };
            let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
            let (rate, latencies) = many_clients(&cluster.client_of(leader), 64, 50).await;
            rates[i].push(rate);
            p99s[i].push(percentile(&latencies, 0.99));
            failovers[i].extend(failover_trials(cluster, 3).await);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        percentile(v, 0.5)
    };
    let (secure_rate, insecure_rate) = (mean(&rates[0]), mean(&rates[1]));
    let [mut secure_p99, mut insecure_p99] = p99s;
    let [mut secure_failover, mut insecure_failover] = failovers;
    println!();
    println!("TLS 1.3 + API tokens (default) vs --insecure, same machine, alternating rounds");
    println!("{:<44} {:>12} {:>12} {:>8}", "metric", "TLS+tokens", "--insecure", "ratio");
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>8.3}",
        "writes/s, 64 clients (mean of 4 rounds)",
        secure_rate,
        insecure_rate,
        secure_rate / insecure_rate
    );
    let (a, b) = (median(&mut secure_p99), median(&mut insecure_p99));
    println!(
        "{:<44} {:>12.1} {:>12.1} {:>8.3}",
        "write p99 ms, 64 clients (median)",
        ms(a),
        ms(b),
        ms(a) / ms(b)
    );
    let (a, b) = (median(&mut secure_failover), median(&mut insecure_failover));
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>8.3}",
        format!("failover p50 ms ({} trials each)", secure_failover.len()),
        ms(a),
        ms(b),
        ms(a) / ms(b)
    );
    println!(
        "  (the issue's bound: TLS+tokens at most 15% slower: writes/s ratio >= 0.85, failover ratio <= 1.15)"
    );
}
