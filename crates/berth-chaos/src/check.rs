//! Linearizability: could every operation of a history have taken effect at one instant
//! between its call and its return, in an order the sequential [`Model`] accepts?
//!
//! The search is Wing and Gong's, with Lowe's cache of (operations linearized, state) pairs
//! already explored, as Porcupine implements it: walk the calls in time order, linearize the
//! first one the model accepts, and backtrack when a return is reached whose call is not
//! linearized yet. Operations on different keys never constrain each other (a service's count
//! and a family's revisions are separate objects), so each key is checked on its own
//! (P-compositionality), which keeps the search small.
//!
//! An operation without an answer (a timeout, a lost connection, "no quorum") may have taken
//! effect at any time after its call, or never: it returns at infinity, and the model accepts
//! any answer for it. Operations that certainly failed (a refusal the server answered) took no
//! effect and are left out of the history by whoever records it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after `input` answered `output` in `state`, or `None` when the
    /// specification could not have answered that. `output` is `None` for an operation
    /// without an answer: any answer is possible.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One client operation as recorded: times are the recorder's monotonic nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// Who performed it (one client performs one operation at a time).
    pub client: u32,
    /// The object it acts on; operations on different keys are checked apart.
    pub key: String,
    pub call: u64,
    /// When the answer came; `None` when none did.
    pub ret: Option<u64>,
    pub input: I,
    /// The answer; `None` when none came.
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    /// Without an answer: it may have taken effect at any time after its call, or never.
    pub fn indeterminate(&self) -> bool {
        self.ret.is_none() || self.output.is_none()
    }
}

/// What the checker found wrong with one key's operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No order of the key's operations explains what clients saw. `linearized` is the
    /// longest prefix of an order the search found (indices into the history), `stuck` the
    /// operations it could not extend with.
    Violation {
        key: String,
        linearized: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// The search ran out of its step budget before deciding.
    Undecided { key: String, steps: u64 },
}

impl Finding {
    pub fn key(&self) -> &str {
        match self {
            Finding::Violation { key, .. } | Finding::Undecided { key, .. } => key,
        }
    }
}

/// Checks `history` against `model`, key by key, spending at most `budget` search steps on
/// each key. Answers what is wrong: nothing when every key's operations are linearizable.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Vec<Finding> {
    let mut keys: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        keys.entry(op.key.as_str()).or_default().push(i);
    }
    keys.into_iter()
        .filter_map(|(key, ops)| {
            check_key(model, history, &ops, budget).map(|found| match found {
                Search::Violation { linearized, stuck } => Finding::Violation {
                    key: key.to_owned(),
                    linearized,
                    stuck,
                },
                Search::Undecided { steps } => Finding::Undecided {
                    key: key.to_owned(),
                    steps,
                },
            })
        })
        .collect()
}

enum Search {
    Violation {
        linearized: Vec<usize>,
        stuck: Vec<usize>,
    },
    Undecided {
        steps: u64,
    },
}

/// A set of operations (by position in the key's list), hashable for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Nothing before or after.
const NIL: usize = usize::MAX;

/// A call or a return in a doubly linked list of events in time order; linearizing an
/// operation lifts its call and return out of the list, backtracking puts them back.
#[derive(Debug, Clone)]
struct Event {
    /// The operation's position in the key's list.
    op: usize,
    call: bool,
    /// A call's return event (a return's is unused).
    matching: usize,
    prev: usize,
    next: usize,
}

struct Events {
    events: Vec<Event>,
    /// The sentinel before the first event.
    head: usize,
}

