//! Rollout benchmark on the real Docker engine, side by side in one run
//! with Docker Swarm on the same engine: a rolling update of 20 replicas,
//! five at a time, with a passing health check (stop-first and
//! start-first), and a rollout whose check fails, from the deploy until
//! the revert (Swarm: the rollback) is complete.
//!
//! Both sides run the same replica (busybox httpd), with the same limits
//! and the same check: `wget` of /healthz inside the container every
//! second (flotilla: an exec check; Swarm: the service's HEALTHCHECK). A
//! second flotilla row uses an HTTP check from the node instead. What
//! differs: flotilla's replicas count once healthy (min_healthy_time 0s),
//! Swarm's after its update monitor (set to its 1 ms floor); flotilla
//! fails the bad rollout at the bad version's healthy deadline (3 s), Swarm
//! when three checks a second apart have failed.
//! Run with `cargo bench -p flotilla-tests --bench rollout`.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_api::{Client, DeploymentStatus, Health, parse_yaml};
use flotilla_tests::{ClusterOptions, TestCluster, docker_available};

const REPLICAS: usize = 20;
const PARALLEL: usize = 5;
const IMAGE: &str = "flotilla/busybox:latest";
const TRIALS: usize = 3;
const WGET: &str = "wget -q -O /dev/null http://127.0.0.1:8080/healthz";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn docker_cli(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().expect("docker runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The replica's command: serve /www, with /www/healthz only when healthy.
fn serve(version: u32, healthy: bool) -> String {
    let file = if healthy { "healthz" } else { "broken" };
    format!("mkdir -p /www && echo {version} > /www/{file} && exec httpd -f -p 8080 -h /www")
}

/// How a rollout replaces replicas: stop old ones first (Swarm's default),
/// or start new ones first.
#[derive(Clone, Copy)]
enum Order {
    StopFirst,
    StartFirst,
}

fn flotilla_spec(version: u32, healthy: bool, order: Order, http_check: bool) -> String {
    let (surge, unavailable) = match order {
        Order::StopFirst => (0, PARALLEL),
        Order::StartFirst => (PARALLEL, 0),
    };
    let check = if http_check {
        "http: {path: /healthz, port: 8080}".to_owned()
    } else {
        format!("exec: [sh, -c, \"{WGET}\"]")
    };
    format!(
        "name: bench\nimage: {IMAGE}\ncommand: [sh, -c, \"{}\"]\nreplicas: {REPLICAS}\n\
         resources: {{cpu: 100m, memory: 32Mi}}\nports: [{{container: 8080}}]\n\
         checks: [{{name: web, {check}, interval: 1s, timeout: 1s, failures: 3}}]\n\
         update: {{max_parallel: {PARALLEL}, max_surge: {surge}, max_unavailable: {unavailable}, \
         min_healthy_time: 0s, healthy_deadline: {deadline}, progress_deadline: 60s, auto_revert: true}}\n",
        serve(version, healthy),
        // A good version gets time to start all its replicas; a bad one is
        // given up on as soon as Swarm gives up on it (three failed checks).
        deadline = if healthy { "30s" } else { "3s" },
    )
}

async fn deploy(client: &Client, yaml: &str) -> u64 {
    let spec = parse_yaml(yaml).expect("valid spec");
    client.deploy(&spec, None).await.expect("deploy").workload.version
}

/// Polls until the rollout of `version` ended as `status`.
async fn until_rollout(client: &Client, version: u64, status: DeploymentStatus) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let deployments = client.deployments("bench").await.unwrap_or_default();
        if deployments.iter().any(|d| d.to_version == version && d.status == status) {
            return;
        }
        assert!(Instant::now() < deadline, "rollout of version {version} did not become {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Figures {
    stop_first: Vec<Duration>,
    start_first: Vec<Duration>,
    failed: Vec<Duration>,
}

async fn flotilla(http_check: bool) -> Figures {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("a", &["--cpu", "64", "--memory", "64Gi", "--restart-backoff-ms", "200"]);
    let client = cluster.client();
    while client.nodes(false).await.map(|n| n.len()).unwrap_or(0) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut version = 0u32;
    let first = deploy(&client, &flotilla_spec(version, true, Order::StartFirst, http_check)).await;
    until_rollout(&client, first, DeploymentStatus::Successful).await;
    let mut figures = Figures { stop_first: Vec::new(), start_first: Vec::new(), failed: Vec::new() };
    for _ in 0..TRIALS {
        for order in [Order::StopFirst, Order::StartFirst] {
            version += 1;
            let start = Instant::now();
            let to = deploy(&client, &flotilla_spec(version, true, order, http_check)).await;
            until_rollout(&client, to, DeploymentStatus::Successful).await;
            match order {
                Order::StopFirst => figures.stop_first.push(start.elapsed()),
                Order::StartFirst => figures.start_first.push(start.elapsed()),
            }
        }
        version += 1;
        let start = Instant::now();
        let bad = deploy(&client, &flotilla_spec(version, false, Order::StartFirst, http_check)).await;
        // The revert is the next version; it succeeds once the old replicas count again.
        until_rollout(&client, bad + 1, DeploymentStatus::Successful).await;
        figures.failed.push(start.elapsed());
        let all = client.allocations(Some("bench"), None).await.expect("ps");
        assert_eq!(all.iter().filter(|a| a.is_replica() && a.health == Health::Healthy).count(), REPLICAS);
    }
    client.delete("bench").await.expect("delete");
    let name = cluster.agent("a").name.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker_cli(&["ps", "-aq", "--filter", &format!("label=flotilla.node={name}")]).1.is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figures
}

/// Polls a Swarm service's update status until it is `state`.
async fn until_swarm(state: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, now) = docker_cli(&[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            "swarm-rollout",
        ]);
        if now == state {
            return;
        }
        assert!(Instant::now() < deadline, "swarm update did not become {state} (is {now})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn swarm_healthy_tasks() -> usize {
    let (_, ids) = docker_cli(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=swarm-rollout"]);
    let mut healthy = 0;
    for id in ids.lines() {
        if docker_cli(&["inspect", "--format", "{{.State.Health.Status}}", id]).1 == "healthy" {
            healthy += 1;
        }
    }
    healthy
}

async fn swarm() -> Option<Figures> {
    let (initialised, _) = docker_cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    if !initialised {
        eprintln!("swarm init failed; no Swarm figures");
        return None;
    }
    let health =
        ["--health-cmd", WGET, "--health-interval", "1s", "--health-timeout", "1s", "--health-retries", "3"];
    let policy = [
        "--update-parallelism",
        "5",
        "--update-delay",
        "0s",
        "--update-monitor",
        "1ms",
        "--update-failure-action",
        "rollback",
        "--update-max-failure-ratio",
        "0",
        "--rollback-parallelism",
        "5",
        "--rollback-monitor",
        "1ms",
        "--rollback-order",
        "start-first",
    ];
    let mut create = vec!["service", "create", "--detach", "--quiet", "--name", "swarm-rollout"];
    let replicas = REPLICAS.to_string();
    create.extend([
        "--replicas",
        &replicas,
        "--limit-cpu",
        "0.1",
        "--limit-memory",
        "32M",
        "--no-resolve-image",
    ]);
    create.extend(health);
    create.extend(policy);
    let command = serve(0, true);
    create.extend([IMAGE, "sh", "-c", &command]);
    let (created, _) = docker_cli(&create);
    if !created {
        docker_cli(&["swarm", "leave", "--force"]);
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while swarm_healthy_tasks().await < REPLICAS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut figures = Figures { stop_first: Vec::new(), start_first: Vec::new(), failed: Vec::new() };
    let mut version = 0;
    for _ in 0..TRIALS {
        for (order, samples) in
            [("stop-first", &mut figures.stop_first), ("start-first", &mut figures.start_first)]
        {
            version += 1;
            let start = Instant::now();
            swarm_update(order, &serve(version, true));
            until_swarm("completed").await;
            samples.push(start.elapsed());
        }
        version += 1;
        let start = Instant::now();
        swarm_update("start-first", &serve(version, false));
        until_swarm("rollback_completed").await;
        figures.failed.push(start.elapsed());
        // Let the rolled-back tasks settle before the next trial.
        let deadline = Instant::now() + Duration::from_secs(60);
        while swarm_healthy_tasks().await < REPLICAS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    docker_cli(&["service", "rm", "swarm-rollout"]);
    docker_cli(&["swarm", "leave", "--force"]);
    Some(figures)
}

/// Starts a Swarm update to `command`, in `order`, without waiting for it.
/// `--args` takes one shell-quoted string, which replaces the whole command
/// line (the image has no entrypoint).
fn swarm_update(order: &str, command: &str) {
    let args = format!("sh -c '{command}'");
    docker_cli(&[
        "service",
        "update",
        "--detach",
        "--quiet",
        "--update-order",
        order,
        "--args",
        &args,
        "swarm-rollout",
    ]);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !docker_available("rollout benchmark") {
        return;
    }
    let exec = flotilla(false).await;
    let http = flotilla(true).await;
    let swarm = swarm().await;
    println!(
        "rolling updates on the Docker engine: {REPLICAS} busybox httpd replicas, {PARALLEL} at a time, median of {TRIALS}"
    );
    println!("{:<58} {:>14} {:>14} {:>12}", "metric (ms)", "flotilla exec", "flotilla http", "swarm");
    let row = |what: &str, pick: fn(&Figures) -> &Vec<Duration>| {
        let swarm = swarm.as_ref().map_or("-".into(), |s| format!("{:.0}", ms(median(pick(s).clone()))));
        println!(
            "{:<58} {:>14.0} {:>14.0} {:>12}",
            what,
            ms(median(pick(&exec).clone())),
            ms(median(pick(&http).clone())),
            swarm
        );
    };
    row("rolling update, stop-first, until complete", |f| &f.stop_first);
    row("rolling update, start-first, until complete", |f| &f.start_first);
    row("failed rollout, deploy until the revert is complete", |f| &f.failed);
}
