//! A linearizability checker, as Porcupine and Knossos check etcd and
//! Consul: a history of operations as clients saw them (invoked, answered
//! or left unknown) is linearizable if some order of them, each taking
//! effect at one instant between its call and its answer, is a run of a
//! sequential model. The search is Wing and Gong's, with Lowe's cache of
//! (operations linearized, model state), over each key on its own (a
//! history is linearizable if each key's is).

pub mod history;
pub mod linearizability;
pub mod workload_model;

pub use history::{History, Operation, Outcome, Recorder};
pub use linearizability::{Model, Verdict, check};
pub use workload_model::{WorkloadInput, WorkloadModel, WorkloadOutput, WorkloadRegister};
