//! The open-files limit of a daemon that holds many connections: a server
//! with ten thousand agents long-polling it, or a fleet of ten thousand
//! simulated agents, needs more descriptors than the usual soft limit of
//! 1,024, and a fleet's ten thousand long-polls, heartbeats and reports
//! need more than a hard limit of 20,000. A process may raise its soft
//! limit up to the hard one; one with `CAP_SYS_RESOURCE` (root) may raise
//! the hard one too.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What the limit is raised to where allowed: Linux's default ceiling
/// (`fs.nr_open`), room for a fleet's connections to every server.
const WANTED: u64 = 1 << 20;

/// Raises the open-files limit to [`WANTED`] where the process may, and
/// otherwise its soft limit to the hard one.
pub fn raise_limit() {
    let limit = getrlimit(Resource::Nofile);
    let wanted = Rlimit { current: Some(WANTED), maximum: Some(limit.maximum.map_or(WANTED, |m| m.max(WANTED))) };
    if limit.current.is_some_and(|current| current >= WANTED) {
        return;
    }
    if setrlimit(Resource::Nofile, wanted).is_ok() {
        tracing::debug!(limit = WANTED, "raised the open-files limit");
        return;
    }
    if limit.current == limit.maximum {
        tracing::debug!(limit = ?limit.maximum, "cannot raise the open-files limit past its hard limit");
        return;
    }
    let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(limit = ?limit.maximum, "raised the open-files limit to its hard limit"),
        Err(error) => tracing::warn!(%error, soft = ?limit.current, "cannot raise the open-files limit"),
    }
}
