//! The command lines of a local cluster's daemons. `flotilla cluster up`
//! and the test harness both build them here, so a harness cluster is a
//! `cluster up` cluster that a test can also kill, restart and corrupt.

use std::path::{Path, PathBuf};

/// Where a server's TLS comes from.
#[derive(Debug, Clone)]
pub enum ServerCa {
    /// None: `--insecure`.
    Insecure,
    /// The CA the founders share (`--ca-dir`).
    Shared(PathBuf),
    /// Received when joining with a server token (the caller adds
    /// `--join` and `--join-token`).
    FromJoin,
}

/// `flotilla server` for one member; the caller adds `--peers` or `--join`
/// and any tuning flags.
pub fn server_command(id: u64, listen: &str, data_dir: &Path, ca: &ServerCa) -> Vec<String> {
    let mut command = vec![
        "server".into(),
        "--id".into(),
        id.to_string(),
        "--listen".into(),
        listen.to_owned(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    match ca {
        ServerCa::Shared(dir) => command.extend(["--ca-dir".into(), dir.display().to_string()]),
        ServerCa::Insecure => command.push("--insecure".into()),
        ServerCa::FromJoin => {}
    }
    command
}

/// `--peers 1=ADDR,2=ADDR,...` for founding members numbered from 1.
pub fn peers_flag(addresses: &[String]) -> Vec<String> {
    let peers: Vec<String> = addresses.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    vec!["--peers".into(), peers.join(",")]
}

/// `flotilla agent` for one node, joining with `join_token` (`None`: an
/// `--insecure` cluster); the caller adds capacity, labels and drivers.
pub fn agent_command(
    servers: &[String],
    data_dir: &Path,
    name: &str,
    join_token: Option<&str>,
) -> Vec<String> {
    let mut command = vec![
        "agent".into(),
        "--servers".into(),
        servers.join(","),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--name".into(),
        name.to_owned(),
    ];
    match join_token {
        Some(token) => command.extend(["--join-token".into(), token.to_owned()]),
        None => command.push("--insecure".into()),
    }
    command
}

/// Kills and removes what an agent's process replicas left on this host
/// (they outlive their agent on purpose, to be adopted): for `cluster down`
/// and the test harness, once the agent is gone for good.
pub fn remove_agent_leftovers(data_dir: &Path, node: &str) {
    flotilla_agent::runtime::process::remove_node_leftovers(data_dir, node);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let dir = Path::new("/tmp/x");
        assert_eq!(
            server_command(2, "127.0.0.1:7002", dir, &ServerCa::Shared("/tmp/ca".into())).join(" "),
            "server --id 2 --listen 127.0.0.1:7002 --data-dir /tmp/x --ca-dir /tmp/ca"
        );
        assert_eq!(
            server_command(2, "127.0.0.1:7002", dir, &ServerCa::Insecure).join(" "),
            "server --id 2 --listen 127.0.0.1:7002 --data-dir /tmp/x --insecure"
        );
        assert_eq!(peers_flag(&["a:1".into(), "b:2".into()]).join(" "), "--peers 1=a:1,2=b:2");
        assert_eq!(
            agent_command(&["a:1".into(), "b:2".into()], dir, "n1", Some("FLT1-x")).join(" "),
            "agent --servers a:1,b:2 --data-dir /tmp/x --name n1 --join-token FLT1-x"
        );
        assert_eq!(
            agent_command(&["a:1".into()], dir, "n1", None).join(" "),
            "agent --servers a:1 --data-dir /tmp/x --name n1 --insecure"
        );
    }
}
