//! Exactly-once writes: a write carries a client-chosen idempotency key,
//! and the state machine remembers the outcome of the keys it applied, for
//! a bounded window. A client whose write's outcome is unknown (the leader
//! changed, the request timed out) sends it again with the same key and is
//! answered with the first outcome instead of applying it twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::{CommandOutput, Rejection};

/// How many keys are remembered; the oldest is forgotten first. A retry
/// comes within seconds, so ten thousand writes is a generous window.
pub const REMEMBERED_KEYS: usize = 10_000;

/// A write's key, and a fingerprint of what it asked, so that a key sent
/// again with a different request is refused rather than answered wrongly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: u64,
}

impl Idempotency {
    /// `request` is what the write asks, as the server decoded it (never
    /// values the server adds itself, such as its clock).
    pub fn new(key: String, request: &impl Serialize) -> Self {
        let bytes = serde_json::to_vec(request).unwrap_or_default();
        Idempotency { key, fingerprint: fnv1a(&bytes) }
    }
}

/// FNV-1a, 64 bits: stable across servers and releases, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// One remembered outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outcome {
    fingerprint: u64,
    result: Result<CommandOutput, Rejection>,
}

/// The outcomes of the latest keyed writes. Keys and outcomes are shared
/// (`Arc`), never changed once stored: the leader's reconciler copies the
/// whole state on every pass, and ten thousand remembered deploys must not
/// make that copy deep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedKeys {
    outcomes: BTreeMap<Arc<str>, Arc<Outcome>>,
    /// Keys oldest first, to forget beyond `REMEMBERED_KEYS`.
    order: VecDeque<Arc<str>>,
}

impl AppliedKeys {
    /// The first outcome of a write with this key, if it was applied; a
    /// different request under the same key is refused.
    pub fn replay(&self, once: &Idempotency) -> Option<Result<CommandOutput, Rejection>> {
        let outcome = self.outcomes.get(once.key.as_str())?;
        if outcome.fingerprint != once.fingerprint {
            return Some(Err(Rejection::IdempotencyKeyReused(once.key.clone())));
        }
        Some(outcome.result.clone())
    }

    pub fn remember(&mut self, once: Idempotency, result: &Result<CommandOutput, Rejection>) {
        let outcome = Arc::new(Outcome { fingerprint: once.fingerprint, result: result.clone() });
        let key: Arc<str> = Arc::from(once.key);
        if self.outcomes.insert(Arc::clone(&key), outcome).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > REMEMBERED_KEYS {
            if let Some(oldest) = self.order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_replays_its_first_outcome_refuses_another_request_and_is_forgotten_oldest_first() {
        let mut keys = AppliedKeys::default();
        let first = Idempotency::new("k1".into(), &("scale", "web", 3));
        assert_eq!(keys.replay(&first), None);
        let outcome: Result<CommandOutput, Rejection> = Ok(CommandOutput::AllocationsUpdated(7));
        keys.remember(first.clone(), &outcome);
        assert_eq!(keys.replay(&first), Some(outcome));
        let other = Idempotency::new("k1".into(), &("scale", "web", 4));
        assert_eq!(keys.replay(&other), Some(Err(Rejection::IdempotencyKeyReused("k1".into()))));
        for i in 0..REMEMBERED_KEYS {
            keys.remember(
                Idempotency::new(format!("other-{i}"), &i),
                &Ok(CommandOutput::AllocationsUpdated(0)),
            );
        }
        assert_eq!(keys.replay(&first), None, "the oldest key is forgotten past the window");
        assert!(keys.replay(&Idempotency::new("other-1".into(), &1usize)).is_some());
    }
}
