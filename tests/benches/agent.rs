//! Agent benchmark on the real Docker engine, side by side in one run with
//! the engine's own create+start and with Docker Swarm on the same engine:
//! deploying 50 replicas, replacing a killed container, re-placing the
//! replicas of a killed agent, and the agent's memory.
//! Run with `cargo bench -p flotilla-tests --bench agent`.

use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use flotilla_api::{AllocationState, Client, parse_yaml};
use flotilla_tests::latency::{ms, percentile};
use flotilla_tests::process_memory::rss_kib;
use flotilla_tests::{ClusterOptions, TestCluster, docker_available};

const REPLICAS: usize = 50;
/// Replicas on the agent that is killed.
const MOVING: usize = 10;
const IMAGE: &str = "flotilla/busybox:latest";

fn docker_cli(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn running_count(client: &Client, workload: &str) -> usize {
    client
        .allocations(Some(workload), None)
        .await
        .map(|all| all.iter().filter(|a| a.state == AllocationState::Running).count())
        .unwrap_or(0)
}

/// The engine alone: create+start 50 containers, four at a time.
async fn engine_create_start(docker: &Docker) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let docker = docker.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..REPLICAS).step_by(4) {
                let name = format!("engine-bench-{i}");
                let options = CreateContainerOptionsBuilder::default().name(&name).build();
                let body = ContainerCreateBody {
                    image: Some(IMAGE.to_owned()),
                    cmd: Some(vec!["sleep".into(), "100000".into()]),
                    ..ContainerCreateBody::default()
                };
                let created = docker.create_container(Some(options), body).await.expect("create");
                docker.start_container(&created.id, None).await.expect("start");
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    let elapsed = start.elapsed();
    for i in 0..REPLICAS {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&format!("engine-bench-{i}"), Some(options)).await;
    }
    elapsed
}

