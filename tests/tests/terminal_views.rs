//! The CLI's full-screen and live views in a real terminal (tmux): `top`
//! shows the cluster's nodes and workloads, follows a deploy made while it
//! runs, and quits on `q`; `deploy --wait` draws a bar per workload.

use std::time::Duration;

use flotilla_tests::terminal::Terminal;
use flotilla_tests::workloads::{deploy, wait_running};
use flotilla_tests::{TestCluster, flotilla_binary, wait_until};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn top_shows_the_cluster_follows_a_deploy_and_quits_on_q() {
    let (cluster, prefix) = TestCluster::with_sim_fleet(3).await;
    let client = cluster.client();
    deploy(&client, "name: web\nimage: x\nreplicas: 4\nresources: {cpu: 500m, memory: 256Mi}\n").await;
    wait_running(&client, "web", 4, WAIT).await;

    let (environment, arguments) = cluster.cli_invocation(&["top"]);
    let binary = flotilla_binary().display().to_string();
    let terminal = Terminal::start(&binary, &arguments, &environment, 160, 45);
    let screen = wait_until(WAIT, "top shows the nodes and the workload", || async {
        let screen = terminal.screen();
        (screen.contains(&format!("{prefix}3")) && screen.contains("4/4")).then_some(screen)
    })
    .await;
    for i in 1..=3 {
        let row = screen.lines().find(|l| l.contains(&format!("{prefix}{i} "))).expect("a row per node");
        assert!(row.contains("ready"), "{row}");
    }
    assert!(screen.contains("nodes (3)") && screen.contains("workloads (1)"), "{screen}");

    // A deploy while it runs shows up without a key pressed.
    deploy(&client, "name: api\nimage: x\nreplicas: 2\nresources: {cpu: 100m, memory: 64Mi}\n").await;
    let screen = wait_until(WAIT, "top shows the new workload running", || async {
        let screen = terminal.screen();
        screen.lines().any(|l| l.contains("api ") && l.contains("2/2")).then_some(screen)
    })
    .await;
    assert!(screen.contains("workloads (2)"), "{screen}");
    assert!(screen.contains("workload/api"), "its events too: {screen}");

    terminal.press("q");
    wait_until(Duration::from_secs(10), "top quits on q", || async {
        (!terminal.is_running()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_wait_draws_a_bar_per_workload_on_a_terminal() {
    let (cluster, _) = TestCluster::with_sim_fleet(2).await;
    let spec = cluster.dir.path().join("web.yaml");
    std::fs::write(&spec, "name: web\nimage: x\nreplicas: 3\nresources: {cpu: 100m, memory: 64Mi}\n")
        .expect("spec");
    let spec = spec.display().to_string();
    let (environment, arguments) = cluster.cli_invocation(&["deploy", "-f", &spec, "--wait"]);
    // The shell keeps the terminal open after the deploy, so its last screen can be read.
    let line =
        format!("{} {}; echo deploy-exited=$?; sleep 60", flotilla_binary().display(), arguments.join(" "));
    let terminal = Terminal::start("sh", &["-c".to_owned(), line], &environment, 200, 20);
    let screen = wait_until(WAIT, "the deploy to end", || async {
        let screen = terminal.screen();
        screen.contains("deploy-exited=").then_some(screen)
    })
    .await;
    assert!(screen.contains("deploy-exited=0"), "{screen}");
    assert!(
        screen.contains("[========================] 3/3"),
        "a full bar, three of three healthy: {screen}"
    );
    assert!(screen.contains("rollout complete"), "{screen}");
}