impl Events {
    /// Calls and returns in time order; at equal times calls first, so that operations that
    /// touch at an instant count as concurrent. Operations without an answer return last.
    fn new<I, O>(ops: &[&Operation<I, O>]) -> Self {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, true, i));
            let ret = if op.indeterminate() {
                u64::MAX
            } else {
                op.ret.unwrap_or(u64::MAX).max(op.call)
            };
            order.push((ret, false, i));
        }
        // `false < true`: sort calls (`!call == false`) before returns at one time.
        order.sort_by_key(|&(time, call, i)| (time, !call, i));
        let head = order.len();
        let mut events: Vec<Event> = Vec::with_capacity(order.len() + 1);
        let mut return_at = vec![NIL; ops.len()];
        for (pos, &(_, call, op)) in order.iter().enumerate() {
            if !call {
                return_at[op] = pos;
            }
            events.push(Event {
                op,
                call,
                matching: NIL,
                prev: if pos == 0 { head } else { pos - 1 },
                next: if pos + 1 == order.len() { NIL } else { pos + 1 },
            });
        }
        for event in &mut events {
            if event.call {
                event.matching = return_at[event.op];
            }
        }
        events.push(Event {
            op: NIL,
            call: false,
            matching: NIL,
            prev: NIL,
            next: if order.is_empty() { NIL } else { 0 },
        });
        Self { events, head }
    }

    fn first(&self) -> usize {
        self.events[self.head].next
    }

    fn unlink(&mut self, e: usize) {
        let (prev, next) = (self.events[e].prev, self.events[e].next);
        self.events[prev].next = next;
        if next != NIL {
            self.events[next].prev = prev;
        }
    }

    fn relink(&mut self, e: usize) {
        let (prev, next) = (self.events[e].prev, self.events[e].next);
        self.events[prev].next = e;
        if next != NIL {
            self.events[next].prev = e;
        }
    }

    /// Takes call `e` and its return out of the list.
    fn lift(&mut self, e: usize) {
        self.unlink(e);
        self.unlink(self.events[e].matching);
    }

    /// Puts them back, in the reverse order of [`Events::lift`].
    fn unlift(&mut self, e: usize) {
        self.relink(self.events[e].matching);
        self.relink(e);
    }
}

