//! The Docker runtime: one container per allocation, through bollard.
//!
//! Containers carry labels (`flotilla.alloc`, `flotilla.workload`,
//! `flotilla.node`), so a restarted agent finds its own containers among
//! those of other agents sharing the engine, and adopts them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HealthStatusEnum, HostConfig, PortBinding as DockerPortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use flotilla_api::PortBinding;
use flotilla_api::spec::Protocol;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use super::{Launch, Observed, RuntimeError, RuntimeEvent, Usage};
use crate::metrics::AgentMetrics;

pub const LABEL_ALLOC: &str = "flotilla.alloc";
pub const LABEL_WORKLOAD: &str = "flotilla.workload";
pub const LABEL_NODE: &str = "flotilla.node";

/// How long a container gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE_SECONDS: i32 = 5;

pub struct DockerRuntime {
    docker: Docker,
    /// The Docker network replicas join (a `cluster up --docker` cluster's
    /// own, so that agents in containers reach them); the default bridge if none.
    network: Option<String>,
    /// The engine's id, sent with replicas' container addresses: a routing
    /// mesh dials those only on the same engine's host.
    engine: String,
    /// Brings images onto the node before their containers are created.
    /// Boxed: it is most of the runtime's size, and `Runtime` holds one of each kind.
    puller: Box<super::pull::ImagePuller>,
    /// Directories this node offers as host volumes, by name.
    host_volumes: std::collections::BTreeMap<String, flotilla_api::HostVolume>,
    /// Where the engine's answer times are recorded.
    metrics: Arc<AgentMetrics>,
    /// Each container's last CPU reading (its CPU time and the host's, in
    /// ns): a sample is the CPU used since the previous one, read in one
    /// quick call instead of the engine's own two readings a second apart.
    cpu_readings: std::sync::Mutex<std::collections::HashMap<String, CpuReading>>,
}

/// A container's CPU time and the host's at one stats read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuReading {
    container_ns: u64,
    host_ns: u64,
}

/// The shortest span a CPU sample may cover. The kernel hands a container
/// its CPU limit out per 100 ms period, so a reading can be off by up to
/// one period's share: a tenth of the limit over a second, a third over
/// 300 ms. Under a loaded CI run a replica busy at its limit was sampled
/// at about 132 % of it, which only a short span explains (a late beat,
/// then a prompt one), and the autoscaler scaled up on it. A reading this
/// soon after the last is left out, and the next one covers the longer
/// span (the leader keeps the previous sample meanwhile).
const MIN_CPU_SPAN: Duration = Duration::from_millis(800);

/// Millicores used between two readings: the container's share of the
/// host's CPU time between them, times the host's CPUs (the docker CLI's
/// formula); 0 for the first reading of a container or a counter that went
/// back (a restarted container); `None` when the readings are less than
/// [`MIN_CPU_SPAN`] apart (the host's CPU time runs `cpus` times as fast
/// as the clock), which keeps the older reading.
fn cpu_millis_between(before: Option<CpuReading>, now: CpuReading, cpus: f64) -> Option<f64> {
    match before {
        Some(before) if now.host_ns > before.host_ns && now.container_ns >= before.container_ns => {
            let host_ns = (now.host_ns - before.host_ns) as f64;
            if host_ns / cpus < MIN_CPU_SPAN.as_nanos() as f64 {
                return None;
            }
            Some((now.container_ns - before.container_ns) as f64 / host_ns * cpus * 1000.0)
        }
        _ => Some(0.0),
    }
}

fn docker_error(error: bollard::errors::Error) -> RuntimeError {
    RuntimeError::Docker(error.to_string())
}

fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// A container name Docker accepts: `flotilla-<node>-<alloc>`.
fn container_name(node: &str, allocation: u64) -> String {
    let node: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    format!("flotilla-{node}-{allocation}")
}

impl DockerRuntime {
    /// Connects to the local engine at the API version it speaks.
    pub async fn connect() -> Result<Self, RuntimeError> {
        Self::connect_on(None).await
    }

