//! The dashboard's weight and time to first render against a simulated
//! cluster (200 nodes and 2,000 replicas unless FLOTILLA_DASHBOARD_NODES
//! and FLOTILLA_DASHBOARD_REPLICAS say otherwise), in headless chromium:
//! each page's bytes (the document as received, plus the script and the
//! stylesheet it loads) and, from the browser's own Paint and Navigation
//! Timing, its first contentful paint and its load, over five visits.
//! The goal: under 1 MB and under 1 s each. Run with
//! `cargo bench -p flotilla-tests --bench dashboard`.

use std::time::Duration;

use flotilla_api::{AllocationState, parse_yaml};
use flotilla_tests::browser::Browser;
use flotilla_tests::{TestCluster, wait_until};
use serde_json::Value;

const VISITS: usize = 5;
const REPLICAS_PER_WORKLOAD: usize = 100;

fn from_env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the browser measured of one visit.
const TIMING: &str = "
    const nav = performance.getEntriesByType('navigation')[0];
    const paint = performance.getEntriesByName('first-contentful-paint')[0];
    if (!nav || !paint || nav.loadEventEnd === 0) return null;
    return { document: nav.decodedBodySize, paint: paint.startTime, load: nav.loadEventEnd };
";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let nodes = from_env("FLOTILLA_DASHBOARD_NODES", 200);
    let replicas = from_env("FLOTILLA_DASHBOARD_REPLICAS", 2000);
    let (cluster, _) = TestCluster::with_sim_fleet(nodes as u32).await;
    let client = cluster.client();
    let workloads = replicas.div_ceil(REPLICAS_PER_WORKLOAD);
    for w in 0..workloads {
        let count = REPLICAS_PER_WORKLOAD.min(replicas - w * REPLICAS_PER_WORKLOAD);
        let yaml =
            format!("name: w-{w:02}\nimage: x\nreplicas: {count}\nresources: {{cpu: 100m, memory: 64Mi}}\n");
        client.deploy(&parse_yaml(&yaml).expect("spec"), None).await.expect("deploy");
    }
    wait_until(Duration::from_secs(300), "every replica running", || async {
        let running = client
            .allocations(None, None)
            .await
            .ok()?
            .iter()
            .filter(|a| a.is_replica() && a.state == AllocationState::Running)
            .count();
        (running == replicas).then_some(())
    })
    .await;

    let base = cluster.url(1, "");
    let http = cluster.http();
    let mut assets = 0usize;
    for asset in ["/ui/assets/app.js", "/ui/assets/style.css"] {
        let body =
            http.get(format!("{base}{asset}")).send().await.expect("the asset").bytes().await.expect("bytes");
        assets += body.len();
    }
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/ui/")).await;
    browser.type_into("#token", cluster.admin_token().expect("a secure cluster")).await;
    browser.click("#login button").await;
    browser
        .wait_for("signed in", Duration::from_secs(30), "return document.getElementById('servers') !== null")
        .await;

    println!(
        "dashboard: {nodes} simulated nodes, {replicas} replicas in {workloads} workloads; {VISITS} visits a page"
    );
    println!("{:<22} {:>12} {:>16} {:>16}", "page", "bytes", "first paint p50", "load p50 (max)");
    let pages = ["/ui/", "/ui/nodes", "/ui/workloads", "/ui/workloads/w-00", "/ui/events"];
    for page in pages {
        let (mut paints, mut loads, mut bytes) = (Vec::new(), Vec::new(), 0.0);
        for _ in 0..VISITS {
            browser.goto(&format!("{base}{page}")).await;
            let timing: Value = browser.wait_for("the page's timing", Duration::from_secs(30), TIMING).await;
            bytes = timing["document"].as_f64().unwrap_or(0.0) + assets as f64;
            paints.push(timing["paint"].as_f64().unwrap_or(f64::NAN));
            loads.push(timing["load"].as_f64().unwrap_or(f64::NAN));
        }
        let worst = loads.iter().copied().fold(0.0, f64::max);
        println!(
            "{page:<22} {:>10.0} B {:>13.0} ms {:>9.0} ms ({worst:.0})",
            bytes,
            median(paints),
            median(loads)
        );
    }
}
