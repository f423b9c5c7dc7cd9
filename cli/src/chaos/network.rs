//! A private network of namespaces on this host: each member (a server or
//! an agent) gets a network namespace of its own, joined by a veth pair to
//! one bridge that the host's own namespace also sits on. Cutting a member
//! off is then a real partition: iptables rules inside its namespace drop
//! its peers' packets while the host still reaches it; a random share of
//! what it sends its peers can be lost. Members route everything else
//! through the host, so they still reach Docker's containers.
//!
//! The network is plain data (it is written into a local cluster's record
//! and read back by later `flotilla cluster` commands); [`Network::remove`]
//! takes it all away. Names and the subnet are unique to it, so networks
//! made at once never meet.

use std::net::Ipv4Addr;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// A command that set up or changed the network failed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {stderr}")]
pub struct NetworkError {
    pub command: String,
    pub stderr: String,
}

fn run(program: &str, args: &[&str]) -> Result<(), NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetworkError { command: command.clone(), stderr: e.to_string() })?;
    if !output.status.success() {
        return Err(NetworkError {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// For taking things away: a failure is worth a line, not a stop.
fn run_quietly(program: &str, args: &[&str]) {
    if let Err(error) = run(program, args) {
        eprintln!("clean-up: {error}");
    }
}

/// Whether this process may make namespaces (root, with `ip` at hand).
pub fn namespaces_available() -> bool {
    Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success())
        && std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.strip_prefix("Uid:").is_some_and(|ids| ids.split_whitespace().next() == Some("0")))
        })
}

/// One member's place on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// What people call it: a server id or an agent's node name.
    pub name: String,
    /// Its namespace (`ip netns exec NAMESPACE ...`).
    pub namespace: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Unique to this network: in every name it makes.
    tag: String,
    bridge: String,
    /// The host's address on the bridge: the members' way out.
    pub host_ip: Ipv4Addr,
    subnet: [u8; 3],
    pub members: Vec<Member>,
}

impl Network {
    /// A bridge on a /24 of 10.0.0.0/8 that no route of this host uses.
    pub fn create() -> Result<Network, NetworkError> {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let routes = Command::new("ip").args(["-4", "route"]).output().map(|o| o.stdout).unwrap_or_default();
        let routes = String::from_utf8_lossy(&routes).to_string();
        let mut pick = seed;
        let subnet = loop {
            pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let subnet = [10u8, 100 + ((pick >> 33) % 100) as u8, (pick >> 45) as u8];
            if !routes.contains(&format!("{}.{}.{}.", subnet[0], subnet[1], subnet[2])) {
                break subnet;
            }
        };
        let tag = format!("{:06x}", (pick >> 20) & 0xff_ffff);
        let bridge = format!("flb{tag}");
        let host_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let network = Network { tag, bridge, host_ip, subnet, members: Vec::new() };
        let made = (|| {
            run("ip", &["addr", "add", &format!("{host_ip}/24"), "dev", &network.bridge])?;
            run("ip", &["link", "set", &network.bridge, "up"])?;
            // Frames crossing the bridge, and packets routed in and out of
            // it, pass the FORWARD chain, whose policy Docker sets to DROP.
            run("iptables", &["-I", "FORWARD", "-i", &network.bridge, "-j", "ACCEPT"])?;
            run("iptables", &["-I", "FORWARD", "-o", &network.bridge, "-j", "ACCEPT"])
        })();
        match made {
            Ok(()) => Ok(network),
            Err(error) => {
                network.remove();
                Err(error)
            }
        }
    }

    /// Adds member `name`: its namespace, its link to the bridge, its
    /// address, and a default route through the host.
    pub fn add_member(&mut self, name: &str) -> Result<Member, NetworkError> {
        let index = self.members.len();
        let namespace = format!("fl{}-{index}", self.tag);
        let outside = format!("flv{}{index}", self.tag);
        let inside = format!("flp{}{index}", self.tag);
        let ip = Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 10 + index as u8);
        run("ip", &["netns", "add", &namespace])?;
        // Recorded at once, so that a failure below still removes it.
        let member = Member { name: name.to_owned(), namespace: namespace.clone(), ip };
        self.members.push(member.clone());
        run("ip", &["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
        run("ip", &["link", "set", &inside, "netns", &namespace])?;
        run("ip", &["link", "set", &outside, "master", &self.bridge])?;
        run("ip", &["link", "set", &outside, "up"])?;
        let host = self.host_ip.to_string();
        for args in [
            vec!["ip", "link", "set", &inside, "name", "eth0"],
            vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "route", "add", "default", "via", &host],
        ] {
            self.exec(index, &args)?;
        }
        Ok(member)
    }

    /// The index of the member called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    fn exec(&self, index: usize, args: &[&str]) -> Result<(), NetworkError> {
        let mut all = vec!["netns", "exec", self.members[index].namespace.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Member `index` drops every packet from and to member `peer` (with
    /// `one_way`, only what it receives from `peer`).
    pub fn cut(&self, index: usize, peer: usize, one_way: bool) -> Result<(), NetworkError> {
        let peer = self.members[peer].ip.to_string();
        self.exec(index, &["iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
        if !one_way {
            self.exec(index, &["iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// `percent` of what member `index` sends its peers is lost, packet by
    /// packet at random (iptables' statistic match: the kernels this runs
    /// on may lack the `netem` qdisc, so delay is not injected).
    pub fn lose(&self, index: usize, percent: u32) -> Result<(), NetworkError> {
        let probability = format!("{:.3}", f64::from(percent.min(100)) / 100.0);
        let peers = self.members.iter().enumerate().filter(|(peer, _)| *peer != index).map(|(_, m)| m);
        for member in peers {
            let destination = member.ip.to_string();
            self.exec(
                index,
                &[
                    "iptables",
                    "-A",
                    "OUTPUT",
                    "-d",
                    &destination,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Every cut and lossy link removed.
    pub fn heal(&self) -> Result<(), NetworkError> {
        for index in 0..self.members.len() {
            self.exec(index, &["iptables", "-F", "INPUT"])?;
            self.exec(index, &["iptables", "-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// Takes every namespace, link and rule away (the processes in the
    /// namespaces should be gone first).
    pub fn remove(&self) {
        for member in &self.members {
            run_quietly("ip", &["netns", "delete", &member.namespace]);
        }
        run_quietly("iptables", &["-D", "FORWARD", "-i", &self.bridge, "-j", "ACCEPT"]);
        run_quietly("iptables", &["-D", "FORWARD", "-o", &self.bridge, "-j", "ACCEPT"]);
        run_quietly("ip", &["link", "delete", &self.bridge]);
    }
}
