//! Chaos for local clusters: `flotilla cluster partition|heal|pause|resume|
//! kill|restart|slow`, so a team can watch its services ride out a lost
//! node, a split cluster or a lossy link on a cluster made by `cluster up
//! --isolated` (each server and agent in a network namespace of its own,
//! the same harness the fault suites use). The faults in force are kept in
//! the cluster's record: `cluster status` lists them, `cluster heal` and
//! `resume`/`restart` undo them, `cluster down` takes them all away.

pub mod network;

use std::fmt;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::local_cluster::{ClusterRecord, MemberProcess, load, save};

/// A fault in force on a local cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// `members` cut off from `from` (from every other member when empty).
    Partition { members: Vec<String>, from: Vec<String> },
    /// Stopped with SIGSTOP.
    Paused { member: String },
    /// Killed with SIGKILL.
    Killed { member: String },
    /// What it sends its peers is lost (percent) or delayed.
    Slow { member: String, loss_percent: u32, delay_ms: u32 },
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
            Fault::Slow { member, loss_percent, delay_ms } => {
                write!(f, "{member} slow: {loss_percent}% loss, {delay_ms} ms delay")
            }
        }
    }
}

/// The local cluster named `name`, which must be `--isolated` for faults
/// on its network.
fn isolated(record: &ClusterRecord) -> anyhow::Result<&network::Network> {
    record.network.as_ref().with_context(|| {
        format!(
            "cluster `{}` shares this host's network; network faults need `flotilla cluster up --isolated` (as root), which gives each member a namespace of its own",
            record.name
        )
    })
}

/// Members by name, as `cluster status` lists servers (ids) and `nodes`
/// lists agents (node names); a comma-separated list.
fn members<'a>(record: &'a ClusterRecord, list: &str) -> anyhow::Result<Vec<&'a MemberProcess>> {
    let mut found = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let member = record.members.iter().find(|m| m.name == name).with_context(|| {
            let known: Vec<&str> = record.members.iter().map(|m| m.name.as_str()).collect();
            format!("`{name}` is not a member of cluster `{}` (members: {})", record.name, known.join(", "))
        })?;
        found.push(member);
    }
    if found.is_empty() {
        bail!("name at least one member");
    }
    Ok(found)
}

/// Cuts `list` off from `from` (everyone else when `None`).
pub fn partition(name: &str, list: &str, from: Option<&str>) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let network = isolated(&record)?;
    let cut: Vec<String> = members(&record, list)?.into_iter().map(|m| m.name.clone()).collect();
    let others: Vec<String> = match from {
        Some(from) => members(&record, from)?.into_iter().map(|m| m.name.clone()).collect(),
        None => record.members.iter().map(|m| m.name.clone()).filter(|m| !cut.contains(m)).collect(),
    };
    for a in &cut {
        for b in others.iter().filter(|b| *b != a) {
            let (i, j) = (position(network, a)?, position(network, b)?);
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
    network.position(member).with_context(|| format!("`{member}` has no namespace"))
}

/// Removes every network fault (partitions, loss, delay).
pub fn heal(name: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let network = isolated(&record)?;
    network.heal()?;
    for member in &network.members {
        // Delay, where the kernel could add it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &member.namespace, "tc", "qdisc", "del", "dev", "eth0", "root"])
            .output();
    }
    record.faults.retain(|f| matches!(f, Fault::Paused { .. } | Fault::Killed { .. }));
    println!("the network of cluster `{name}` is whole again");
    save(&record)
}

/// The one member a verb acts on (a list is refused rather than cut short).
fn one_member(record: &ClusterRecord, name: &str) -> anyhow::Result<MemberProcess> {
    match members(record, name)?.as_slice() {
        [member] => Ok((*member).clone()),
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

pub fn pause(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let process = one_member(&record, member)?;
    signal(process.pid, "-STOP")?;
    record.faults.push(Fault::Paused { member: process.name.clone() });
    println!("{} paused", process.name);
    save(&record)
}

pub fn resume(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let process = one_member(&record, member)?;
    signal(process.pid, "-CONT")?;
    record.faults.retain(|f| *f != Fault::Paused { member: process.name.clone() });
    println!("{} resumed", process.name);
    save(&record)
}

pub fn kill(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let process = one_member(&record, member)?;
    let _ = signal(process.pid, "-CONT");
    signal(process.pid, "-KILL")?;
    record.faults.retain(|f| *f != Fault::Paused { member: process.name.clone() });
    record.faults.push(Fault::Killed { member: process.name.clone() });
    println!("{} killed", process.name);
    save(&record)
}

/// Starts a killed member again, as it was started first.
pub fn restart(name: &str, member: &str) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let process = one_member(&record, member)?;
    if std::path::Path::new(&format!("/proc/{}", process.pid)).exists() {
        let _ = signal(process.pid, "-CONT");
        signal(process.pid, "-KILL")?;
    }
    let pid = crate::local_cluster::spawn_member(&process)?;
    for m in record.members.iter_mut().filter(|m| m.name == process.name) {
        m.pid = pid;
    }
    record.pids = record.members.iter().map(|m| m.pid).collect();
    record.faults.retain(|f| {
        *f != Fault::Killed { member: process.name.clone() }
            && *f != Fault::Paused { member: process.name.clone() }
    });
    println!("{} restarted", process.name);
    save(&record)
}

/// Loses `loss_percent` of what `member` sends its peers and, where the
/// kernel has `netem`, delays it by `delay_ms`.
pub fn slow(name: &str, member: &str, delay_ms: u32, loss_percent: u32) -> anyhow::Result<()> {
    let mut record = load(name)?;
    let network = isolated(&record)?;
    let member = one_member(&record, member)?.name;
    let index = position(network, &member)?;
    if delay_ms > 0 {
        let namespace = &network.members[index].namespace;
        let delay = format!("{delay_ms}ms");
        let output = std::process::Command::new("ip")
            .args([
                "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                "delay", &delay,
            ])
            .output()?;
        if !output.status.success() {
            bail!(
                "cannot delay {member}'s packets: {} (this host's kernel may lack the netem qdisc; --loss works without it)",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    if loss_percent > 0 {
        network.lose(index, loss_percent)?;
    }
    let fault = Fault::Slow { member, loss_percent, delay_ms };
    println!("{fault}");
    record.faults.push(fault);
    save(&record)
}
