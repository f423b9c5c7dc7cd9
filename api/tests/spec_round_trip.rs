//! Every valid spec survives YAML and JSON unchanged: what `flotilla get -o
//! json` prints, or a spec written back out, deploys as the same workload.

use std::collections::BTreeMap;

use flotilla_api::spec::{
    Autoscale, Balance, Check, DnsLabel, Driver, EnvValue, Percent, PlacementStrategy, PortSpec, Protocol,
    PullPolicy, Resources, RestartPolicy, SecretMount, ServiceSpec, SpecDuration, UpdateStrategy,
    VolumeMount,
};
use flotilla_api::{Constraint, CpuMillis, MemoryBytes, WorkloadName, WorkloadSpec, parse_json, parse_yaml};
use proptest::prelude::*;
use proptest::sample::select;

fn label_token() -> impl Strategy<Value = String> {
    proptest::collection::vec(select(&['a', 'b', 'z', '0', '9', '.', '_', '-'][..]), 1..8)
        .prop_map(|chars| format!("k{}", chars.into_iter().collect::<String>()))
}

fn name() -> impl Strategy<Value = WorkloadName> {
    proptest::collection::vec(select(&['a', 'q', 'z', '0', '7', '-'][..]), 0..20).prop_map(|middle| {
        let text = format!("w{}x", middle.into_iter().collect::<String>());
        WorkloadName::parse(&text).expect("generated names are valid")
    })
}

fn constraint() -> impl Strategy<Value = Constraint> {
    (label_token(), proptest::collection::vec(label_token(), 1..4), 0..4u8).prop_map(|(key, values, kind)| {
        match kind {
            0 => Constraint::Equals { key, value: values[0].clone() },
            1 => Constraint::NotEquals { key, value: values[0].clone() },
            2 => Constraint::In { key, values },
            _ => Constraint::NotIn { key, values },
        }
    })
}

fn ports() -> impl Strategy<Value = Vec<PortSpec>> {
    proptest::collection::btree_map(1..=65535u16, (proptest::option::of(0..=65535u16), any::<bool>()), 0..4)
        .prop_map(|ports| {
            let mut used_hosts = std::collections::BTreeSet::new();
            ports
                .into_iter()
                .map(|(container, (host, udp))| {
                    let host = host.filter(|h| *h == 0 || used_hosts.insert(*h));
                    let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
                    // Every other port is named, some published on every node.
                    let name = (container % 2 == 0)
                        .then(|| DnsLabel::parse(&format!("p{container}")).expect("label"));
                    let ingress = name.as_ref().filter(|_| container % 4 == 0).map(|_| container);
                    PortSpec { name, container, host, protocol, ingress }
                })
                .collect()
        })
}

fn autoscale() -> impl Strategy<Value = Option<Autoscale>> {
    let bounds = (1..10u32, 0..20u32, proptest::option::of(1..=1000u32), 1..=1000u32);
    let tuning = (0..=100u32, 0..=3600u32, 0..500u32, 1..10u32);
    proptest::option::of((bounds, tuning)).prop_map(|a| {
        a.map(|((min, extra, cpu, memory), (tolerance, window, percent, replicas))| Autoscale {
            min,
            max: min + extra,
            cpu: cpu.map(Percent),
            memory: if cpu.is_none() { Some(Percent(memory)) } else { None },
            tolerance,
            scale_down_window: window,
            scale_up_percent: percent,
            scale_up_replicas: replicas,
        })
    })
}

