//! `flotilla cluster up|down|env` and its chaos verbs: three servers and three agents as
//! processes, and as containers on a private Docker network; `down` leaves
//! nothing behind.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flotilla_tests::flotilla_binary;

/// The variables `cluster env` exports, as a user's shell would hold them.
type Env = Vec<(String, String)>;

fn flotilla(home: &std::path::Path, args: &[&str], env: Option<&Env>) -> Output {
    let mut command = Command::new(flotilla_binary());
    command.args(args).env("XDG_DATA_HOME", home);
    for variable in ["FLOTILLA_ADDR", "FLOTILLA_CACERT", "FLOTILLA_TOKEN"] {
        command.env_remove(variable);
    }
    command.envs(env.into_iter().flatten().map(|(k, v)| (k, v)));
    command.output().expect("flotilla runs")
}

/// `export K=V` lines into variables.
fn exported(text: &str) -> Env {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn docker_ids(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A replica on one agent reaches every replica of `web`, two of them on
/// other agents, by name through the mesh; and a client on the host
/// reaches them through one agent's ingress port.
fn through_the_mesh(
    home: &std::path::Path,
    env: &Env,
    name: &str,
    docker: bool,
    ingress: u16,
    web_hosts: &BTreeSet<String>,
) {
    let spec = home.join("caller.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: caller\nimage: flotilla/busybox:latest\nresources: {{cpu: 50m, memory: 16Mi}}\n\
             command: [sh, -c, \"while true; do wget -q -O - http://web.flotilla:{ingress}/; sleep 0.1; done\"]\n"
        ),
    )
    .expect("spec");
    ok(flotilla(home, &["deploy", "-f", spec.to_str().expect("path"), "--wait"], Some(env)), "deploy caller");
    let ps: serde_json::Value =
        serde_json::from_str(&ok(flotilla(home, &["ps", "caller", "-o", "json"], Some(env)), "ps"))
            .expect("json");
    let container = ps[0]["runtime_id"].as_str().expect("the caller's container").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reached = BTreeSet::new();
    while !web_hosts.is_subset(&reached) {
        assert!(Instant::now() < deadline, "by name, the caller reached only {reached:?} of {web_hosts:?}");
        let logs = Command::new("docker").args(["logs", &container]).output().expect("docker logs");
        reached = String::from_utf8_lossy(&logs.stdout).lines().map(str::to_owned).collect();
        std::thread::sleep(Duration::from_millis(200));
    }
    // From the host: the ingress port of the first agent.
    let host = if docker {
        docker_ids(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &format!("flotilla-{name}-agent-1"),
        ])
    } else {
        "127.0.0.1".to_owned()
    };
    let mut seen = BTreeSet::new();
    while !web_hosts.is_subset(&seen) {
        assert!(Instant::now() < deadline, "through the ingress, only {seen:?} of {web_hosts:?}");
        let mut stream =
            std::net::TcpStream::connect((host.as_str(), ingress)).expect("the ingress port answers");
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply");
        seen.insert(reply.rsplit("\r\n\r\n").next().unwrap_or_default().trim().to_owned());
    }
}