/// Kills `container` and waits until the engine reports it running again:
/// the measure both the agent and the engine's own restart are timed by.
async fn kill_until_running(docker: &Docker, container: &str, restart: bool) -> Duration {
    let killed_at = Instant::now();
    docker_cli(&["kill", container]);
    if restart {
        docker.start_container(container, None).await.expect("start");
    }
    loop {
        let state = docker.inspect_container(container, None).await.ok().and_then(|c| c.state);
        if state.as_ref().is_some_and(|s| s.running == Some(true)) {
            return killed_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The engine alone: a container like a replica (same image, command and
/// limits) killed and started again the moment the kill returns, which is
/// as fast as any restarter on this engine can be: the floor under the
/// agent's figure.
async fn engine_kill_start(docker: &Docker, rounds: usize) -> Vec<Duration> {
    let options = CreateContainerOptionsBuilder::default().name("engine-bench-restart").build();
    let body = ContainerCreateBody {
        image: Some(IMAGE.to_owned()),
        cmd: Some(vec!["sleep".into(), "100000".into()]),
        host_config: Some(HostConfig {
            nano_cpus: Some(100_000_000),
            memory: Some(32 << 20),
            memory_swap: Some(32 << 20),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let created = docker.create_container(Some(options), body).await.expect("create");
    docker.start_container(&created.id, None).await.expect("start");
    let mut times = Vec::new();
    for _ in 0..rounds {
        times.push(kill_until_running(docker, &created.id, true).await);
    }
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    let _ = docker.remove_container(&created.id, Some(options)).await;
    times.sort();
    times
}

struct SwarmFigures {
    deploy: Duration,
    replace: Vec<Duration>,
}

/// Docker Swarm on the same engine: a service of 50 replicas, then killed tasks.
async fn swarm(trials: usize) -> Option<SwarmFigures> {
    let init =
        Command::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]).output().ok()?;
    if !init.status.success() {
        eprintln!("swarm init failed: {}", String::from_utf8_lossy(&init.stderr));
        return None;
    }
    let start = Instant::now();
    let created = Command::new("docker")
        .args(["service", "create", "--quiet", "--name", "swarm-bench", "--replicas", &REPLICAS.to_string()])
        .args(["--no-resolve-image", IMAGE, "sleep", "100000"])
        .output()
        .ok()?;
    let deploy = start.elapsed();
    let mut replace = Vec::new();
    if created.status.success() {
        for _ in 0..trials {
            let running =
                docker_cli(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=swarm-bench"]);
            let victim = running.lines().next().unwrap_or_default().to_owned();
            let before = running.lines().count();
            let killed_at = Instant::now();
            docker_cli(&["kill", &victim]);
            loop {
                let now =
                    docker_cli(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=swarm-bench"]);
                if now.lines().count() >= before && !now.contains(&victim) {
                    break;
                }
                if killed_at.elapsed() > Duration::from_secs(60) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            replace.push(killed_at.elapsed());
        }
    }
    docker_cli(&["service", "rm", "swarm-bench"]);
    docker_cli(&["swarm", "leave", "--force"]);
    replace.sort();
    Some(SwarmFigures { deploy, replace })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !docker_available("agent benchmark") {
        return;
    }
    let docker =
        Docker::connect_with_local_defaults().expect("docker").negotiate_version().await.expect("version");
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("a", &["--cpu", "64", "--memory", "64Gi"]);
    let client = cluster.client();
    while client.nodes(false).await.map(|n| n.len()).unwrap_or(0) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(cluster.agent("a").pid().expect("agent pid"));

    // Warm the engine and the image cache.
    engine_create_start(&docker).await;
    // The engine alone and a flotilla deploy, in turns, three of each: the
    // engine on this fuse-overlayfs drifts by a third from minute to minute.
    let (mut engine_runs, mut flotilla_runs) = (Vec::new(), Vec::new());
    let mut name = String::new();
    for round in 0..3 {
        if !name.is_empty() {
            client.delete(&name).await.expect("delete");
            while !cluster.agent("a").containers().is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        engine_runs.push(engine_create_start(&docker).await);
        name = format!("bench-{round}");
        let spec = parse_yaml(&format!(
            "name: {name}\nimage: {IMAGE}\ncommand: [sleep, \"100000\"]\nreplicas: {REPLICAS}\nresources: {{cpu: 100m, memory: 32Mi}}\n"
        ))
        .expect("spec");
        let start = Instant::now();
        client.deploy(&spec, None).await.expect("deploy");
        while running_count(&client, &name).await < REPLICAS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flotilla_runs.push(start.elapsed());
    }
    engine_runs.sort();
    flotilla_runs.sort();
    let (engine, flotilla_deploy) = (engine_runs[1], flotilla_runs[1]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_rss = rss_kib(cluster.agent("a").pid().expect("agent pid"));

    // A killed container until it runs again.
    let mut replace = Vec::new();
    let containers = cluster.agent("a").containers();
    for victim in containers.iter().take(20) {
        replace.push(kill_until_running(&docker, victim, false).await);
    }
    replace.sort();
    let engine_restart = engine_kill_start(&docker, 20).await;

    // An agent killed until its replicas run on another agent (default
    // settings: 1 s heartbeats, 3 s TTL, 0.5 s grace), with 10 replicas.
    client.delete(&name).await.expect("delete");
    let moving = parse_yaml(&format!(
        "name: moving\nimage: {IMAGE}\ncommand: [sleep, \"100000\"]\nreplicas: {MOVING}\nresources: {{cpu: 100m, memory: 32Mi}}\n"
    ))
    .expect("spec");
    client.deploy(&moving, None).await.expect("deploy");
    while running_count(&client, "moving").await < MOVING {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.add_agent("b", &["--cpu", "64", "--memory", "64Gi"]);
    while client.nodes(false).await.map(|n| n.len()).unwrap_or(0) < 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_name = cluster.agent("a").name.clone();
    let killed_at = Instant::now();
    cluster.agent("a").kill();
    loop {
        let all = client.allocations(Some("moving"), None).await.unwrap_or_default();
        let moved = all.iter().filter(|a| a.state == AllocationState::Running && a.node != a_name).count();
        if moved == MOVING {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let agent_loss = killed_at.elapsed();
    cluster.agent("a").remove_containers();
    client.delete("moving").await.expect("delete");
    drop(cluster);

    let swarm = swarm(20).await;

    println!("flotilla agent on the Docker engine ({REPLICAS} replicas of busybox sleep)");
    println!("{:<56} {:>12} {:>12} {:>12}", "metric", "flotilla", "engine", "swarm");
    let swarm_deploy = swarm.as_ref().map_or("-".into(), |s| format!("{:.0}", ms(s.deploy)));
    println!(
        "{:<56} {:>12.0} {:>12.0} {:>12}",
        "deploy 50 replicas until all run, median of 3 (ms)",
        ms(flotilla_deploy),
        ms(engine),
        swarm_deploy
    );
    println!("{:<56} {:>12.2}", "  flotilla / engine", flotilla_deploy.as_secs_f64() / engine.as_secs_f64());
    let swarm_p = |p| {
        swarm
            .as_ref()
            .filter(|s| !s.replace.is_empty())
            .map_or("-".into(), |s| format!("{:.0}", ms(percentile(&s.replace, p))))
    };
    println!(
        "{:<56} {:>12.0} {:>12} {:>12}",
        "killed container until it runs again, p50 (ms)",
        ms(percentile(&replace, 0.5)),
        format!("{:.0}", ms(percentile(&engine_restart, 0.5))),
        swarm_p(0.5)
    );
    println!(
        "{:<56} {:>12.0} {:>12} {:>12}",
        "killed container until it runs again, p99 (ms)",
        ms(percentile(&replace, 0.99)),
        format!("{:.0}", ms(percentile(&engine_restart, 0.99))),
        swarm_p(0.99)
    );
    println!(
        "{:<56} {:>12.0}",
        format!("agent killed -9 until its {MOVING} replicas run elsewhere (ms)"),
        ms(agent_loss)
    );
    println!("{:<56} {:>12.1}", "agent RSS idle (MiB)", idle_rss as f64 / 1024.0);
    println!("{:<56} {:>12.1}", "agent RSS with 50 allocations (MiB)", busy_rss as f64 / 1024.0);
}
