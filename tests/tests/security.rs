//! A secure cluster refuses what it should: every route by its access rule,
//! plain HTTP and foreign certificates on every port, agents with the wrong
//! token or the wrong CA, an agent speaking for another node, a revoked
//! token; and admits a server that joins with a server token.

use std::io::{Read, Write};
use std::time::Duration;

use flotilla_api::RaftRole;
use flotilla_cli::process_layout::ServerCa;
use flotilla_scheduler::http::ROUTES;
use flotilla_security::{Access, ClusterCa, Identity, Role};
use flotilla_tests::{ClusterOptions, ServerProcess, TestCluster, flotilla_binary, free_port, wait_until};
use reqwest::Method;

/// Who calls, in the walk over the routes.
#[derive(Debug, Clone)]
enum Caller {
    Anonymous,
    Token(Role, String),
    Node,
    Server,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Unauthorized,
    Forbidden,
}

/// What the access table documents for `caller` on a route with `access`.
fn documented(access: Access, caller: &Caller) -> Outcome {
    match (access, caller) {
        (Access::Public, _) | (_, Caller::Server) => Outcome::Allowed,
        (_, Caller::Anonymous) => Outcome::Unauthorized,
        (Access::Role(needed) | Access::AnyNodeOrRole(needed), Caller::Token(role, _)) => {
            if role.includes(needed) { Outcome::Allowed } else { Outcome::Forbidden }
        }
        (Access::AnyNodeOrRole(_) | Access::OwnNode, Caller::Node) => Outcome::Allowed,
        _ => Outcome::Forbidden,
    }
}

