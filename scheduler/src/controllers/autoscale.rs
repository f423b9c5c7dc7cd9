//! Autoscaling on CPU and memory, after Kubernetes' HorizontalPodAutoscaler:
//! `desired = ceil(sampled × utilisation / target)`, ignored within a
//! tolerance, the larger of the CPU and memory recommendations winning,
//! clamped to `min`/`max`, scale-up limited per step, and scale-down only
//! once the lower recommendation has held for a stabilisation window.
//!
//! As the HPA does, replicas without a sample (not running yet, or just
//! started) count as idle when scaling up and as on target when scaling
//! down, so a scale-up that has not yet come up never feeds the next one;
//! and after a scale-up no new decision is taken until its replicas run and
//! are sampled (or `SETTLE_LIMIT` passes, for replicas that cannot be placed).
//!
//! The decision is a pure function of the spec, the samples and the history
//! of recommendations; the loop that feeds it lives on the leader, whose
//! memory holds the samples (they never enter the Raft log).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::spec::Autoscale;
use flotilla_api::{AllocationState, AllocationUsage, WorkloadName, WorkloadSpec};

use super::node_health::Liveness;
use crate::raft::RaftHandle;
use crate::state::{AutoscaleDecision, Command};

/// What the decision concluded, and why, in words for `flotilla events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: String,
}

/// Recent recommendations of one workload, for the scale-down window, and
/// the scale-up whose replicas are awaited.
#[derive(Debug, Clone, Default)]
pub struct History {
    recommendations: VecDeque<(u64, u32)>,
    /// Replicas of the last scale-up, and when it was decided (ms).
    awaiting: Option<(u32, u64)>,
}

/// The longest a scale-up's replicas are awaited before decisions resume.
const SETTLE_LIMIT_MS: u64 = 120_000;

/// Utilisation of one metric: the mean use of the replicas that have
/// samples, as a percent of the request.
fn utilisation(samples: &[AllocationUsage], request: f64, value: impl Fn(&AllocationUsage) -> f64) -> f64 {
    let mean = samples.iter().map(value).sum::<f64>() / samples.len() as f64;
    mean / request * 100.0
}

