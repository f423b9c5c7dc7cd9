//! The only place that touches raft-rs: the node thread, its redb storage,
//! and the HTTP transport between servers.

mod apply;
mod checksum;
mod commit_clock;
mod error;
mod handle;
mod log_write;
mod membership;
mod node;
mod node_directory;
mod node_watches;
mod pending;
mod persister;
mod reads;
mod ready;
mod slog_bridge;
mod snapshot_chunks;
mod snapshot_files;
mod snapshots;
mod state_read;
mod storage;
mod transport;
mod turn_clock;
mod wal;

pub use error::RaftError;
pub use handle::RaftHandle;
pub use membership::MembershipChange;
pub use node::NodeConfig;
pub(crate) use node::spawn;
pub use state_read::StateRead;
pub use storage::{RaftStorage, StorageError};
pub use transport::{
    FaultRules, MAX_PEER_BODY, PEER_PATH, PeerTransport, SENDER_HEADER, SNAPSHOT_PATH, decode_batch,
};
