//! Malformed and invalid specs: each gets a 4xx from the API with the field
//! and reason, a clear `file:line:column` message from the CLI, and leaves
//! the stored state exactly as it was.

use std::time::Duration;

use flotilla_tests::{ClusterOptions, TestCluster};

struct Case {
    name: &'static str,
    body: Vec<u8>,
    /// Expected HTTP status from the API.
    status: u16,
    /// Text both the API's message and the CLI's must contain (never empty:
    /// every string contains "").
    reason: &'static str,
    /// The field path the API must name, where there is one.
    field: Option<&'static str>,
}

fn case(name: &'static str, yaml: &str, reason: &'static str, field: Option<&'static str>) -> Case {
    Case { name, body: yaml.as_bytes().to_vec(), status: 400, reason, field }
}

fn cases() -> Vec<Case> {
    let base = "name: web\nimage: busybox\n";
    let alias_bomb = "name: &a web\nimage: busybox\nenv: &e {A: x}\nx1: &b [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\nx2: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nx3: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\nx4: &f [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nx5: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    let deep = format!("name: web\nimage: busybox\ncommand: {}x{}\n", "[".repeat(300), "]".repeat(300));
    let mut huge = b"name: web\nimage: busybox\nenv:\n".to_vec();
    while huge.len() <= (1 << 20) + 10 {
        huge.extend_from_slice(format!("  K{}: {}\n", huge.len(), "v".repeat(100)).as_bytes());
    }
    vec![
        case("empty file", "", "empty", None),
        case("only a comment", "# nothing here\n", "empty", None),
        Case {
            name: "binary garbage",
            body: b"\xff\xfe\x00\x01binary".to_vec(),
            status: 400,
            reason: "UTF-8",
            field: None,
        },
        case("unknown field", &format!("{base}imagee: x\n"), "unknown field `imagee`", None),
        case("name of the wrong type", "name: [a, b]\nimage: busybox\n", "expected string", Some("name")),
        case(
            "env value of the wrong shape",
            &format!("{base}env: {{A: {{secrets: db}}}}\n"),
            "unknown field `secrets`",
            Some("env.A"),
        ),
        case(
            "secret file at a relative path",
            &format!("{base}secrets: [{{name: db, path: run/db}}]\n"),
            "absolute file path",
            Some("secrets[0].path"),
        ),
        case(
            "two secrets on one path",
            &format!("{base}secrets: [{{name: a, path: /run/s}}, {{name: b, path: /run/s}}]\n"),
            "used twice",
            Some("secrets[1].path"),
        ),
        case(
            "secret files for a process",
            "name: web\ndriver: process\ncommand: [sleep, '1']\nsecrets: [{name: db, path: /run/db}]\n",
            "need the docker driver",
            Some("secrets[0]"),
        ),
        case(
            "a pull secret for a process",
            "name: web\ndriver: process\ncommand: [sleep, '1']\npull_secret: registry-auth\n",
            "pulls no image",
            Some("pull_secret"),
        ),
        case(
            "a pull policy for a process",
            "name: web\ndriver: process\ncommand: [sleep, '1']\npull: always\n",
            "pulls no image",
            Some("pull"),
        ),
        case("an unknown pull policy", &format!("{base}pull: sometimes\n"), "unknown variant", Some("pull")),
        case(
            "a pull secret that is no secret name",
            &format!("{base}pull_secret: Bad_Name\n"),
            "lowercase",
            Some("pull_secret"),
        ),
        case(
            "a volume at a relative path",
            &format!("{base}volumes: [{{name: data, path: data}}]\n"),
            "must be an absolute path",
            Some("volumes[0].path"),
        ),
        case(
            "a volume over the whole filesystem",
            &format!("{base}volumes: [{{name: data, path: /}}]\n"),
            "below `/`",
            Some("volumes[0].path"),
        ),
        case(
            "two volumes on one path",
            &format!("{base}volumes: [{{name: a, path: /data}}, {{name: b, path: /data/, host: true}}]\n"),
            "holds two volumes",
            Some("volumes[1].path"),
        ),
        case(
            "one volume name twice",
            &format!("{base}volumes: [{{name: a, path: /one}}, {{name: a, path: /two}}]\n"),
            "names two volumes",
            Some("volumes[1].name"),
        ),
        case(
            "a volume name that is no DNS label",
            &format!("{base}volumes: [{{name: My_Data, path: /data}}]\n"),
            "lowercase",
            Some("volumes[0].name"),
        ),
        case(
            "volumes for a process",
            "name: web\ndriver: process\ncommand: [sleep, '1']\nvolumes: [{name: data, path: /data}]\n",
            "need the docker driver",
            Some("volumes[0]"),
        ),
        case("name in capitals", "name: Web\nimage: busybox\n", "lowercase", Some("name")),
        case("name too long", &format!("name: {}\nimage: busybox\n", "a".repeat(70)), "63", Some("name")),
        case("name starting with a dash", "name: -web\nimage: busybox\n", "start and end", Some("name")),
        case("replicas not a number", &format!("{base}replicas: many\n"), "invalid u32", Some("replicas")),
        case("negative replicas", &format!("{base}replicas: -1\n"), "invalid u32", Some("replicas")),
        case("absurd replicas", &format!("{base}replicas: 5000000\n"), "maximum", Some("replicas")),
        case("negative cpu", &format!("{base}resources:\n  cpu: -1\n"), "negative", Some("resources.cpu")),
        case("absurd cpu", &format!("{base}resources:\n  cpu: 100000\n"), "maximum", Some("resources.cpu")),
        case("zero cpu", &format!("{base}resources:\n  cpu: 0m\n"), "more than zero", Some("resources.cpu")),
        case(
            "memory with an unknown unit",
            &format!("{base}resources:\n  memory: 64XB\n"),
            "unknown unit",
            Some("resources.memory"),
        ),
        case(
            "memory too small",
            &format!("{base}resources:\n  memory: 1Ki\n"),
            "minimum",
            Some("resources.memory"),
        ),
        case(
            "absurd memory",
            &format!("{base}resources:\n  memory: 100Pi\n"),
            "maximum",
            Some("resources.memory"),
        ),
        case("unknown restart policy", &format!("{base}restart: sometimes\n"), "sometimes", Some("restart")),
        case("unknown placement", &format!("{base}placement: random\n"), "random", Some("placement")),
        case(
            "port out of range",
            &format!("{base}ports:\n  - container: 70000\n"),
            "invalid u16",
            Some("ports[0].container"),
        ),
        case(
            "port zero",
            &format!("{base}ports:\n  - container: 0\n"),
            "between 1 and 65535",
            Some("ports[0].container"),
        ),
        case(
            "port listed twice",
            &format!("{base}ports:\n  - container: 80\n  - container: 80\n"),
            "twice",
            Some("ports[1].container"),
        ),
        case(
            "malformed constraint",
            &format!("{base}constraints: [\"zone = a\"]\n"),
            "not a constraint",
            Some("constraints[0]"),
        ),
        case(
            "autoscale min above max",
            &format!("{base}autoscale:\n  min: 5\n  max: 2\n  cpu: 50\n"),
            "less than min",
            Some("autoscale.max"),
        ),
        case(
            "autoscale without a target",
            &format!("{base}autoscale:\n  max: 4\n"),
            "cpu or memory target",
            Some("autoscale"),
        ),
        case(
            "autoscale absurd percent",
            &format!("{base}autoscale:\n  max: 4\n  cpu: 5000%\n"),
            "between 1% and 1000%",
            Some("autoscale.cpu"),
        ),
        case(
            "unknown check kind",
            &format!("{base}checks:\n  - name: web\n    grpc: {{port: 80}}\n"),
            "unknown field `grpc`",
            Some("checks[0].grpc"),
        ),
        case(
            "check with two kinds",
            &format!(
                "{base}ports: [{{container: 80}}]\nchecks:\n  - name: web\n    tcp: {{port: 80}}\n    exec: [\"true\"]\n"
            ),
            "exactly one of",
            Some("checks[0]"),
        ),
        case(
            "check on a port the workload does not expose",
            &format!(
                "{base}ports:\n  - container: 80\nchecks:\n  - name: web\n    http:\n      port: 8080\n"
            ),
            "not one of the workload's TCP `ports`",
            Some("checks[0].http.port"),
        ),
        case(
            "check interval below its bound",
            &format!("{base}checks:\n  - name: ready\n    exec: [\"true\"]\n    interval: 10ms\n"),
            "not between 100ms and 1h",
            Some("checks[0].interval"),
        ),
        case(
            "duration without a unit",
            &format!("{base}checks:\n  - name: ready\n    exec: [\"true\"]\n    timeout: 5\n"),
            "needs a unit",
            Some("checks[0].timeout"),
        ),
        case(
            "check names twice",
            &format!(
                "{base}checks:\n  - name: ready\n    exec: [\"true\"]\n  - name: ready\n    exec: [\"true\"]\n"
            ),
            "names two checks",
            Some("checks[1].name"),
        ),
        case(
            "rollout that could never replace a replica",
            &format!("{base}update:\n  max_surge: 0\n  max_unavailable: 0\n"),
            "could never replace",
            Some("update.max_unavailable"),
        ),
        case(
            "healthy deadline shorter than min healthy time",
            &format!("{base}update:\n  min_healthy_time: 1m\n  healthy_deadline: 30s\n"),
            "longer than min_healthy_time",
            Some("update.healthy_deadline"),
        ),
        case(
            "port name that is not a DNS label",
            &format!("{base}ports:\n  - name: HTTP_Port\n    container: 80\n"),
            "lowercase",
            Some("ports[0].name"),
        ),
        case(
            "ingress on an unnamed port",
            &format!("{base}ports:\n  - container: 80\n    ingress: 30080\n"),
            "needs a `name`",
            Some("ports[0].ingress"),
        ),
        case(
            "service block without a named port",
            &format!("{base}service:\n  balance: round_robin\n"),
            "names none",
            Some("service"),
        ),
        case(
            "unknown balance",
            &format!("{base}ports: [{{name: http, container: 80}}]\nservice:\n  balance: random\n"),
            "random",
            Some("service.balance"),
        ),
        case("docker without an image", "name: web\n", "needs an image", Some("image")),
        // What would hand a replica the host: no spec field exists for it.
        case(
            "privileged container",
            &format!("{base}privileged: true\n"),
            "unknown field `privileged`",
            None,
        ),
        case("host network", &format!("{base}network_mode: host\n"), "unknown field `network_mode`", None),
        case("host PID namespace", &format!("{base}pid: host\n"), "unknown field `pid`", None),
        case("added capabilities", &format!("{base}cap_add: [SYS_ADMIN]\n"), "unknown field `cap_add`", None),
        // A spec names only host volumes an agent offers, never a host path.
        case(
            "host mount",
            &format!("{base}volumes: [\"/:/host\"]\n"),
            "expected mapping",
            Some("volumes[0]"),
        ),
        case(
            "process driver with an image",
            "name: web\ndriver: process\nimage: busybox\ncommand: [sleep, \"1\"]\n",
            "takes no image",
            Some("image"),
        ),
        case(
            "bad environment variable name",
            &format!("{base}env:\n  1BAD: x\n"),
            "variable name",
            Some("env.1BAD"),
        ),
        case(
            "command that is not a list",
            &format!("{base}command: {{a: b}}\n"),
            "expected sequence",
            Some("command"),
        ),
        case("deep nesting", &deep, "recursion limit exceeded", None),
        case("YAML alias bomb", alias_bomb, "unknown field `x1`", None),
        case(
            "two documents",
            "name: a\nimage: busybox\n---\nname: b\nimage: busybox\n",
            "multiple YAML documents",
            None,
        ),
        Case { name: "larger than 1 MiB", body: huge, status: 413, reason: "larger than", field: None },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_specs_get_a_4xx_and_a_clear_message_and_change_nothing() {
    let cluster = TestCluster::start(ClusterOptions {
        servers: 1,
        snapshot_every: 10_000,
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client();
    let good = flotilla_api::parse_yaml("name: web\nimage: busybox\nreplicas: 3\n").expect("valid");
    client.deploy(&good, None).await.expect("deploy the valid spec");
    // What is stored, without the replicas' status (which the reconciler updates on its own).
    let stored = |list: Vec<flotilla_api::Workload>| -> Vec<_> {
        list.into_iter().map(|w| (w.spec, w.version, w.modified_index)).collect()
    };
    let before = stored(client.list(false).await.expect("list"));
    let http = cluster.http();
    let cases = cases();
    assert!(cases.len() >= 25, "at least 25 cases");
    let mut failures = Vec::new();
    for case in cases {
        let mut check = |ok: bool, what: String| {
            if !ok {
                failures.push(format!("{}: {what}", case.name));
            }
        };
        // The API.
        let response = cluster
            .authorize(http.post(cluster.url(1, "/v1/workloads")))
            .header("content-type", "application/yaml")
            .body(case.body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("API answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON error body");
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        check(status == case.status, format!("status {status}, want {}: {body}", case.status));
        check(message.contains(case.reason), format!("API message {message:?} lacks {:?}", case.reason));
        if let Some(field) = case.field {
            check(body["spec"]["field"].as_str() == Some(field), format!("API names field {field}: {body}"));
            check(body["spec"]["line"].as_u64().is_some(), format!("API gives a line: {body}"));
        }

        // The CLI.
        let file = cluster.dir.path().join("bad-spec.yaml");
        std::fs::write(&file, &case.body).expect("write spec");
        let output = cluster.cli(&["deploy", "-f", &file.display().to_string()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        check(!output.status.success(), "the CLI must fail".to_owned());
        check(stderr.contains("bad-spec.yaml"), format!("CLI names the file: {stderr}"));
        check(stderr.contains(case.reason), format!("CLI says {:?}: {stderr}", case.reason));
        if let Some(field) = case.field {
            check(stderr.contains(&format!("`{field}`")), format!("CLI names the field: {stderr}"));
        }
        check(!stderr.contains("panicked"), format!("CLI panicked: {stderr}"));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    let after = stored(client.list(false).await.expect("list"));
    assert_eq!(before, after, "rejected specs changed nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_client_mistakes_get_the_right_status() {
    let cluster = TestCluster::start(ClusterOptions {
        servers: 1,
        snapshot_every: 10_000,
        ..ClusterOptions::default()
    })
    .await;
    let http = cluster.http();
    let spec = "name: web\nimage: busybox\n";
    let send = |method: reqwest::Method, path: &str, content_type: Option<&str>, body: &str| {
        let mut request = cluster.authorize(http.request(method, cluster.url(1, path))).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    use reqwest::Method;
    assert_eq!(
        status(send(Method::POST, "/v1/workloads", Some("text/plain"), spec).await.expect("answer")),
        415
    );
    assert_eq!(status(send(Method::POST, "/v1/workloads", None, spec).await.expect("answer")), 415);
    assert_eq!(
        status(send(Method::POST, "/v1/workloads", Some("application/json"), "{").await.expect("answer")),
        400
    );
    assert_eq!(status(send(Method::GET, "/v1/workloads/missing", None, "").await.expect("answer")), 404);
    assert_eq!(status(send(Method::DELETE, "/v1/workloads/missing", None, "").await.expect("answer")), 404);
    assert_eq!(status(send(Method::GET, "/v1/nothing-here", None, "").await.expect("answer")), 404);
    assert_eq!(
        status(send(Method::POST, "/v1/workloads", Some("application/yaml"), spec).await.expect("answer")),
        200
    );
    // Optimistic concurrency: version 0 means "must be new".
    assert_eq!(
        status(
            send(Method::POST, "/v1/workloads?version=0", Some("application/yaml"), spec)
                .await
                .expect("answer")
        ),
        409
    );
    let scale = |body: &str| send(Method::POST, "/v1/workloads/web/scale", Some("application/json"), body);
    assert_eq!(status(scale("{\"replicas\": -2}").await.expect("answer")), 400);
    assert_eq!(status(scale("{\"replicas\": 4}").await.expect("answer")), 200);
    let members = |body: &str| send(Method::POST, "/v1/cluster/members", Some("application/json"), body);
    assert_eq!(status(members("{\"id\": 1, \"address\": \"127.0.0.1:1\"}").await.expect("answer")), 409);
    assert_eq!(status(members("{\"id\": 5, \"address\": \"nowhere\"}").await.expect("answer")), 400);
    let workload = cluster.client().get("web").await.expect("get");
    assert_eq!((workload.version, workload.spec.replicas), (1, 4));
}
