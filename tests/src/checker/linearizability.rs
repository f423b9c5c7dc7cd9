//! The search: Wing and Gong's algorithm with Lowe's memoisation, as
//! Porcupine implements it. Calls and returns are events on one list in
//! time order; the search walks it, linearizing a call whenever the model
//! accepts it next (and the pair of linearized set and state is new), and
//! backtracks when it meets the return of an operation it has not
//! linearized, which would then have taken effect after it answered.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

use super::history::Operation;

/// A sequential specification of one key.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` takes effect on `state`, if it could have
    /// answered `output` there (`None` for `output`: its answer is unknown,
    /// so any answer will do). `None`: it could not have.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// What the search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order fits; `reason` says where the longest attempt got stuck.
    NotLinearizable {
        reason: String,
    },
    /// The search gave up after its budget of steps.
    Unknown {
        steps: u64,
    },
}

/// End of the event list.
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

#[derive(Debug, Clone, Copy)]
struct Event {
    operation: usize,
    call: bool,
    /// For a call, its return's event; for a return, its call's.
    partner: usize,
    prev: usize,
    next: usize,
}

/// The events in time order (calls before returns at equal times, the
/// benefit of the doubt: they may overlap), behind a head sentinel.
fn events<I, O>(history: &[Operation<I, O>]) -> Vec<Event> {
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
    for (i, operation) in history.iter().enumerate() {
        order.push((operation.call, false, i));
        order.push((operation.returned(), true, i));
    }
    order.sort_unstable();
    let mut list = vec![Event { operation: NIL, call: false, partner: NIL, prev: NIL, next: NIL }];
    let mut call_at = vec![NIL; history.len()];
    for (position, (_, is_return, operation)) in order.into_iter().enumerate() {
        let index = position + 1;
        list.push(Event { operation, call: !is_return, partner: NIL, prev: index - 1, next: NIL });
        list[index - 1].next = index;
        if is_return {
            let call = call_at[operation];
            list[index].partner = call;
            list[call].partner = index;
        } else {
            call_at[operation] = index;
        }
    }
    list
}

fn unlink(list: &mut [Event], i: usize) {
    let (prev, next) = (list[i].prev, list[i].next);
    list[prev].next = next;
    if next != NIL {
        list[next].prev = prev;
    }
}

fn relink(list: &mut [Event], i: usize) {
    let (prev, next) = (list[i].prev, list[i].next);
    list[prev].next = i;
    if next != NIL {
        list[next].prev = i;
    }
}

/// A set of operations, as bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn with(&self, i: usize) -> Bits {
        let mut bits = self.clone();
        bits.0[i / 64] |= 1 << (i % 64);
        bits
    }

    fn without(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Whether `history` (one key's) is linearizable under `model`, searching
/// at most `budget` steps.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], budget: u64) -> Verdict {
    let mut list = events(history);
    let mut linearized = Bits(vec![0; history.len().div_ceil(64)]);
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    let mut state = model.init();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut deepest: (usize, String) = (0, String::new());
    let mut entry = list[HEAD].next;
    let mut steps = 0u64;
    while list[HEAD].next != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown { steps };
        }
        let event = list[entry];
        if event.call {
            let operation = &history[event.operation];
            if let Some(next) = model.step(&state, &operation.input, operation.output()) {
                let with = linearized.with(event.operation);
                if seen.insert((with.clone(), next.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next)));
                    linearized = with;
                    unlink(&mut list, event.partner);
                    unlink(&mut list, entry);
                    entry = list[HEAD].next;
                    continue;
                }
            }
            entry = event.next;
        } else {
            // The return of an operation not yet linearized: everything
            // linearized since it was called must be undone.
            if stack.len() >= deepest.0 {
                let stuck = &history[event.operation];
                deepest = (
                    stack.len(),
                    format!(
                        "after {} operations in state {state:?}, no pending operation fits before client {}'s {:?} answered {:?}",
                        stack.len(),
                        stuck.client,
                        stuck.input,
                        stuck.output()
                    ),
                );
            }
            let Some((call, previous)) = stack.pop() else {
                return Verdict::NotLinearizable { reason: deepest.1 };
            };
            state = previous;
            linearized.without(list[call].operation);
            let partner = list[call].partner;
            relink(&mut list, call);
            relink(&mut list, partner);
            entry = list[call].next;
        }
    }
    Verdict::Linearizable
}