/// The route's path with its parameters filled: the walker's own node,
/// a server id that is not a member, a rollout action.
fn concrete(path: &str, node: &str) -> String {
    path.replace("{name}", node).replace("{id}", "99").replace("{action}", "pause")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_401_without_a_credential_and_403_to_one_that_does_not_allow_it() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let node = "walker";
    let mut callers = vec![Caller::Anonymous, Caller::Node, Caller::Server];
    for role in [Role::Read, Role::Deploy, Role::Admin] {
        let name = match role {
            Role::Read => "read",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        };
        callers.push(Caller::Token(role, cluster.create_token(name).await));
    }
    let anonymous = cluster.http();
    let as_node = cluster.http_as(&Identity::Node(node.into()));
    let as_server = cluster.http_as(&Identity::Server(1));
    let mut failures = Vec::new();
    let mut checked = 0;
    for (method, path, access) in ROUTES {
        for caller in &callers {
            let mut target = concrete(path, node);
            if *method == Method::GET {
                target.push_str("?wait_ms=0");
            }
            let http = match caller {
                Caller::Node => &as_node,
                Caller::Server => &as_server,
                _ => &anonymous,
            };
            let url = reqwest::Url::parse(&cluster.url(1, &target)).expect("a URL");
            let mut request = http.request(method.clone(), url.clone());
            if let Caller::Token(_, token) = caller {
                request = request.bearer_auth(token);
            }
            if let Caller::Server = caller {
                request = request.header("x-flotilla-raft-sender", format!("1={}", cluster.address(1)));
            }
            let response = request.timeout(Duration::from_secs(10)).send().await.expect("an answer");
            // A route that answered with a redirect (`/` to the dashboard)
            // let the caller through; what the client then fetched is
            // another route's answer.
            let redirected = response.url().path() != url.path();
            let outcome = match response.status().as_u16() {
                _ if redirected => Outcome::Allowed,
                401 => Outcome::Unauthorized,
                403 => Outcome::Forbidden,
                _ => Outcome::Allowed,
            };
            let expected = documented(*access, caller);
            checked += 1;
            if outcome != expected {
                let caller = match caller {
                    Caller::Token(role, _) => format!("token {role:?}"),
                    other => format!("{other:?}"),
                };
                failures.push(format!(
                    "{method} {path} as {caller}: {} ({outcome:?}), documented {expected:?}",
                    response.status()
                ));
            }
        }
        // An agent's certificate opens its own node's routes, no other's.
        if *access == Access::OwnNode && path.contains("{name}") {
            let response = as_node
                .request(method.clone(), cluster.url(1, &concrete(path, "someone-else")))
                .send()
                .await
                .expect("an answer");
            checked += 1;
            if response.status().as_u16() != 403 {
                failures.push(format!("{method} {path} for another node: {}", response.status()));
            }
        }
    }
    assert!(ROUTES.len() >= 30 && checked >= 6 * ROUTES.len(), "walked {checked}");
    assert!(
        failures.is_empty(),
        "{} of {checked} answers differ from the table:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Whether anything on `address` answers plain HTTP.
fn answers_plain_http(address: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET /v1/workloads HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).contains("HTTP/")
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_and_certificates_of_another_ca_are_refused_on_every_port() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("a", &["--driver", "sim", "--mesh-listen", "none"]);
    let client = cluster.client();
    let nodes = wait_until(Duration::from_secs(30), "the agent registered", || async {
        let nodes = client.nodes(false).await.ok()?;
        (nodes.len() == 1).then_some(nodes)
    })
    .await;
    let mut ports: Vec<String> = cluster.servers.iter().map(|s| s.address.clone()).collect();
    ports.push(nodes[0].address.clone());

    let other = ClusterCa::create().expect("another CA");
    let (foreign, _) = other
        .issue_with_new_key(
            &Identity::Server(1),
            &["127.0.0.1".into()],
            flotilla_security::CERTIFICATE_LIFETIME,
        )
        .expect("a certificate of the other CA");
    let foreign_certificate = flotilla_security::CurrentCertificate::new(&foreign).expect("loads");
    let real_trust = flotilla_security::Trust::new(
        std::fs::read_to_string(cluster.ca_dir.as_ref().expect("secure").join("ca.pem")).expect("CA"),
    );
    // Presents the other CA's certificate for server 1 to the real cluster.
    let forged = reqwest::Client::builder()
        .tls_backend_preconfigured(
            flotilla_security::client_config(
                &real_trust,
                Some(foreign_certificate),
                flotilla_security::ExpectedPeer::AnyServer,
            )
            .expect("config"),
        )
        .build()
        .expect("client");
    // Trusts the other CA alone: the real servers cannot prove themselves.
    let deceived = reqwest::Client::builder()
        .tls_backend_preconfigured(
            flotilla_security::client_config(
                &flotilla_security::Trust::new(other.certificate_pem()),
                None,
                flotilla_security::ExpectedPeer::AnyServer,
            )
            .expect("config"),
        )
        .build()
        .expect("client");
    for address in &ports {
        assert!(!answers_plain_http(address), "{address} answered plain HTTP");
        let url = format!("https://{address}/v1/workloads");
        let forged_answer = forged.get(&url).timeout(Duration::from_secs(5)).send().await;
        assert!(forged_answer.is_err(), "{address} took another CA's certificate: {forged_answer:?}");
        let deceived_answer = deceived.get(&url).timeout(Duration::from_secs(5)).send().await;
        assert!(deceived_answer.is_err(), "{address} passed for the other CA's: {deceived_answer:?}");
    }
    // The real thing works on the same ports: a refusal above is the CA's doing.
    assert!(client.list(false).await.is_ok());
    let raft = forged
        .post(format!("https://{}/raft/v1/messages", cluster.address(1)))
        .header("x-flotilla-raft-sender", "1=127.0.0.1:1")
        .body(Vec::new())
        .send()
        .await;
    assert!(raft.is_err(), "Raft traffic with another CA's certificate: {raft:?}");

    // Raft traffic only from a member, and only as the member its certificate names.
    let raft_as = |identity: Identity, sender: &str| {
        let request = cluster.http_as(&identity).post(cluster.url(1, "/raft/v1/messages"));
        request.header("x-flotilla-raft-sender", format!("{sender}=127.0.0.1:1")).body(Vec::new()).send()
    };
    let stranger = raft_as(Identity::Server(9), "9").await.expect("an answer");
    assert_eq!(stranger.status().as_u16(), 403);
    assert!(stranger.text().await.unwrap_or_default().contains("not a member"));
    let impostor = raft_as(Identity::Server(2), "3").await.expect("an answer");
    assert_eq!(impostor.status().as_u16(), 403);
    assert!(impostor.text().await.unwrap_or_default().contains("not that of the sender"));
    let member = raft_as(Identity::Server(2), "2").await.expect("an answer");
    assert!(member.status().is_success(), "a member's empty batch: {}", member.status());
}

/// Runs an agent that must refuse to start, and returns what it said.
fn failed_agent(cluster: &TestCluster, name: &str, token: &str) -> String {
    let data = cluster.dir.path().join(format!("refused-{name}"));
    let servers: Vec<String> = cluster.servers.iter().map(|s| s.address.clone()).collect();
    let output = std::process::Command::new(flotilla_binary())
        .args(["agent", "--servers", &servers.join(","), "--name", name, "--data-dir"])
        .arg(&data)
        .args(["--driver", "sim", "--mesh-listen", "none", "--join-token", token])
        .env_remove("FLOTILLA_JOIN_TOKEN")
        .output()
        .expect("the agent runs");
    assert!(!output.status.success(), "the agent must not start");
    assert!(!data.join("tls/node.pem").exists(), "no certificate was stored");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_a_wrong_token_or_pinning_another_ca_is_refused_and_told_why() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let good = cluster.tokens.as_ref().expect("secure").agent_join.clone();
    let (digest, _) = good.trim_start_matches("FLT1-").split_once('-').expect("FLT1-digest-secret");

    let unknown_secret = format!("FLT1-{digest}-{}", "ab".repeat(32));
    let said = failed_agent(&cluster, "unknown", &unknown_secret);
    assert!(said.contains("refused") && said.contains("not a live agent token"), "{said}");

    let server_token = cluster.create_token("server").await;
    let said = failed_agent(&cluster, "wrong-role", &server_token);
    assert!(said.contains("not a live agent token"), "{said}");

    let other_digest = ClusterCa::create().expect("another CA").digest();
    let wrong_pin = good.replace(digest, &other_digest);
    let said = failed_agent(&cluster, "wrong-pin", &wrong_pin);
    assert!(said.contains("join token pins") && said.contains(&other_digest), "{said}");

    let said = failed_agent(&cluster, "Not_A_Label", &good);
    assert!(said.contains("Not_A_Label") && said.contains("lowercase"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agents_certificate_speaks_for_its_own_node_alone() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent("a", &["--driver", "sim", "--mesh-listen", "none"]);
    cluster.add_agent("b", &["--driver", "sim", "--mesh-listen", "none"]);
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "both agents registered", || async {
        (client.nodes(false).await.ok()?.len() == 2).then_some(())
    })
    .await;
    let (a, b) = (cluster.agent("a").name.clone(), cluster.agent("b").name.clone());
    let as_a = cluster.http_as_agent(&a);
    let json = |request: reqwest::RequestBuilder, body: serde_json::Value| {
        request.header("content-type", "application/json").body(body.to_string()).send()
    };
    let report =
        json(as_a.post(cluster.url(1, &format!("/v1/nodes/{b}/allocations"))), serde_json::json!([]));
    assert_eq!(report.await.expect("answer").status().as_u16(), 403, "a's certificate reports for b");
    let beat = json(as_a.post(cluster.url(1, &format!("/v1/nodes/{b}/heartbeat"))), serde_json::json!({}));
    assert_eq!(beat.await.expect("answer").status().as_u16(), 403, "a's certificate heartbeats for b");
    let registration = flotilla_api::NodeRegistration {
        name: b.clone(),
        address: String::new(),
        cpu: flotilla_api::CpuMillis(1000),
        memory: flotilla_api::MemoryBytes(1 << 30),
        labels: Default::default(),
        drivers: Default::default(),
        host_volumes: Default::default(),
    };
    let registration = serde_json::to_value(&registration).expect("json");
    let register = json(as_a.post(cluster.url(1, "/v1/nodes")), registration);
    let register = register.await.expect("answer");
    assert_eq!(register.status().as_u16(), 403, "a's certificate registers b");
    assert!(register.text().await.unwrap_or_default().contains(&format!("not for node `{b}`")));
    // Its own node's routes work with the same certificate.
    let own = json(as_a.post(cluster.url(1, &format!("/v1/nodes/{a}/allocations"))), serde_json::json!([]));
    assert!(own.await.expect("answer").status().is_success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_by_every_server_within_a_second() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let token = cluster.create_token("deploy").await;
    let ids: Vec<u64> = cluster.servers.iter().map(|s| s.id).collect();
    let with_token = |id: u64| cluster.client_for([cluster.address(id)], Some(&token));
    for id in &ids {
        with_token(*id).list(true).await.expect("the token works on every server");
    }
    let id =
        cluster.client().tokens().await.expect("tokens").into_iter().find(|t| t.role.to_string() == "deploy");
    cluster.client().revoke_token(&id.expect("the deploy token").id).await.expect("revoked");
    for id in &ids {
        let refused = wait_until(Duration::from_secs(1), "the revoked token refused", || async {
            match with_token(*id).list(true).await {
                Err(error) if error.code() == Some("unauthorized") => Some(error),
                _ => None,
            }
        })
        .await;
        assert!(refused.to_string().contains("not recognised"), "{refused}");
    }
}

/// A leader cut off from the majority believes it leads until its next
/// quorum check (up to two election timeouts), while the majority elects
/// another and goes on. A token made there is not in the old leader's
/// state: it must say it cannot tell, never that the token is unknown (a
/// CLI that heard "not recognised" gives up; `cluster up` did, in CI, after
/// an election at start-up). Once the partition heals it takes the token.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_made_across_a_partition_is_never_called_unknown_by_the_cut_off_leader() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let others = cluster.partition(old_leader).await;
    let new_leader = wait_until(Duration::from_secs(10), "the majority elects a leader", || async {
        let leader = cluster.status_of(others[0]).await?.leader.filter(|id| others.contains(id))?;
        let status = cluster.status_of(leader).await?;
        (status.role == RaftRole::Leader).then_some(leader)
    })
    .await;
    let request = flotilla_api::CreateTokenRequest {
        role: "read".parse().expect("a role"),
        description: "made by the majority".into(),
        ttl_secs: None,
    };
    let token =
        cluster.client_of(new_leader).create_token(&request).await.expect("the new leader makes it").token;
    let on_old_leader =
        cluster.client_for([cluster.address(old_leader)], Some(&token)).with_retry_for(Duration::ZERO);
    let answer = on_old_leader.list(true).await;
    let error = answer.expect_err("a server cut off from the leader cannot have the token");
    assert_ne!(error.code(), Some("unauthorized"), "the cut-off leader called the token unknown: {error}");

    cluster.heal().await;
    wait_until(Duration::from_secs(10), "the healed server takes the token", || async {
        on_old_leader.list(true).await.ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_joins_with_a_server_token_and_receives_the_ca() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let seed = cluster.address(1);
    let agent_token = cluster.create_token("agent").await;
    let server_token = cluster.create_token("server").await;

    let refused_dir = tempfile::tempdir().expect("dir");
    let refused = std::process::Command::new(flotilla_binary())
        .args(["server", "--id", "5", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(refused_dir.path())
        .args(["--join", &seed, "--join-token", &agent_token])
        .output()
        .expect("the server runs");
    assert!(!refused.status.success(), "an agent token admits no server");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("not a live server token"), "{said}");

    let address = format!("127.0.0.1:{}", free_port());
    let mut fourth = ServerProcess::new(
        4,
        address,
        cluster.dir.path(),
        ServerCa::FromJoin,
        vec!["--join".into(), seed, "--join-token".into(), server_token],
    );
    fourth.start();
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "server 4 to become a voter", || async {
        let status = client.server_status().await.ok()?;
        status.members.iter().any(|m| m.id == 4 && m.voter).then_some(())
    })
    .await;
    let joined = std::fs::read_to_string(fourth.data_dir.join("tls/ca.pem")).expect("the joined server's CA");
    let ours = std::fs::read_to_string(cluster.ca_dir.as_ref().expect("secure").join("ca.pem")).expect("CA");
    assert_eq!(joined, ours, "the joined server holds the cluster's CA");
    let status = cluster.client_for([fourth.address.clone()], cluster.admin_token()).server_status().await;
    assert!(matches!(status.map(|s| s.role), Ok(RaftRole::Follower | RaftRole::Leader)));
    fourth.kill();
    cluster.servers.push(fourth);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_renewed_before_they_expire_and_the_cluster_carries_on() {
    let lifetime = 30;
    let options = ClusterOptions {
        server_args: vec!["--cert-lifetime-secs".into(), lifetime.to_string()],
        ..ClusterOptions::default()
    };
    let mut cluster = TestCluster::start(options).await;
    cluster.add_agent("a", &["--driver", "sim", "--mesh-listen", "none"]);
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "the agent registered", || async {
        (client.nodes(false).await.ok()?.len() == 1).then_some(())
    })
    .await;
    let agent_pem = cluster.agent("a").data_dir.join("tls/node.pem");
    let server_pem = cluster.servers[0].data_dir.join("tls/server.pem");
    let read = |path: &std::path::Path| std::fs::read_to_string(path).expect("a certificate");
    let (first_agent, first_server) = (read(&agent_pem), read(&server_pem));
    let issued = std::time::Instant::now();
    // Renewal comes once two thirds of the life have passed.
    wait_until(Duration::from_secs(lifetime + 10), "both certificates renewed", || async {
        (read(&agent_pem) != first_agent && read(&server_pem) != first_server).then_some(())
    })
    .await;
    // Past the first certificates' expiry, the agent still reports and
    // the servers still talk: only the renewed ones can be in use.
    let expired = Duration::from_secs(lifetime + 2);
    let wait = expired.saturating_sub(issued.elapsed());
    tokio::time::sleep(wait).await;
    let spec = flotilla_api::parse_yaml("name: after\nimage: busybox\nreplicas: 2\n").expect("spec");
    client.deploy(&spec, None).await.expect("a write commits");
    wait_until(Duration::from_secs(20), "the agent runs the replicas", || async {
        let all = client.allocations(Some("after"), None).await.ok()?;
        (all.iter().filter(|a| a.state == flotilla_api::AllocationState::Running).count() == 2).then_some(())
    })
    .await;
    let nodes = client.nodes(false).await.expect("nodes");
    assert_eq!(
        nodes[0].status,
        flotilla_api::NodeStatus::Ready,
        "the agent heartbeats with its renewed certificate"
    );
}

/// Every file under `dir`, however deep.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_secret_reaches_its_replica_and_no_api_answer_log_or_data_file() {
    let options = ClusterOptions { snapshot_every: 10, ..ClusterOptions::default() };
    let mut cluster = TestCluster::start(options).await;
    cluster.add_agent("a", &["--cpu", "2", "--memory", "2Gi"]);
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "the agent registered", || async {
        (client.nodes(false).await.ok()?.len() == 1).then_some(())
    })
    .await;
    let value = format!("pw-{}", flotilla_security::hex::encode(&std::process::id().to_le_bytes()))
        + "-correct-horse-battery-staple";
    let early = flotilla_api::parse_yaml("name: early\nimage: busybox\nenv: {A: {secret: db-password}}\n");
    let refused = client.deploy(&early.expect("spec"), None).await.expect_err("no such secret yet");
    assert!(
        refused.to_string().contains("field `env.A.secret`: secret `db-password` does not exist"),
        "{refused}"
    );
    let elsewhere = tempfile::tempdir().expect("a dir outside the cluster's");
    let file = elsewhere.path().join("password");
    std::fs::write(&file, &value).expect("write");
    let put = cluster.cli(&["secret", "put", "db-password", "--from-file", &file.display().to_string()]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));

    let spec = "name: app\nimage: flotilla/busybox:latest\ncommand: [sleep, '100000']\n\
                resources: {cpu: 50m, memory: 16Mi}\n\
                env: {DB_PASSWORD: {secret: db-password}, PLAIN: visible}\n\
                secrets: [{name: db-password, path: /run/secrets/db}]\n";
    flotilla_tests::workloads::deploy(&client, spec).await;
    let running = flotilla_tests::workloads::wait_running(&client, "app", 1, Duration::from_secs(60)).await;
    let container = flotilla_tests::containers::container_of(&cluster, &running[0]);
    let inside = |command: &str| {
        let output = std::process::Command::new("docker")
            .args(["exec", &container, "sh", "-c", command])
            .output()
            .expect("docker exec");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    assert_eq!(inside("cat /run/secrets/db"), value, "the file holds the value");
    assert_eq!(inside("echo $DB_PASSWORD"), value, "the variable holds the value");
    assert_eq!(inside("echo $PLAIN"), "visible");

    // No read route, no CLI output, carries it.
    let hex = flotilla_security::hex::encode(value.as_bytes());
    let paths = [
        "/v1/workloads",
        "/v1/workloads/app",
        "/v1/workloads/app/deployments",
        "/v1/allocations",
        "/v1/nodes",
        "/v1/events",
        "/v1/secrets",
        "/v1/services",
        "/v1/cluster/status",
        "/metrics",
    ];
    for path in paths {
        let answer =
            cluster.authorize(cluster.http().get(cluster.url(1, path))).send().await.expect("answer");
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        let text = answer.text().await.expect("body");
        assert!(!text.contains(&value) && !text.contains(&hex), "{path} shows the secret");
    }
    let json = cluster.cli(&["get", "app", "-o", "json"]);
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(json.contains("\"secret\": \"db-password\"") && !json.contains(&value), "get -o json: {json}");
    let listed = String::from_utf8_lossy(&cluster.cli(&["secret", "list"]).stdout).into_owned();
    assert!(listed.contains("db-password") && !listed.contains(&value), "{listed}");

    // Nor any log, Raft log, snapshot or other file of the servers and agents.
    // Enough writes after it that every server snapshots a state holding it.
    for round in 0..12 {
        client.put_secret("filler", format!("filler {round}").as_bytes()).await.expect("put filler");
    }
    for server in &cluster.servers {
        let one = cluster.client_of(server.id);
        wait_until(Duration::from_secs(20), "a snapshot holding the secret", || async {
            (one.server_status().await.ok()?.snapshot_index > 12).then_some(())
        })
        .await;
    }
    let logs = cluster.logs();
    assert!(!logs.contains(&value) && !logs.contains(&hex), "a log shows the secret");
    let files = files_under(cluster.dir.path());
    assert!(files.iter().any(|f| f.to_string_lossy().contains("server-1")), "the data dirs were searched");
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&value) && !text.contains(&hex), "{} holds the secret", file.display());
    }

    // A secret a workload names stays; unnamed, it goes.
    let refused = cluster.cli(&["secret", "delete", "db-password"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use by workload `app`"));
    client.delete("app").await.expect("delete app");
    let deleted = cluster.cli(&["secret", "delete", "db-password"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_insecure_cluster_speaks_plain_http_and_every_daemon_says_so() {
    let mut cluster =
        TestCluster::start(ClusterOptions { insecure: true, ..ClusterOptions::default() }).await;
    cluster.add_agent("a", &["--driver", "sim", "--mesh-listen", "none"]);
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "the agent registered", || async {
        (client.nodes(false).await.ok()?.len() == 1).then_some(())
    })
    .await;
    let spec = flotilla_api::parse_yaml("name: plain\nimage: busybox\nreplicas: 2\n").expect("spec");
    client.deploy(&spec, None).await.expect("a deploy over plain HTTP, no token");
    wait_until(Duration::from_secs(20), "the replicas run", || async {
        let all = client.allocations(Some("plain"), None).await.ok()?;
        (all.iter().filter(|a| a.state == flotilla_api::AllocationState::Running).count() == 2).then_some(())
    })
    .await;
    assert!(answers_plain_http(&cluster.address(1)), "an insecure server answers plain HTTP");
    for server in &cluster.servers {
        assert!(server.log_text().contains("INSECURE"), "server {} does not say it is insecure", server.id);
    }
    let agent = cluster.agent("a");
    assert!(agent.log_text().contains("INSECURE"), "the agent does not say it is insecure");
    let secret = cluster.cli(&["secret", "put", "x", "--from-file", "/etc/hostname"]);
    let said = String::from_utf8_lossy(&secret.stderr);
    assert!(!secret.status.success() && said.contains("--insecure"), "secrets need a cluster key: {said}");
}
