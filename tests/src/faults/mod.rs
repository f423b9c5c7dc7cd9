//! Fault injection for the fault suites and `flotilla cluster` chaos:
//! network namespaces joined by a bridge, so partitions, one-way drops,
//! delay and loss are the kernel's, not a simulation.

pub mod disk;
pub mod nemesis;
pub mod netns;
pub mod run;
pub mod torn_write;
pub mod workload;

pub use nemesis::{Nemesis, run_seed};
pub use netns::{Member, Network, namespaces_available};
pub use run::{RunConfig, RunReport, run};
