//! `/metrics` on a server and on an agent, scraped as Prometheus would
//! before and after the test does something: the values move with what
//! happened (a deploy, placements, commits, container starts, a restart).

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use flotilla_api::AllocationState;
use flotilla_tests::containers::container_of;
use flotilla_tests::workloads::{SLEEPER, deploy, wait_running};
use flotilla_tests::{TestCluster, wait_until};

/// Every sample of an OpenMetrics text, by its name and labels as written.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

async fn scrape(http: &reqwest::Client, url: &str, token: Option<&str>) -> HashMap<String, f64> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the metrics answer");
    assert_eq!(response.status(), 200, "{url}");
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.expect("a body");
    assert!(text.ends_with("# EOF\n"), "a whole OpenMetrics exposition");
    samples(&text)
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn server_and_agent_metrics_move_with_what_the_cluster_does() {
    let cluster = TestCluster::with_agents(&["a"], &["--cpu", "2", "--memory", "2Gi"]).await;
    let client = cluster.client();
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let server_url = cluster.url(leader, "/metrics");
    let http = cluster.http();
    let token = cluster.admin_token();
    let node = client.nodes(false).await.expect("nodes").pop().expect("the agent's node");
    let agent_url = format!("{}://{}/metrics", cluster.scheme(), node.address);
    let to_agent = cluster.http_to_agents();

    let server_before = scrape(&http, &server_url, token).await;
    let agent_before = scrape(&to_agent, &agent_url, None).await;
    assert_eq!(value(&server_before, "flotilla_raft_leader"), 1.0);
    assert_eq!(value(&server_before, "flotilla_nodes{status=\"ready\"}"), 1.0);
    assert!(value(&server_before, "flotilla_raft_leader_changes_total") >= 1.0, "it saw itself elected");

    deploy(&client, &format!("name: web\n{SLEEPER}replicas: 3\nresources: {{cpu: 100m, memory: 32Mi}}\n"))
        .await;
    let running = wait_running(&client, "web", 3, Duration::from_secs(60)).await;

    let server = scrape(&http, &server_url, token).await;
    let moved = |series: &str| value(&server, series) - value(&server_before, series);
    assert_eq!(moved("flotilla_placements_total"), 3.0, "three replicas placed");
    assert!(moved("flotilla_raft_proposal_seconds_count") >= 1.0, "the plan was proposed here");
    assert!(moved("flotilla_raft_commit_seconds_count") >= 2.0, "the deploy and the plan were committed");
    assert!(moved("flotilla_reconcile_pass_seconds_count") >= 1.0);
    assert!(moved("flotilla_raft_loop_turn_seconds_count") >= 2.0, "the Raft loop turned for each commit");
    assert!(moved("flotilla_placement_seconds_count") >= 1.0);
    assert_eq!(value(&server, "flotilla_allocations{state=\"running\"}"), 3.0);
    assert_eq!(value(&server, "flotilla_workloads"), 1.0);
    assert!(
        value(&server, "flotilla_raft_applied_index") > value(&server_before, "flotilla_raft_applied_index")
    );
    // The deploy itself, a request the client may have sent to a follower
    // that passed it on: counted on whichever server answered it.
    let (mut deploys, mut proposals) = (0.0, 0.0);
    for id in 1..=3 {
        let scraped = scrape(&http, &cluster.url(id, "/metrics"), token).await;
        deploys += value(
            &scraped,
            "flotilla_http_requests_total{route=\"/v1/workloads\",method=\"POST\",status=\"200\"}",
        );
        proposals += value(&scraped, "flotilla_raft_proposal_seconds_count");
    }
    assert!(deploys >= 1.0, "the deploy is counted by route, method and status");
    assert!(proposals >= 2.0, "the deploy (where it was taken) and the plan were proposed");

    // The agent started three containers, timed the engine's answers, and
    // samples each replica's memory.
    let agent = scrape(&to_agent, &agent_url, None).await;
    let started = |s: &HashMap<String, f64>| value(s, "flotilla_agent_starts_total{driver=\"docker\"}");
    assert_eq!(started(&agent) - started(&agent_before), 3.0);
    assert_eq!(value(&agent, "flotilla_agent_start_seconds_count{driver=\"docker\"}"), 3.0);
    assert!(value(&agent, "flotilla_agent_engine_call_seconds_count{call=\"create\"}") >= 3.0);
    assert!(value(&agent, "flotilla_agent_engine_call_seconds_count{call=\"start\"}") >= 3.0);
    let sampled = wait_until(Duration::from_secs(20), "each replica's memory sampled", || async {
        let agent = scrape(&to_agent, &agent_url, None).await;
        running
            .iter()
            .all(|a| {
                value(&agent, &format!("flotilla_agent_allocation_memory_bytes{{allocation=\"{}\"}}", a.id))
                    > 0.0
            })
            .then_some(agent)
    })
    .await;
    assert_eq!(value(&sampled, "flotilla_agent_restarts_total{driver=\"docker\"}"), 0.0);

    // A killed container comes back: a restart, counted.
    let victim = &running[0];
    Command::new("docker").args(["kill", &container_of(&cluster, victim)]).output().expect("docker kill");
    wait_until(Duration::from_secs(30), "the killed replica restarted", || async {
        let all = client.allocations(Some("web"), None).await.ok()?;
        all.into_iter().find(|a| a.id == victim.id && a.restarts >= 1 && a.state == AllocationState::Running)
    })
    .await;
    let agent = scrape(&to_agent, &agent_url, None).await;
    assert_eq!(value(&agent, "flotilla_agent_restarts_total{driver=\"docker\"}"), 1.0);
    assert_eq!(started(&agent) - started(&agent_before), 4.0, "a restart is a start too");
}