fn spec() -> impl Strategy<Value = WorkloadSpec> {
    (
        name(),
        any::<bool>(),
        proptest::collection::vec("[ -~]{0,12}", 1..4),
        proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,6}", "[ -~]{0,12}", 0..4),
        0..1000u32,
        (1..64_000u64, (6u64 << 20)..(64u64 << 30)),
        (0..3u8, any::<bool>()),
        ports(),
        proptest::collection::vec(constraint(), 0..3),
        autoscale(),
    )
        .prop_map(
            |(
                name,
                docker,
                command,
                env,
                replicas,
                (cpu, memory),
                (restart, spread),
                ports,
                constraints,
                autoscale,
            )| {
                let env: BTreeMap<String, String> = env;
                // Every other variable names a secret instead of a value.
                let env = env
                    .into_iter()
                    .enumerate()
                    .map(|(i, (key, value))| {
                        let value = if i % 2 == 1 {
                            EnvValue::Secret { secret: format!("secret-{i}") }
                        } else {
                            EnvValue::Text(value)
                        };
                        (key, value)
                    })
                    .collect();
                WorkloadSpec {
                    name,
                    driver: if docker { Driver::Docker } else { Driver::Process },
                    image: docker.then(|| "registry.local/app:1.0".to_owned()),
                    pull: if docker && replicas % 2 == 0 {
                        PullPolicy::Always
                    } else {
                        PullPolicy::IfNotPresent
                    },
                    pull_secret: (docker && replicas % 3 == 0).then(|| "registry-auth".to_owned()),
                    command,
                    env,
                    secrets: if docker {
                        vec![SecretMount { name: "tls-key".into(), path: "/run/secrets/tls.key".into() }]
                    } else {
                        Vec::new()
                    },
                    volumes: if docker {
                        vec![
                            VolumeMount {
                                name: DnsLabel::parse("data").expect("label"),
                                path: "/data".into(),
                                host: false,
                                read_only: false,
                            },
                            VolumeMount {
                                name: DnsLabel::parse("shared-config").expect("label"),
                                path: "/etc/app".into(),
                                host: true,
                                read_only: replicas % 2 == 1,
                            },
                        ]
                    } else {
                        Vec::new()
                    },
                    replicas,
                    resources: Resources { cpu: CpuMillis(cpu), memory: MemoryBytes(memory) },
                    restart: [RestartPolicy::Always, RestartPolicy::OnFailure, RestartPolicy::Never]
                        [restart as usize],
                    ports,
                    constraints,
                    placement: if spread { PlacementStrategy::Spread } else { PlacementStrategy::Binpack },
                    autoscale,
                    checks: Vec::new(),
                    update: UpdateStrategy::default(),
                    service: ServiceSpec::default(),
                }
            },
        )
}

/// A spec with checks on its own ports and an update strategy within bounds.
fn spec_with_health() -> impl Strategy<Value = WorkloadSpec> {
    (spec(), 100..5000u64, 0..3u32, 1..4u32, any::<bool>(), 0..2u32).prop_map(
        |(mut spec, interval_ms, surge, parallel, revert, canary)| {
            let tcp_port = spec.ports.iter().find(|p| p.protocol == Protocol::Tcp).map(|p| p.container);
            let check = |name: &str, kind: &str| {
                let yaml = format!("name: {name}\n{kind}\ninterval: {interval_ms}ms\nstart_period: 1m30s\n");
                serde_saphyr::from_str::<Check>(&yaml).expect("a valid check")
            };
            spec.checks.push(check("alive", "exec: [sh, -c, \"test -f /tmp/ready\"]\non_failure: restart"));
            if let Some(port) = tcp_port {
                spec.checks
                    .push(check("web", &format!("http: {{path: /healthz, port: {port}, expect: 200-299}}")));
                spec.checks.push(check("socket", &format!("tcp: {{port: {port}}}")));
            }
            if spec.service_ports().next().is_some() {
                spec.service = ServiceSpec { balance: Balance::RoundRobin, drain: SpecDuration(1500) };
            }
            spec.update = UpdateStrategy {
                max_parallel: parallel,
                max_surge: surge,
                max_unavailable: u32::from(surge == 0),
                auto_revert: revert,
                canary,
                ..UpdateStrategy::default()
            };
            spec
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_specs_round_trip_through_yaml_and_json(spec in prop_oneof![spec(), spec_with_health()]) {
        prop_assert_eq!(spec.validate(), Ok(()));
        let yaml = serde_saphyr::to_string(&spec).expect("serializes to YAML");
        prop_assert_eq!(parse_yaml(&yaml).map_err(|e| e.to_string()), Ok(spec.clone()), "YAML:\n{}", yaml);
        let json = serde_json::to_vec(&spec).expect("serializes to JSON");
        prop_assert_eq!(parse_json(&json).map_err(|e| e.to_string()), Ok(spec));
    }
}
