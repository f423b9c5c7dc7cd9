//! The only place that touches raft-rs: the node thread, its redb storage,
//! and the HTTP transport between servers.

mod node;
mod slog_bridge;
mod storage;
mod transport;

pub(crate) use node::spawn;
pub use node::{MembershipChange, NodeConfig, RaftError, RaftHandle};
pub use storage::{RaftStorage, StorageError};
pub use transport::{FaultRules, PEER_PATH, PeerTransport, SENDER_HEADER, decode_batch};
