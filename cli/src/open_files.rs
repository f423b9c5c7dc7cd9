//! The open-files limit of a daemon that holds many connections: a server
//! with ten thousand agents long-polling it, or a fleet of ten thousand
//! simulated agents, needs more descriptors than the usual soft limit of
//! 1,024. A process may raise its soft limit up to the hard one itself,
//! and a privileged one the hard limit too.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors a process needs besides its connections (files, the
/// runtime's own, a margin).
const BESIDES_CONNECTIONS: u64 = 1024;

/// What a fleet of `members` simulated agents needs: each member keeps a
/// connection to each server it has spoken to, and a member whose server
/// was slow moves on to the next, so in time each holds one to every
/// server. At 9,900 members and three servers the usual hard limit of
/// 20,000 ran out: members could not connect, their heartbeats timed out
/// and the servers marked thousands of their nodes down.
pub fn for_fleet(members: u32, servers: usize) -> u64 {
    u64::from(members) * servers.max(1) as u64 + BESIDES_CONNECTIONS
}

/// What a server needs: a connection from each of tens of thousands of
/// agents and clients.
pub const FOR_SERVER: u64 = 65_536;

/// Raises the soft limit on open files to `wanted`: up to the hard limit,
/// and past it where the process may (as root); says so when it stays
/// short of `wanted`.
pub fn raise_limit(wanted: u64) {
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum.unwrap_or(u64::MAX));
    if soft >= wanted {
        return;
    }
    if hard < wanted
        && setrlimit(Resource::Nofile, Rlimit { current: Some(wanted), maximum: Some(wanted) }).is_ok()
    {
        tracing::debug!(limit = wanted, "raised the open-files limit");
        return;
    }
    let raised = soft.max(hard.min(wanted));
    match setrlimit(Resource::Nofile, Rlimit { current: Some(raised), maximum: limit.maximum }) {
        Ok(()) if raised >= wanted => tracing::debug!(limit = raised, "raised the open-files limit"),
        Ok(()) => tracing::warn!(
            limit = raised,
            wanted,
            "the open-files limit is below what this process may need; raise the hard limit (ulimit -Hn)"
        ),
        Err(error) => tracing::warn!(%error, soft, wanted, "cannot raise the open-files limit"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fleet_asks_for_a_connection_per_member_and_server() {
        assert_eq!(super::for_fleet(9_900, 3), 30_724);
        assert_eq!(super::for_fleet(10, 0), 1_034, "no servers given is refused later; one is assumed");
    }
}
