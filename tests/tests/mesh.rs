//! The routing mesh against real replicas: busybox httpd servers that
//! answer with their own allocation id, behind agents that each serve the
//! service's port. Balance, discovery by name from another node, passive
//! ejection of a killed replica, drain in a rolling update and readiness
//! are each measured by counting replies and failures.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use flotilla_api::{Client, Service};
use flotilla_tests::containers::docker_inspect;
use flotilla_tests::docker_network::DockerNetwork;
use flotilla_tests::http_load::{Load, fetch};
use flotilla_tests::workloads::deploy;
use flotilla_tests::{TestCluster, free_port, wait_until};

/// `replicas` httpd servers answering `<allocation id> <GREETING>`, ready
/// while `/www/ready` exists.
fn web(replicas: u32, ingress: u16, balance: &str, greeting: &str) -> String {
    format!(
        "name: web\nimage: flotilla/busybox:latest\nreplicas: {replicas}\nplacement: spread\n\
         env: {{GREETING: {greeting}}}\n\
         command: [sh, -c, \"mkdir -p /www && echo $FLOTILLA_ALLOCATION_ID $GREETING > /www/index.html && \
         touch /www/ready && exec httpd -f -p 80 -h /www\"]\n\
         resources: {{cpu: 50m, memory: 16Mi}}\n\
         ports: [{{name: http, container: 80, ingress: {ingress}}}]\n\
         checks: [{{name: ready, http: {{path: /ready, port: 80}}, interval: 200ms, failures: 1, on_failure: unready}}]\n\
         update: {{min_healthy_time: 500ms, max_surge: 1, max_unavailable: 0}}\n\
         service: {{balance: {balance}, drain: 2s}}\n"
    )
}

async fn cluster_on(network: &DockerNetwork, nodes: &[&str]) -> TestCluster {
    let flags = ["--cpu", "2", "--memory", "2Gi", "--docker-network", network.name.as_str()];
    let mut cluster = TestCluster::start(Default::default()).await;
    for node in nodes {
        let label = format!("zone={node}");
        let mut with_label = flags.to_vec();
        with_label.extend(["--label", label.as_str()]);
        cluster.add_agent(node, &with_label);
    }
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "every agent registered", || async {
        (client.nodes(false).await.ok()?.len() == nodes.len()).then_some(())
    })
    .await;
    cluster
}

async fn ready_service(client: &Client, count: usize) -> Service {
    wait_until(Duration::from_secs(90), &format!("{count} ready replicas of web"), || async {
        let web = client
            .services(0, Duration::ZERO)
            .await
            .ok()?
            .services
            .into_iter()
            .find(|s| s.name.as_str() == "web")?;
        (web.endpoints.len() == count && web.endpoints.iter().all(|e| e.ready)).then_some(web)
    })
    .await
}

/// Waits until requests through `address` have reached every one of `ids`.
async fn mesh_reaches(address: SocketAddr, ids: &BTreeSet<String>) {
    let seen = std::sync::Mutex::new(BTreeSet::new());
    wait_until(Duration::from_secs(30), &format!("the mesh at {address} to reach {ids:?}"), || async {
        let reply = fetch(address).await;
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(body) = reply {
            seen.insert(first_word(&body));
        }
        ids.is_subset(&seen).then_some(())
    })
    .await;
}

async fn allocation_by_id(client: &Client, id: u64) -> flotilla_api::Allocation {
    let all = client.allocations(Some("web"), None).await.expect("allocations");
    all.into_iter().find(|a| a.id == id).expect("the allocation")
}

/// A cluster on a Docker network of its own, serving `web` (version v1)
/// through every agent's mesh, with the mesh already reaching every replica.
/// Tests bind `_network` first: bindings drop in reverse, so the cluster
/// (and its containers) goes before the network can.
struct Serving {
    _network: DockerNetwork,
    cluster: TestCluster,
    client: Client,
    ingress: u16,
    /// The first agent's mesh, on the ingress port.
    address: SocketAddr,
    service: Service,
}

async fn serving_web(test: &str, nodes: &[&str], replicas: u32, balance: &str) -> Serving {
    let network = DockerNetwork::create(&format!("flotilla-mesh-{test}"));
    let cluster = cluster_on(&network, nodes).await;
    let client = cluster.client();
    let ingress = free_port();
    deploy(&client, &web(replicas, ingress, balance, "v1")).await;
    let service = ready_service(&client, replicas as usize).await;
    let address = SocketAddr::new(cluster.mesh, ingress);
    mesh_reaches(address, &ids(&service)).await;
    Serving { cluster, _network: network, client, ingress, address, service }
}

