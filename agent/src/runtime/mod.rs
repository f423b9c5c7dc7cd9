//! Runtimes: what actually runs an allocation. One type per driver behind
//! one interface (an enum, so calls are static and async fns need no boxing):
//! `docker` (the engine, through bollard), `process` (child processes, for
//! hosts without Docker) and `sim` (runs nothing, for benchmarks and tests
//! with thousands of nodes).

pub mod docker;
pub mod image;
pub mod process;
pub mod process_user;
pub mod pull;
pub mod sim;
pub mod volumes;

use bytes::Bytes;
use flotilla_api::{Allocation, PortBinding, WorkloadSpec};
use futures_util::stream::BoxStream;

/// What a runtime needs to start an allocation.
#[derive(Clone, Copy)]
pub struct Launch<'a> {
    pub allocation: &'a Allocation,
    pub spec: &'a WorkloadSpec,
    /// The node's name, written on what the runtime creates so that a
    /// restarted agent finds (and only finds) its own.
    pub node: &'a str,
    /// Its whole environment: the spec's, over what flotilla tells every
    /// replica (its allocation id, where the services are).
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// The DNS server for a container: this agent's responder, which
    /// answers `*.flotilla` (and passes other names on).
    pub dns: Option<std::net::IpAddr>,
    /// Files to write into a container before it starts: the spec's
    /// secrets, by absolute path.
    pub files: &'a [(String, Vec<u8>)],
    /// The value of the spec's `pull_secret`: a Docker config JSON.
    pub pull_config: Option<&'a [u8]>,
    /// Hears how a start goes before it runs (an image being pulled).
    pub progress: &'a (dyn Fn(String) + Send + Sync),
}

/// An allocation's runtime object (container or process) as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub allocation: u64,
    /// Container id or process id.
    pub handle: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// Published ports, with the host ports actually bound.
    pub ports: Vec<PortBinding>,
    /// Where a client on this node reaches it: the container's address on
    /// its network, or loopback for a process.
    pub address: Option<std::net::IpAddr>,
    /// Whether its image has a HEALTHCHECK of its own.
    pub healthcheck: bool,
    /// For a container this start created: its image's digest, and what
    /// pulling it took.
    pub image: Option<pull::ReadyImage>,
}

/// Resource use of one allocation, for autoscaling.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU in millicores averaged since the previous sample.
    pub cpu_millis: f64,
    pub memory_bytes: u64,
}

/// Something happened to an allocation's runtime object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    Exited {
        allocation: u64,
        /// Its exit code, when the event carries it (Docker's `die` does):
        /// the supervisor then decides at once. `None`: it inspects the
        /// object to learn how it ended, which waits while the engine
        /// cleans up after the exit (a fifth of a second on this engine).
        exit_code: Option<i64>,
    },
    /// The kernel killed it for its memory limit. Docker says so in an
    /// event of its own, before the `die` event as a rule.
    OutOfMemory { allocation: u64 },
    /// The event stream broke: anything may have happened meanwhile, so the
    /// supervisor compares with a fresh list.
    Resync,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image `{0}` is not on this node")]
    ImageMissing(String),
    #[error("image `{0}` is not on this node and `pull: never` forbids pulling it")]
    NeverPulled(String),
    #[error("cannot pull image `{image}`: {reason}")]
    Pull { image: String, reason: String },
    #[error("volume: {0}")]
    Volume(String),
    #[error("docker: {0}")]
    Docker(String),
    #[error("process: {0}")]
    Process(String),
}

pub enum Runtime {
    Docker(docker::DockerRuntime),
    Process(process::ProcessRuntime),
    Sim(sim::SimRuntime),
}

impl Runtime {
    pub async fn start(&self, launch: Launch<'_>) -> Result<Observed, RuntimeError> {
        match self {
            Runtime::Docker(r) => r.start(launch).await,
            Runtime::Process(r) => r.start(launch).await,
            Runtime::Sim(r) => Ok(r.start(launch)),
        }
    }

