//! The sequential specifications berth's API must behave as, one object per key.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::check::Model;

/// A register: a service's desired count, set by `UpdateService` (or a scale) and read by
/// `DescribeService`.
#[derive(Debug, Clone)]
pub struct Register {
    /// The value before the history starts.
    pub initial: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegisterInput {
    Write(u64),
    Read,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegisterOutput {
    Written,
    Value(u64),
}

impl Model for Register {
    type State = u64;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> u64 {
        self.initial
    }

    fn step(
        &self,
        state: &u64,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<u64> {
        match (input, output) {
            (RegisterInput::Write(v), None | Some(RegisterOutput::Written)) => Some(*v),
            (RegisterInput::Read, None) => Some(*state),
            (RegisterInput::Read, Some(RegisterOutput::Value(v))) => (v == state).then_some(*state),
            _ => None,
        }
    }
}

/// A family's revisions: each registration appends one, numbered from 1; a revision once
/// registered keeps its content. `tag` stands for the content (the harness puts it in the
/// task definition, e.g. as an environment value, and reads it back).
#[derive(Debug, Clone, Default)]
pub struct Revisions;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RevisionsInput {
    Register {
        tag: u64,
    },
    /// The family's latest revision.
    Latest,
    /// One revision by number.
    Describe {
        revision: u32,
    },
    /// Every revision, in order.
    List,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RevisionsOutput {
    Registered {
        revision: u32,
    },
    /// The latest revision and its tag; `None` when the family has none.
    Latest(Option<(u32, u64)>),
    /// The revision's tag; `None` when it does not exist.
    Described(Option<u64>),
    /// Every revision's tag, by revision.
    Listed(Vec<u64>),
}

impl Model for Revisions {
    /// Tags by revision - 1.
    type State = Vec<u64>;
    type Input = RevisionsInput;
    type Output = RevisionsOutput;

    fn init(&self) -> Vec<u64> {
        Vec::new()
    }

    fn step(
        &self,
        state: &Vec<u64>,
        input: &RevisionsInput,
        output: Option<&RevisionsOutput>,
    ) -> Option<Vec<u64>> {
        let latest = state.last().map(|tag| (state.len() as u32, *tag));
        match (input, output) {
            (RevisionsInput::Register { tag }, None) => Some(appended(state, *tag)),
            (RevisionsInput::Register { tag }, Some(RevisionsOutput::Registered { revision })) => {
                (*revision as usize == state.len() + 1).then(|| appended(state, *tag))
            }
            (
                RevisionsInput::Latest | RevisionsInput::Describe { .. } | RevisionsInput::List,
                None,
            ) => Some(state.clone()),
            (RevisionsInput::List, Some(RevisionsOutput::Listed(seen))) => {
                (seen == state).then(|| state.clone())
            }
            (RevisionsInput::Latest, Some(RevisionsOutput::Latest(seen))) => {
                (*seen == latest).then(|| state.clone())
            }
            (RevisionsInput::Describe { revision }, Some(RevisionsOutput::Described(seen))) => {
                let tag = (*revision as usize)
                    .checked_sub(1)
                    .and_then(|i| state.get(i))
                    .copied();
                (*seen == tag).then(|| state.clone())
            }
            _ => None,
        }
    }
}

fn appended(state: &[u64], tag: u64) -> Vec<u64> {
    let mut next = state.to_vec();
    next.push(tag);
    next
}

/// Tasks run with client tokens by one client: a token runs one task however often it is
/// sent (a retry answers the task of the first), and listing the client's tasks shows one task
/// per token run, no more (a task's token is not listed; its ID is).
#[derive(Debug, Clone, Default)]
pub struct Tokens;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TokensInput {
    Run { token: String },
    List,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TokensOutput {
    Ran {
        task: String,
    },
    /// The IDs of the tasks listed.
    Listed(BTreeSet<String>),
}

impl Model for Tokens {
    /// Task by token; `None` while a run without an answer is not tied to one.
    type State = BTreeMap<String, Option<String>>;
    type Input = TokensInput;
    type Output = TokensOutput;

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(
        &self,
        state: &Self::State,
        input: &TokensInput,
        output: Option<&TokensOutput>,
    ) -> Option<Self::State> {
        match (input, output) {
            (TokensInput::Run { token }, None) => {
                let mut next = state.clone();
                next.entry(token.clone()).or_insert(None);
                Some(next)
            }
            (TokensInput::Run { token }, Some(TokensOutput::Ran { task })) => {
                match state.get(token) {
                    Some(Some(known)) => (known == task).then(|| state.clone()),
                    // Another token's task is not this one's.
                    _ if state.values().any(|t| t.as_ref() == Some(task)) => None,
                    _ => {
                        let mut next = state.clone();
                        next.insert(token.clone(), Some(task.clone()));
                        Some(next)
                    }
                }
            }
            (TokensInput::List, None) => Some(state.clone()),
            (TokensInput::List, Some(TokensOutput::Listed(seen))) => {
                // Every task known is listed, and one task per token: the ones not known
                // belong to the runs not yet tied to a task.
                let known: BTreeSet<&String> = state.values().flatten().collect();
                let untied: Vec<&String> = state
                    .iter()
                    .filter(|(_, task)| task.is_none())
                    .map(|(token, _)| token)
                    .collect();
                let fits = seen.len() == state.len() && known.iter().all(|t| seen.contains(*t));
                fits.then(|| {
                    let mut next = state.clone();
                    // One untied run and one unknown task: they are each other's.
                    if let [token] = untied[..] {
                        if let Some(task) = seen.iter().find(|t| !known.contains(t)) {
                            next.insert(token.clone(), Some(task.clone()));
                        }
                    }
                    next
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check, Finding, Operation};

    fn op<I, O>(client: u32, call: u64, ret: u64, input: I, output: O) -> Operation<I, O> {
        Operation {
            client,
            key: "k".into(),
            call,
            ret: Some(ret),
            input,
            output: Some(output),
        }
    }

    fn lost<I, O>(op: Operation<I, O>) -> Operation<I, O> {
        Operation {
            ret: None,
            output: None,
            ..op
        }
    }

    fn register(
        c: u32,
        call: u64,
        ret: u64,
        tag: u64,
        revision: u32,
    ) -> Operation<RevisionsInput, RevisionsOutput> {
        op(
            c,
            call,
            ret,
            RevisionsInput::Register { tag },
            RevisionsOutput::Registered { revision },
        )
    }

    fn latest(
        c: u32,
        call: u64,
        ret: u64,
        seen: Option<(u32, u64)>,
    ) -> Operation<RevisionsInput, RevisionsOutput> {
        op(
            c,
            call,
            ret,
            RevisionsInput::Latest,
            RevisionsOutput::Latest(seen),
        )
    }

    fn describe(
        c: u32,
        call: u64,
        ret: u64,
        revision: u32,
        seen: Option<u64>,
    ) -> Operation<RevisionsInput, RevisionsOutput> {
        op(
            c,
            call,
            ret,
            RevisionsInput::Describe { revision },
            RevisionsOutput::Described(seen),
        )
    }

    fn violations<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> usize {
        check(model, history, 1_000_000)
            .iter()
            .filter(|f| matches!(f, Finding::Violation { .. }))
            .count()
    }

    #[test]
    fn concurrent_registrations_get_distinct_revisions_in_either_order() {
        let history = [
            register(0, 0, 50, 10, 2),
            register(1, 10, 40, 11, 1),
            describe(2, 60, 70, 1, Some(11)),
            describe(2, 71, 80, 2, Some(10)),
            latest(3, 60, 90, Some((2, 10))),
        ];
        assert_eq!(violations(&Revisions, &history), 0);
    }

    #[test]
    fn two_registrations_answered_the_same_revision_is_a_violation() {
        let history = [register(0, 0, 50, 10, 1), register(1, 10, 40, 11, 1)];
        assert_eq!(violations(&Revisions, &history), 1);
    }

    #[test]
    fn an_acknowledged_revision_that_disappears_is_a_lost_write() {
        let history = [register(0, 0, 10, 10, 1), describe(1, 20, 30, 1, None)];
        assert_eq!(violations(&Revisions, &history), 1);
        let history = [register(0, 0, 10, 10, 1), latest(1, 20, 30, None)];
        assert_eq!(violations(&Revisions, &history), 1);
    }

    #[test]
    fn a_revision_whose_content_changed_is_a_violation() {
        let history = [
            register(0, 0, 10, 10, 1),
            describe(1, 20, 30, 1, Some(10)),
            describe(1, 40, 50, 1, Some(99)),
        ];
        assert_eq!(violations(&Revisions, &history), 1);
    }

    #[test]
    fn a_listing_shows_every_revision_in_order() {
        let list = |c, call, ret, seen: Vec<u64>| {
            op(
                c,
                call,
                ret,
                RevisionsInput::List,
                RevisionsOutput::Listed(seen),
            )
        };
        let history = [
            register(0, 0, 10, 10, 1),
            register(0, 20, 30, 11, 2),
            list(1, 40, 50, vec![10, 11]),
        ];
        assert_eq!(violations(&Revisions, &history), 0);
        let history = [
            register(0, 0, 10, 10, 1),
            register(0, 20, 30, 11, 2),
            list(1, 40, 50, vec![10]),
        ];
        assert_eq!(violations(&Revisions, &history), 1);
    }

    #[test]
    fn a_registration_without_an_answer_may_show_up_later() {
        let history = [
            lost(register(0, 0, 10, 10, 0)),
            register(1, 20, 30, 11, 2),
            describe(2, 40, 50, 1, Some(10)),
        ];
        assert_eq!(violations(&Revisions, &history), 0);
    }

    fn run(
        c: u32,
        call: u64,
        ret: u64,
        token: &str,
        task: &str,
    ) -> Operation<TokensInput, TokensOutput> {
        op(
            c,
            call,
            ret,
            TokensInput::Run {
                token: token.into(),
            },
            TokensOutput::Ran { task: task.into() },
        )
    }

    fn list(c: u32, call: u64, ret: u64, seen: &[&str]) -> Operation<TokensInput, TokensOutput> {
        op(
            c,
            call,
            ret,
            TokensInput::List,
            TokensOutput::Listed(seen.iter().map(|t| t.to_string()).collect()),
        )
    }

    #[test]
    fn a_retried_token_answers_the_same_task() {
        let history = [
            run(0, 0, 10, "a", "t1"),
            run(0, 20, 30, "a", "t1"),
            list(1, 40, 50, &["t1"]),
        ];
        assert_eq!(violations(&Tokens, &history), 0);
    }

    #[test]
    fn one_token_with_two_tasks_is_a_violation() {
        let history = [run(0, 0, 10, "a", "t1"), run(1, 20, 30, "a", "t2")];
        assert_eq!(violations(&Tokens, &history), 1);
        let history = [run(0, 0, 10, "a", "t1"), list(1, 20, 30, &["t2"])];
        assert_eq!(violations(&Tokens, &history), 1);
    }

    #[test]
    fn a_run_without_an_answer_is_bound_by_the_first_listing_that_shows_it() {
        let history = [
            lost(run(0, 0, 10, "a", "")),
            list(1, 20, 30, &["t7"]),
            list(1, 40, 50, &["t7"]),
        ];
        assert_eq!(violations(&Tokens, &history), 0);
        let history = [
            lost(run(0, 0, 10, "a", "")),
            list(1, 20, 30, &["t7"]),
            list(1, 40, 50, &["t8"]),
        ];
        assert_eq!(violations(&Tokens, &history), 1);
    }

    #[test]
    fn a_listing_with_more_tasks_than_tokens_shows_a_token_run_twice() {
        let history = [
            run(0, 0, 10, "a", "t1"),
            run(0, 20, 30, "b", "t2"),
            list(1, 40, 50, &["t1", "t2", "t3"]),
        ];
        assert_eq!(violations(&Tokens, &history), 1);
        // A retry of a run without an answer: still one task.
        let history = [
            lost(run(0, 0, 10, "a", "")),
            run(0, 20, 30, "a", "t1"),
            list(1, 40, 50, &["t1"]),
        ];
        assert_eq!(violations(&Tokens, &history), 0);
    }

    #[test]
    fn an_acknowledged_run_missing_from_a_later_listing_is_a_lost_write() {
        let history = [run(0, 0, 10, "a", "t1"), list(1, 20, 30, &[])];
        assert_eq!(violations(&Tokens, &history), 1);
    }
}
