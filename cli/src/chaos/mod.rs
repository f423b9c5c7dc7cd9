//! Chaos for local clusters: `flotilla cluster partition|heal|pause|resume|
//! kill|restart|slow`, so a team can watch its services ride out a lost
//! node, a split cluster or a slow link, on a cluster made by `cluster up
//! --isolated` (each server and agent in a network namespace of its own,
//! the same harness the fault suites use) or by `cluster up --docker`
//! (each a container, whose namespace the verbs enter). The faults in force
//! are kept in the cluster's record: `cluster status` lists them, `cluster
//! heal` and `resume`/`restart` undo them, `cluster down` takes them all
//! away.

pub mod delay;
pub mod network;

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::docker_cluster::{agent_container, network_name, server_container};
use crate::local_cluster::{ClusterRecord, MemberProcess, load, save};

/// A fault in force on a local cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// `members` cut off from `from` (from every other member when empty).
    Partition { members: Vec<String>, from: Vec<String> },
    /// Stopped with SIGSTOP (a container: frozen by `docker pause`).
    Paused { member: String },
    /// Killed with SIGKILL.
    Killed { member: String },
    /// What it sends its peers is lost (percent) or delayed.
    Slow {
        member: String,
        loss_percent: u32,
        delay_ms: u32,
        #[serde(default)]
        jitter_ms: u32,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { members, from } if from.is_empty() => {
                write!(f, "{} cut off from the rest", members.join(","))
            }
            Fault::Partition { members, from } => {
                write!(f, "{} cut off from {}", members.join(","), from.join(","))
            }
            Fault::Paused { member } => write!(f, "{member} paused"),
            Fault::Killed { member } => write!(f, "{member} killed"),
            Fault::Slow { member, loss_percent, delay_ms, jitter_ms } => {
                write!(f, "{member} slow: {loss_percent}% loss, {delay_ms}±{jitter_ms} ms delay")
            }
        }
    }
}

/// A member as the verbs reach it.
#[derive(Debug, Clone)]
enum Target {
    /// A process of a process cluster.
    Process(MemberProcess),
    /// A container of a `--docker` cluster.
    Container { name: String, container: String },
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Process(process) => &process.name,
            Target::Container { name, .. } => name,
        }
    }
}

/// Every member of the cluster: servers by id, agents by node name.
fn all_members(record: &ClusterRecord) -> Vec<Target> {
    if !record.docker {
        return record.members.iter().cloned().map(Target::Process).collect();
    }
    let servers = (1..=record.addresses.len())
        .map(|id| Target::Container { name: id.to_string(), container: server_container(&record.name, id) });
    let agents = record
        .nodes
        .iter()
        .map(|node| Target::Container { name: node.clone(), container: agent_container(node) });
    servers.chain(agents).collect()
}

/// The network that faults act on: the namespaces of an `--isolated`
/// process cluster, or a docker cluster's containers at their addresses now
/// (a restarted container may have a new one), with the delays in force.
fn network(record: &ClusterRecord) -> anyhow::Result<network::Network> {
    if record.docker {
        let containers: Vec<(String, String)> = all_members(record)
            .into_iter()
            .filter_map(|t| match t {
                Target::Container { name, container } => Some((name, container)),
                Target::Process(_) => None,
            })
            .collect();
        let mut network = network::Network::of_containers(&network_name(&record.name), &containers)?;
        network.delayers = record.network.as_ref().map(|n| n.delayers.clone()).unwrap_or_default();
        return Ok(network);
    }
    record.network.clone().with_context(|| {
        format!(
            "cluster `{}` shares this host's network; network faults need `flotilla cluster up --isolated` (as root), which gives each member a namespace of its own, or `--docker`",
            record.name
        )
    })
}

/// Members by name, as `cluster status` lists servers (ids) and `nodes`
/// lists agents (node names); a comma-separated list.
fn members(record: &ClusterRecord, list: &str) -> anyhow::Result<Vec<Target>> {
    let all = all_members(record);
    let mut found = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let member = all.iter().find(|m| m.name() == name).with_context(|| {
            let known: Vec<&str> = all.iter().map(Target::name).collect();
            format!("`{name}` is not a member of cluster `{}` (members: {})", record.name, known.join(", "))
        })?;
        found.push(member.clone());
    }
    if found.is_empty() {
        bail!("name at least one member");
    }
    Ok(found)
}

fn names(targets: Vec<Target>) -> Vec<String> {
    targets.iter().map(|t| t.name().to_owned()).collect()
}

