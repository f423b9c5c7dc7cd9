//! The process driver's isolation, against the real kernel: each replica
//! in its own cgroup, OOM-killed past its memory and reported as Docker's
//! are, held to its CPU quota with usage counted over all its processes,
//! and stopped whole, children that left its process group included.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_api::{Allocation, AllocationState};
use flotilla_tests::workloads::{deploy, wait_running};
use flotilla_tests::{TestCluster, wait_until};

const AGENT: [&str; 10] = [
    "--driver",
    "process",
    "--allow-driver",
    "process",
    "--cpu",
    "2",
    "--memory",
    "2Gi",
    "--heartbeat-ms",
    "500",
];

async fn cluster() -> TestCluster {
    let mut cluster = TestCluster::start(Default::default()).await;
    cluster.add_agent("p", &AGENT);
    let client = cluster.client();
    wait_until(Duration::from_secs(30), "the agent registered", || async {
        (client.nodes(false).await.ok()?.len() == 1).then_some(())
    })
    .await;
    cluster
}

/// The replica's memory cgroup (v1 here; the unified one on a v2 host).
fn cgroup_of(allocation: &Allocation) -> PathBuf {
    let v2 = PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists();
    let root = if v2 { PathBuf::from("/sys/fs/cgroup") } else { PathBuf::from("/sys/fs/cgroup/memory") };
    root.join("flotilla").join(allocation.node.as_str()).join(allocation.id.to_string())
}

fn pids_in(cgroup: &std::path::Path) -> Vec<u32> {
    let text = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The processes in the cgroup once there are `count`.
async fn processes_in(cgroup: &std::path::Path, count: usize) -> Vec<u32> {
    wait_until(Duration::from_secs(10), &format!("{count} processes in the replica's cgroup"), || async {
        let pids = pids_in(cgroup);
        (pids.len() == count).then_some(pids)
    })
    .await
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// CPU time (seconds) used so far by the processes `pids`, from /proc:
/// the kernel's own count, not the agent's.
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<u64> = stat
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(fields.iter().sum::<u64>() as f64 / 100.0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(cgroups), ignore = "the agent cannot make cgroups here (not root)")]
async fn a_process_replica_over_its_memory_limit_is_oom_killed_and_reported_so() {
    let cluster = cluster().await;
    let client = cluster.client();
    deploy(
        &client,
        "name: hog\ndriver: process\nrestart: never\nresources: {memory: 32Mi}\ncommand: [sh, -c, \"x=$(head -c 200000000 /dev/zero | tr '\\\\0' a); echo survived\"]\n",
    )
    .await;
    let killed = wait_until(Duration::from_secs(60), "the replica to be OOM-killed", || async {
        let allocation = client.allocations(Some("hog"), None).await.ok()?.into_iter().next()?;
        (allocation.state == AllocationState::Complete).then_some(allocation)
    })
    .await;
    assert!(killed.oom_killed, "{killed:?}");
    assert_eq!(killed.exit_code, Some(137), "killed by SIGKILL");
    assert!(killed.message.contains("out of memory"), "{}", killed.message);
    let logs = cluster.cli(&["logs", &killed.id.to_string()]);
    assert!(!String::from_utf8_lossy(&logs.stdout).contains("survived"));
    // Removed once what it left is reaped, which after an OOM kill the
    // kernel has taken seconds to do.
    let cgroup = cgroup_of(&killed);
    wait_until(Duration::from_secs(120), "its cgroup to be removed once it has exited", || async {
        (!cgroup.exists()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(cgroups), ignore = "the agent cannot make cgroups here (not root)")]
async fn a_cpu_bound_replica_is_held_to_its_quota_and_sampled_over_all_its_processes() {
    let cluster = cluster().await;
    let client = cluster.client();
    // Two busy children under a parent that only waits: unlimited, they
    // would take both cores, and a sample of the parent alone would be 0.
    deploy(
        &client,
        "name: spin\ndriver: process\nresources: {cpu: 250m}\ncommand: [sh, -c, 'while :; do :; done & while :; do :; done & wait']\n",
    )
    .await;
    let allocation = wait_running(&client, "spin", 1, Duration::from_secs(30)).await.remove(0);
    let cgroup = cgroup_of(&allocation);
    let pids = processes_in(&cgroup, 3).await; // the parent and its two children

    let (before, at) = (cpu_seconds(&pids), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cores = (cpu_seconds(&pids) - before) / at.elapsed().as_secs_f64();
    assert!((0.15..=0.35).contains(&cores), "the kernel counts {cores:.2} cores used, for a quota of 0.25");

    // The agent's samples, as the autoscaler reads them: near the request.
    let percent = wait_until(Duration::from_secs(20), "usage samples near the request", || async {
        let cpu = client.utilisation("spin").await.ok()?.cpu_percent?;
        (60.0..=140.0).contains(&cpu).then_some(cpu)
    })
    .await;
    assert!(percent > 60.0, "{percent}% of the request");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(cgroups), ignore = "the agent cannot make cgroups here (not root)")]
async fn children_are_stopped_with_the_parent_even_those_that_left_its_process_group() {
    let cluster = cluster().await;
    let client = cluster.client();
    deploy(
        &client,
        "name: family\ndriver: process\ncommand: [sh, -c, 'sleep 100001 & setsid sleep 100002 & wait']\n",
    )
    .await;
    let allocation = wait_running(&client, "family", 1, Duration::from_secs(30)).await.remove(0);
    let cgroup = cgroup_of(&allocation);
    let pids = processes_in(&cgroup, 3).await; // the parent and its two children
    let group_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            s.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok())
        })
    };
    let parent: u32 =
        allocation.runtime_id.as_deref().and_then(|id| id.parse().ok()).expect("the parent's pid");
    wait_until(Duration::from_secs(10), "a child in a process group of its own (setsid)", || async {
        let left = pids.iter().any(|pid| {
            let sleeping = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep\x00100002"));
            sleeping && group_of(*pid).is_some_and(|group| Some(group) != group_of(parent))
        });
        left.then_some(())
    })
    .await;

    client.delete("family").await.expect("delete");
    wait_until(Duration::from_secs(20), "every process of the replica stopped", || async {
        pids.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await;
    wait_until(Duration::from_secs(10), "its cgroup removed", || async { (!cgroup.exists()).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_replicas_output_is_rotated_past_its_bound() {
    let mut cluster = TestCluster::start(Default::default()).await;
    let mut flags = AGENT.to_vec();
    flags.extend(["--process-log-max-size", "4Ki"]);
    cluster.add_agent("p", &flags);
    let client = cluster.client();
    deploy(
        &client,
        "name: chatty\ndriver: process\ncommand: [sh, -c, 'i=0; while [ $i -lt 50000 ]; do echo line $i; i=$((i+1)); done; exec sleep 100000']\n",
    )
    .await;
    let allocation = wait_running(&client, "chatty", 1, Duration::from_secs(30)).await.remove(0);
    let log = cluster.agents[0].data_dir.join("process").join(format!("{}.log", allocation.id));
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    wait_until(Duration::from_secs(30), "the output rotated once it is all written", || async {
        let size = std::fs::metadata(&log).ok()?.len();
        let older = std::fs::read_to_string(rotated(1)).ok()?;
        (size <= 4096 && older.ends_with("line 49999\n")).then_some(())
    })
    .await;
    assert!(!rotated(3).exists(), "two older files at most");
    let logs = cluster.cli(&["logs", &allocation.id.to_string()]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.trim_end().ends_with("line 49999"), "logs read the rotated files, oldest first");
}
