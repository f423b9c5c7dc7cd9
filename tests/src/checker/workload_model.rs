//! The sequential model of one workload as the API promises it: a deploy
//! (optionally compare-and-set on the version, `?version=N`) makes a new
//! version when its spec differs, a scale changes only the replicas, a
//! delete removes it, and a read sees all of that.

use super::linearizability::Model;

/// A workload as the model sees it: its version, which spec it holds (a
/// value the client chose), and its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkloadRegister {
    pub version: u64,
    pub value: u64,
    pub replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadInput {
    /// Deploys spec `value` with one replica; with `expected`, only if the
    /// version is that (0: only if absent).
    Deploy {
        value: u64,
        expected: Option<u64>,
    },
    Scale {
        replicas: u32,
    },
    Delete,
    /// A linearizable read.
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadOutput {
    /// Deployed; the workload is at this version.
    Deployed {
        version: u64,
    },
    /// Refused: the version was `actual`, not the expected one.
    VersionMismatch {
        actual: u64,
    },
    Scaled,
    Deleted,
    NotFound,
    Read(Option<WorkloadRegister>),
}

/// One workload, absent at first.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkloadModel;

impl WorkloadModel {
    /// What `input` does to `state`: the next state and the answer.
    fn apply(
        state: Option<WorkloadRegister>,
        input: WorkloadInput,
    ) -> (Option<WorkloadRegister>, WorkloadOutput) {
        match input {
            WorkloadInput::Deploy { value, expected } => {
                let actual = state.map_or(0, |r| r.version);
                if expected.is_some_and(|e| e != actual) {
                    return (state, WorkloadOutput::VersionMismatch { actual });
                }
                let next = match state {
                    None => WorkloadRegister { version: 1, value, replicas: 1 },
                    // The same spec with other replicas is a scale, not a new version.
                    Some(r) if r.value == value => WorkloadRegister { replicas: 1, ..r },
                    Some(r) => WorkloadRegister { version: r.version + 1, value, replicas: 1 },
                };
                (Some(next), WorkloadOutput::Deployed { version: next.version })
            }
            WorkloadInput::Scale { replicas } => match state {
                None => (None, WorkloadOutput::NotFound),
                Some(r) => (Some(WorkloadRegister { replicas, ..r }), WorkloadOutput::Scaled),
            },
            WorkloadInput::Delete => match state {
                None => (None, WorkloadOutput::NotFound),
                Some(_) => (None, WorkloadOutput::Deleted),
            },
            WorkloadInput::Read => (state, WorkloadOutput::Read(state)),
        }
    }
}

impl Model for WorkloadModel {
    type State = Option<WorkloadRegister>;
    type Input = WorkloadInput;
    type Output = WorkloadOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &WorkloadInput,
        output: Option<&WorkloadOutput>,
    ) -> Option<Self::State> {
        let (next, answer) = Self::apply(*state, *input);
        output.is_none_or(|o| *o == answer).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::history::{Operation, Outcome};
    use crate::checker::linearizability::{Verdict, check};

    use WorkloadInput::{Delete, Deploy, Read, Scale};
    use WorkloadOutput::{Deleted, Deployed, NotFound, Scaled, VersionMismatch};

    fn register(version: u64, value: u64, replicas: u32) -> WorkloadOutput {
        WorkloadOutput::Read(Some(WorkloadRegister { version, value, replicas }))
    }

    /// An operation of `client` from `call` to `at` (`None`: unknown).
    fn op(
        client: usize,
        call: u64,
        at: Option<u64>,
        input: WorkloadInput,
        output: WorkloadOutput,
    ) -> Operation<WorkloadInput, WorkloadOutput> {
        let outcome = match at {
            Some(at) => Outcome::Ok { output, at },
            None => Outcome::Unknown,
        };
        Operation { client, input, call, outcome }
    }

    fn verdict(history: &[Operation<WorkloadInput, WorkloadOutput>]) -> Verdict {
        check(&WorkloadModel, history, 1_000_000)
    }

    #[test]
    fn histories_that_some_order_explains_are_linearizable() {
        let table: Vec<(&str, Vec<Operation<WorkloadInput, WorkloadOutput>>)> = vec![
            ("empty", vec![]),
            (
                "sequential",
                vec![
                    op(0, 0, Some(1), Deploy { value: 7, expected: Some(0) }, Deployed { version: 1 }),
                    op(0, 2, Some(3), Scale { replicas: 3 }, Scaled),
                    op(1, 4, Some(5), Read, register(1, 7, 3)),
                    op(1, 6, Some(7), Deploy { value: 8, expected: Some(1) }, Deployed { version: 2 }),
                    op(0, 8, Some(9), Delete, Deleted),
                    op(0, 10, Some(11), Read, WorkloadOutput::Read(None)),
                ],
            ),
            (
                "a read overlapping a write may see either side",
                vec![
                    op(0, 0, Some(1), Deploy { value: 1, expected: None }, Deployed { version: 1 }),
                    op(0, 2, Some(10), Deploy { value: 2, expected: None }, Deployed { version: 2 }),
                    op(1, 3, Some(4), Read, register(2, 2, 1)),
                    op(2, 5, Some(6), Read, register(2, 2, 1)),
                ],
            ),
            (
                "concurrent compare-and-sets: one wins, one is told the new version",
                vec![
                    op(0, 0, Some(1), Deploy { value: 1, expected: None }, Deployed { version: 1 }),
                    op(1, 2, Some(6), Deploy { value: 2, expected: Some(1) }, VersionMismatch { actual: 2 }),
                    op(2, 3, Some(5), Deploy { value: 3, expected: Some(1) }, Deployed { version: 2 }),
                ],
            ),
            (
                "an unknown write that took effect, seen later",
                vec![
                    op(0, 0, None, Deploy { value: 5, expected: None }, Deployed { version: 1 }),
                    op(1, 10, Some(11), Read, register(1, 5, 1)),
                ],
            ),
            (
                "an unknown write that never took effect",
                vec![
                    op(0, 0, None, Deploy { value: 5, expected: None }, Deployed { version: 1 }),
                    op(1, 10, Some(11), Read, WorkloadOutput::Read(None)),
                    op(1, 12, Some(13), Scale { replicas: 2 }, NotFound),
                ],
            ),
        ];
        for (name, history) in table {
            assert_eq!(verdict(&history), Verdict::Linearizable, "{name}");
        }
    }

    #[test]
    fn a_stale_read_a_lost_write_and_a_write_applied_twice_are_not() {
        let table: Vec<(&str, Vec<Operation<WorkloadInput, WorkloadOutput>>)> = vec![
            (
                "a stale read: the old value after the new one was acknowledged and read",
                vec![
                    op(0, 0, Some(1), Deploy { value: 1, expected: None }, Deployed { version: 1 }),
                    op(0, 2, Some(3), Deploy { value: 2, expected: None }, Deployed { version: 2 }),
                    op(1, 4, Some(5), Read, register(2, 2, 1)),
                    op(2, 6, Some(7), Read, register(1, 1, 1)),
                ],
            ),
            (
                "a lost write: acknowledged, then never seen",
                vec![
                    op(0, 0, Some(1), Deploy { value: 1, expected: None }, Deployed { version: 1 }),
                    op(1, 2, Some(3), Scale { replicas: 4 }, Scaled),
                    op(2, 4, Some(5), Read, register(1, 1, 1)),
                ],
            ),
            (
                "a write applied twice: one deploy, two versions",
                vec![
                    op(0, 0, Some(1), Deploy { value: 1, expected: None }, Deployed { version: 1 }),
                    op(0, 2, Some(3), Deploy { value: 2, expected: None }, Deployed { version: 2 }),
                    op(1, 4, Some(5), Read, register(3, 2, 1)),
                ],
            ),
            (
                "a compare-and-set that won twice",
                vec![
                    op(0, 0, Some(1), Deploy { value: 1, expected: Some(0) }, Deployed { version: 1 }),
                    op(1, 2, Some(4), Deploy { value: 2, expected: Some(1) }, Deployed { version: 2 }),
                    op(2, 2, Some(4), Deploy { value: 3, expected: Some(1) }, Deployed { version: 2 }),
                ],
            ),
            (
                "a deleted workload read back",
                vec![
                    op(0, 0, Some(1), Deploy { value: 1, expected: None }, Deployed { version: 1 }),
                    op(0, 2, Some(3), Delete, Deleted),
                    op(1, 4, Some(5), Read, register(1, 1, 1)),
                ],
            ),
        ];
        for (name, history) in table {
            let found = verdict(&history);
            assert!(matches!(found, Verdict::NotLinearizable { .. }), "{name}: {found:?}");
        }
    }

    proptest::proptest! {
        /// Any run of the model, its operations' windows stretched at
        /// random around the instants they took effect (some left
        /// unknown), is found linearizable: the search misses no order.
        #[test]
        fn every_stretched_sequential_run_is_linearizable(
            steps in proptest::collection::vec((0..6u8, 0..3u64, 0..40u64, 0..40u64, 0..10u8), 1..40),
        ) {
            let mut state = None;
            let mut history = Vec::new();
            for (i, (kind, value, before, after, unknown)) in steps.into_iter().enumerate() {
                let input = match kind {
                    0 => Deploy { value, expected: None },
                    1 => Deploy { value, expected: Some(state.map_or(0, |r: WorkloadRegister| r.version)) },
                    2 => Deploy { value, expected: Some(value) },
                    3 => Scale { replicas: value as u32 + 1 },
                    4 => Delete,
                    _ => Read,
                };
                let (next, output) = WorkloadModel::apply(state, input);
                state = next;
                let instant = 100 * (i as u64 + 1);
                let at = (unknown > 0).then_some(instant + after);
                history.push(op(i % 4, instant - before, at, input, output));
            }
            proptest::prop_assert_eq!(verdict(&history), Verdict::Linearizable);
        }
    }

    #[test]
    fn many_concurrent_clients_are_checked_within_the_budget() {
        // Eight clients, each deploying its own value then reading, all
        // overlapping: the search must find the order among 8! without
        // blowing up (the cache prunes it).
        let mut history = Vec::new();
        for client in 0..8u64 {
            history.push(op(
                client as usize,
                client,
                Some(100 + client),
                Deploy { value: client, expected: None },
                Deployed { version: client + 1 },
            ));
        }
        history.push(op(9, 200, Some(201), Read, register(8, 7, 1)));
        assert_eq!(verdict(&history), Verdict::Linearizable);
        let steps_bound = check(&WorkloadModel, &history, 5_000);
        assert_eq!(steps_bound, Verdict::Linearizable, "within a small budget");
    }
}
