//! The clients of a fault run: each does compare-and-set deploys, plain
//! deploys, scales, deletes and reads (linearizable, and `?stale=true`) on
//! a few workloads, recording every operation's call and outcome for the
//! checker. A write whose outcome the client cannot know (a timeout, a 504,
//! a connection lost after sending) is recorded as unknown; one refused
//! before it could take effect (503, nobody reachable) is left out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flotilla_api::{Client, ClientError, Workload, parse_yaml};

use super::nemesis::Seeded;
use crate::checker::{Recorder, WorkloadInput, WorkloadOutput, WorkloadRegister};

/// How long one operation may take before its outcome is unknown.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);

/// The workloads the clients share: few, so they contend.
pub const KEYS: [&str; 3] = ["reg-a", "reg-b", "reg-c"];

/// What the clients did, beside the history.
#[derive(Debug, Default)]
pub struct Tally {
    pub invoked: AtomicU64,
    pub acknowledged: AtomicU64,
    pub unknown: AtomicU64,
    pub failed: AtomicU64,
    /// `?stale=true` reads that saw a version older than the one this
    /// client last had acknowledged: allowed, and counted apart (roughly:
    /// another client's delete and redeploy also lowers a version).
    pub stale_reads_behind: AtomicU64,
    /// When each write was acknowledged (ms since the run began), for the
    /// longest stretch without one.
    pub acknowledged_writes_ms: std::sync::Mutex<Vec<u64>>,
}

impl Tally {
    /// The longest time without an acknowledged write, in ms.
    pub fn max_unavailable_ms(&self, run_ms: u64) -> u64 {
        let mut times = self.acknowledged_writes_ms.lock().unwrap_or_else(|p| p.into_inner()).clone();
        times.sort_unstable();
        let mut previous = 0;
        let mut longest = 0;
        for at in times.into_iter().chain([run_ms]) {
            longest = longest.max(at.saturating_sub(previous));
            previous = at;
        }
        longest
    }
}

/// The register a workload read stands for.
pub fn register_of(workload: &Workload) -> WorkloadRegister {
    let value = workload.spec.env.get("V").and_then(|v| match v {
        flotilla_api::spec::EnvValue::Text(text) => text.parse().ok(),
        flotilla_api::spec::EnvValue::Secret { .. } => None,
    });
    WorkloadRegister {
        version: workload.version,
        value: value.unwrap_or(u64::MAX),
        replicas: workload.spec.replicas,
    }
}

/// "workload `x` is at version 3, not the expected 1": the 3.
fn actual_version(message: &str) -> Option<u64> {
    message.split("is at version ").nth(1)?.split(',').next()?.trim().parse().ok()
}

enum Answer {
    Output(WorkloadOutput),
    /// Refused before taking effect.
    NotDone,
    Unknown,
}

/// Sorts a client error into an answer for `input`.
fn classify(input: WorkloadInput, error: &ClientError) -> Answer {
    match error {
        ClientError::Api { status: 404, .. } => match input {
            WorkloadInput::Read => Answer::Output(WorkloadOutput::Read(None)),
            WorkloadInput::Scale { .. } | WorkloadInput::Delete => Answer::Output(WorkloadOutput::NotFound),
            WorkloadInput::Deploy { .. } => Answer::Unknown,
        },
        ClientError::Api { status: 409, body } => match (input, actual_version(&body.message)) {
            (WorkloadInput::Deploy { .. }, Some(actual)) => {
                Answer::Output(WorkloadOutput::VersionMismatch { actual })
            }
            _ => Answer::Unknown,
        },
        // Nobody could serve it (503s, nothing reachable): a read did
        // nothing; a write may have reached a leader that lost its answer.
        ClientError::Unreachable { .. } if input == WorkloadInput::Read => Answer::NotDone,
        ClientError::Api { status: 503, .. } => Answer::NotDone,
        _ => Answer::Unknown,
    }
}

