//! Routing mesh benchmark on the real Docker engine, side by side in one
//! run with Docker Swarm's ingress routing mesh on the same engine.
//!
//! Three busybox httpd replicas serve a 3-byte page, with the same limits on
//! both sides: 32 MB, and 2 CPUs each, the whole machine (a smaller CPU
//! limit would cap the direct rows at one replica's share while the meshes
//! spread over three). `wrk`
//! (2 threads, 32 connections, 10 s) measures requests/s and p99 latency:
//! - direct to one replica's host port (Docker's port publishing),
//! - direct to one replica's container address (no proxy at all),
//! - through flotilla's mesh (the agent's ingress port, on loopback),
//! - through Swarm's ingress mesh (`docker service create -p`).
//!
//! busybox httpd closes every connection after its answer, so every
//! request is a new connection (wrk sends `Connection: close`, else it
//! races the close with its next request): requests/s is connections/s.
//! busybox httpd listens with a backlog of nine: a burst of connects beyond
//! it loses SYNs, retransmitted a second later, which is what the p99
//! figures of around a second are.
//!
//! Then, under a steady load of 8 clients (a new connection per request),
//! one replica's container is killed: how long traffic still reaches it
//! (the last request that failed or waited on it, > 250 ms), and how many
//! requests failed. For flotilla also: kill until the registry takes it
//! out of every pool.
//!
//! Swarm's ingress mesh is IPVS in the kernel: where the kernel has no IPVS
//! (no `/proc/net/ip_vs` once Swarm is up) its published ports answer
//! nothing, and the bench says so instead of printing Swarm figures.
//! Run with `cargo bench -p flotilla-tests --bench mesh`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::{Client, parse_yaml};
use flotilla_tests::docker_network::DockerNetwork;
use flotilla_tests::http_load::fetch;
use flotilla_tests::{ClusterOptions, TestCluster, docker_available, free_port};

const REPLICAS: usize = 3;
const IMAGE: &str = "flotilla/busybox:latest";
const SERVE: &str = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www";
const WRK_SECONDS: u32 = 5;
/// Rounds of wrk runs taken in turns; each row is its median round.
const ROUNDS: usize = 3;
const LOAD_CLIENTS: usize = 8;
/// A request slower than this after the kill waited on the dead replica.
const AFFECTED: Duration = Duration::from_millis(250);

fn docker_cli(args: &[&str]) -> (bool, String) {
    let output = Command::new("docker").args(args).output().expect("docker runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// What `wrk` measured against one address.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    requests_per_second: f64,
    p99_ms: f64,
    errors: u64,
}

fn wrk(address: SocketAddr) -> Throughput {
    let output = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{WRK_SECONDS}s"), "--latency", "-H", "Connection: close"])
        .arg(format!("http://{address}/"))
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |prefix: &str| -> Option<&str> {
        text.lines().map(str::trim).find(|l| l.starts_with(prefix)).and_then(|l| l.split_whitespace().nth(1))
    };
    let requests_per_second = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let p99_ms = field("99%").map(latency_ms).unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .find(|l| l.trim().starts_with("Socket errors:") || l.trim().starts_with("Non-2xx"))
        .map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Throughput { requests_per_second, p99_ms, errors }
}

/// `wrk`'s `1.23ms`, `456.00us`, `1.2s` in milliseconds.
fn latency_ms(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "s" => value * 1000.0,
        _ => value,
    }
}

/// One request of the steady load: when it started, how long it took, whether it failed.
type Sample = (Instant, Duration, bool);

