//! Health checks and safe rollouts against the real Docker engine, with
//! busybox httpd replicas: a check follows what a replica serves, a failing
//! liveness check restarts it, a version whose check fails never takes the
//! old replicas down and is reverted, canaries wait for `rollout promote`,
//! max_parallel bounds the replicas in flight, a fixed host port on one
//! node rolls out in place, and `rollout undo` goes back.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_api::{Allocation, AllocationState, Client, DeploymentStatus, Health};
use flotilla_tests::workloads::{deploy, replicas};
use flotilla_tests::{TestCluster, free_port, wait_until};

const AGENT_FLAGS: [&str; 6] = ["--cpu", "4", "--memory", "4Gi", "--restart-backoff-ms", "200"];

/// A busybox httpd serving /www on 8080, with /www/healthz present when `healthy`.
fn web(version: &str, healthy: bool, extra: &str) -> String {
    let file = if healthy { "healthz" } else { "other" };
    format!(
        "name: web\nimage: flotilla/busybox:latest\n\
         command: [\"sh\", \"-c\", \"mkdir -p /www && echo {version} > /www/{file} && echo {version} > /www/version && exec httpd -f -p 8080 -h /www\"]\n\
         ports: [{{container: 8080}}]\n\
         checks:\n  - name: web\n    http: {{path: /healthz, port: 8080}}\n    interval: 200ms\n    timeout: 1s\n    failures: 2\n{extra}"
    )
}

fn flotilla(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    cluster.cli(args)
}

fn write_spec(cluster: &TestCluster, name: &str, yaml: &str) -> String {
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, yaml).expect("write spec");
    path.to_string_lossy().into_owned()
}