/// Ups a cluster, deploys and checks it, downs it, and checks nothing is left.
fn up_use_down(name: &str, docker: bool) {
    let home = tempfile::tempdir().expect("temp dir");
    let mut up = vec!["cluster", "up", "--name", name, "--servers", "3", "--agents", "3"];
    if docker {
        up.push("--docker");
    } else {
        up.extend(["--agent-cpu", "1", "--agent-memory", "1Gi"]);
    }
    let result = std::panic::catch_unwind(|| {
        let out = ok(flotilla(home.path(), &up, None), "cluster up");
        assert!(out.contains(&format!("cluster `{name}` is up: 3 servers, 3 agents")), "{out}");
        let env = ok(flotilla(home.path(), &["cluster", "env", "--name", name], None), "cluster env");
        let env = exported(&env);
        let variables: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(variables, ["FLOTILLA_ADDR", "FLOTILLA_CACERT", "FLOTILLA_TOKEN"], "secure by default");
        let status: serde_json::Value = serde_json::from_str(&ok(
            flotilla(home.path(), &["cluster", "status", "-o", "json"], Some(&env)),
            "status",
        ))
        .expect("json");
        let members = status["members"].as_array().expect("members");
        assert_eq!(members.len(), 3);
        assert!(
            members.iter().all(|m| m["status"]["applied"].as_u64().is_some()),
            "every member answers: {status}"
        );
        let nodes: serde_json::Value =
            serde_json::from_str(&ok(flotilla(home.path(), &["nodes", "-o", "json"], Some(&env)), "nodes"))
                .expect("json");
        assert_eq!(nodes.as_array().map(Vec::len), Some(3));
        // The rollout succeeds only once every replica passes its HTTP
        // check, which the agents (processes, or containers on the
        // cluster's network) make the way a client on the node would.
        let spec = home.path().join("web.yaml");
        let ingress = flotilla_tests::free_port();
        std::fs::write(
            &spec,
            format!(
                "name: web\nimage: flotilla/busybox:latest\n\
                 command: [sh, -c, \"mkdir -p /www && hostname > /www/index.html && echo serving && exec httpd -f -p 80 -h /www\"]\n\
                 replicas: 3\nresources: {{cpu: 50m, memory: 16Mi}}\n\
                 ports: [{{name: http, container: 80, ingress: {ingress}}}]\n\
                 checks: [{{name: web, http: {{path: /index.html, port: 80}}, interval: 500ms}}]\n\
                 update: {{min_healthy_time: 1s}}\n"
            ),
        )
        .expect("spec");
        let deploy = ["deploy", "-f", spec.to_str().expect("path"), "--wait", "--timeout", "60"];
        ok(flotilla(home.path(), &deploy, Some(&env)), "deploy --wait");
        let ps: serde_json::Value =
            serde_json::from_str(&ok(flotilla(home.path(), &["ps", "web", "-o", "json"], Some(&env)), "ps"))
                .expect("json");
        let healthy = ps
            .as_array()
            .expect("allocations")
            .iter()
            .filter(|a| {
                a["health"] == "healthy" && a["health_output"] == "passed check web: GET /index.html -> 200"
            })
            .count();
        assert_eq!(healthy, 3, "{ps}");
        let web_hosts: BTreeSet<String> = ps
            .as_array()
            .expect("allocations")
            .iter()
            .filter_map(|a| Some(a["runtime_id"].as_str()?.chars().take(12).collect()))
            .collect();
        through_the_mesh(home.path(), &env, name, docker, ingress, &web_hosts);
        // Logs come through the servers, which reach the agents (in a
        // `--docker` cluster only they can: the agents are on its network).
        let logs = ok(flotilla(home.path(), &["logs", "web"], Some(&env)), "logs");
        assert_eq!(logs.trim(), "serving", "a replica's output, whatever the kind of cluster");
        if !docker {
            // Process replicas outlive their agents (to be adopted): `down` must end them.
            let spec = home.path().join("sleeper.yaml");
            let sleeper =
                format!("name: sleeper\ndriver: process\ncommand: [sleep, '{}']\n", sleeper_seconds(name));
            std::fs::write(&spec, sleeper).expect("spec");
            let deploy = ["deploy", "-f", spec.to_str().expect("path"), "--wait", "--timeout", "60"];
            ok(flotilla(home.path(), &deploy, Some(&env)), "deploy --wait");
        }
    });
    let down = flotilla(home.path(), &["cluster", "down", "--name", name], None);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    ok(down, "cluster down");
    assert!(!home.path().join("flotilla/clusters").join(name).exists(), "its directory is gone");
    for agent in 1..=3 {
        assert_eq!(
            docker_ids(&["ps", "-aq", "--filter", &format!("label=flotilla.node={name}-agent-{agent}")]),
            ""
        );
    }
    assert_eq!(docker_ids(&["ps", "-aq", "--filter", &format!("label=flotilla.cluster={name}")]), "");
    assert_eq!(
        docker_ids(&["network", "ls", "-q", "--filter", &format!("label=flotilla.cluster={name}")]),
        ""
    );
    let leftover =
        Command::new("pgrep").args(["-f", "--", &format!("--name {name}-agent")]).output().expect("pgrep");
    assert!(leftover.stdout.is_empty(), "no agent process left");
    let sleeper = format!("sleep {}", sleeper_seconds(name));
    let replica = Command::new("pgrep").args(["-f", "--", &sleeper]).output().expect("pgrep");
    assert!(replica.stdout.is_empty(), "no process replica left");
    for agent in 1..=3 {
        let cgroup = format!("/sys/fs/cgroup/memory/flotilla/{name}-agent-{agent}");
        assert!(!std::path::Path::new(&cgroup).exists(), "{cgroup} is removed");
    }
}

/// A process replica's sleep, unique to this cluster so `pgrep` finds only it.
fn sleeper_seconds(name: &str) -> u64 {
    100_000 + name.bytes().map(u64::from).sum::<u64>()
}

#[test]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
fn cluster_up_and_down_with_processes() {
    up_use_down(&format!("proc-{}", std::process::id()), false);
}

#[test]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
fn cluster_up_and_down_with_docker() {
    up_use_down(&format!("dock-{}", std::process::id()), true);
}

