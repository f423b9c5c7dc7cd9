//! The network a local cluster's members talk over, as faults see it:
//! either a private network of namespaces on this host (`cluster up
//! --isolated`, the fault suites), where each member (a server or an agent)
//! gets a network namespace of its own, joined by a veth pair to one bridge
//! that the host's own namespace also sits on; or the containers of
//! `cluster up --docker`, each in the namespace Docker gave it. Cutting a
//! member off is then a real partition: iptables rules inside its namespace
//! drop its peers' packets while the host still reaches it; a random share
//! of what it sends its peers can be lost, or held back a while
//! ([`super::delay`]). Members of the namespace network route everything
//! else through the host, so they still reach Docker's containers.
//!
//! The network is plain data (it is written into a local cluster's record
//! and read back by later `flotilla cluster` commands); [`Network::remove`]
//! takes it all away. Names and the subnet are unique to it, so networks
//! made at once never meet.

use std::io::BufRead as _;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A command that set up or changed the network failed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {stderr}")]
pub struct NetworkError {
    pub command: String,
    pub stderr: String,
}

fn run(program: &str, args: &[&str]) -> Result<(), NetworkError> {
    output(program, args).map(drop)
}

/// What `program` printed, or why it failed.
fn output(program: &str, args: &[&str]) -> Result<String, NetworkError> {
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
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
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

/// A member's network namespace, and how to run a command inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Namespace {
    /// One this network made (`ip netns exec NAME ...`).
    Named(String),
    /// A container's, entered through its first process (`nsenter`), looked
    /// up each time, as a restarted container has a new one.
    Container(String),
}

impl Namespace {
    /// The name to `ip netns exec` into, for a namespace this network made.
    pub fn name(&self) -> Option<&str> {
        match self {
            Namespace::Named(name) => Some(name),
            Namespace::Container(_) => None,
        }
    }

    /// `args` (a program and its arguments) run inside this namespace.
    fn command(&self, args: &[&str]) -> Result<Command, NetworkError> {
        let mut command = match self {
            Namespace::Named(name) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name]);
                command
            }
            Namespace::Container(container) => {
                let pid = output("docker", &["inspect", "--format", "{{.State.Pid}}", container])?;
                if pid == "0" || pid.is_empty() {
                    return Err(NetworkError {
                        command: format!("nsenter into {container}"),
                        stderr: format!("container {container} is not running"),
                    });
                }
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/proc/{pid}/ns/net"));
                command
            }
        };
        command.args(args);
        Ok(command)
    }
}

/// One member's place on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// What people call it: a server id or an agent's node name.
    pub name: String,
    pub namespace: Namespace,
    pub ip: Ipv4Addr,
}

/// The bridge of a network of namespaces this host made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Bridge {
    /// Unique to this network: in every name it makes.
    tag: String,
    name: String,
    /// The host's address on the bridge: the members' way out.
    host_ip: Ipv4Addr,
    subnet: [u8; 3],
}