fn check_key<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    indices: &[usize],
    budget: u64,
) -> Option<Search> {
    let ops: Vec<&Operation<M::Input, M::Output>> = indices.iter().map(|&i| &history[i]).collect();
    let mut events = Events::new(&ops);
    let mut state = model.init();
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashMap<Bits, Vec<M::State>> = HashMap::new();
    // Calls linearized so far, each with the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    let mut entry = events.first();
    while events.first() != NIL {
        steps += 1;
        if steps > budget {
            return Some(Search::Undecided { steps: budget });
        }
        let event = &events.events[entry];
        if event.call {
            let op = ops[event.op];
            if let Some(next) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut with = linearized.clone();
                with.set(event.op);
                let seen = cache.entry(with.clone()).or_default();
                if !seen.contains(&next) {
                    seen.push(next.clone());
                    stack.push((entry, std::mem::replace(&mut state, next)));
                    linearized = with;
                    events.lift(entry);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(e, _)| events.events[e].op).collect();
                    }
                    entry = events.first();
                    continue;
                }
            }
            entry = events.events[entry].next;
        } else {
            // A return whose call is not linearized: something before it must be undone.
            let Some((call, before)) = stack.pop() else {
                let linearized: Vec<usize> = longest.iter().map(|&i| indices[i]).collect();
                let stuck = (0..ops.len())
                    .filter(|i| !longest.contains(i))
                    .map(|i| indices[i])
                    .collect();
                return Some(Search::Violation { linearized, stuck });
            };
            state = before;
            linearized.clear(events.events[call].op);
            events.unlift(call);
            entry = events.events[call].next;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Register, RegisterInput, RegisterOutput};

    type Op = Operation<RegisterInput, RegisterOutput>;

    fn write(client: u32, call: u64, ret: u64, v: u64) -> Op {
        Operation {
            client,
            key: "web".into(),
            call,
            ret: Some(ret),
            input: RegisterInput::Write(v),
            output: Some(RegisterOutput::Written),
        }
    }

    fn read(client: u32, call: u64, ret: u64, v: u64) -> Op {
        Operation {
            client,
            key: "web".into(),
            call,
            ret: Some(ret),
            input: RegisterInput::Read,
            output: Some(RegisterOutput::Value(v)),
        }
    }

    fn lost(op: Op) -> Op {
        Operation {
            ret: None,
            output: None,
            ..op
        }
    }

    fn on(key: &str, op: Op) -> Op {
        Operation {
            key: key.into(),
            ..op
        }
    }

    const BUDGET: u64 = 1_000_000;

    fn ok(history: &[Op]) {
        let found = check(&Register { initial: 0 }, history, BUDGET);
        assert_eq!(found, vec![], "{history:#?}");
    }

    fn violation(history: &[Op]) -> (Vec<usize>, Vec<usize>) {
        match &check(&Register { initial: 0 }, history, BUDGET)[..] {
            [Finding::Violation {
                linearized, stuck, ..
            }] => (linearized.clone(), stuck.clone()),
            other => panic!("expected one violation, found {other:?}"),
        }
    }

    #[test]
    fn an_empty_history_is_linearizable() {
        ok(&[]);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        // Porcupine's example: C0 writes 100 while C1 reads 100 and C2 reads 0.
        ok(&[
            write(0, 0, 100, 100),
            read(1, 25, 75, 100),
            read(2, 30, 60, 0),
        ]);
    }

    #[test]
    fn a_read_after_a_read_of_the_new_value_cannot_see_the_old_one() {
        let (linearized, stuck) = violation(&[
            write(0, 0, 100, 100),
            read(1, 5, 35, 100),
            read(2, 30, 90, 0),
            read(2, 40, 90, 0),
        ]);
        assert!(!stuck.is_empty());
        assert!(linearized.len() < 4, "{linearized:?}");
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
        let (_, stuck) = violation(&[write(0, 0, 10, 1), read(1, 20, 30, 0)]);
        assert!(stuck.contains(&1), "{stuck:?}");
    }

    #[test]
    fn a_read_of_a_value_never_written_is_a_violation() {
        violation(&[write(0, 0, 10, 1), read(1, 20, 30, 7)]);
    }

    #[test]
    fn operations_that_touch_at_an_instant_are_concurrent() {
        ok(&[write(0, 0, 10, 1), read(1, 10, 20, 0)]);
    }

    #[test]
    fn a_write_without_an_answer_may_have_taken_effect_late_or_never() {
        // Seen after its call, long after: it took effect.
        ok(&[lost(write(0, 0, 10, 1)), read(1, 500, 510, 1)]);
        // Never seen: it did not (or not yet).
        ok(&[lost(write(0, 0, 10, 1)), read(1, 500, 510, 0)]);
        // Seen, then not seen: a value once visible cannot disappear.
        violation(&[
            lost(write(0, 0, 10, 1)),
            read(1, 500, 510, 1),
            read(1, 600, 610, 0),
        ]);
    }

    #[test]
    fn a_write_cannot_take_effect_before_its_call() {
        violation(&[read(1, 0, 10, 1), lost(write(0, 20, 30, 1))]);
    }

    #[test]
    fn keys_are_independent_objects() {
        ok(&[
            on("a", write(0, 0, 10, 1)),
            on("b", read(1, 20, 30, 0)),
            on("a", read(2, 20, 30, 1)),
        ]);
        let found = check(
            &Register { initial: 0 },
            &[
                on("a", write(0, 0, 10, 1)),
                on("b", read(1, 20, 30, 1)),
                on("a", read(2, 20, 30, 1)),
            ],
            BUDGET,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key(), "b");
    }

    #[test]
    fn a_search_over_its_budget_is_undecided_not_a_verdict() {
        let mut history = Vec::new();
        // Many concurrent writes of distinct values and a read of the first: the search
        // explores orders before it finds one.
        for c in 0..12 {
            history.push(write(c, 0, 1000, u64::from(c) + 1));
        }
        history.push(read(99, 0, 1000, 1));
        let found = check(&Register { initial: 0 }, &history, 5);
        assert!(
            matches!(&found[..], [Finding::Undecided { steps: 5, .. }]),
            "{found:?}"
        );
        assert_eq!(check(&Register { initial: 0 }, &history, BUDGET), vec![]);
    }

    #[test]
    fn long_sequential_histories_check_quickly() {
        // 2,000 operations, four clients in lockstep, each write read back by the others:
        // the cache keeps this linear rather than exponential.
        let mut history = Vec::new();
        for round in 0..500u64 {
            let t = round * 100;
            history.push(write(0, t, t + 10, round + 1));
            for c in 1..4 {
                history.push(read(c, t + 20, t + 30, round + 1));
            }
        }
        ok(&history);
    }

    #[test]
    fn histories_survive_a_round_trip_through_json() {
        let history = vec![write(0, 0, 10, 1), lost(read(1, 5, 9, 1))];
        let text = serde_json::to_string(&history).expect("encode");
        let back: Vec<Op> = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, history);
    }
}
