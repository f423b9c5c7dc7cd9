//! The open-files limit of a daemon that holds many connections: a server
//! with ten thousand agents long-polling it, or a fleet of ten thousand
//! simulated agents, needs more descriptors than the usual soft limit of
//! 1,024. A process may raise its soft limit up to the hard one itself.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft limit on open files to the hard limit.
pub fn raise_limit() {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(limit = ?limit.maximum, "raised the open-files limit"),
        Err(error) => tracing::warn!(%error, soft = ?limit.current, "cannot raise the open-files limit"),
    }
}