/// The replicas one metric asks for, by the HPA's replica calculator.
/// `percents` is each sampled replica's use as a percent of its request;
/// `current` replicas are wanted now, some of them perhaps unsampled.
fn recommend(current: u32, percents: &[f64], target: u32, tolerance: u32) -> u32 {
    let sampled = percents.len() as f64;
    let total: f64 = percents.iter().sum();
    let target = f64::from(target);
    let tolerance = f64::from(tolerance) / 100.0;
    let ratio = total / sampled / target;
    let unsampled = f64::from(current.saturating_sub(percents.len() as u32));
    let replicas = sampled + unsampled;
    let adjusted = if ratio > 1.0 + tolerance {
        // Scaling up: unsampled replicas are taken as idle.
        total / replicas / target
    } else if ratio < 1.0 - tolerance {
        // Scaling down: unsampled replicas are taken as on target.
        (total + unsampled * target) / replicas / target
    } else {
        return current;
    };
    // Counting the unsampled replicas may reverse or cancel the change.
    if (ratio > 1.0) != (adjusted > 1.0) || (adjusted - 1.0).abs() <= tolerance {
        return current;
    }
    (adjusted * replicas).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Each sample's use as a percent of the request.
fn percents(samples: &[AllocationUsage], request: f64, value: impl Fn(&AllocationUsage) -> f64) -> Vec<f64> {
    samples.iter().map(|s| value(s) / request * 100.0).collect()
}

/// Current utilisation per metric, as `flotilla get` shows it.
pub fn utilisations(spec: &WorkloadSpec, samples: &[AllocationUsage]) -> (Option<f64>, Option<f64>) {
    if samples.is_empty() {
        return (None, None);
    }
    let cpu = utilisation(samples, spec.resources.cpu.0 as f64, |s| s.cpu_millis);
    let memory = utilisation(samples, spec.resources.memory.0 as f64, |s| s.memory_bytes as f64);
    (Some(cpu), Some(memory))
}

/// Decides a workload's replicas from its running replicas' samples.
/// Returns `None` when the replicas should stay as they are.
pub fn decide(
    spec: &WorkloadSpec,
    samples: &[AllocationUsage],
    history: &mut History,
    now_ms: u64,
) -> Option<Decision> {
    let auto: &Autoscale = spec.autoscale.as_ref()?;
    let current = spec.replicas;
    let clamp = |n: u32| n.clamp(auto.min, auto.max);
    if let Some((target, since)) = history.awaiting {
        let arrived = samples.len() >= target as usize;
        let superseded = current != target;
        if arrived || superseded || now_ms.saturating_sub(since) > SETTLE_LIMIT_MS {
            history.awaiting = None;
        } else {
            return None;
        }
    }
    if samples.is_empty() {
        // No data: only bring the replicas back inside the bounds.
        let within = clamp(current);
        return (within != current).then(|| Decision {
            replicas: within,
            reason: format!("outside {}..{}: {current} → {within}", auto.min, auto.max),
        });
    }
    let (cpu, memory) = utilisations(spec, samples);
    let mut wanted: Vec<(u32, String, f64, u32)> = Vec::new();
    if let (Some(target), Some(used)) = (auto.cpu, cpu) {
        let each = percents(samples, spec.resources.cpu.0 as f64, |s| s.cpu_millis);
        wanted.push((recommend(current, &each, target.0, auto.tolerance), "cpu".into(), used, target.0));
    }
    if let (Some(target), Some(used)) = (auto.memory, memory) {
        let each = percents(samples, spec.resources.memory.0 as f64, |s| s.memory_bytes as f64);
        wanted.push((recommend(current, &each, target.0, auto.tolerance), "memory".into(), used, target.0));
    }
    let (raw, metric, used, target) = wanted.into_iter().max_by_key(|w| w.0)?;
    let recommendation = clamp(raw);

    let window = u64::from(auto.scale_down_window) * 1000;
    history.recommendations.push_back((now_ms, recommendation));
    while history.recommendations.front().is_some_and(|(at, _)| now_ms.saturating_sub(*at) > window) {
        history.recommendations.pop_front();
    }

    let desired = if recommendation > current {
        let by_percent = current.saturating_add(current.saturating_mul(auto.scale_up_percent) / 100);
        let by_replicas = current.saturating_add(auto.scale_up_replicas);
        recommendation.min(by_percent.max(by_replicas))
    } else {
        // The highest recommendation of the window: a dip shorter than the
        // window never scales down.
        let highest = history.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(current);
        highest.min(current).max(recommendation)
    };
    let desired = clamp(desired);
    if desired == current {
        return None;
    }
    if desired > current {
        history.awaiting = Some((desired, now_ms));
    }
    let comparison = if used > f64::from(target) { ">" } else { "<" };
    let held = if desired < current { format!(" for {}s", auto.scale_down_window) } else { String::new() };
    Some(Decision {
        replicas: desired,
        reason: format!(
            "{metric} {used:.0}% of request {comparison} target {target}%{held}: {current} → {desired}"
        ),
    })
}

/// How old a sample may be and still count.
const SAMPLE_MAX_AGE: Duration = Duration::from_secs(3);

/// Samples of a workload's running allocations, from the leader's memory.
pub fn workload_samples(
    state: &crate::state::ClusterState,
    name: &WorkloadName,
    usage: &HashMap<u64, AllocationUsage>,
) -> Vec<AllocationUsage> {
    state
        .workload_allocations(name)
        .filter(|a| a.state == AllocationState::Running)
        .filter_map(|a| usage.get(&a.id).copied())
        .collect()
}

/// The autoscaler's pace: a pass every second (the scale-down window and
/// the bounds need the clock even when no samples come), and one soon after
/// samples arrive, but never more often than this: in a big cluster beats
/// arrive thousands of times a second, and a pass reads every sample.
const PASS_EVERY: Duration = Duration::from_secs(1);
const PASS_GAP: Duration = Duration::from_millis(200);

/// Runs the autoscaler while this server leads: when samples arrive, and
/// every second.
pub async fn run_autoscaler(raft: RaftHandle, liveness: Arc<Liveness>) {
    let mut histories: HashMap<WorkloadName, History> = HashMap::new();
    let mut last_pass = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(last_pass + PASS_EVERY) => {}
            () = liveness.sampled() => tokio::time::sleep_until(last_pass + PASS_GAP).await,
        }
        last_pass = tokio::time::Instant::now();
        if raft.is_stopped() {
            return;
        }
        if !raft.is_leader() {
            histories.clear();
            continue;
        }
        let now_ms = flotilla_api::now_ms();
        let usage = liveness.usage(SAMPLE_MAX_AGE);
        let decisions: Vec<(WorkloadName, u64, u32, Decision)> = {
            let state = raft.state();
            state
                .workloads()
                .filter(|w| w.spec.autoscale.is_some())
                .filter_map(|w| {
                    let samples = workload_samples(&state, &w.spec.name, &usage);
                    let history = histories.entry(w.spec.name.clone()).or_default();
                    decide(&w.spec, &samples, history, now_ms)
                        .map(|d| (w.spec.name.clone(), w.version, w.spec.replicas, d))
                })
                .collect()
        };
        for (name, version, based_on_replicas, decision) in decisions {
            tracing::info!(workload = %name, replicas = decision.replicas, reason = %decision.reason, "autoscaling");
            let command = Command::AutoscaleWorkload(AutoscaleDecision {
                name: name.clone(),
                replicas: decision.replicas,
                based_on_replicas,
                version,
                reason: decision.reason,
                now_ms,
            });
            let direction = if decision.replicas > based_on_replicas { "up" } else { "down" };
            match raft.propose(command).await {
                Ok(_) => {
                    raft.metrics()
                        .autoscale_decisions
                        .get_or_create(&[("direction", direction.to_owned())])
                        .inc();
                }
                Err(error) => tracing::warn!(workload = %name, %error, "autoscale decision not applied"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::parse_yaml;

    fn spec(replicas: u32, autoscale: &str) -> WorkloadSpec {
        parse_yaml(&format!(
            "name: w\nimage: x\nreplicas: {replicas}\nresources: {{cpu: 100m, memory: 100Mi}}\nautoscale: {autoscale}\n"
        ))
        .expect("valid spec")
    }

    /// `n` samples at this CPU (millicores) and memory (MiB).
    fn samples(n: usize, cpu: f64, memory_mi: u64) -> Vec<AllocationUsage> {
        (0..n)
            .map(|i| AllocationUsage { id: i as u64, cpu_millis: cpu, memory_bytes: memory_mi << 20 })
            .collect()
    }

    #[test]
    fn decisions() {
        let cpu50 = "{min: 1, max: 10, cpu: 50}";
        // (what, replicas, autoscale, samples, expected replicas)
        type Case = (&'static str, u32, &'static str, Vec<AllocationUsage>, Option<u32>);
        let table: Vec<Case> = vec![
            ("on target", 2, cpu50, samples(2, 50.0, 10), None),
            ("within the 10% tolerance", 2, cpu50, samples(2, 54.0, 10), None),
            ("just past the tolerance", 2, cpu50, samples(2, 56.0, 10), Some(3)),
            ("double the target doubles", 2, cpu50, samples(2, 100.0, 10), Some(4)),
            ("clamped to max", 2, "{min: 1, max: 3, cpu: 50}", samples(2, 100.0, 10), Some(3)),
            (
                "step limit: +100% or +4, the larger",
                1,
                "{min: 1, max: 50, cpu: 10}",
                samples(1, 100.0, 10),
                Some(5),
            ),
            ("step limit at 10 replicas", 10, "{min: 1, max: 50, cpu: 10}", samples(10, 100.0, 10), Some(20)),
            ("memory alone", 2, "{min: 1, max: 10, memory: 50}", samples(2, 0.0, 100), Some(4)),
            (
                "the larger of cpu and memory wins",
                2,
                "{min: 1, max: 10, cpu: 50, memory: 50}",
                samples(2, 75.0, 100),
                Some(4),
            ),
            ("no samples: no change", 3, cpu50, vec![], None),
            ("no samples, outside bounds: clamped", 12, cpu50, vec![], Some(10)),
            ("unsampled replicas count as idle on scale-up", 4, cpu50, samples(1, 100.0, 10), None),
            ("one busy replica of two wanted", 2, cpu50, samples(1, 200.0, 10), Some(4)),
            ("unsampled replicas count as on target on scale-down", 4, cpu50, samples(2, 5.0, 10), Some(3)),
            (
                "huge step settings do not overflow",
                3,
                "{min: 1, max: 100000, cpu: 1, scale_up_percent: 1000, scale_up_replicas: 100000}",
                samples(3, 1000.0, 10),
                Some(3000),
            ),
            ("custom tolerance", 2, "{min: 1, max: 10, cpu: 50, tolerance: 30}", samples(2, 60.0, 10), None),
        ];
        for (what, replicas, autoscale, samples, want) in table {
            let got =
                decide(&spec(replicas, autoscale), &samples, &mut History::default(), 0).map(|d| d.replicas);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn the_reason_says_what_and_why() {
        let decision =
            decide(&spec(2, "{min: 1, max: 4, cpu: 50}"), &samples(2, 92.0, 10), &mut History::default(), 0);
        assert_eq!(decision.map(|d| d.reason).as_deref(), Some("cpu 92% of request > target 50%: 2 → 4"));
    }

    #[test]
    fn scale_down_waits_for_the_stabilisation_window() {
        let spec = spec(4, "{min: 1, max: 4, cpu: 50, scale_down_window: 30}");
        let mut history = History::default();
        let idle = samples(4, 5.0, 10);
        for second in 0..30 {
            assert_eq!(
                decide(&spec, &samples(4, 50.0, 10), &mut history, second * 1000).map(|d| d.replicas),
                None
            );
        }
        // Idle from 30 s on: still no scale-down until the busy readings leave the window.
        for second in 30..60 {
            assert_eq!(decide(&spec, &idle, &mut history, second * 1000), None, "at {second}s");
        }
        let decision = decide(&spec, &idle, &mut history, 61_000).expect("scales down after the window");
        assert_eq!(decision.replicas, 1);
        assert!(decision.reason.contains("< target 50% for 30s: 4 → 1"), "{}", decision.reason);
    }

    #[test]
    fn a_scale_up_waits_for_its_replicas_to_run_and_be_sampled() {
        let mut spec = spec(1, "{min: 1, max: 10, cpu: 50}");
        let mut history = History::default();
        let first = decide(&spec, &samples(1, 100.0, 10), &mut history, 0).expect("scales up");
        assert_eq!(first.replicas, 2);
        spec.replicas = 2;
        // The new replica is not running yet: the busy one alone decides nothing.
        for second in 1..60 {
            assert_eq!(
                decide(&spec, &samples(1, 100.0, 10), &mut history, second * 1000),
                None,
                "at {second}s"
            );
        }
        // Both run and are sampled, both busy: the next step comes.
        let next = decide(&spec, &samples(2, 100.0, 10), &mut history, 61_000).expect("scales up again");
        assert_eq!(next.replicas, 4);
        // A scale-up whose replicas never come stops blocking after the settle limit.
        spec.replicas = 4;
        let late = 61_000 + SETTLE_LIMIT_MS + 1;
        assert_eq!(decide(&spec, &samples(2, 100.0, 10), &mut history, late).map(|d| d.replicas), None);
        assert!(history.awaiting.is_none());
    }

    #[test]
    fn scale_up_is_immediate() {
        let spec = spec(1, "{min: 1, max: 4, cpu: 50}");
        let mut history = History::default();
        decide(&spec, &samples(1, 0.0, 10), &mut history, 0);
        assert_eq!(decide(&spec, &samples(1, 100.0, 10), &mut history, 1000).map(|d| d.replicas), Some(2));
    }

    #[test]
    fn an_oscillating_load_does_not_flap() {
        let mut spec = spec(2, "{min: 1, max: 10, cpu: 50}");
        let mut history = History::default();
        let mut changes = Vec::new();
        // Load alternates between 80% and 20% of the request every 5 s, for 5 minutes.
        for second in 0..300u64 {
            let cpu = if (second / 5) % 2 == 0 { 80.0 } else { 20.0 };
            let running = spec.replicas as usize;
            if let Some(d) =
                decide(&spec, &samples(running, cpu * 2.0 / running as f64, 10), &mut history, second * 1000)
            {
                changes.push((second, spec.replicas, d.replicas));
                spec.replicas = d.replicas;
            }
        }
        let downs = changes.iter().filter(|(_, from, to)| to < from).count();
        assert_eq!(downs, 0, "never scales down while the peaks keep coming: {changes:?}");
        assert!(changes.len() <= 2, "settles instead of flapping: {changes:?}");
    }
}
