//! The dashboard at `/ui/` in a real browser (headless chromium), against a
//! secure cluster with simulated nodes: every page shows the cluster's
//! real state (names and counts as the API gives them), a deploy shows up
//! without a reload, a drain from the page drains; and the event stream
//! behind it resumes where a client left off.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_api::{NodeStatus, StreamMessage};
use flotilla_tests::browser::{Browser, screenshot_dir};
use flotilla_tests::workloads::{deploy, wait_running};
use flotilla_tests::{ClusterOptions, TestCluster, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn deploy_and_wait(cluster: &TestCluster, name: &str, replicas: u32) {
    let yaml =
        format!("name: {name}\nimage: x\nreplicas: {replicas}\nresources: {{cpu: 250m, memory: 128Mi}}\n");
    deploy(&cluster.client(), &yaml).await;
    wait_running(&cluster.client(), name, replicas as usize, WAIT).await;
}

/// The elements' text, for `selector`.
async fn texts(browser: &Browser, selector: &str) -> Vec<String> {
    let found = browser
        .run("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", json!([selector]))
        .await;
    found
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

async fn attribute_values(browser: &Browser, selector: &str, attribute: &str) -> Vec<String> {
    let found = browser
        .run(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]))",
            json!([selector, attribute]),
        )
        .await;
    found
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(browser), ignore = "no chromium and chromedriver here")]
async fn every_page_shows_the_real_cluster_updates_live_and_drains_from_a_button() {
    let (cluster, prefix) = TestCluster::with_sim_fleet(4).await;
    deploy_and_wait(&cluster, "web", 6).await;
    let client = cluster.client();
    let leader = cluster.wait_for_leader(WAIT).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let base = cluster.url(follower, "");
    let shots = screenshot_dir();
    let browser = Browser::start().await;

    // Without a token: the prompt, and the pages only after signing in.
    browser.goto(&format!("{base}/ui/")).await;
    browser.wait_for("the token prompt", WAIT, "return document.getElementById('login') !== null").await;
    browser.type_into("#token", cluster.admin_token().expect("a secure cluster")).await;
    browser.click("#login button").await;

    // Cluster: three servers, the leader the API names, one of them leading.
    let rows = browser
        .wait_for(
            "the servers table",
            WAIT,
            "return document.querySelectorAll('#servers tbody tr').length || null",
        )
        .await;
    assert_eq!(rows, json!(3), "one row per server");
    let status = cluster.status_of(follower).await.expect("the follower's status");
    assert_eq!(texts(&browser, "#leader").await, vec![format!("server {}", leader)]);
    assert_eq!(texts(&browser, "#servers td.role.leader").await.len(), 1, "exactly one server leads");
    let mut servers = attribute_values(&browser, "#servers tbody tr", "data-server").await;
    servers.sort();
    assert_eq!(servers, status.members.iter().map(|m| m.id.to_string()).collect::<Vec<_>>());
    assert_eq!(texts(&browser, "#tile-nodes .value").await, vec!["4"]);
    assert_eq!(texts(&browser, "#tile-replicas .value").await, vec!["6"]);
    browser.screenshot(&shots.join("cluster.png")).await;

    // Nodes: the API's nodes, each bin holding one segment per allocation on it.
    browser.goto(&format!("{base}/ui/nodes")).await;
    let shown: BTreeSet<String> =
        attribute_values(&browser, "section.node", "data-node").await.into_iter().collect();
    let nodes = client.nodes(false).await.expect("nodes");
    assert_eq!(shown, nodes.iter().map(|n| n.name.clone()).collect::<BTreeSet<_>>());
    for node in &nodes {
        let selector = format!("section.node[data-node=\"{}\"] .bin.cpu .segment", node.name);
        let segments = texts(&browser, &selector).await.len();
        assert_eq!(segments as u32, node.allocations, "node {}: one segment per allocation", node.name);
    }
    browser.screenshot(&shots.join("nodes.png")).await;

    // Workloads: a deploy made through the API appears without a reload.
    browser.goto(&format!("{base}/ui/workloads")).await;
    assert_eq!(texts(&browser, "tr[data-workload=\"web\"] .running").await, vec!["6/6"]);
    browser.run("window.notReloaded = true", json!([])).await;
    deploy_and_wait(&cluster, "api", 2).await;
    browser
        .wait_for(
            "the new workload on the page, live",
            WAIT,
            "return document.querySelector('tr[data-workload=\"api\"] .running')?.textContent === '2/2'",
        )
        .await;
    assert_eq!(browser.run("return window.notReloaded === true", json!([])).await, json!(true), "no reload");
    browser.screenshot(&shots.join("workloads.png")).await;

    // A workload's page: its replicas as the API lists them, and its charts.
    browser.goto(&format!("{base}/ui/workloads/web")).await;
    let mut shown: Vec<String> =
        attribute_values(&browser, "#replicas-table tbody tr", "data-allocation").await;
    shown.sort();
    let mut listed: Vec<String> = client
        .allocations(Some("web"), None)
        .await
        .expect("allocations")
        .iter()
        .map(|a| a.id.to_string())
        .collect();
    listed.sort();
    assert_eq!(shown, listed);
    assert_eq!(texts(&browser, "#running").await, vec!["6"]);
    assert_eq!(attribute_values(&browser, "figure.chart", "data-resource").await, vec!["cpu", "memory"]);
    browser.screenshot(&shots.join("workload.png")).await;

    // Events: what the API lists, newest first.
    browser.goto(&format!("{base}/ui/events")).await;
    let events = client.events(0, Duration::ZERO).await.expect("events").events;
    let newest = events.last().expect("the deploys made events");
    let first_row = texts(&browser, "#events tbody tr:first-child td:last-child").await;
    assert_eq!(first_row, vec![newest.message.clone()]);
    browser.screenshot(&shots.join("events.png")).await;

    // Drain: the button on the nodes page drains the node, and the page shows it.
    let target = format!("{prefix}2");
    browser.goto(&format!("{base}/ui/nodes")).await;
    browser.click(&format!("section.node[data-node=\"{target}\"] button.action")).await;
    wait_until(WAIT, "the node drains", || async {
        let node = client.nodes(false).await.ok()?.into_iter().find(|n| n.name == target)?;
        (node.status == NodeStatus::Draining).then_some(())
    })
    .await;
    browser
        .wait_for(
            "the page shows the node draining",
            WAIT,
            &format!("return document.querySelector('section.node[data-node=\"{target}\"]')?.dataset.status === 'draining'"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_cookie_reads_but_never_writes() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let token = cluster.admin_token().expect("a secure cluster").to_owned();
    let http = cluster.http();
    let cookie = format!("flotilla_token={token}");
    let page = http.get(cluster.url(1, "/ui/workloads")).send().await.expect("the page answers");
    assert_eq!(page.status(), 401, "no token: the prompt");
    assert!(page.text().await.unwrap_or_default().contains("id=\"login\""), "the prompt asks for a token");
    let page =
        http.get(cluster.url(1, "/ui/workloads")).header("cookie", &cookie).send().await.expect("answers");
    assert_eq!(page.status(), 200, "the cookie opens the pages");
    let drain = http
        .put(cluster.url(1, "/v1/nodes/anything/status"))
        .header("cookie", &cookie)
        .json(&json!({"status": "draining"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(
        drain.status(),
        401,
        "a cookie alone cannot change anything (a cross-site form would send it)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_pushes_events_and_resumes_after_the_last_one_read() {
    let (cluster, _) = TestCluster::with_sim_fleet(2).await;
    let client = cluster.client();
    let start = client.events(0, Duration::ZERO).await.expect("events").index;
    let mut stream = client.event_stream(start).await.expect("the stream opens");
    deploy_and_wait(&cluster, "first", 1).await;
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await.expect("the stream stays open").expect("a readable message") {
                StreamMessage::Event(event) if event.workload.as_deref() == Some("first") => return event,
                _ => continue,
            }
        }
    })
    .await
    .expect("the deploy's event is pushed");
    assert!(seen.index > start);
    let resume_at = stream.last_index();
    drop(stream);

    // While no one listens, another deploy; a stream resumed after the last
    // message read brings it, and nothing from before.
    deploy_and_wait(&cluster, "second", 1).await;
    let mut resumed = client.event_stream(resume_at).await.expect("the stream opens again");
    let mut indexes = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match resumed.next().await.expect("the stream stays open").expect("a readable message") {
                StreamMessage::Event(event) => {
                    assert!(event.index > resume_at, "only what came after {resume_at}: {event:?}");
                    indexes.push(event.index);
                    if event.workload.as_deref() == Some("second") {
                        return;
                    }
                }
                StreamMessage::Applied(index) => assert!(index >= resume_at),
            }
        }
    })
    .await
    .expect("the missed deploy is pushed");
    assert!(!indexes.contains(&seen.index), "the event already read is not sent again");
}
