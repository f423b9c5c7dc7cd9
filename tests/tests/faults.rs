//! The fault suite: three servers, each in a network namespace of its own,
//! six clients doing compare-and-set deploys, deploys, scales, deletes and
//! reads while one nemesis strikes and heals in turns. Each run must end
//! with a linearizable history (the checker), every server holding exactly
//! what the final linearizable reads see (nothing acknowledged lost), and
//! the cluster converged after the last heal. Runs are bounded for CI
//! (`FAULT_MINUTES` for longer) and print their seed (`FAULT_SEED` replays).

use std::time::Duration;

use flotilla_tests::faults::{Nemesis, RunConfig, run, run_seed};
use flotilla_tests::{ClusterOptions, TestCluster};

async fn survives(nemesis: Nemesis, test: &str) {
    let seed = run_seed(test);
    let mut cluster =
        TestCluster::start(ClusterOptions { namespaces: true, ..ClusterOptions::default() }).await;
    let report = run(&mut cluster, &RunConfig::for_nemesis(nemesis, seed)).await;
    eprintln!("{}", report.row());
    assert!(report.violations.is_empty(), "not linearizable (FAULT_SEED={seed}): {:?}", report.violations);
    assert!(report.undecided.is_empty(), "the checker could not decide: {:?}", report.undecided);
    assert!(report.divergent.is_empty(), "acknowledged writes missing: {:?}", report.divergent);
    assert!(
        report.converge_ms <= Duration::from_secs(10).as_millis() as u64,
        "converged in {} ms",
        report.converge_ms
    );
    assert!(report.faults >= 1, "the nemesis struck");
    assert!(report.acknowledged > 50, "the clients got work done: {}", report.row());
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn a_partitioned_leader() {
    survives(Nemesis::PartitionLeader, "a_partitioned_leader").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn a_partitioned_minority() {
    survives(Nemesis::PartitionMinority, "a_partitioned_minority").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn a_bridge_between_two_halves() {
    survives(Nemesis::Bridge, "a_bridge_between_two_halves").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn a_leader_that_hears_nobody() {
    survives(Nemesis::OneWay, "a_leader_that_hears_nobody").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn a_paused_leader() {
    survives(Nemesis::PauseLeader, "a_paused_leader").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn a_killed_server() {
    survives(Nemesis::Kill, "a_killed_server").await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn a_lossy_network() {
    survives(Nemesis::LossyNetwork, "a_lossy_network").await;
}
