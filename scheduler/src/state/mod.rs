//! The replicated state machine. Every server applies the same committed
//! commands in the same order and so holds the same [`ClusterState`].
//! `apply` is split by what a command changes: workloads, nodes, allocations.

mod allocation_table;
mod allocations;
mod certificate_authority;
mod cluster_state;
mod command;
mod deployments;
mod idempotency;
mod journal;
mod node_bookings;
mod node_changes;
mod nodes;
mod plan;
mod replica_counts;
mod secrets;
mod services;
mod snapshot_copy;
mod tallies;
mod tokens;
mod volumes;
mod workloads;

pub use certificate_authority::{CaRotation, CaState, StoredCa, sealing_name};
pub use cluster_state::{ClusterState, failing_reason, fixed_ports, request_of, slot_request};
pub use command::{AutoscaleDecision, Command, CommandOutput, Envelope, Rejection};
pub use deployments::MAX_HISTORY;
pub use idempotency::{Idempotency, REMEMBERED_KEYS};
pub use journal::{ChangeJournal, Changes, Touched};
pub use node_changes::NodeChanges;
pub use plan::{Placement, Plan, PlanOutcome, Unplaced};
pub use services::{DEFAULT_SERVICE_PORTS, ServicePortRange};
pub use tokens::StoredToken;
