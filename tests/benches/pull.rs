//! Image pulls, side by side in one run: a deploy of 20 replicas of an
//! image the node lacks, pulled from a registry on loopback (Debian's
//! docker-registry), until all run; against the engine alone pulling the
//! same image and creating and starting the same 20 containers, with the
//! agent's parallelism (8 runtime calls at a time). Five of each, in
//! turns (the engine here drifts from minute to minute); medians.
//! Run with `cargo bench -p flotilla-tests --bench pull`.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use flotilla_api::{AllocationState, parse_yaml};
use flotilla_tests::registry::{Registry, docker as docker_cli};
use flotilla_tests::{TestCluster, docker_available};
use futures_util::StreamExt;

const REPLICAS: usize = 20;
/// Runs of each, in turns; the medians are compared.
const ROUNDS: usize = 5;
/// The agent's parallel runtime calls, given to the engine alone too.
const PARALLEL: usize = 8;
/// A layer of this many random bytes over busybox, so the pull is real work.
const LAYER_MIB: usize = 64;

async fn remove_image(docker: &Docker, image: &str) {
    let options = RemoveImageOptionsBuilder::default().force(true).build();
    let _ = docker.remove_image(image, Some(options), None).await;
}

/// The engine alone: pull, then create+start the replicas, `PARALLEL` at a time.
/// One run's times from its start: a replica started (flotilla: left
/// pending; the engine: the pull ended), one running, all running.
#[derive(Debug, Clone, Copy)]
struct Run {
    started: Duration,
    first_running: Duration,
    all_running: Duration,
}

/// The median of each figure over the runs.
fn medians(runs: &[Run]) -> Run {
    let median = |figure: fn(&Run) -> Duration| {
        let mut values: Vec<Duration> = runs.iter().map(figure).collect();
        values.sort();
        values[values.len() / 2]
    };
    Run {
        started: median(|r| r.started),
        first_running: median(|r| r.first_running),
        all_running: median(|r| r.all_running),
    }
}

async fn engine_pull_create_start(docker: &Docker, repository: &str, tag: &str) -> Run {
    let image = format!("{repository}:{tag}");
    let start = Instant::now();
    let options = CreateImageOptionsBuilder::default().from_image(repository).tag(tag).build();
    let mut pull = docker.create_image(Some(options), None, None);
    while let Some(item) = pull.next().await {
        item.expect("the engine pulls");
    }
    let pulled = start.elapsed();
    let mut tasks = Vec::new();
    for worker in 0..PARALLEL {
        let (docker, image, start) = (docker.clone(), image.clone(), start);
        tasks.push(tokio::spawn(async move {
            let mut running = Vec::new();
            for i in (worker..REPLICAS).step_by(PARALLEL) {
                let options =
                    CreateContainerOptionsBuilder::default().name(&format!("pull-bench-{i}")).build();
                let body = ContainerCreateBody {
                    image: Some(image.clone()),
                    cmd: Some(vec!["sleep".into(), "100000".into()]),
                    ..ContainerCreateBody::default()
                };
                let created = docker.create_container(Some(options), body).await.expect("create");
                docker.start_container(&created.id, None).await.expect("start");
                running.push(start.elapsed());
            }
            running
        }));
    }
    let mut running = Vec::new();
    for task in tasks {
        running.extend(task.await.expect("worker"));
    }
    let all_running = start.elapsed();
    for i in 0..REPLICAS {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&format!("pull-bench-{i}"), Some(options)).await;
    }
    Run { started: pulled, first_running: running.into_iter().min().unwrap_or_default(), all_running }
}

