//! The `flotilla` command against a harness cluster: every verb, `-o json`
//! that parses, exit codes, and the messages for a down server and a bad spec.

use std::process::{Command, Output};
use std::time::Duration;

use flotilla_tests::{ClusterOptions, TestCluster, flotilla_binary, free_port, wait_until};

/// The CLI as a user of a cluster runs it: its address, CA and token in
/// the environment, as `cluster env` exports them.
struct Cli {
    env: Vec<(&'static str, String)>,
}

impl Cli {
    fn of(cluster: &TestCluster) -> Self {
        let mut env = vec![("FLOTILLA_ADDR", cluster.client().addresses().join(","))];
        if let (Some(ca_dir), Some(token)) = (&cluster.ca_dir, cluster.admin_token()) {
            env.push(("FLOTILLA_CACERT", ca_dir.join("trust.pem").display().to_string()));
            env.push(("FLOTILLA_TOKEN", token.to_owned()));
        }
        Cli { env }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(flotilla_binary())
            .args(args)
            .env_remove("FLOTILLA_CACERT")
            .env_remove("FLOTILLA_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NO_COLOR", "1")
            .output()
            .expect("flotilla runs")
    }

    /// Runs a verb that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "flotilla {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut with_json = args.to_vec();
        with_json.extend(["-o", "json"]);
        let stdout = self.ok(&with_json);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("flotilla {args:?} -o json: {e}: {stdout}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_verb_works_and_reads_give_json() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    cluster.add_agent(
        "p",
        &[
            "--driver",
            "process",
            "--allow-driver",
            "process",
            "--cpu",
            "2",
            "--memory",
            "2Gi",
            "--label",
            "zone=a",
        ],
    );
    let cli = Cli::of(&cluster);
    let client = cluster.client();
    wait_until(Duration::from_secs(20), "the agent registered", || async {
        (client.nodes(false).await.ok()?.len() == 1).then_some(())
    })
    .await;
    let spec = cluster.dir.path().join("ticker.yaml");
    std::fs::write(
        &spec,
        "name: ticker\ndriver: process\nreplicas: 2\ncommand: [\"sh\", \"-c\", \"echo tick; sleep 100000 & wait\"]\n",
    )
    .expect("write spec");
    let spec = spec.to_str().expect("utf-8 path");