/// Runs `cluster down` when dropped, also when the test failed.
struct Down<'a> {
    home: &'a std::path::Path,
    name: &'a str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = flotilla(self.home, &["cluster", "down", "--name", self.name], None);
    }
}

/// The chaos verbs on local cluster `name` (made by the caller): the
/// leader cut off, a new one elected on the majority side while the old one
/// acknowledges nothing; healed, one leader again and every server caught
/// up; a member paused, resumed, killed and restarted; a lossy link; a
/// delayed leader whose writes commit no sooner than its delay allows.
/// Returns the delaying process's pid, for the caller to see `down` end it.
async fn exercise_chaos_verbs(home: &std::path::Path, name: &str, env: &Env) -> u64 {
    let chaos = |args: &[&str]| {
        let mut all = vec!["cluster"];
        all.extend_from_slice(args);
        all.extend(["--name", name]);
        ok(flotilla(home, &all, None), &all.join(" "))
    };
    let addresses: Vec<String> = env
        .iter()
        .find(|(k, _)| k == "FLOTILLA_ADDR")
        .map(|(_, v)| v.split(',').map(str::to_owned).collect())
        .expect("FLOTILLA_ADDR");
    let cacert = env
        .iter()
        .find(|(k, _)| k == "FLOTILLA_CACERT")
        .map(|(_, v)| std::path::PathBuf::from(v))
        .expect("CA");
    let token = env.iter().find(|(k, _)| k == "FLOTILLA_TOKEN").map(|(_, v)| v.clone());
    let ca_dir = cacert.parent().expect("CA dir").to_owned();
    let client_of = |address: &str| {
        flotilla_cli::cluster_credentials::secure_client(&[address.to_owned()], &ca_dir, token.as_deref())
            .expect("client")
            .with_retry_for(Duration::ZERO)
    };
    let status = |address: String| {
        let client = client_of(&address);
        async move { tokio::time::timeout(Duration::from_secs(2), client.server_status()).await.ok()?.ok() }
    };
    let converged = || async {
        flotilla_tests::wait_until(Duration::from_secs(30), "one leader, every server caught up", || async {
            let mut seen = Vec::new();
            for address in &addresses {
                let s = status(address.clone()).await?;
                seen.push((s.leader?, s.applied));
            }
            seen.windows(2).all(|w| w[0] == w[1]).then_some(())
        })
        .await;
    };
    let cluster_status = || ok(flotilla(home, &["cluster", "status"], Some(env)), "status");
    converged().await;
    let leader = status(addresses[0].clone()).await.and_then(|s| s.leader).expect("a leader");
    let old = addresses[leader as usize - 1].clone();

    let said = chaos(&["partition", &leader.to_string()]);
    assert!(said.contains("cut off from the rest"), "{said}");
    let others: Vec<String> = addresses.iter().filter(|a| **a != old).cloned().collect();
    flotilla_tests::wait_until(Duration::from_secs(20), "a new leader on the majority side", || async {
        let mut leaders = Vec::new();
        for address in &others {
            leaders.push(status(address.clone()).await?.leader?);
        }
        (leaders.iter().all(|l| *l == leaders[0] && *l != leader)).then_some(())
    })
    .await;
    let spec = flotilla_api::parse_yaml("name: during\nimage: x\n").expect("spec");
    let on_old = tokio::time::timeout(Duration::from_secs(10), client_of(&old).deploy(&spec, None)).await;
    assert!(!matches!(on_old, Ok(Ok(_))), "the cut-off leader acknowledged a write: {on_old:?}");
    let majority =
        flotilla_cli::cluster_credentials::secure_client(&others, &ca_dir, token.as_deref()).expect("client");
    majority.deploy(&spec, None).await.expect("the majority acknowledges writes");
    let shown = cluster_status();
    assert!(shown.contains(&format!("fault in force: {leader} cut off from the rest")), "{shown}");

    chaos(&["heal"]);
    converged().await;
    let agent = format!("{name}-agent-1");
    chaos(&["pause", "2"]);
    assert!(cluster_status().contains("fault in force: 2 paused"));
    chaos(&["resume", "2"]);
    chaos(&["kill", &agent]);
    assert!(cluster_status().contains(&format!("fault in force: {agent} killed")));
    // The network heals with a member down (a stopped container has none).
    chaos(&["heal"]);
    chaos(&["restart", &agent]);
    let all = flotilla_cli::cluster_credentials::secure_client(&addresses, &ca_dir, token.as_deref())
        .expect("client")
        .with_retry_for(Duration::from_secs(5));
    flotilla_tests::wait_until(Duration::from_secs(30), "the restarted agent ready again", || async {
        let nodes = all.nodes(false).await.ok()?;
        nodes.iter().any(|n| n.name == agent && n.status == flotilla_api::NodeStatus::Ready).then_some(())
    })
    .await;
    chaos(&["slow", "3", "--loss", "5%"]);
    let shown = cluster_status();
    assert!(
        shown.contains("3 slow: 5% loss") && !shown.contains("paused") && !shown.contains("killed"),
        "{shown}"
    );
    majority
        .deploy(&flotilla_api::parse_yaml("name: after\nimage: x\n").expect("spec"), None)
        .await
        .expect("writes go on");
    chaos(&["heal"]);
    converged().await;

    // A delayed leader: no write commits before its appends reach a follower.
    let leader = status(addresses[0].clone()).await.and_then(|s| s.leader).expect("a leader");
    let said = chaos(&["slow", &leader.to_string(), "--delay", "200ms", "--jitter", "20ms"]);
    assert!(said.contains(&format!("{leader} slow: 0% loss, 200±20 ms delay")), "{said}");
    for i in 0..3 {
        let spec = flotilla_api::parse_yaml(&format!("name: slow-{i}\nimage: x\n")).expect("spec");
        let started = Instant::now();
        all.deploy(&spec, None).await.expect("a delayed leader still commits");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(180),
            "a write committed in {took:?}, sooner than the delay allows"
        );
    }
    let delayer = record(home, name)["network"]["delayers"][0]["pid"].as_u64().expect("a delaying process");
    assert!(running(delayer), "the delaying process runs while the delay is in force");
    let shown = cluster_status();
    assert!(shown.contains(&format!("fault in force: {leader} slow: 0% loss, 200±20 ms delay")), "{shown}");
    delayer
}

