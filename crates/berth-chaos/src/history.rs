//! What clients saw in one chaos run, by model, and its check.

use serde::{Deserialize, Serialize};

use crate::check::{check, Finding, Operation};
use crate::model::{
    Register, RegisterInput, RegisterOutput, Revisions, RevisionsInput, RevisionsOutput, Tokens,
    TokensInput, TokensOutput,
};

/// Search steps each key may take before its check is undecided.
pub const BUDGET: u64 = 500_000;

/// A run's operations: services' desired counts (keyed by service), families' revisions
/// (keyed by family) and token runs (keyed by client).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Every service's desired count before the run.
    pub initial_count: u64,
    pub counts: Vec<Operation<RegisterInput, RegisterOutput>>,
    pub revisions: Vec<Operation<RevisionsInput, RevisionsOutput>>,
    pub tokens: Vec<Operation<TokensInput, TokensOutput>>,
}

/// A finding with the model it came from and the operations it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub model: &'static str,
    pub finding: Finding,
}

impl History {
    pub fn len(&self) -> usize {
        self.counts.len() + self.revisions.len() + self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Operations that got no answer.
    pub fn indeterminate(&self) -> usize {
        self.counts.iter().filter(|o| o.indeterminate()).count()
            + self.revisions.iter().filter(|o| o.indeterminate()).count()
            + self.tokens.iter().filter(|o| o.indeterminate()).count()
    }

    /// Registrations without an answer, settled by what reads saw, before the search: one
    /// whose tag a read showed took effect, at the revision the read showed it at (its answer
    /// would have been that revision); one whose tag no read showed, where a listing of the
    /// whole family answered after every call, never took effect (each registration's tag is
    /// unique, and that last listing shows every revision). Without this, each unanswered
    /// registration doubles the orders the search must consider.
    pub fn settled_revisions(&self) -> Vec<Operation<RevisionsInput, RevisionsOutput>> {
        use std::collections::{BTreeMap, BTreeSet};
        let mut seen: BTreeMap<(&str, u64), u32> = BTreeMap::new();
        let mut last_call: BTreeMap<&str, u64> = BTreeMap::new();
        for op in &self.revisions {
            let last = last_call.entry(op.key.as_str()).or_default();
            *last = (*last).max(op.call);
        }
        let mut listed_last: BTreeSet<&str> = BTreeSet::new();
        for op in &self.revisions {
            let key = op.key.as_str();
            match (&op.input, &op.output) {
                (_, Some(RevisionsOutput::Listed(tags))) => {
                    for (i, tag) in tags.iter().enumerate() {
                        seen.entry((key, *tag)).or_insert(i as u32 + 1);
                    }
                    // Called after every other operation on the family was.
                    if last_call.get(key).is_some_and(|&last| op.call >= last) {
                        listed_last.insert(key);
                    }
                }
                (_, Some(RevisionsOutput::Latest(Some((revision, tag))))) => {
                    seen.entry((key, *tag)).or_insert(*revision);
                }
                (
                    RevisionsInput::Describe { revision },
                    Some(RevisionsOutput::Described(Some(tag))),
                ) => {
                    seen.entry((key, *tag)).or_insert(*revision);
                }
                _ => {}
            }
        }
        self.revisions
            .iter()
            .filter_map(|op| match (&op.input, &op.output) {
                (RevisionsInput::Register { tag }, None) => {
                    match seen.get(&(op.key.as_str(), *tag)) {
                        Some(revision) => Some(Operation {
                            output: Some(RevisionsOutput::Registered {
                                revision: *revision,
                            }),
                            ..op.clone()
                        }),
                        None if listed_last.contains(op.key.as_str()) => None,
                        None => Some(op.clone()),
                    }
                }
                _ => Some(op.clone()),
            })
            .collect()
    }

    /// Checks every model's operations.
    pub fn check(&self, budget: u64) -> Vec<Report> {
        let tag = |model: &'static str| move |finding| Report { model, finding };
        let register = Register {
            initial: self.initial_count,
        };
        check(&register, &self.counts, budget)
            .into_iter()
            .map(tag("desired count"))
            .chain(
                check(&Revisions, &self.settled_revisions(), budget)
                    .into_iter()
                    .map(tag("revisions")),
            )
            .chain(
                check(&Tokens, &self.tokens, budget)
                    .into_iter()
                    .map(tag("client tokens")),
            )
            .collect()
    }

    /// One line per operation a finding names, for the run's report.
    pub fn explain(&self, report: &Report) -> String {
        let (linearized, stuck) = match &report.finding {
            Finding::Violation {
                linearized, stuck, ..
            } => (linearized, stuck),
            Finding::Undecided { key, steps } => {
                return format!(
                    "{} of {key}: undecided after {steps} search steps",
                    report.model
                )
            }
        };
        // The revisions were checked settled (see `settled_revisions`).
        let revisions = self.settled_revisions();
        let line = |i: usize| match report.model {
            "desired count" => format!("{:?}", self.counts[i]),
            "revisions" => format!("{:?}", revisions[i]),
            _ => format!("{:?}", self.tokens[i]),
        };
        // The end of the longest order and what could not follow it: where it went wrong.
        const SHOWN: usize = 8;
        let mut text = format!(
            "{} of {}: not linearizable; the longest order found ({} operations) ends with:\n",
            report.model,
            report.finding.key(),
            linearized.len()
        );
        for &i in &linearized[linearized.len().saturating_sub(SHOWN)..] {
            text.push_str(&format!("    {}\n", line(i)));
        }
        text.push_str(&format!(
            "  and none of the {} operations left can follow it, the first:\n",
            stuck.len()
        ));
        for &i in stuck.iter().take(SHOWN) {
            text.push_str(&format!("    {}\n", line(i)));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_reports_each_model_under_its_name() {
        let mut history = History {
            initial_count: 1,
            ..History::default()
        };
        history.counts.push(Operation {
            client: 0,
            key: "svc".into(),
            call: 0,
            ret: Some(10),
            input: RegisterInput::Read,
            output: Some(RegisterOutput::Value(2)),
        });
        history.revisions.push(Operation {
            client: 1,
            key: "fam".into(),
            call: 0,
            ret: Some(10),
            input: RevisionsInput::Latest,
            output: Some(RevisionsOutput::Latest(None)),
        });
        let reports = history.check(BUDGET);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].model, "desired count");
        let text = history.explain(&reports[0]);
        assert!(
            text.contains("desired count of svc: not linearizable"),
            "{text}"
        );
        assert!(text.contains("Value(2)"), "{text}");
        history.initial_count = 2;
        assert_eq!(history.check(BUDGET), vec![]);
    }

    fn op(
        call: u64,
        ret: Option<u64>,
        input: RevisionsInput,
        output: Option<RevisionsOutput>,
    ) -> Operation<RevisionsInput, RevisionsOutput> {
        Operation {
            client: 0,
            key: "fam".into(),
            call,
            ret,
            input,
            output,
        }
    }

    #[test]
    fn unanswered_registrations_are_settled_by_what_reads_saw() {
        let history = History {
            revisions: vec![
                op(0, None, RevisionsInput::Register { tag: 7 }, None),
                op(5, None, RevisionsInput::Register { tag: 8 }, None),
                op(
                    10,
                    Some(20),
                    RevisionsInput::Register { tag: 9 },
                    Some(RevisionsOutput::Registered { revision: 2 }),
                ),
                op(
                    30,
                    Some(40),
                    RevisionsInput::List,
                    Some(RevisionsOutput::Listed(vec![7, 9])),
                ),
            ],
            ..History::default()
        };
        let settled = history.settled_revisions();
        // Tag 7 was seen at revision 1; tag 8 never, and the listing came after every call.
        assert_eq!(settled.len(), 3, "{settled:#?}");
        assert_eq!(
            settled[0].output,
            Some(RevisionsOutput::Registered { revision: 1 })
        );
        assert_eq!(settled[0].ret, None);
        assert_eq!(history.check(BUDGET), vec![]);
    }

    #[test]
    fn an_unseen_registration_stays_open_without_a_final_listing() {
        let history = History {
            revisions: vec![
                op(0, None, RevisionsInput::Register { tag: 7 }, None),
                op(
                    30,
                    Some(40),
                    RevisionsInput::List,
                    Some(RevisionsOutput::Listed(vec![])),
                ),
                op(50, None, RevisionsInput::Latest, None),
            ],
            ..History::default()
        };
        assert_eq!(history.settled_revisions().len(), 3);
    }
}