/// A process holding back what a member sends its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delayer {
    pub member: String,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// `None` for containers' namespaces, which Docker made and takes away.
    bridge: Option<Bridge>,
    pub members: Vec<Member>,
    /// Delays in force, stopped by [`Network::heal`] and [`Network::remove`].
    #[serde(default)]
    pub delayers: Vec<Delayer>,
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
        let name = format!("flb{tag}");
        let host_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        run("ip", &["link", "add", &name, "type", "bridge"])?;
        let bridge = Bridge { tag, name: name.clone(), host_ip, subnet };
        let mut network = Network { bridge: Some(bridge), members: Vec::new(), delayers: Vec::new() };
        let made = (|| {
            run("ip", &["addr", "add", &format!("{host_ip}/24"), "dev", &name])?;
            run("ip", &["link", "set", &name, "up"])?;
            // Frames crossing the bridge, and packets routed in and out of
            // it, pass the FORWARD chain, whose policy Docker sets to DROP.
            run("iptables", &["-I", "FORWARD", "-i", &name, "-j", "ACCEPT"])?;
            run("iptables", &["-I", "FORWARD", "-o", &name, "-j", "ACCEPT"])
        })();
        match made {
            Ok(()) => Ok(network),
            Err(error) => {
                network.remove();
                Err(error)
            }
        }
    }

    /// The running containers `(member name, container name)` of a
    /// `cluster up --docker` cluster, each at the address it has now on
    /// `docker_network`.
    pub fn of_containers(
        docker_network: &str,
        containers: &[(String, String)],
    ) -> Result<Network, NetworkError> {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{docker_network}\").IPAddress}}}}");
        let mut members = Vec::new();
        for (name, container) in containers {
            let address = output("docker", &["inspect", "--format", &format, container])?;
            // A stopped container has no address and no namespace: there is
            // nothing to cut or heal in it until it starts again.
            let Ok(ip) = address.parse() else {
                continue;
            };
            members.push(Member {
                name: name.clone(),
                namespace: Namespace::Container(container.clone()),
                ip,
            });
        }
        Ok(Network { bridge: None, members, delayers: Vec::new() })
    }

    /// Adds member `name`: its namespace, its link to the bridge, its
    /// address, and a default route through the host.
    pub fn add_member(&mut self, name: &str) -> Result<Member, NetworkError> {
        let bridge = self.bridge.clone().ok_or_else(|| NetworkError {
            command: format!("add member {name}"),
            stderr: "members join only a network of namespaces made here".to_owned(),
        })?;
        let index = self.members.len();
        let namespace = format!("fl{}-{index}", bridge.tag);
        let outside = format!("flv{}{index}", bridge.tag);
        let inside = format!("flp{}{index}", bridge.tag);
        let ip = Ipv4Addr::new(bridge.subnet[0], bridge.subnet[1], bridge.subnet[2], 10 + index as u8);
        run("ip", &["netns", "add", &namespace])?;
        // Recorded at once, so that a failure below still removes it.
        let member = Member { name: name.to_owned(), namespace: Namespace::Named(namespace.clone()), ip };
        self.members.push(member.clone());
        run("ip", &["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
        run("ip", &["link", "set", &inside, "netns", &namespace])?;
        run("ip", &["link", "set", &outside, "master", &bridge.name])?;
        run("ip", &["link", "set", &outside, "up"])?;
        let host = bridge.host_ip.to_string();
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
        let mut command = self.members[index].namespace.command(args)?;
        let described = format!("{} in {}'s namespace", args.join(" "), self.members[index].name);
        let output = command
            .output()
            .map_err(|e| NetworkError { command: described.clone(), stderr: e.to_string() })?;
        if !output.status.success() {
            return Err(NetworkError {
                command: described,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    fn peers(&self, index: usize) -> impl Iterator<Item = &Member> {
        self.members.iter().enumerate().filter(move |(peer, _)| *peer != index).map(|(_, m)| m)
    }

    /// Member `index` drops every packet from and to member `peer` (with
    /// `one_way`, only what it receives from `peer`). Drops go first in the
    /// chain: a delayed packet is let through at the delay's rule.
    pub fn cut(&self, index: usize, peer: usize, one_way: bool) -> Result<(), NetworkError> {
        let peer = self.members[peer].ip.to_string();
        self.exec(index, &["iptables", "-I", "INPUT", "-s", &peer, "-j", "DROP"])?;
        if !one_way {
            self.exec(index, &["iptables", "-I", "OUTPUT", "-d", &peer, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// `percent` of what member `index` sends its peers is lost, packet by
    /// packet at random (iptables' statistic match).
    pub fn lose(&self, index: usize, percent: u32) -> Result<(), NetworkError> {
        let probability = format!("{:.3}", f64::from(percent.min(100)) / 100.0);
        for member in self.peers(index) {
            let destination = member.ip.to_string();
            self.exec(
                index,
                &[
                    "iptables",
                    "-I",
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

    /// What member `index` sends its peers is held back by `delay` ± `jitter`
    /// (see [`super::delay`]): `flotilla` (the binary at `flotilla`) serves
    /// a netfilter queue in the member's namespace until [`Network::heal`].
    pub fn delay(
        &mut self,
        index: usize,
        delay: Duration,
        jitter: Duration,
        flotilla: &Path,
    ) -> Result<(), NetworkError> {
        let member = self.members[index].name.clone();
        let failed = |stderr: String| NetworkError { command: format!("delay {member}'s packets"), stderr };
        if self.delayers.iter().any(|d| d.member == member) {
            return Err(failed(format!("{member} is delayed already; heal the network first")));
        }
        let binary = flotilla.to_string_lossy();
        let (delay_us, jitter_us) = (delay.as_micros().to_string(), jitter.as_micros().to_string());
        let queue = DELAY_QUEUE.to_string();
        let args =
            [&binary, "delay-link", "--queue", &queue, "--delay-us", &delay_us, "--jitter-us", &jitter_us];
        let mut command = self.members[index].namespace.command(&args)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        }
        if line.trim() != "bound" {
            let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
            return Err(failed(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
        }
        self.delayers.push(Delayer { member: member.clone(), pid: child.id() });
        let peers: Vec<String> = self.peers(index).map(|m| m.ip.to_string()).collect();
        for peer in peers {
            self.exec(
                index,
                &[
                    "iptables",
                    "-A",
                    "OUTPUT",
                    "-d",
                    &peer,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                    "--queue-bypass",
                ],
            )?;
        }
        Ok(())
    }

    /// Every cut, lossy and delayed link removed (a stopped container is
    /// no member: its rules went with its namespace).
    pub fn heal(&mut self) -> Result<(), NetworkError> {
        for index in 0..self.members.len() {
            self.exec(index, &["iptables", "-F", "INPUT"])?;
            self.exec(index, &["iptables", "-F", "OUTPUT"])?;
        }
        self.stop_delayers();
        Ok(())
    }

    /// Stops every delaying process (after its rules are gone, or packets
    /// it still held would be lost rather than let go).
    fn stop_delayers(&mut self) {
        for delayer in self.delayers.drain(..) {
            run_quietly("kill", &["-TERM", &delayer.pid.to_string()]);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !process_gone(delayer.pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Takes every namespace, link, rule and delaying process away (the
    /// members' processes should be gone first).
    pub fn remove(&mut self) {
        self.stop_delayers();
        let Some(bridge) = &self.bridge else {
            return;
        };
        for member in &self.members {
            if let Some(namespace) = member.namespace.name() {
                run_quietly("ip", &["netns", "delete", namespace]);
            }
        }
        run_quietly("iptables", &["-D", "FORWARD", "-i", &bridge.name, "-j", "ACCEPT"]);
        run_quietly("iptables", &["-D", "FORWARD", "-o", &bridge.name, "-j", "ACCEPT"]);
        run_quietly("ip", &["link", "delete", &bridge.name]);
    }
}

/// The netfilter queue a delayed member's packets wait in: queues belong to
/// a namespace, so every member can use the same one.
const DELAY_QUEUE: u16 = 0;

/// Exited, or exited and waiting to be reaped by a parent that started it.
fn process_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}
