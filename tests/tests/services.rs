//! The service registry against real replicas: named ports get a service
//! port (or their ingress), `flotilla services` and `GET /v1/services` list
//! each replica with where it answers and whether it is ready, the list is a
//! blocking query, and a second claim on an ingress port is refused.

use std::time::Duration;

use flotilla_api::Client;
use flotilla_tests::workloads::deploy;
use flotilla_tests::{TestCluster, wait_until};

fn web(replicas: u32) -> String {
    format!(
        "name: web\nimage: flotilla/busybox:latest\nreplicas: {replicas}\n\
         command: [sh, -c, \"mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www\"]\n\
         ports: [{{name: http, container: 80}}, {{name: admin, container: 81, ingress: 30081}}]\n\
         checks: [{{name: web, http: {{path: /index.html, port: 80}}, interval: 200ms}}]\n\
         service: {{balance: round_robin}}\n"
    )
}

async fn ready_endpoints(client: &Client, count: usize) -> flotilla_api::Service {
    wait_until(Duration::from_secs(60), &format!("{count} ready endpoints of web"), || async {
        let page = client.services(0, Duration::ZERO).await.ok()?;
        let web = page.services.into_iter().find(|s| s.name.as_str() == "web")?;
        (web.endpoints.len() == count && web.endpoints.iter().all(|e| e.ready)).then_some(web)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(docker), ignore = "no Docker engine answers here")]
async fn the_registry_lists_each_replica_where_it_answers_and_follows_changes() {
    let cluster = TestCluster::with_agents(&["a", "b"], &["--cpu", "2", "--memory", "2Gi"]).await;
    let client = cluster.client();
    deploy(&client, &web(2)).await;
    let service = ready_endpoints(&client, 2).await;
    let ports: Vec<(String, u16, bool)> =
        service.ports.iter().map(|p| (p.name.clone(), p.port, p.ingress)).collect();
    assert_eq!(ports, vec![("http".into(), 20000, false), ("admin".into(), 30081, true)]);
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    for endpoint in &service.endpoints {
        let port =
            endpoint.ports.iter().find(|(name, _)| name == "http").map(|(_, p)| *p).expect("http port");
        let body = http
            .get(format!("http://{}:{port}/index.html", endpoint.address))
            .send()
            .await
            .expect("the endpoint answers")
            .text()
            .await
            .expect("body");
        assert_eq!(body.trim(), "ok");
    }
    let table = String::from_utf8_lossy(&cluster.cli(&["services"]).stdout).into_owned();
    assert!(table.contains("http/tcp") && table.contains("20000") && table.contains("2/2"), "{table}");
    assert!(table.contains("30081 (ingress)") && table.contains("round_robin"), "{table}");

    // A blocking query at the current index answers when the service changes.
    let index = client.services(0, Duration::ZERO).await.expect("services").index;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.services(index, Duration::from_secs(30)).await })
    };
    client.scale("web", 3).await.expect("scale");
    let page = waiting.await.expect("task").expect("the blocking query answers");
    assert!(page.index > index);
    ready_endpoints(&client, 3).await;

    // The ingress port is web's: another workload cannot claim it.
    let spec = cluster.dir.path().join("thief.yaml");
    std::fs::write(
        &spec,
        "name: thief\nimage: flotilla/busybox:latest\nports: [{name: x, container: 81, ingress: 30081}]\n",
    )
    .expect("spec");
    let refused = cluster.cli(&["deploy", "-f", spec.to_str().expect("path")]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("field `ports[0].ingress`: port 30081 is already the service port of workload `web`"),
        "{stderr}"
    );
    assert!(client.get("thief").await.is_err(), "nothing stored");
}