/// Local cluster `name`'s record, as `cluster` commands keep it.
fn record(home: &std::path::Path, name: &str) -> serde_json::Value {
    let path = home.join("flotilla/clusters").join(name).join("cluster.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("record")).expect("json")
}

/// Whether process `pid` runs (not gone, not a zombie).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// The chaos verbs on a process cluster whose members each live in a
/// namespace; `down` takes every namespace and delaying process away.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(netns), ignore = "cannot make network namespaces here (not root)")]
async fn chaos_verbs_on_an_isolated_process_cluster() {
    let home = tempfile::tempdir().expect("temp dir");
    let name = format!("chaos-{}", std::process::id());
    let up = [
        "cluster",
        "up",
        "--name",
        &name,
        "--agents",
        "1",
        "--isolated",
        "--agent-cpu",
        "1",
        "--agent-memory",
        "1Gi",
    ];
    // Whatever happens below, the cluster goes down with the test.
    let _down = Down { home: home.path(), name: &name };
    let env = exported(&ok(flotilla(home.path(), &up, None), "cluster up --isolated"));
    let delayer = exercise_chaos_verbs(home.path(), &name, &env).await;

    let ours: Vec<String> = record(home.path(), &name)["network"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| Some(m["namespace"]["named"].as_str()?.to_owned()))
        .collect();
    assert_eq!(ours.len(), 4, "three servers and one agent, each in a namespace");
    ok(flotilla(home.path(), &["cluster", "down", "--name", &name], None), "cluster down");
    let namespaces = Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout;
    let left = String::from_utf8_lossy(&namespaces);
    assert!(ours.iter().all(|n| !left.contains(n.as_str())), "namespaces left: {left}");
    assert!(!running(delayer), "cluster down stops the delaying process");
}

/// The same verbs on a `--docker` cluster: the faults act inside the
/// containers' own namespaces (and `docker pause|kill|start`).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(all(docker, netns)), ignore = "needs a Docker engine and root")]
async fn chaos_verbs_on_a_docker_cluster() {
    let home = tempfile::tempdir().expect("temp dir");
    let name = format!("dchaos-{}", std::process::id());
    let up = ["cluster", "up", "--name", &name, "--agents", "1", "--docker"];
    let _down = Down { home: home.path(), name: &name };
    let env = exported(&ok(flotilla(home.path(), &up, None), "cluster up --docker"));
    let delayer = exercise_chaos_verbs(home.path(), &name, &env).await;
    ok(flotilla(home.path(), &["cluster", "down", "--name", &name], None), "cluster down");
    assert_eq!(docker_ids(&["ps", "-aq", "--filter", &format!("label=flotilla.cluster={name}")]), "");
    assert!(!running(delayer), "cluster down stops the delaying process");
}

/// A packet cannot leave before it is sent: jitter wider than the delay is
/// refused with the reason, before any cluster is looked up.
#[test]
fn a_jitter_wider_than_the_delay_is_refused() {
    let home = tempfile::tempdir().expect("temp dir");
    let output =
        flotilla(home.path(), &["cluster", "slow", "1", "--delay", "10ms", "--jitter", "20ms"], None);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("--jitter 20ms is more than --delay 10ms"), "{said}");
}