/// flotilla: deploy `name` with `REPLICAS` replicas of `image`, until all
/// run; then delete it and wait for its containers to go.
async fn flotilla_deploy(cluster: &TestCluster, name: &str, image: &str) -> Run {
    let client = cluster.client();
    let spec = parse_yaml(&format!(
        "name: {name}\nimage: {image}\ncommand: [sleep, \"100000\"]\nreplicas: {REPLICAS}\nresources: {{cpu: 100m, memory: 32Mi}}\n"
    ))
    .expect("spec");
    let start = Instant::now();
    client.deploy(&spec, None).await.expect("deploy");
    let (mut started, mut first_running) = (None, None);
    let all_running = loop {
        let all = client.allocations(Some(name), None).await.unwrap_or_default();
        let running = all.iter().filter(|a| a.state == AllocationState::Running).count();
        if started.is_none() && all.iter().any(|a| a.state != AllocationState::Pending) {
            started = Some(start.elapsed());
        }
        if first_running.is_none() && running > 0 {
            first_running = Some(start.elapsed());
        }
        if running >= REPLICAS {
            break start.elapsed();
        }
        // As often as a user's poll would; finer polls take CPU from the engine.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    client.delete(name).await.expect("delete");
    while !cluster.agents.iter().all(|a| a.containers().is_empty()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Run {
        started: started.unwrap_or_default(),
        first_running: first_running.unwrap_or_default(),
        all_running,
    }
}

#[tokio::main]
async fn main() {
    if !docker_available("pull benchmark") {
        return;
    }
    let docker =
        Docker::connect_with_local_defaults().expect("docker").negotiate_version().await.expect("version");
    let cluster = TestCluster::with_agents(&["a"], &["--cpu", "64", "--memory", "64Gi"]).await;
    let client = cluster.client();
    while docker.inspect_image("flotilla/busybox:latest").await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An image of busybox and a random layer, pushed to a loopback registry.
    let dir = tempfile::tempdir().expect("dir");
    let registry = Registry::start(dir.path(), &dir.path().join("storage"), None);
    let context = dir.path().join("context");
    std::fs::create_dir_all(&context).expect("context");
    // xorshift64: bytes gzip cannot shrink, so the registry serves them all.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let blob: Vec<u8> = (0..(LAYER_MIB << 17))
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    std::fs::write(context.join("blob"), &blob).expect("blob");
    std::fs::write(context.join("Dockerfile"), "FROM flotilla/busybox:latest\nCOPY blob /blob\n")
        .expect("Dockerfile");
    let local = "flotilla-pull-bench:1";
    docker_cli(&["build", "-q", "-t", local, &context.display().to_string()]);
    let (image, _) = registry.push(local, "bench/big:1");
    docker_cli(&["rmi", local]);
    let repository = image.trim_end_matches(":1").to_owned();

    let (mut engine_runs, mut flotilla_runs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Who goes first alternates: the one after pays for the other's
        // clean-up, which the engine finishes in the background.
        for engine_turn in [round % 2 == 0, round % 2 == 1] {
            remove_image(&docker, &image).await;
            if engine_turn {
                engine_runs.push(engine_pull_create_start(&docker, &repository, "1").await);
            } else {
                flotilla_runs.push(flotilla_deploy(&cluster, &format!("pull-{round}"), &image).await);
            }
        }
    }
    let pulls: Vec<String> = client
        .events(0, Duration::ZERO)
        .await
        .map(|page| {
            page.events.into_iter().map(|e| e.message).filter(|m| m.contains("pulled image")).collect()
        })
        .unwrap_or_default();
    drop(cluster);
    remove_image(&docker, &image).await;
    drop(registry);

    let (flotilla, engine) = (medians(&flotilla_runs), medians(&engine_runs));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("image pull: {REPLICAS} replicas of busybox + a {LAYER_MIB} MiB layer from a loopback registry");
    println!("{:<56} {:>10} {:>10}", "metric (medians of 5, ms)", "flotilla", "engine");
    let rows = [
        ("a replica starting (flotilla) / the pull done (engine)", flotilla.started, engine.started),
        ("a replica running", flotilla.first_running, engine.first_running),
        ("all replicas running", flotilla.all_running, engine.all_running),
    ];
    for (label, ours, theirs) in rows {
        println!("{label:<56} {:>10.0} {:>10.0}", ms(ours), ms(theirs));
    }
    let ratio = flotilla.all_running.as_secs_f64() / engine.all_running.as_secs_f64();
    println!("{:<56} {ratio:>10.2}", "all running, flotilla / engine (goal <= 1.15)");
    for pull in pulls {
        println!("  agent: {pull}");
    }
}
