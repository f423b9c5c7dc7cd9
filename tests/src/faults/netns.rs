//! A private network of namespaces on this host: each member (a server or
//! an agent) gets a network namespace of its own, joined by a veth pair to
//! one bridge that the test's own namespace also sits on. Cutting a member
//! off is then a real partition: iptables rules inside its namespace drop
//! its peers' packets while the test still reaches it, and a random share
//! of what it sends its peers can be lost.
//!
//! Names and the subnet are unique to the network, so parallel tests never
//! meet; dropping the network deletes every namespace, link and rule.

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs a command, panicking with its output when it fails: the harness
/// cannot go on with half a network.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Like [`run`], for clean-up: a failure is only worth a line.
fn run_quietly(program: &str, args: &[&str]) {
    if let Ok(output) = Command::new(program).args(args).output()
        && !output.status.success()
    {
        eprintln!(
            "clean-up: {program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
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
#[derive(Debug, Clone)]
pub struct Member {
    /// Its namespace (`ip netns exec NAME ...`).
    pub namespace: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug)]
pub struct Network {
    /// Unique to this network: in every name it makes.
    tag: String,
    bridge: String,
    /// The test's own address on the bridge.
    pub host_ip: Ipv4Addr,
    subnet: [u8; 3],
    pub members: Vec<Member>,
}

impl Network {
    /// A bridge on a /24 of 10.0.0.0/8 that no route of this host uses.
    pub fn create() -> Network {
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let routes = Command::new("ip").args(["-4", "route"]).output().map(|o| o.stdout).unwrap_or_default();
        let routes = String::from_utf8_lossy(&routes).to_string();
        let mut pick = seed;
        let subnet = loop {
            pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let subnet = [10u8, 100 + (pick >> 33) as u8 % 100, (pick >> 45) as u8];
            if !routes.contains(&format!("{}.{}.{}.", subnet[0], subnet[1], subnet[2])) {
                break subnet;
            }
        };
        let tag = format!("{:06x}", (pick >> 20) & 0xff_ffff);
        let bridge = format!("flb{tag}");
        let host_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        let network = Network { tag, bridge, host_ip, subnet, members: Vec::new() };
        run("ip", &["addr", "add", &format!("{host_ip}/24"), "dev", &network.bridge]);
        run("ip", &["link", "set", &network.bridge, "up"]);
        // Frames crossing a bridge pass the FORWARD chain, whose policy
        // Docker sets to DROP.
        run("iptables", &["-I", "FORWARD", "-i", &network.bridge, "-o", &network.bridge, "-j", "ACCEPT"]);
        network
    }

    /// Adds a member: its namespace, its link to the bridge, its address.
    pub fn add_member(&mut self) -> Member {
        let index = self.members.len();
        let namespace = format!("fl{}-{index}", self.tag);
        let outside = format!("flv{}{index}", self.tag);
        let inside = format!("flp{}{index}", self.tag);
        let ip = Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 10 + index as u8);
        run("ip", &["netns", "add", &namespace]);
        // Recorded at once, so a failure below still cleans it up.
        self.members.push(Member { namespace: namespace.clone(), ip });
        run("ip", &["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
        run("ip", &["link", "set", &inside, "netns", &namespace]);
        run("ip", &["link", "set", &outside, "master", &self.bridge]);
        run("ip", &["link", "set", &outside, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", namespace.as_str()];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        exec(&["ip", "link", "set", &inside, "name", "eth0"]);
        exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        exec(&["ip", "link", "set", "eth0", "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        Member { namespace, ip }
    }

    fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    fn in_namespace(&self, index: usize, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.member(index).namespace.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Member `index` drops every packet from and to member `peer` (one
    /// way: only what `index` receives from `peer` when `one_way`).
    pub fn cut(&self, index: usize, peer: usize, one_way: bool) {
        let peer = self.member(peer).ip.to_string();
        self.in_namespace(index, &["iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP"]);
        if !one_way {
            self.in_namespace(index, &["iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"]);
        }
    }

    /// Every cut and lossy link removed.
    pub fn heal(&self) {
        for index in 0..self.members.len() {
            self.in_namespace(index, &["iptables", "-F", "INPUT"]);
            self.in_namespace(index, &["iptables", "-F", "OUTPUT"]);
        }
    }

    /// `percent` of what member `index` sends its peers is lost, packet by
    /// packet at random (the kernel's statistic match: this kernel has no
    /// `netem` qdisc, so loss is injected by iptables and delay is not).
    pub fn lose(&self, index: usize, percent: u32) {
        let probability = format!("{:.3}", f64::from(percent) / 100.0);
        let peers = self.members.iter().enumerate().filter(|(peer, _)| *peer != index).map(|(_, m)| m);
        for member in peers {
            let destination = member.ip.to_string();
            self.in_namespace(
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
            );
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for member in &self.members {
            run_quietly("ip", &["netns", "delete", &member.namespace]);
        }
        run_quietly("iptables", &["-D", "FORWARD", "-i", &self.bridge, "-o", &self.bridge, "-j", "ACCEPT"]);
        run_quietly("ip", &["link", "delete", &self.bridge]);
    }
}