/// Runs a steady load until `stop`, returning every request's sample.
async fn steady_load(address: SocketAddr, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<Sample> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| {
            let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let start = Instant::now();
                    let failed = fetch(address).await.is_err();
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push((start, start.elapsed(), failed));
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    samples.clone()
}

/// What killing a replica under load did.
#[derive(Debug, Clone, Copy)]
struct KillFigures {
    /// From the kill to the end of the last request that failed or waited on the dead replica.
    traffic_ms: f64,
    failed: usize,
    requests: usize,
    /// flotilla: from the kill until the registry said it was not ready.
    registry_ms: Option<f64>,
}

/// Kills `container` under load through `address`; `out_of_pool` waits
/// until the orchestrator has taken it out, returning when it saw that.
async fn kill_under_load<F, Fut>(address: SocketAddr, container: &str, out_of_pool: F) -> KillFigures
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<Instant>>,
{
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(steady_load(address, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SIGKILL to the container's process itself: `docker kill` takes half a
    // second or more here before the signal is even sent.
    let (_, pid) = docker_cli(&["inspect", "--format", "{{.State.Pid}}", container]);
    let killed = Instant::now();
    let status = Command::new("kill").args(["-KILL", &pid]).status().expect("kill runs");
    assert!(status.success(), "kill -KILL {pid} ({container})");
    let out = out_of_pool().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = load.await.expect("load");
    let after: Vec<&Sample> = samples.iter().filter(|(start, took, _)| *start + *took >= killed).collect();
    let last = after
        .iter()
        .filter(|(_, took, failed)| *failed || *took > AFFECTED)
        .map(|(start, took, _)| (*start + *took).duration_since(killed))
        .max()
        .unwrap_or_default();
    KillFigures {
        traffic_ms: last.as_secs_f64() * 1000.0,
        failed: after.iter().filter(|(_, _, failed)| *failed).count(),
        requests: after.len(),
        registry_ms: out.map(|at| at.duration_since(killed).as_secs_f64() * 1000.0),
    }
}

struct Figures {
    direct_host_port: Throughput,
    direct_container: Throughput,
    mesh_one: Throughput,
    mesh: Throughput,
    kill: KillFigures,
}

async fn until_mesh_serves(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while fetch(address).await.is_err() {
        assert!(Instant::now() < deadline, "nothing answers at {address}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn service_spec(name: &str, replicas: usize, ingress: u16) -> String {
    format!(
        "name: {name}\nimage: {IMAGE}\ncommand: [sh, -c, \"{SERVE}\"]\nreplicas: {replicas}\n\
         resources: {{cpu: 2, memory: 32Mi}}\nports: [{{name: http, container: 80, ingress: {ingress}}}]\n\
         checks: [{{name: web, http: {{path: /index.html, port: 80}}, interval: 200ms}}]\n\
         service: {{balance: least_connections}}\n"
    )
}

/// The median run of each of `targets`, measured in turns over `ROUNDS`
/// rounds so that a noisy moment of the machine falls on all of them.
fn interleaved(targets: &[SocketAddr]) -> Vec<Throughput> {
    let mut runs: Vec<Vec<Throughput>> = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (target, runs) in targets.iter().zip(&mut runs) {
            runs.push(wrk(*target));
        }
    }
    runs.into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
            r[r.len() / 2]
        })
        .collect()
}

async fn flotilla() -> Figures {
    let network = DockerNetwork::create("flotilla-bench-mesh");
    let mut cluster = TestCluster::start(ClusterOptions { servers: 1, ..ClusterOptions::default() }).await;
    cluster.add_agent("a", &["--cpu", "64", "--memory", "64Gi", "--docker-network", &network.name]);
    let client = cluster.client();
    while client.nodes(false).await.map(|n| n.len()).unwrap_or(0) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ingress, ingress_one) = (free_port(), free_port());
    for (name, replicas, port) in [("web", REPLICAS, ingress), ("one", 1, ingress_one)] {
        let spec = parse_yaml(&service_spec(name, replicas, port)).expect("spec");
        client.deploy(&spec, None).await.expect("deploy");
    }
    let service = ready_service(&client, "web", REPLICAS).await;
    let one = ready_service(&client, "one", 1).await;
    let (mesh, mesh_one) =
        (SocketAddr::new(cluster.mesh, ingress), SocketAddr::new(cluster.mesh, ingress_one));
    until_mesh_serves(mesh).await;
    until_mesh_serves(mesh_one).await;
    let endpoint = &one.endpoints[0];
    let host_port = endpoint.ports[0].1;
    let container_ip = endpoint.container_address.as_ref().expect("a container address").ip;
    let figures = interleaved(&[
        SocketAddr::new([127, 0, 0, 1].into(), host_port),
        SocketAddr::new(container_ip, 80),
        mesh_one,
        mesh,
    ]);

    let victim = service.endpoints[0].allocation;
    let allocations = client.allocations(Some("web"), None).await.expect("allocations");
    let container = allocations.iter().find(|a| a.id == victim).and_then(|a| a.runtime_id.clone());
    let index = client.services(0, Duration::ZERO).await.expect("services").index;
    let kill = kill_under_load(mesh, &container.expect("a container"), || async {
        // A blocking query, as every mesh follows the registry.
        let mut index = index;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Ok(page) = client.services(index, Duration::from_secs(5)).await else { continue };
            index = page.index;
            let web = page.services.iter().find(|s| s.name.as_str() == "web");
            if web.is_some_and(|s| s.endpoints.iter().any(|e| e.allocation == victim && !e.ready)) {
                return Some(Instant::now());
            }
        }
        None
    })
    .await;
    for name in ["web", "one"] {
        client.delete(name).await.expect("delete");
    }
    let name = cluster.agent("a").name.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker_cli(&["ps", "-aq", "--filter", &format!("label=flotilla.node={name}")]).1.is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cluster);
    drop(network);
    Figures {
        direct_host_port: figures[0],
        direct_container: figures[1],
        mesh_one: figures[2],
        mesh: figures[3],
        kill,
    }
}

