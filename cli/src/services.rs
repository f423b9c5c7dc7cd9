//! `flotilla services`: every service, the port each node serves it on,
//! and its replicas with their health.

use clap::Args;
use flotilla_api::Client;

use crate::output::{Format, print_json, table};

#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Only this service, with a row per replica.
    name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

pub async fn services(client: &Client, args: ServicesArgs) -> anyhow::Result<()> {
    let mut services = client.services(0, std::time::Duration::ZERO).await?.services;
    if let Some(name) = &args.name {
        services.retain(|s| s.name.as_str() == name);
        if services.is_empty() {
            anyhow::bail!("service `{name}` does not exist");
        }
    }
    if args.output == Format::Json {
        return print_json(&services);
    }
    let mut t = table(&["SERVICE", "PORT", "SERVICE PORT", "REPLICAS READY", "BALANCE"]);
    for service in &services {
        let ready = service.endpoints.iter().filter(|e| e.ready).count();
        for port in &service.ports {
            let published =
                if port.ingress { format!("{} (ingress)", port.port) } else { port.port.to_string() };
            t.add_row(vec![
                service.name.to_string(),
                format!("{}/{}", port.name, port.protocol),
                published,
                format!("{ready}/{}", service.endpoints.len()),
                balance_name(service.balance).to_owned(),
            ]);
        }
    }
    println!("{t}");
    for unserved in services.iter().flat_map(|s| &s.unserved) {
        println!(
            "! node {} cannot serve port {}/{} on {}: {}",
            unserved.node, unserved.port, unserved.protocol, unserved.address, unserved.reason
        );
    }
    if args.name.is_some() {
        let mut e = table(&["ALLOCATION", "NODE", "ADDRESS", "HOST PORTS", "HEALTH", "READY"]);
        for service in &services {
            for endpoint in &service.endpoints {
                let ports: Vec<String> =
                    endpoint.ports.iter().map(|(name, port)| format!("{name}={port}")).collect();
                e.add_row(vec![
                    endpoint.allocation.to_string(),
                    endpoint.node.clone(),
                    endpoint.address.clone(),
                    ports.join(","),
                    endpoint.health.to_string(),
                    if endpoint.ready { "yes" } else { "no" }.to_owned(),
                ]);
            }
        }
        println!("{e}");
    }
    Ok(())
}

fn balance_name(balance: flotilla_api::spec::Balance) -> &'static str {
    match balance {
        flotilla_api::spec::Balance::LeastConnections => "least_connections",
        flotilla_api::spec::Balance::RoundRobin => "round_robin",
    }
}
