//! Which TCP connections a process holds: its socket descriptors matched
//! against the kernel's connection table, for tests that count them.

use std::collections::HashSet;

/// A row of `/proc/PID/net/tcp` (or `tcp6`): the far end's port, the
/// connection's state and its socket's inode. `None` for the header.
fn parse_row(row: &str) -> Option<(u16, &str, &str)> {
    let fields: Vec<&str> = row.split_whitespace().collect();
    let remote = fields.get(2)?;
    let (_, port) = remote.rsplit_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some((port, fields.get(3)?, fields.get(9)?))
}

/// The kernel's code for an established connection.
const ESTABLISHED: &str = "01";

/// How many established TCP connections process `pid` holds whose far end
/// listens on one of `ports` (on any address).
pub fn established_to(pid: u32, ports: &[u16]) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .map(|text| {
            text.lines()
                .filter_map(parse_row)
                .filter(|(port, state, inode)| {
                    *state == ESTABLISHED && ports.contains(port) && inodes.contains(*inode)
                })
                .count()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_give_the_far_port_state_and_inode_and_the_header_nothing() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse_row(header), None);
        let row = "   3: 0100007F:A1B2 0100007F:2B67 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_row(row), Some((0x2B67, "01", "123456")));
    }

    #[test]
    fn counts_this_process_connections_to_a_port_and_not_the_accepted_ends() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let pid = std::process::id();
        assert_eq!(established_to(pid, &[port]), 0);
        let first = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let second = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let accepted = (listener.accept().expect("accept"), listener.accept().expect("accept"));
        assert_eq!(established_to(pid, &[port]), 2, "the two connecting ends, not the accepted ones");
        drop((first, second, accepted));
    }
}