    /// Removes a replica slot's volume (only containers have volumes).
    pub async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        match self {
            Runtime::Docker(r) => r.remove_volume(name).await,
            Runtime::Process(_) | Runtime::Sim(_) => Ok(()),
        }
    }

    /// Starts an exited allocation's object again (a restart keeps its logs).
    pub async fn restart(&self, handle: &str, launch: Launch<'_>) -> Result<Observed, RuntimeError> {
        match self {
            Runtime::Docker(r) => r.restart(handle, launch).await,
            Runtime::Process(r) => r.start(launch).await,
            Runtime::Sim(r) => Ok(r.start(launch)),
        }
    }

    pub async fn stop(&self, handle: &str) -> Result<(), RuntimeError> {
        match self {
            Runtime::Docker(r) => r.stop(handle).await,
            Runtime::Process(r) => r.stop(handle).await,
            Runtime::Sim(r) => {
                r.stop(handle);
                Ok(())
            }
        }
    }

    /// Stops it but keeps it, so a restart starts the same container again
    /// (a liveness check failed).
    pub async fn terminate(&self, handle: &str) -> Result<(), RuntimeError> {
        match self {
            Runtime::Docker(r) => r.terminate(handle).await,
            Runtime::Process(r) => r.stop(handle).await,
            Runtime::Sim(r) => {
                r.stop(handle);
                Ok(())
            }
        }
    }

    /// Runs `command` inside the container (or beside the process, with the
    /// spec's environment): its exit code and output.
    pub async fn exec(
        &self,
        handle: &str,
        command: &[String],
        env: &std::collections::BTreeMap<String, String>,
        timeout: std::time::Duration,
    ) -> Result<(i64, String), RuntimeError> {
        match self {
            Runtime::Docker(r) => r.exec(handle, command, timeout).await,
            Runtime::Process(r) => r.exec(command, env, timeout).await,
            Runtime::Sim(_) => Ok((0, String::new())),
        }
    }

    /// Where a replica answers on its own network, for the routing meshes
    /// on the same engine; processes answer on their node's address.
    pub fn container_address(&self, observed: &Observed) -> Option<flotilla_api::ContainerAddress> {
        match self {
            Runtime::Docker(r) => {
                Some(flotilla_api::ContainerAddress { engine: r.engine().to_owned(), ip: observed.address? })
            }
            _ => None,
        }
    }

    /// What the image's own HEALTHCHECK says, if it has one.
    pub async fn image_health(&self, handle: &str) -> Option<(flotilla_api::Health, String)> {
        match self {
            Runtime::Docker(r) => r.image_health(handle).await,
            _ => None,
        }
    }

    pub async fn inspect(&self, handle: &str) -> Result<Option<Observed>, RuntimeError> {
        match self {
            Runtime::Docker(r) => r.inspect(handle).await,
            Runtime::Process(r) => Ok(r.inspect(handle)),
            Runtime::Sim(r) => Ok(r.inspect(handle)),
        }
    }

    /// Everything this runtime runs for `node`, found by its labels.
    pub async fn list(&self, node: &str) -> Result<Vec<Observed>, RuntimeError> {
        match self {
            Runtime::Docker(r) => r.list(node).await,
            Runtime::Process(r) => Ok(r.list(node)),
            Runtime::Sim(r) => Ok(r.list()),
        }
    }

    /// Whether `usage` can read anything: a simulated replica uses nothing.
    pub fn measures_usage(&self) -> bool {
        !matches!(self, Runtime::Sim(_))
    }

    pub async fn usage(&self, handle: &str) -> Option<Usage> {
        match self {
            Runtime::Docker(r) => r.usage(handle).await,
            Runtime::Process(r) => r.usage(handle),
            Runtime::Sim(_) => None,
        }
    }

    /// The allocation's output; with `follow`, it goes on as it is written.
    pub fn logs(&self, handle: &str, follow: bool) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        match self {
            Runtime::Docker(r) => r.logs(handle, follow),
            Runtime::Process(r) => r.logs(handle, follow),
            Runtime::Sim(_) => Box::pin(futures_util::stream::empty()),
        }
    }
}