    let deployed = cli.run(&["deploy", "-f", spec, "--wait", "--timeout", "60"]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    assert!(String::from_utf8_lossy(&deployed.stdout).contains("workload/ticker created (version 1)"));
    assert!(String::from_utf8_lossy(&deployed.stderr).contains("rollout complete"));
    assert!(cli.ok(&["deploy", "-f", spec]).contains("workload/ticker unchanged"));
    let deploy_json = cli.json(&["deploy", "-f", spec]);
    assert_eq!(deploy_json[0]["change"], "unchanged");

    let workload = cli.json(&["get", "ticker"]);
    assert_eq!(
        (workload["spec"]["replicas"].as_u64(), workload["status"]["running"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(cli.ok(&["get", "ticker"]).contains("2 wanted, 2 placed, 2 running"));
    assert_eq!(cli.json(&["list"]).as_array().map(Vec::len), Some(1));
    assert_eq!(cli.json(&["list", "--stale"]).as_array().map(Vec::len), Some(1));
    let ps = cli.json(&["ps", "ticker"]);
    assert_eq!(ps.as_array().map(Vec::len), Some(2));
    assert!(cli.ok(&["ps"]).contains("running"));
    let nodes = cli.json(&["nodes"]);
    assert_eq!(nodes[0]["allocations"].as_u64(), Some(2));
    assert_eq!(nodes[0]["labels"]["zone"], "a");

    assert_eq!(cli.ok(&["logs", "ticker"]).trim(), "tick");
    assert!(cli.ok(&["scale", "ticker", "3"]).contains("scaled to 3 replicas"));
    wait_until(Duration::from_secs(20), "the third replica", || async {
        (client.get("ticker").await.ok()?.status.running == 3).then_some(())
    })
    .await;

    let node = nodes[0]["name"].as_str().expect("node name").to_owned();
    assert!(cli.ok(&["node", "drain", &node]).contains("is draining"));
    assert!(cli.ok(&["node", "undrain", &node]).contains("is ready"));
    let events = cli.ok(&["events", "-o", "json"]);
    let parsed: Vec<serde_json::Value> =
        events.lines().map(|l| serde_json::from_str(l).expect("one JSON event per line")).collect();
    assert!(parsed.iter().any(|e| e["message"] == "node is draining"), "{events}");

    let status = cli.json(&["cluster", "status"]);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert!(status["leader"].as_u64().is_some());
    assert!(cli.ok(&["cluster", "status"]).contains("leader"));
    if let Some(ca_dir) = &cluster.ca_dir {
        let founding = std::fs::read_to_string(ca_dir.join("ca.pem")).expect("the CA");
        let ca = cli.json(&["ca", "status"]);
        assert_eq!(ca["trusted"].as_array().map(Vec::len), Some(1), "{ca}");
        assert_eq!(ca["trust_pem"].as_str(), Some(founding.as_str()), "{ca}");
        assert!(ca["rotation"].is_null(), "{ca}");
        assert!(
            cli.ok(&["ca", "status"])
                .contains(&format!("issuing  {}", ca["issuing"].as_str().unwrap_or("?")))
        );
    }

    // A fourth server that waits to be added, then `cluster add` and `remove`.
    let address = format!("127.0.0.1:{}", free_port());
    let mut fourth = flotilla_tests::ServerProcess::new(
        4,
        address.clone(),
        cluster.dir.path(),
        flotilla_tests::cluster::server_ca(cluster.ca_dir.as_deref()),
        vec!["--join".into(), "127.0.0.1:1".into()],
    );
    fourth.start();
    assert!(
        cli.ok(&["cluster", "add", &format!("4={address}"), "--timeout", "30"])
            .contains("server 4 is a voter")
    );
    assert!(cli.ok(&["cluster", "remove", "4"]).contains("server 4 removed"));
    fourth.kill();

    assert!(cli.ok(&["delete", "ticker"]).contains("workload/ticker deleted"));
    let missing = cli.run(&["get", "ticker"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("workload `ticker` does not exist"));
    assert!(cli.ok(&["completions", "bash"]).contains("flotilla"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_server_and_a_bad_spec_get_messages_a_person_can_act_on() {
    let down = format!("127.0.0.1:{}", free_port());
    let cli = Cli { env: vec![("FLOTILLA_ADDR", format!("http://{down}"))] };
    let output = cli.run(&["list"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&down) && stderr.contains("check that a server runs there"), "{stderr}");

    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("web.yaml");
    std::fs::write(&spec, "name: web\nimage: busybox\nreplicas: lots\n").expect("write");
    let output = cli.run(&["deploy", "-f", spec.to_str().expect("path")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("web.yaml:3:11: field `replicas`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_cannot_be_read_is_an_error_that_says_why_never_empty_output() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let args = ["--driver", "process", "--allow-driver", "process", "--cpu", "1", "--memory", "1Gi"];
    cluster.add_agent("logs", &args);
    let cli = Cli::of(&cluster);
    let spec = cluster.dir.path().join("talker.yaml");
    std::fs::write(
        &spec,
        "name: talker\ndriver: process\nreplicas: 1\ncommand: [\"sh\", \"-c\", \"echo said; sleep 100000 & wait\"]\n",
    )
    .expect("write spec");
    cli.ok(&["deploy", "-f", spec.to_str().expect("utf-8 path"), "--wait", "--timeout", "60"]);
    assert_eq!(cli.ok(&["logs", "talker"]).trim(), "said", "readable while its agent runs");

    let node = cluster.client().nodes(false).await.expect("nodes").remove(0);
    cluster.agents[0].kill();
    let output = cli.run(&["logs", "talker"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "a failure, not empty output: {stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&output.stdout));
    assert!(
        stderr.contains(&format!("cannot read the logs from the agent at {}", node.address)),
        "the agent it tried and why: {stderr}"
    );
}