fn container_address(allocation: &Allocation) -> String {
    let id = allocation.runtime_id.clone().expect("a container");
    let output = Command::new("docker")
        .args(["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn wait_healthy(client: &Client, workload: &str, count: usize, version: u64) -> Vec<Allocation> {
    wait_until(
        Duration::from_secs(60),
        &format!("{count} healthy replicas of {workload} v{version}"),
        || async {
            let all = client.allocations(Some(workload), None).await.ok()?;
            let live: Vec<Allocation> = all.into_iter().filter(|a| a.is_replica()).collect();
            let healthy = live.iter().all(|a| a.version == version && a.health == Health::Healthy);
            (live.len() == count && healthy).then_some(live)
        },
    )
    .await
}

async fn wait_rollout(client: &Client, workload: &str, version: u64, status: DeploymentStatus) {
    wait_until(Duration::from_secs(90), &format!("rollout of {workload} v{version} {status}"), || async {
        let deployments = client.deployments(workload).await.ok()?;
        deployments.iter().find(|d| d.to_version == version && d.status == status).map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn an_http_check_follows_the_file_the_replica_serves_and_a_liveness_check_restarts_it() {
    let cluster = TestCluster::with_agents(&["a"], &AGENT_FLAGS).await;
    let client = cluster.client();
    deploy(&client, &web("v1", true, "")).await;
    let replica = wait_healthy(&client, "web", 1, 1).await.remove(0);
    assert!(replica.health_output.contains("GET /healthz -> 200"), "{replica:?}");
    let container = replica.runtime_id.clone().expect("container");
    let removed =
        Command::new("docker").args(["exec", &container, "rm", "/www/healthz"]).status().expect("exec");
    assert!(removed.success());
    let unhealthy = wait_until(Duration::from_secs(30), "the replica unhealthy", || async {
        let all = client.allocations(Some("web"), None).await.ok()?;
        all.into_iter().find(|a| a.id == replica.id && a.health == Health::Unhealthy)
    })
    .await;
    assert!(unhealthy.health_output.contains("failed check web: GET /healthz -> 404"), "{unhealthy:?}");
    assert_eq!(unhealthy.state, AllocationState::Running, "a readiness check only marks it");
    assert_eq!(unhealthy.restarts, 0);
    let ps = String::from_utf8_lossy(&flotilla(&cluster, &["ps", "web"]).stdout).into_owned();
    assert!(ps.contains("unhealthy (failed check web: GET /healthz -> 404)"), "{ps}");

    // The same with on_failure: restart: the replica is restarted, and its
    // command serves the file again.
    let liveness =
        web("v1", true, "").replace("    failures: 2\n", "    failures: 2\n    on_failure: restart\n");
    deploy(&client, &liveness.replace("name: web", "name: live")).await;
    let replica = wait_healthy(&client, "live", 1, 1).await.remove(0);
    let container = replica.runtime_id.clone().expect("container");
    Command::new("docker").args(["exec", &container, "rm", "/www/healthz"]).status().expect("exec");
    let restarted =
        wait_until(Duration::from_secs(30), "the replica restarted and healthy again", || async {
            let all = client.allocations(Some("live"), None).await.ok()?;
            all.into_iter().find(|a| a.id == replica.id && a.restarts >= 1 && a.health == Health::Healthy)
        })
        .await;
    let events = client.events(0, Duration::ZERO).await.expect("events");
    let said: Vec<&str> = events.events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        said.iter()
            .any(|m| m.contains(&format!("allocation {} is unhealthy: failed check live", restarted.id))),
        "{said:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_version_whose_check_fails_is_reverted_and_the_old_replicas_serve_throughout() {
    let cluster = TestCluster::with_agents(&["a", "b"], &AGENT_FLAGS).await;
    let client = cluster.client();
    let update = "replicas: 3\nupdate: {min_healthy_time: 500ms, healthy_deadline: 4s, progress_deadline: 10s, auto_revert: true}\n";
    let v1 = write_spec(&cluster, "v1.yaml", &web("v1", true, update));
    let first = flotilla(&cluster, &["deploy", "-f", &v1, "--wait", "--timeout", "60"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let old = wait_healthy(&client, "web", 3, 1).await;
    let old_containers: BTreeSet<String> = old.iter().filter_map(|a| a.runtime_id.clone()).collect();

    // Poll every old replica while the bad version rolls out.
    let addresses: Vec<String> = old.iter().map(container_address).collect();
    let (stop, failures, answers) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let poller = {
        let (stop, failures, answers) = (stop.clone(), failures.clone(), answers.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().expect("client");
            while !stop.load(Ordering::Relaxed) {
                for address in &addresses {
                    let answer = http
                        .get(format!("http://{address}:8080/version"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    match answer {
                        Ok(response) if response.status().is_success() => {
                            answers.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let most_live = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (client, stop, most_live) = (client.clone(), stop.clone(), most_live.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(all) = client.allocations(Some("web"), None).await {
                    most_live.fetch_max(replicas(&all).len(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let v2 = write_spec(&cluster, "v2.yaml", &web("v2", false, update));
    let output = flotilla(&cluster, &["deploy", "-f", &v2, "--wait", "--timeout", "90"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rollout of web version 2 failed and was reverted"), "{stderr}");
    assert!(
        stderr.contains("new replicas failed check web: GET /healthz -> 404"),
        "names the reason: {stderr}"
    );
    // The revert (version 3, v1's spec) completes.
    wait_rollout(&client, "web", 3, DeploymentStatus::Successful).await;
    stop.store(true, Ordering::Relaxed);
    let _ = poller.await;
    let _ = watcher.await;
    assert_eq!(failures.load(Ordering::Relaxed), 0, "every old replica answered throughout");
    assert!(answers.load(Ordering::Relaxed) > 10);
    assert!(most_live.load(Ordering::Relaxed) <= 4, "never more than replicas + max_surge");
    let history = client.deployments("web").await.expect("history");
    assert_eq!(history[1].status, DeploymentStatus::Reverted, "{history:?}");
    assert_eq!(history[0].cause, "auto-revert to version 1 after version 2 failed");
    // The revert replaced nothing: the old containers are version 3's replicas now.
    let all = client.allocations(Some("web"), None).await.expect("ps");
    let now: BTreeSet<String> = replicas(&all).iter().filter_map(|a| a.runtime_id.clone()).collect();
    assert_eq!(now, old_containers, "{all:?}");
    assert!(replicas(&all).iter().all(|a| a.version == 3));
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn canaries_wait_for_promotion_then_the_rest_follow_and_undo_goes_back() {
    let cluster = TestCluster::with_agents(&["a", "b"], &AGENT_FLAGS).await;
    let client = cluster.client();
    let update = "replicas: 3\nupdate: {min_healthy_time: 300ms, canary: 1}\n";
    deploy(&client, &web("v1", true, update)).await;
    wait_healthy(&client, "web", 3, 1).await;
    wait_rollout(&client, "web", 1, DeploymentStatus::Successful).await;
    deploy(&client, &web("v2", true, update)).await;
    wait_rollout(&client, "web", 2, DeploymentStatus::WaitingForPromotion).await;
    let all = client.allocations(Some("web"), None).await.expect("ps");
    let live = replicas(&all);
    assert_eq!(live.iter().filter(|a| a.version == 2).count(), 1, "one canary");
    assert_eq!(live.iter().filter(|a| a.version == 1).count(), 3, "the old replicas all stay");
    let status =
        String::from_utf8_lossy(&flotilla(&cluster, &["rollout", "status", "web"]).stdout).into_owned();
    assert!(status.contains("waiting for promotion"), "{status}");
    // Paused, it cannot be promoted; resumed, it waits for promotion again.
    let pause = flotilla(&cluster, &["rollout", "pause", "web"]);
    assert!(String::from_utf8_lossy(&pause.stdout).contains("now paused"), "{pause:?}");
    let refused = flotilla(&cluster, &["rollout", "promote", "web"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot promote: it is paused"), "{refused:?}");
    let resume = flotilla(&cluster, &["rollout", "resume", "web"]);
    assert!(resume.status.success(), "{}", String::from_utf8_lossy(&resume.stderr));
    wait_rollout(&client, "web", 2, DeploymentStatus::WaitingForPromotion).await;
    let promote = flotilla(&cluster, &["rollout", "promote", "web"]);
    assert!(promote.status.success(), "{}", String::from_utf8_lossy(&promote.stderr));
    wait_rollout(&client, "web", 2, DeploymentStatus::Successful).await;
    wait_healthy(&client, "web", 3, 2).await;

    let undo = flotilla(&cluster, &["rollout", "undo", "web"]);
    assert!(undo.status.success(), "{}", String::from_utf8_lossy(&undo.stderr));
    let workload = client.get("web").await.expect("get");
    assert_eq!(workload.version, 3);
    assert!(workload.spec.command.join(" ").contains("echo v1"), "v1's spec again");
    let history =
        String::from_utf8_lossy(&flotilla(&cluster, &["rollout", "history", "web"]).stdout).into_owned();
    assert!(history.contains("rollout undo to version 1"), "{history}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn max_parallel_three_brings_up_at_most_three_new_replicas_at_once() {
    let cluster = TestCluster::with_agents(&["a", "b"], &AGENT_FLAGS).await;
    let client = cluster.client();
    let update = "replicas: 9\nresources: {cpu: 100m, memory: 16Mi}\nupdate: {max_parallel: 3, max_surge: 3, min_healthy_time: 300ms}\n";
    deploy(&client, &web("v1", true, update)).await;
    wait_healthy(&client, "web", 9, 1).await;
    deploy(&client, &web("v2", true, update)).await;
    let most = Arc::new(AtomicUsize::new(0));
    wait_until(Duration::from_secs(120), "the rollout of 9 replicas, three at a time", || {
        let (client, most) = (client.clone(), most.clone());
        async move {
            let all = client.allocations(Some("web"), None).await.ok()?;
            let live = replicas(&all);
            let in_flight = live.iter().filter(|a| a.version == 2 && a.health != Health::Healthy).count();
            most.fetch_max(in_flight, Ordering::Relaxed);
            let done = live.len() == 9 && live.iter().all(|a| a.version == 2 && a.health == Health::Healthy);
            done.then_some(())
        }
    })
    .await;
    let most_in_flight = most.load(Ordering::Relaxed);
    assert!(most_in_flight <= 3, "at most 3 new replicas not yet healthy at once, saw {most_in_flight}");
    assert!(most_in_flight >= 2, "replaced several at a time, saw {most_in_flight}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_fixed_host_port_workload_on_one_node_rolls_out_in_place() {
    let cluster = TestCluster::with_agents(&["a"], &AGENT_FLAGS).await;
    let port = free_port();
    let update = "update: {min_healthy_time: 300ms}\n";
    let spec = |version: &str| {
        web(version, true, update)
            .replace("ports: [{container: 8080}]", &format!("ports: [{{container: 8080, host: {port}}}]"))
    };
    let v1 = write_spec(&cluster, "v1.yaml", &spec("v1"));
    let first = flotilla(&cluster, &["deploy", "-f", &v1, "--wait", "--timeout", "60"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let v2 = write_spec(&cluster, "v2.yaml", &spec("v2"));
    let second = flotilla(&cluster, &["deploy", "-f", &v2, "--wait", "--timeout", "60"]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}/version"))
        .send()
        .await
        .expect("the new replica answers on the host port")
        .text()
        .await
        .expect("body");
    assert_eq!(body.trim(), "v2");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn a_rollout_goes_on_under_a_new_leader_when_the_leader_is_killed_mid_way() {
    let mut cluster = TestCluster::with_agents(&["a", "b"], &AGENT_FLAGS).await;
    let client = cluster.client();
    let update = "replicas: 3\nupdate: {min_healthy_time: 1s}\n";
    deploy(&client, &web("v1", true, update)).await;
    wait_rollout(&client, "web", 1, DeploymentStatus::Successful).await;
    deploy(&client, &web("v2", true, update)).await;
    // Once the first new replica is placed, the leader dies; the rollout's
    // judge and reconciler are nothing but the replicated state and a clock,
    // so the next leader carries on where it stood.
    wait_until(Duration::from_secs(30), "a first replica of version 2", || async {
        let all = client.allocations(Some("web"), None).await.ok()?;
        replicas(&all).iter().any(|a| a.version == 2).then_some(())
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.server(leader).kill();
    let next = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(next, leader);
    wait_rollout(&client, "web", 2, DeploymentStatus::Successful).await;
    let all = client.allocations(Some("web"), None).await.expect("ps");
    let live = replicas(&all);
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|a| a.version == 2 && a.health == Health::Healthy), "{live:?}");
}
