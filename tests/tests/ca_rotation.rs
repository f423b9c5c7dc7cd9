//! `flotilla ca rotate`: the cluster CA is replaced while the cluster
//! serves, with old and new trusted during the switch and the old trusted
//! by no one after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flotilla_api::{AllocationState, NodeStatus, parse_yaml};
use flotilla_security::{ExpectedPeer, Identity, Trust, client_config, issuer_digest};
use flotilla_tests::{AgentProcess, TestCluster, wait_until};

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether a client trusting `pem` alone gets an answer from `address`.
async fn answers_to_trust_in(pem: &str, address: &str) -> bool {
    let tls = client_config(&Trust::new(pem), None, ExpectedPeer::AnyServer).expect("tls");
    let http = reqwest::Client::builder().tls_backend_preconfigured(tls).build().expect("client");
    http.get(format!("https://{address}/v1/cluster/status")).send().await.is_ok()
}

/// The CA digest a certificate file's leaf is from, among `trust`'s.
fn issuer_of(certificate: &std::path::Path, trust: &Trust) -> Option<String> {
    let leaf = flotilla_security::Credentials { certificate_pem: read(certificate), key_pem: String::new() }
        .chain()
        .expect("a certificate")
        .remove(0);
    issuer_digest(trust, &leaf).expect("verifiable")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ca_rotates_while_the_cluster_serves_and_the_old_ca_is_trusted_no_more() {
    let flags = ["--driver", "process", "--allow-driver", "process", "--cpu", "2", "--memory", "2Gi"];
    let mut cluster = TestCluster::with_agents(&["a", "away"], &flags).await;
    let ca_dir = cluster.ca_dir.clone().expect("a secure cluster");
    let old_pem = read(&ca_dir.join("ca.pem"));
    let old = flotilla_security::ClusterCa::from_pem(&old_pem, &read(&ca_dir.join("ca.key")))
        .expect("the founding CA")
        .digest();
    let client = cluster.client();
    // One node is down through the whole rotation: it is not waited for.
    cluster.agent("away").kill();
    let away = cluster.agent("away").name.clone();
    wait_until(Duration::from_secs(30), "the node that went away marked down", || async {
        let nodes = client.nodes(false).await.ok()?;
        nodes.iter().any(|n| n.name == away && n.status == NodeStatus::Down).then_some(())
    })
    .await;
    let spec =
        "name: steady\ndriver: process\nreplicas: 1\ncommand: [\"sh\", \"-c\", \"sleep 100000 & wait\"]\n";
    client.deploy(&parse_yaml(spec).expect("valid"), None).await.expect("deploy");
    let before = wait_until(Duration::from_secs(30), "the replica running", || async {
        let all = client.allocations(Some("steady"), None).await.ok()?;
        all.into_iter().find(|a| a.state == AllocationState::Running)
    })
    .await;

    // Writes and linearizable reads all through the rotation, each with a
    // client that trusts what the CA file says at that moment.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let prober = {
        let (stop, served, failed) = (Arc::clone(&stop), Arc::clone(&served), Arc::clone(&failed));
        let addresses: Vec<String> = cluster.servers.iter().map(|s| s.address.clone()).collect();
        let (ca_dir, token) = (ca_dir.clone(), cluster.admin_token().map(str::to_owned));
        tokio::spawn(async move {
            let mut replicas = 0;
            while !stop.load(Ordering::Relaxed) {
                let client =
                    flotilla_cli::cluster_credentials::secure_client(&addresses, &ca_dir, token.as_deref())
                        .expect("a client");
                let spec = format!(
                    "name: probe\ndriver: process\nreplicas: {}\ncommand: [\"true\"]\n",
                    replicas % 2
                );
                let wrote = client.deploy(&parse_yaml(&spec).expect("valid"), None).await;
                let read = client.get("probe").await;
                match (wrote, read) {
                    (Ok(_), Ok(_)) => served.fetch_add(1, Ordering::Relaxed),
                    (wrote, read) => {
                        failed.lock().expect("lock").push(format!("{:?} / {:?}", wrote.err(), read.err()));
                        0
                    }
                };
                replicas += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let output = tokio::task::block_in_place(|| cluster.cli(&["ca", "rotate", "--timeout", "90"]));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "ca rotate failed: {stdout}\n{stderr}\n{}", cluster.logs());
    stop.store(true, Ordering::Relaxed);
    prober.await.expect("the prober");
    let failures = failed.lock().expect("lock").clone();
    assert!(failures.is_empty(), "requests failed during the rotation: {failures:?}");
    assert!(served.load(Ordering::Relaxed) >= 5, "the prober ran through the rotation");
    for phase in ["trusting the new CA", "reissuing certificates from the new CA"] {
        assert!(stderr.contains(phase), "the command reports the phase `{phase}`: {stderr}");
    }

    let status = cluster.client().ca_status().await.expect("ca status");
    let new = status.issuing.clone();
    assert_ne!(new, old, "a new CA issues");
    assert_eq!(status.trusted, vec![new.clone()], "the new CA alone is trusted");
    assert_eq!((status.rotation, status.rotations), (None, 1));
    assert!(stdout.contains(&format!("the cluster CA is now {new}")), "{stdout}");
    let trust_file = read(&ca_dir.join("trust.pem"));
    assert_eq!(trust_file, status.trust_pem, "the CLI's CA file trusts what the cluster trusts");
    let new_trust = Trust::new(trust_file.clone());

    // Every server presents a certificate from the new CA; none answers a
    // client trusting the old one.
    for server in &cluster.servers {
        let tls = server.data_dir.join("tls");
        assert_eq!(issuer_of(&tls.join("server.pem"), &new_trust).as_deref(), Some(new.as_str()));
        assert!(answers_to_trust_in(&trust_file, &server.address).await);
        assert!(
            !answers_to_trust_in(&old_pem, &server.address).await,
            "server {} still has an old certificate",
            server.id
        );
    }
    let agent_tls = cluster.agent("a").data_dir.join("tls");
    assert_eq!(issuer_of(&agent_tls.join("node.pem"), &new_trust).as_deref(), Some(new.as_str()));
    // Each server drops the old CA as it applies the rotation's end, the
    // agent at its next heartbeat: then a certificate of the old CA gets
    // nowhere.
    let old_server_identity = cluster.http_as(&Identity::Server(1));
    wait_until(Duration::from_secs(10), "every server and the agent to trust the new CA alone", || async {
        let servers_trust_new_alone =
            cluster.servers.iter().all(|s| read(&s.data_dir.join("tls/trust.pem")) == trust_file);
        let agent_trusts_new_alone = read(&agent_tls.join("ca.pem")) == trust_file;
        let mut old_refused = true;
        for server in &cluster.servers {
            let url = format!("https://{}/v1/ca/local", server.address);
            old_refused &= old_server_identity.get(url).send().await.is_err();
        }
        (servers_trust_new_alone && agent_trusts_new_alone && old_refused).then_some(())
    })
    .await;

    // The agent's heartbeats and reports got through all along.
    let agent_log = cluster.agent("a").log_text();
    for complaint in [
        "heartbeat not delivered",
        "cannot follow the cluster's CA",
        "cannot fetch this node's allocations",
        "cannot report allocation states",
    ] {
        assert!(!agent_log.contains(complaint), "the agent logged `{complaint}`:\n{agent_log}");
    }

    // The replica ran through it untouched; the node stayed ready and still
    // takes new work with its new certificate.
    let client = cluster.client();
    let after = client.allocations(Some("steady"), None).await.expect("allocations");
    assert!(
        after.iter().any(|a| a.id == before.id && a.state == AllocationState::Running && a.restarts == 0),
        "the replica kept running: {after:?}"
    );
    let nodes = client.nodes(false).await.expect("nodes");
    assert!(nodes.iter().all(|n| n.status == NodeStatus::Ready || n.name == away), "{nodes:?}");
    client.scale("steady", 2).await.expect("scale");
    wait_until(Duration::from_secs(30), "a new replica running after the rotation", || async {
        let all = client.allocations(Some("steady"), None).await.ok()?;
        (all.iter().filter(|a| a.state == AllocationState::Running).count() == 2).then_some(())
    })
    .await;

    // What each daemon stored is what it restarts with.
    cluster.server(1).kill();
    cluster.server(1).start();
    cluster.agent("a").kill();
    cluster.agent("a").start();
    wait_until(Duration::from_secs(30), "server 1 back, serving with the new CA", || async {
        cluster.status_of(1).await
    })
    .await;
    wait_until(Duration::from_secs(30), "the restarted agent ready again", || async {
        let nodes = client.nodes(false).await.ok()?;
        let ready = nodes.iter().filter(|n| n.name != away).all(|n| n.status == NodeStatus::Ready);
        let running = client.allocations(Some("steady"), None).await.ok()?;
        (ready && running.iter().filter(|a| a.state == AllocationState::Running).count() == 2).then_some(())
    })
    .await;

    // The node that was away holds a certificate of the retired CA; with a
    // token pinning the new CA it joins again, and is ready.
    let token = cluster.create_token("agent").await;
    assert!(token.contains(&new), "a new join token pins the new CA");
    let servers: Vec<String> = cluster.servers.iter().map(|s| s.address.clone()).collect();
    let position = cluster.agents.iter().position(|a| a.name == away).expect("the agent that went away");
    let mut rejoining = AgentProcess::new(away.clone(), &servers, cluster.dir.path(), Some(&token), &flags);
    rejoining.start();
    cluster.agents[position] = rejoining;
    wait_until(Duration::from_secs(30), "the node that was away ready again", || async {
        let nodes = client.nodes(false).await.ok()?;
        nodes.iter().any(|n| n.name == away && n.status == NodeStatus::Ready).then_some(())
    })
    .await;
    let away_tls = cluster.agent("away").data_dir.join("tls");
    assert_eq!(issuer_of(&away_tls.join("node.pem"), &new_trust).as_deref(), Some(new.as_str()));
}