fn ids(service: &Service) -> BTreeSet<String> {
    service.endpoints.iter().map(|e| e.allocation.to_string()).collect()
}

fn first_word(body: &str) -> String {
    body.split_whitespace().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn round_robin_spreads_300_requests_evenly_over_three_replicas() {
    let Serving { _network, cluster: _cluster, client: _client, ingress: _, address, service } =
        serving_web("rr", &["a", "b", "c"], 3, "round_robin").await;

    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let body = fetch(address).await.expect("a reply through the mesh");
        *counts.entry(first_word(&body)).or_insert(0usize) += 1;
    }
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), ids(&service), "{counts:?}");
    for (id, count) in &counts {
        assert!((80..=120).contains(count), "replica {id} got {count} of 300, not 100 ± 20%: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_replica_on_another_node_reaches_a_service_by_name() {
    let network = DockerNetwork::create("flotilla-mesh-dns");
    let cluster = cluster_on(&network, &["a", "b"]).await;
    let client = cluster.client();
    let ingress = free_port();
    let spec = web(1, ingress, "least_connections", "v1")
        .replace("placement: spread\n", "constraints: [zone == a]\n");
    deploy(&client, &spec).await;
    let service = ready_service(&client, 1).await;
    let port = service.ports[0].port;
    // On node b: by name, by the SRV record's port, and by the variable it started with.
    let caller = format!(
        "name: caller\nimage: flotilla/busybox:latest\nconstraints: [zone == b]\nrestart: always\n\
         command: [sh, -c, \"while true; do echo name=$(wget -q -O - http://web.flotilla:{port}/); \
         echo env=$(wget -q -O - http://$FLOTILLA_SERVICE_WEB_HTTP/); \
         nslookup -type=SRV _http._tcp.web.flotilla | grep -o 'service = .*'; sleep 0.5; done\"]\n"
    );
    deploy(&client, &caller).await;
    let id = service.endpoints[0].allocation;
    let caller_node = wait_until(Duration::from_secs(60), "the caller runs", || async {
        let all = client.allocations(Some("caller"), None).await.ok()?;
        all.into_iter().find(|a| a.state == flotilla_api::AllocationState::Running)
    })
    .await;
    assert_ne!(caller_node.node, service.endpoints[0].node, "the caller is on another node");
    let container = caller_node.runtime_id.clone().expect("a container");
    let output = wait_until(Duration::from_secs(60), "the caller's answers", || async {
        let logs = std::process::Command::new("docker").args(["logs", &container]).output().ok()?;
        let text = String::from_utf8_lossy(&logs.stdout).into_owned();
        let done = text.contains(&format!("name={id} v1"))
            && text.contains(&format!("env={id} v1"))
            && text.contains(&format!("service = 0 0 {port} web.flotilla"));
        done.then_some(text)
    })
    .await;
    assert!(output.contains(&format!("name={id} v1")), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn killing_a_replica_under_load_fails_at_most_the_requests_in_flight() {
    let Serving { _network, cluster: _cluster, client, ingress: _, address, service } =
        serving_web("kill", &["a", "b"], 3, "least_connections").await;

    const CLIENTS: usize = 4;
    let load = Load::start(address, CLIENTS);
    wait_until(Duration::from_secs(10), "load through the mesh", || async {
        (load.take(false).replies.values().sum::<usize>() > 100).then_some(())
    })
    .await;
    let victim = service.endpoints[0].allocation;
    let allocation = allocation_by_id(&client, victim).await;
    let container = allocation.runtime_id.clone().expect("a container");
    let killed =
        std::process::Command::new("docker").args(["kill", &container]).output().expect("docker kill");
    assert!(killed.status.success());
    // Back once its agent has restarted it and its check passes again.
    wait_until(Duration::from_secs(60), "the killed replica back in the pool", || async {
        let service = client.service("web").await.ok()?;
        let back = service.endpoints.iter().any(|e| e.allocation == victim && e.ready);
        let restarted = allocation_by_id(&client, victim).await.restarts > 0;
        (back && restarted).then_some(())
    })
    .await;
    load.take(true);
    wait_until(Duration::from_secs(30), "requests reaching the restarted replica", || async {
        load.take(false).replies.keys().any(|b| first_word(b) == victim.to_string()).then_some(())
    })
    .await;
    let tally = load.stop().await;
    let failures = tally.failures;
    assert!(
        failures.len() <= CLIENTS,
        "{} failures, more than the {CLIENTS} in flight: {failures:?}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_rolling_update_under_load_with_drain_fails_no_request() {
    let Serving { _network, cluster: _cluster, client, ingress, address, service } =
        serving_web("roll", &["a", "b"], 3, "least_connections").await;

    let load = Load::start(address, 4);
    deploy(&client, &web(3, ingress, "least_connections", "v2")).await;
    wait_until(Duration::from_secs(120), "the rollout to v2 to finish", || async {
        let workload = client.get("web").await.ok()?;
        let done = workload.version == 2
            && client.deployments("web").await.ok()?.first()?.status
                == flotilla_api::DeploymentStatus::Successful;
        done.then_some(())
    })
    .await;
    let after = ready_service(&client, 3).await;
    assert!(ids(&after).is_disjoint(&ids(&service)), "every replica was replaced");
    load.take(false);
    wait_until(Duration::from_secs(30), "only v2 answering", || async {
        let replies = load.take(true).replies;
        (!replies.is_empty() && replies.keys().all(|b| b.ends_with("v2"))).then_some(())
    })
    .await;
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{} requests failed: {:?}", tally.failures.len(), tally.failures);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_failing_readiness_check_takes_a_replica_out_of_the_pool_without_restarting_it() {
    let Serving { _network, cluster: _cluster, client, ingress: _, address, service } =
        serving_web("ready", &["a", "b"], 2, "round_robin").await;

    let unready = service.endpoints[0].allocation;
    let allocation = allocation_by_id(&client, unready).await;
    let container = allocation.runtime_id.clone().expect("a container");
    let exec = std::process::Command::new("docker").args(["exec", &container, "rm", "/www/ready"]).output();
    assert!(exec.expect("docker exec").status.success());
    wait_until(Duration::from_secs(30), "the registry to take it out", || async {
        let service = client.service("web").await.ok()?;
        service.endpoints.iter().any(|e| e.allocation == unready && !e.ready).then_some(())
    })
    .await;
    // The registry answered; the meshes follow it with a blocking query, so
    // wait until a full round of requests misses it, then count 60 more.
    let other = service.endpoints[1].allocation.to_string();
    wait_until(Duration::from_secs(10), "the meshes to follow", || async {
        let mut round = Vec::new();
        for _ in 0..4 {
            round.push(first_word(&fetch(address).await.ok()?));
        }
        round.iter().all(|id| *id == other).then_some(())
    })
    .await;
    let mut replies = Vec::new();
    for _ in 0..60 {
        replies.push(first_word(&fetch(address).await.expect("a reply")));
    }
    assert!(!replies.contains(&unready.to_string()), "the unready replica still got requests: {replies:?}");
    assert_eq!(docker_inspect(&container, "{{.State.Running}}"), "true", "not restarted");
    assert_eq!(allocation_by_id(&client, unready).await.restarts, 0);

    let exec =
        std::process::Command::new("docker").args(["exec", &container, "touch", "/www/ready"]).output();
    assert!(exec.expect("docker exec").status.success());
    mesh_reaches(address, &[unready.to_string()].into()).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn an_ingress_port_another_program_holds_marks_the_node_until_it_is_free() {
    let network = DockerNetwork::create("flotilla-mesh-bind");
    let cluster = cluster_on(&network, &["a"]).await;
    let client = cluster.client();
    let ingress = free_port();
    let squatter =
        std::net::TcpListener::bind((cluster.mesh, ingress)).expect("another program takes the port");
    deploy(&client, &web(1, ingress, "round_robin", "v1")).await;
    let node = cluster.agents[0].name.clone();
    let unserved =
        wait_until(Duration::from_secs(30), "the node marked unable to serve the port", || async {
            let service = client.service("web").await.ok()?;
            service.unserved.into_iter().find(|u| u.node == node && u.port == ingress)
        })
        .await;
    assert_eq!(unserved.address, cluster.mesh.to_string());
    assert!(unserved.reason.to_lowercase().contains("in use"), "{unserved:?}");
    let events = client.events(0, Duration::ZERO).await.expect("events");
    let said = format!("cannot serve service port {ingress}/tcp of `web` on {}", cluster.mesh);
    assert!(events.events.iter().any(|e| e.message.starts_with(&said)), "{:?}", events.events);
    let services = String::from_utf8_lossy(&cluster.cli(&["services"]).stdout).into_owned();
    assert!(services.contains(&format!("! node {node} cannot serve port {ingress}/tcp")), "{services}");

    drop(squatter);
    wait_until(Duration::from_secs(30), "the port served and the mark cleared", || async {
        let service = client.service("web").await.ok()?;
        (service.unserved.is_empty() && service.endpoints.iter().any(|e| e.ready)).then_some(())
    })
    .await;
    // The registry may be a moment ahead of the mesh, which follows it.
    wait_until(Duration::from_secs(10), "web served through the mesh once the port is free", || async {
        fetch(SocketAddr::new(cluster.mesh, ingress)).await.ok()
    })
    .await;
}