/// Cuts `list` off from `from` (everyone else when `None`).
pub fn partition(name: &str, list: &str, from: Option<&str>) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let network = network(&record)?;
    let cut = names(members(&record, list)?);
    let others: Vec<String> = match from {
        Some(from) => names(members(&record, from)?),
        None => names(all_members(&record)).into_iter().filter(|m| !cut.contains(m)).collect(),
    };
    for a in &cut {
        for b in others.iter().filter(|b| *b != a) {
            let (i, j) = (position(&network, a)?, position(&network, b)?);
            network.cut(i, j, false)?;
            network.cut(j, i, false)?;
        }
    }
    let fault = Fault::Partition { members: cut, from: from.map(|_| others).unwrap_or_default() };
    println!("{fault}");
    record.faults.push(fault);
    save(&record)
}

fn position(network: &network::Network, member: &str) -> anyhow::Result<usize> {
    network.position(member).with_context(|| format!("`{member}` has no network now (is it running?)"))
}

/// Removes every network fault (partitions, loss, delay).
pub fn heal(name: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let mut network = network(&record)?;
    network.heal()?;
    record.network = Some(network);
    record.faults.retain(|f| matches!(f, Fault::Paused { .. } | Fault::Killed { .. }));
    println!("the network of cluster `{name}` is whole again");
    save(&record)
}

/// The one member a verb acts on (a list is refused rather than cut short).
fn one_member(record: &ClusterRecord, name: &str) -> anyhow::Result<Target> {
    match members(record, name)?.as_slice() {
        [member] => Ok(member.clone()),
        _ => bail!("name one member, not `{name}`"),
    }
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?;
    if !status.success() {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

fn docker(args: &[&str]) -> anyhow::Result<()> {
    let output =
        std::process::Command::new("docker").args(args).output().context("cannot run the docker CLI")?;
    if !output.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Whether a container is frozen by `docker pause`.
fn container_paused(container: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Paused}}", container])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
}

/// Kills a member at once (a paused one too).
fn kill_target(target: &Target) -> anyhow::Result<()> {
    match target {
        Target::Process(process) => {
            let _ = signal(process.pid, "-CONT");
            signal(process.pid, "-KILL")
        }
        Target::Container { container, .. } => {
            if container_paused(container) {
                docker(&["unpause", container])?;
            }
            docker(&["kill", container])
        }
    }
}

pub fn pause(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let target = one_member(&record, member)?;
    match &target {
        Target::Process(process) => signal(process.pid, "-STOP")?,
        Target::Container { container, .. } => docker(&["pause", container])?,
    }
    record.faults.push(Fault::Paused { member: target.name().to_owned() });
    println!("{} paused", target.name());
    save(&record)
}

pub fn resume(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let target = one_member(&record, member)?;
    match &target {
        Target::Process(process) => signal(process.pid, "-CONT")?,
        Target::Container { container, .. } => docker(&["unpause", container])?,
    }
    record.faults.retain(|f| *f != Fault::Paused { member: target.name().to_owned() });
    println!("{} resumed", target.name());
    save(&record)
}

pub fn kill(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let target = one_member(&record, member)?;
    kill_target(&target)?;
    let member = target.name().to_owned();
    record.faults.retain(|f| *f != Fault::Paused { member: member.clone() });
    record.faults.push(Fault::Killed { member: member.clone() });
    println!("{member} killed");
    save(&record)
}

/// Starts a killed member again, as it was started first (one still
/// running is killed first).
pub fn restart(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let target = one_member(&record, member)?;
    match &target {
        Target::Process(process) => {
            if std::path::Path::new(&format!("/proc/{}", process.pid)).exists() {
                kill_target(&target)?;
            }
            let pid = crate::local_cluster::spawn_member(process)?;
            for m in record.members.iter_mut().filter(|m| m.name == process.name) {
                m.pid = pid;
            }
            record.pids = record.members.iter().map(|m| m.pid).collect();
        }
        Target::Container { container, .. } => {
            let _ = kill_target(&target);
            docker(&["start", container])?;
        }
    }
    let member = target.name().to_owned();
    record.faults.retain(|f| {
        *f != Fault::Killed { member: member.clone() } && *f != Fault::Paused { member: member.clone() }
    });
    println!("{member} restarted");
    save(&record)
}

/// Loses `loss_percent` of what `member` sends its peers and delays the
/// rest by `delay` ± `jitter` ([`delay`]).
pub fn slow(
    name: &str,
    member: &str,
    delay: Duration,
    jitter: Duration,
    loss_percent: u32,
) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let mut network = network(&record)?;
    let member = one_member(&record, member)?.name().to_owned();
    let index = position(&network, &member)?;
    if loss_percent > 0 {
        network.lose(index, loss_percent)?;
    }
    if !delay.is_zero() {
        let flotilla = std::env::current_exe().context("cannot find the flotilla binary")?;
        network.delay(index, delay, jitter, &flotilla)?;
    }
    let fault = Fault::Slow {
        member,
        loss_percent,
        delay_ms: delay.as_millis() as u32,
        jitter_ms: jitter.as_millis() as u32,
    };
    println!("{fault}");
    record.network = Some(network);
    record.faults.push(fault);
    save(&record)
}
