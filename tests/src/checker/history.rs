//! Histories: what each client invoked, when, and what it was answered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How an operation ended, as its client knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O> {
    /// Answered with `output` at `at` (nanoseconds since the history began).
    Ok { output: O, at: u64 },
    /// No answer that says whether it took effect (a timeout, a 504, a
    /// broken connection): it may take effect at any time after its call.
    Unknown,
}

/// One operation of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client: usize,
    pub input: I,
    /// When it was invoked (nanoseconds since the history began).
    pub call: u64,
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    /// When it ended; an unknown outcome never ends.
    pub fn returned(&self) -> u64 {
        match &self.outcome {
            Outcome::Ok { at, .. } => *at,
            Outcome::Unknown => u64::MAX,
        }
    }

    pub fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Ok { output, .. } => Some(output),
            Outcome::Unknown => None,
        }
    }
}

/// Operations by key; operations that definitely failed (refused before
/// they could take effect) are not in it.
pub type History<I, O> = BTreeMap<String, Vec<Operation<I, O>>>;

/// Operations as they end, with their keys, in the order they ended.
type Ended<I, O> = Arc<Mutex<Vec<(String, Operation<I, O>)>>>;

/// A history being recorded by concurrent clients.
#[derive(Debug, Clone)]
pub struct Recorder<I, O> {
    start: Instant,
    operations: Ended<I, O>,
}

/// An invoked operation not yet ended; ending it records it.
#[derive(Debug)]
pub struct Pending<I> {
    key: String,
    client: usize,
    input: I,
    call: u64,
}

impl<I: Clone, O: Clone> Default for Recorder<I, O> {
    fn default() -> Self {
        Recorder { start: Instant::now(), operations: Arc::default() }
    }
}

impl<I: Clone, O: Clone> Recorder<I, O> {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn invoke(&self, client: usize, key: &str, input: I) -> Pending<I> {
        Pending { key: key.to_owned(), client, input, call: self.now() }
    }

    fn record(&self, pending: Pending<I>, outcome: Outcome<O>) {
        let operation =
            Operation { client: pending.client, input: pending.input, call: pending.call, outcome };
        self.operations.lock().unwrap_or_else(|p| p.into_inner()).push((pending.key, operation));
    }

    pub fn ok(&self, pending: Pending<I>, output: O) {
        let at = self.now();
        self.record(pending, Outcome::Ok { output, at });
    }

    pub fn unknown(&self, pending: Pending<I>) {
        self.record(pending, Outcome::Unknown);
    }

    /// Refused before it could take effect: it is left out.
    pub fn failed(&self, _pending: Pending<I>) {}

    /// What was recorded, by key.
    pub fn history(&self) -> History<I, O> {
        let mut history: History<I, O> = BTreeMap::new();
        for (key, operation) in self.operations.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            history.entry(key.clone()).or_default().push(operation.clone());
        }
        history
    }
}