async fn perform(client: &Client, key: &str, input: WorkloadInput) -> Result<WorkloadOutput, ClientError> {
    match input {
        WorkloadInput::Deploy { value, expected } => {
            // A new version counts once running: rollouts keep up with the clients.
            let yaml = format!(
                "name: {key}\nimage: registry.invalid/none:1\nenv: {{V: \"{value}\"}}\nupdate: {{min_healthy_time: 0s}}\n"
            );
            let spec = parse_yaml(&yaml)
                .map_err(|e| ClientError::Protocol { address: String::new(), reason: e.to_string() })?;
            let result = client.deploy(&spec, expected).await?;
            Ok(WorkloadOutput::Deployed { version: result.workload.version })
        }
        WorkloadInput::Scale { replicas } => {
            client.scale(key, replicas).await.map(|_| WorkloadOutput::Scaled)
        }
        WorkloadInput::Delete => client.delete(key).await.map(|_| WorkloadOutput::Deleted),
        WorkloadInput::Read => Ok(WorkloadOutput::Read(Some(register_of(&client.get(key).await?)))),
    }
}

/// One client's loop until `until`: random operations on random keys.
#[allow(clippy::too_many_arguments)]
pub async fn client_loop(
    id: usize,
    client: Client,
    recorder: Recorder<WorkloadInput, WorkloadOutput>,
    tally: Arc<Tally>,
    values: Arc<AtomicU64>,
    mut rng: Seeded,
    start: Instant,
    until: Instant,
) {
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut acknowledged_version: BTreeMap<&str, u64> = BTreeMap::new();
    while Instant::now() < until {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let roll = rng.below(100);
        if roll < 10 {
            // A stale read, checked apart: it may lag, never invent.
            let behind = acknowledged_version.get(key).copied().unwrap_or(0);
            if let Ok(Ok(workloads)) = tokio::time::timeout(OPERATION_TIMEOUT, client.list(true)).await
                && let Some(w) = workloads.iter().find(|w| w.spec.name.as_str() == key)
                && w.version < behind
            {
                tally.stale_reads_behind.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let input = match roll {
            10..=39 => WorkloadInput::Read,
            40..=64 => WorkloadInput::Deploy {
                value: values.fetch_add(1, Ordering::Relaxed),
                expected: Some(seen.get(key).copied().unwrap_or(0)),
            },
            65..=84 => {
                WorkloadInput::Deploy { value: values.fetch_add(1, Ordering::Relaxed), expected: None }
            }
            85..=96 => WorkloadInput::Scale { replicas: 1 + rng.below(5) as u32 },
            _ => WorkloadInput::Delete,
        };
        tally.invoked.fetch_add(1, Ordering::Relaxed);
        let pending = recorder.invoke(id, key, input);
        let answer = match tokio::time::timeout(OPERATION_TIMEOUT, perform(&client, key, input)).await {
            Ok(Ok(output)) => Answer::Output(output),
            Ok(Err(error)) => classify(input, &error),
            Err(_) => Answer::Unknown,
        };
        match answer {
            Answer::Output(output) => {
                match output {
                    WorkloadOutput::Deployed { version } => {
                        seen.insert(key, version);
                        acknowledged_version.insert(key, version);
                    }
                    WorkloadOutput::VersionMismatch { actual } => {
                        seen.insert(key, actual);
                    }
                    WorkloadOutput::Read(register) => {
                        seen.insert(key, register.map_or(0, |r| r.version));
                    }
                    WorkloadOutput::Deleted | WorkloadOutput::NotFound => {
                        seen.insert(key, 0);
                        acknowledged_version.insert(key, 0);
                    }
                    WorkloadOutput::Scaled => {}
                }
                if input != WorkloadInput::Read {
                    let at = start.elapsed().as_millis() as u64;
                    tally.acknowledged_writes_ms.lock().unwrap_or_else(|p| p.into_inner()).push(at);
                }
                tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                recorder.ok(pending, output);
            }
            Answer::NotDone => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                recorder.failed(pending);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Answer::Unknown => {
                tally.unknown.fetch_add(1, Ordering::Relaxed);
                recorder.unknown(pending);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actual_version_is_read_from_a_mismatch() {
        assert_eq!(actual_version("workload `reg-a` is at version 3, not the expected 1"), Some(3));
        assert_eq!(actual_version("something else"), None);
    }
}