    /// Connects, with replicas joining `network`.
    pub async fn connect_on(network: Option<String>) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(docker_error)?;
        let docker = tokio::time::timeout(Duration::from_secs(3), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Docker("the engine did not answer within 3 s".into()))?
            .map_err(docker_error)?;
        docker.ping().await.map_err(docker_error)?;
        let engine = docker.info().await.map_err(docker_error)?.id.unwrap_or_default();
        let puller = Box::new(super::pull::ImagePuller::new(docker.clone()));
        Ok(DockerRuntime {
            docker,
            network,
            engine,
            puller,
            host_volumes: Default::default(),
            metrics: Arc::default(),
            cpu_readings: Default::default(),
        })
    }

    /// The host volumes this node offers, which replicas' specs may mount.
    pub fn with_host_volumes(
        self,
        host_volumes: std::collections::BTreeMap<String, flotilla_api::HostVolume>,
    ) -> Self {
        DockerRuntime { host_volumes, ..self }
    }

    /// Records the engine's answer times in `metrics`.
    pub fn with_metrics(self, metrics: Arc<AgentMetrics>) -> Self {
        DockerRuntime { metrics, ..self }
    }

    /// Awaits an engine call, timing it as `call`.
    async fn timed<T>(&self, call: &'static str, answer: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let answer = answer.await;
        self.metrics.engine_call(call, started.elapsed());
        answer
    }

    /// Removes a slot volume the servers asked this node to remove.
    pub async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        super::volumes::remove(&self.docker, name).await
    }

    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// The gateway of the replicas' own network (none on the default
    /// bridge, which the host shares with everything else).
    pub async fn network_gateway(&self) -> Option<std::net::IpAddr> {
        let network = self.docker.inspect_network(self.network.as_deref()?, None).await.ok()?;
        network.ipam?.config?.into_iter().find_map(|c| c.gateway?.parse().ok())
    }

    /// The engine client, for callers that manage images and networks.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure the examples' base image exists, building it if need be.
    pub async fn ensure_busybox_image(&self) -> Result<(), RuntimeError> {
        super::image::ensure_busybox_image(&self.docker, super::image::BUSYBOX_IMAGE).await
    }

    pub async fn start(&self, launch: Launch<'_>) -> Result<Observed, RuntimeError> {
        let allocation = launch.allocation;
        let spec = launch.spec;
        let image = spec.image.clone().unwrap_or_default();
        let name = container_name(launch.node, allocation.id);
        // A host volume this node does not offer fails the start before any pull.
        let mounts = super::volumes::mounts(spec, allocation, launch.node, &self.host_volumes)?;
        let ready = self.puller.ready(&image, spec.pull, launch.pull_config, launch.progress).await?;
        let labels = HashMap::from([
            (LABEL_ALLOC.to_owned(), allocation.id.to_string()),
            (LABEL_WORKLOAD.to_owned(), allocation.workload.to_string()),
            (LABEL_NODE.to_owned(), launch.node.to_owned()),
        ]);
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for port in &allocation.ports {
            let key = format!("{}/{}", port.container, port.protocol);
            let host_port = if port.host == 0 { String::new() } else { port.host.to_string() };
            port_bindings.insert(
                key.clone(),
                Some(vec![DockerPortBinding { host_ip: None, host_port: Some(host_port) }]),
            );
            exposed.push(key);
        }
        let memory = allocation.memory as i64;
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                nano_cpus: Some(allocation.cpu as i64 * 1_000_000),
                memory: Some(memory),
                memory_swap: Some(memory),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                network_mode: self.network.clone(),
                dns: launch.dns.map(|ip| vec![ip.to_string()]),
                mounts: (!mounts.is_empty()).then_some(mounts),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let mut created =
            self.timed("create", self.docker.create_container(Some(options.clone()), body.clone())).await;
        // A container left from an earlier attempt (say, an agent killed
        // between create and start) holds the name: it is replaced.
        if let Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) = created {
            self.remove(&name).await?;
            created = self.timed("create", self.docker.create_container(Some(options), body)).await;
        }
        let created = created.map_err(|e| {
            if is_not_found(&e) { RuntimeError::ImageMissing(image.clone()) } else { docker_error(e) }
        })?;
        if !launch.files.is_empty() {
            self.write_files(&created.id, launch.files).await?;
        }
        self.timed("start", self.docker.start_container(&created.id, None)).await.map_err(docker_error)?;
        let mut observed = self
            .inspect(&created.id)
            .await?
            .ok_or_else(|| RuntimeError::Docker(format!("container {name} vanished after it started")))?;
        observed.image = Some(ready);
        Ok(observed)
    }

    /// Writes secret files into a created container through the engine (as
    /// `docker cp` does), readable by any user inside it (as Swarm's are)
    /// and never on the agent's own disk.
    async fn write_files(&self, container: &str, files: &[(String, Vec<u8>)]) -> Result<(), RuntimeError> {
        let entries: Vec<(&str, &[u8], u32)> = files
            .iter()
            .map(|(path, bytes)| (path.trim_start_matches('/'), bytes.as_slice(), 0o444))
            .collect();
        let archive = super::image::tar(&entries);
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.docker
            .upload_to_container(container, Some(options), bollard::body_full(archive.into()))
            .await
            .map_err(|e| RuntimeError::Docker(format!("cannot write the secret files: {e}")))
    }

    pub async fn restart(&self, handle: &str, launch: Launch<'_>) -> Result<Observed, RuntimeError> {
        match self.timed("start", self.docker.start_container(handle, None)).await {
            Ok(()) => self
                .inspect(handle)
                .await?
                .ok_or_else(|| RuntimeError::Docker(format!("container {handle} vanished after it started"))),
            Err(e) if is_not_found(&e) => self.start(launch).await,
            Err(e) => Err(docker_error(e)),
        }
    }

    pub async fn stop(&self, handle: &str) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::default().t(STOP_GRACE_SECONDS).build();
        match self.timed("stop", self.docker.stop_container(handle, Some(options))).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(e) => return Err(docker_error(e)),
        }
        self.remove(handle).await
    }

    /// Stops the container and keeps it, for a restart to start again.
    pub async fn terminate(&self, handle: &str) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::default().t(STOP_GRACE_SECONDS).build();
        match self.timed("stop", self.docker.stop_container(handle, Some(options))).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(docker_error(e)),
        }
    }

    /// `docker exec`: the command's exit code and its output.
    pub async fn exec(
        &self,
        handle: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<(i64, String), RuntimeError> {
        let run = async {
            let options = CreateExecOptions {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..CreateExecOptions::default()
            };
            let exec = self.docker.create_exec(handle, options).await.map_err(docker_error)?;
            let mut text = String::new();
            if let StartExecResults::Attached { mut output, .. } =
                self.docker.start_exec(&exec.id, None).await.map_err(docker_error)?
            {
                while let Some(Ok(chunk)) = output.next().await {
                    if text.len() < 4096 {
                        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                    }
                }
            }
            let inspected = self.docker.inspect_exec(&exec.id).await.map_err(docker_error)?;
            Ok((inspected.exit_code.unwrap_or(-1), text))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RuntimeError::Docker(format!("exec did not finish within {timeout:?}")))?
    }

    /// The status of the image's own HEALTHCHECK, with its last output.
    pub async fn image_health(&self, handle: &str) -> Option<(flotilla_api::Health, String)> {
        let details = self.docker.inspect_container(handle, None).await.ok()?;
        let health = details.state?.health?;
        let status = match health.status? {
            HealthStatusEnum::HEALTHY => flotilla_api::Health::Healthy,
            HealthStatusEnum::UNHEALTHY => flotilla_api::Health::Unhealthy,
            HealthStatusEnum::STARTING => flotilla_api::Health::Unknown,
            _ => return None,
        };
        let output = health
            .log
            .and_then(|log| log.last().cloned())
            .map(|last| {
                let text = last.output.unwrap_or_default();
                format!("exit {}: {}", last.exit_code.unwrap_or(-1), text.trim())
            })
            .unwrap_or_default();
        Some((status, output))
    }

    async fn remove(&self, handle: &str) -> Result<(), RuntimeError> {
        self.cpu_readings.lock().unwrap_or_else(|p| p.into_inner()).remove(handle);
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.timed("remove", self.docker.remove_container(handle, Some(options))).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(docker_error(e)),
        }
    }

    pub async fn inspect(&self, handle: &str) -> Result<Option<Observed>, RuntimeError> {
        let details = match self.timed("inspect", self.docker.inspect_container(handle, None)).await {
            Ok(details) => details,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(docker_error(e)),
        };
        let labels = details.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let Some(allocation) = labels.get(LABEL_ALLOC).and_then(|v| v.parse().ok()) else {
            return Ok(None);
        };
        let state = details.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let healthcheck = state
            .health
            .as_ref()
            .and_then(|h| h.status)
            .is_some_and(|s| !matches!(s, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE));
        let settings = details.network_settings.unwrap_or_default();
        let network = self.network.as_deref().unwrap_or("bridge");
        let address = settings
            .networks
            .as_ref()
            .and_then(|n| n.get(network).or_else(|| n.values().next()))
            .and_then(|endpoint| endpoint.ip_address.as_deref())
            .and_then(|ip| ip.parse().ok());
        let mut ports = Vec::new();
        if let Some(map) = settings.ports {
            for (key, bindings) in map {
                let Some((port, protocol)) = key.split_once('/') else { continue };
                let Ok(container) = port.parse() else { continue };
                let protocol = if protocol == "udp" { Protocol::Udp } else { Protocol::Tcp };
                let host = bindings
                    .unwrap_or_default()
                    .iter()
                    .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
                    .unwrap_or(0);
                ports.push(PortBinding { container, host, protocol });
            }
        }
        ports.sort_by_key(|p| (p.container, p.protocol));
        Ok(Some(Observed {
            allocation,
            handle: details.id.unwrap_or_else(|| handle.to_owned()),
            running,
            exit_code: (!running).then_some(state.exit_code).flatten(),
            oom_killed: state.oom_killed.unwrap_or(false),
            ports,
            address,
            healthcheck,
            image: None,
        }))
    }

    pub async fn list(&self, node: &str) -> Result<Vec<Observed>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={node}")])]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let summaries =
            self.timed("list", self.docker.list_containers(Some(options))).await.map_err(docker_error)?;
        let mut observed = Vec::new();
        for summary in summaries {
            if let Some(id) = summary.id
                && let Some(o) = self.inspect(&id).await?
            {
                observed.push(o);
            }
        }
        Ok(observed)
    }

    /// Watches the engine's events for this node's containers; when the stream
    /// breaks it reconnects and asks the supervisor to resync with a list.
    pub fn watch_events(&self, node: String, events: mpsc::UnboundedSender<RuntimeEvent>) {
        let docker = self.docker.clone();
        tokio::spawn(async move {
            loop {
                let filters = HashMap::from([
                    ("type", vec!["container".to_owned()]),
                    ("event", vec!["die".to_owned(), "oom".to_owned()]),
                    ("label", vec![format!("{LABEL_NODE}={node}")]),
                ]);
                let options = EventsOptionsBuilder::default().filters(&filters).build();
                let mut stream = docker.events(Some(options));
                while let Some(event) = stream.next().await {
                    let Ok(event) = event else { break };
                    let attributes = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                    let Some(allocation) = attributes.get(LABEL_ALLOC).and_then(|v| v.parse().ok()) else {
                        continue;
                    };
                    let happened = if event.action.as_deref() == Some("oom") {
                        RuntimeEvent::OutOfMemory { allocation }
                    } else {
                        let exit_code = attributes.get("exitCode").and_then(|code| code.parse().ok());
                        RuntimeEvent::Exited { allocation, exit_code }
                    };
                    if events.send(happened).is_err() {
                        return;
                    }
                }
                if events.send(RuntimeEvent::Resync).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// One stats sample: CPU used since the previous sample (a one-shot
    /// read, not the engine's own second-long pair), memory as usage less
    /// inactive file cache.
    pub async fn usage(&self, handle: &str) -> Option<Usage> {
        let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
        let stats = self.timed("stats", self.docker.stats(handle, Some(options)).next()).await?.ok()?;
        let cpu = stats.cpu_stats?;
        let now = CpuReading {
            container_ns: cpu.cpu_usage.as_ref()?.total_usage?,
            host_ns: cpu.system_cpu_usage.unwrap_or(0),
        };
        let cpus = cpu
            .online_cpus
            .map(f64::from)
            .or_else(|| cpu.cpu_usage.as_ref()?.percpu_usage.as_ref().map(|p| p.len() as f64))
            .unwrap_or(1.0);
        let cpu_millis = {
            let mut readings = self.cpu_readings.lock().unwrap_or_else(|p| p.into_inner());
            let cpu_millis = cpu_millis_between(readings.get(handle).copied(), now, cpus)?;
            readings.insert(handle.to_owned(), now);
            cpu_millis
        };
        let memory = stats.memory_stats?;
        let usage = memory.usage.unwrap_or(0);
        let inactive = memory
            .stats
            .as_ref()
            .and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")).copied())
            .unwrap_or(0);
        Some(Usage { cpu_millis, memory_bytes: usage.saturating_sub(inactive) })
    }

    pub fn logs(&self, handle: &str, follow: bool) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(follow).build();
        // The stream owns what it needs: bollard borrows the client and name only to build the request.
        Box::pin(
            self.docker
                .logs(handle, Some(options))
                .map(|item| item.map(|output| output.into_bytes()).map_err(docker_error)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_containers_share_of_the_host_time_between_two_readings() {
        let reading = |container_ns, host_ns| CpuReading { container_ns, host_ns };
        const S: u64 = 1_000_000_000;
        // (before, now, cpus, millicores)
        let table = [
            (None, reading(5_000, 1_000_000), 2.0, Some(0.0)),
            (Some(reading(0, 0)), reading(500_000_000, 2 * S), 2.0, Some(500.0)),
            (Some(reading(100, S)), reading(100, 5 * S), 4.0, Some(0.0)),
            (Some(reading(200_000_000, S)), reading(250_000_000, 3 * S), 2.0, Some(50.0)),
            // A restarted container's counter starts again: no sample.
            (Some(reading(900, 1_000)), reading(100, 2_000), 2.0, Some(0.0)),
            // The host's counter did not move: no sample.
            (Some(reading(100, 2_000)), reading(200, 2_000), 2.0, Some(0.0)),
            // 300 ms apart on 2 CPUs (0.6 s of host time): too short a span, the older reading stays.
            (Some(reading(0, S)), reading(40_000_000, S + 600_000_000), 2.0, None),
            // 800 ms apart on 2 CPUs: long enough.
            (Some(reading(0, S)), reading(80_000_000, S + 1_600_000_000), 2.0, Some(100.0)),
        ];
        for (before, now, cpus, millicores) in table {
            assert_eq!(cpu_millis_between(before, now, cpus), millicores, "{before:?} -> {now:?}");
        }
    }
}