async fn ready_service(client: &Client, name: &str, replicas: usize) -> flotilla_api::Service {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(service) = client.service(name).await
            && service.endpoints.len() == replicas
            && service.endpoints.iter().all(|e| e.ready)
        {
            return service;
        }
        assert!(Instant::now() < deadline, "the replicas of {name} did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn swarm() -> Option<(Throughput, KillFigures)> {
    let (initialised, _) = docker_cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    if !initialised {
        eprintln!("swarm init failed; no Swarm figures");
        return None;
    }
    let port = free_port();
    let publish = format!("published={port},target=80,mode=ingress");
    let replicas = REPLICAS.to_string();
    let (created, _) = docker_cli(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        "swarm-mesh",
        "--replicas",
        &replicas,
        "--limit-cpu",
        "2",
        "--limit-memory",
        "32M",
        "--no-resolve-image",
        "--publish",
        &publish,
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    let figures = if created { swarm_figures(port).await } else { None };
    docker_cli(&["service", "rm", "swarm-mesh"]);
    docker_cli(&["swarm", "leave", "--force"]);
    figures
}

fn swarm_tasks() -> Vec<String> {
    let (_, ids) = docker_cli(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=swarm-mesh"]);
    ids.lines().map(str::to_owned).collect()
}

async fn swarm_figures(port: u16) -> Option<(Throughput, KillFigures)> {
    let address = SocketAddr::new([127, 0, 0, 1].into(), port);
    let deadline = Instant::now() + Duration::from_secs(120);
    while swarm_tasks().len() < REPLICAS || fetch(address).await.is_err() {
        if swarm_tasks().len() >= REPLICAS && !std::path::Path::new("/proc/net/ip_vs").exists() {
            eprintln!(
                "Swarm's tasks run, but its ingress mesh needs IPVS and this kernel has none \
                 (no /proc/net/ip_vs): no Swarm figures"
            );
            return None;
        }
        if Instant::now() > deadline {
            eprintln!("the Swarm service did not come up; no Swarm figures");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let throughput = interleaved(&[address])[0];
    let victim = swarm_tasks().into_iter().next()?;
    let kill = kill_under_load(address, &victim, || async { None }).await;
    Some((throughput, kill))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !docker_available("mesh benchmark") {
        return;
    }
    let flotilla = flotilla().await;
    let swarm = swarm().await;
    println!(
        "routing meshes on the Docker engine: busybox httpd replicas, wrk -t2 -c32 -d{WRK_SECONDS}s, \
         median of {ROUNDS} rounds taken in turns, a new connection per request"
    );
    println!("{:<50} {:>12} {:>10} {:>8} {:>10}", "path", "requests/s", "p99 ms", "errors", "vs direct");
    let direct = flotilla.direct_host_port.requests_per_second;
    let row = |what: &str, t: &Throughput| {
        println!(
            "{:<50} {:>12.0} {:>10.2} {:>8} {:>9.2}x",
            what,
            t.requests_per_second,
            t.p99_ms,
            t.errors,
            t.requests_per_second / direct
        );
    };
    row("direct: one replica's host port", &flotilla.direct_host_port);
    row("direct: the same replica's container address", &flotilla.direct_container);
    row("flotilla mesh to that one replica", &flotilla.mesh_one);
    row("flotilla mesh (ingress, 3 replicas)", &flotilla.mesh);
    match &swarm {
        Some((throughput, _)) => row("swarm ingress mesh (-p, 3 replicas)", throughput),
        None => println!("{:<50} {:>12}", "swarm ingress mesh (-p, 3 replicas)", "-"),
    }
    println!(
        "p99 added by flotilla's mesh to one replica: {:.2} ms over its container address, {:.2} ms over its host port",
        flotilla.mesh_one.p99_ms - flotilla.direct_container.p99_ms,
        flotilla.mesh_one.p99_ms - flotilla.direct_host_port.p99_ms
    );
    println!();
    println!("one replica's container killed under {LOAD_CLIENTS} clients (a new connection per request):");
    println!("{:<58} {:>12} {:>12}", "metric", "flotilla", "swarm");
    let swarm_kill = swarm.as_ref().map(|(_, k)| *k);
    let cell = |f: Option<String>| f.unwrap_or_else(|| "-".into());
    println!(
        "{:<58} {:>12.0} {:>12}",
        "kill to the last request sent to it (ms)",
        flotilla.kill.traffic_ms,
        cell(swarm_kill.map(|k| format!("{:.0}", k.traffic_ms)))
    );
    println!(
        "{:<58} {:>12} {:>12}",
        "requests failed after the kill",
        format!("{}/{}", flotilla.kill.failed, flotilla.kill.requests),
        cell(swarm_kill.map(|k| format!("{}/{}", k.failed, k.requests)))
    );
    println!(
        "{:<58} {:>12} {:>12}",
        "kill until out of every pool by the registry (ms)",
        cell(flotilla.kill.registry_ms.map(|ms| format!("{ms:.0}"))),
        "-"
    );
}
