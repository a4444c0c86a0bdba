//! The agent's decisions, without effects: the server's desired set for this node and what the
//! agent knows locally in, the [`Action`]s that make the node match out. No IO, no async, no
//! locks: [`crate::reconcile`] carries the actions out, and the control-plane simulation
//! (`crates/berth-control/tests/control_sim.rs`) runs this same plan for each simulated agent.
//!
//! The plan is idempotent: the server pushes the node's full desired set on every change, and a
//! set that is already in effect plans nothing but stop requests repeated to tasks that are
//! stopping or stopped, which are harmless.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::{Assignment, DesiredStatus, StopCode, TaskStatus};

use crate::runtime::ExistingContainer;

/// One entry of the desired set: an assignment, or one this agent could not read.
pub type DesiredEntry = Result<Assignment, Unreadable>;

/// An assignment this agent could not read as a whole (a server newer than the agent), with
/// what could be read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub task_id: String,
    /// `None` when the desired status itself is unreadable: the entry is then ignored (the task
    /// is still counted as wanted, so a task the agent runs keeps running).
    pub desired_status: Option<DesiredStatus>,
    /// The servers' last status of the task, when readable.
    pub last_status: Option<TaskStatus>,
    /// Why it could not be read.
    pub error: String,
}

/// A task this agent knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Started (or re-adopted) and not finished yet; it may be stopping.
    Active,
    /// Finished: its last report is STOPPED.
    Finished,
}

/// What the agent knows locally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalView {
    /// Every task the agent knows, by task ID.
    pub tasks: BTreeMap<String, Local>,
    /// Containers a previous agent process left, by task ID; only for the first plan after a
    /// start-up (what that plan does not claim is removed, so later views pass it empty).
    pub found: BTreeMap<String, Vec<ExistingContainer>>,
}

/// Why a task ended without the agent running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub stop_code: Option<StopCode>,
    pub reason: Option<String>,
    pub event: Option<String>,
}

/// One step towards the desired set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the task; `adopt` holds the containers a previous agent process started for it
    /// (re-adopted rather than started again), empty for a new task.
    Start {
        assignment: Assignment,
        adopt: Vec<ExistingContainer>,
    },
    /// Ask a task the agent runs to stop (the server wants it stopped, or not on this node).
    /// With the deregistration delay the servers name now, when they named the task.
    Stop {
        task_id: String,
        deregistration_delay: Option<u32>,
    },
    /// Report the task STOPPED without running anything for it, and know it as finished.
    ReportEnded { task_id: String, ended: Ended },
    /// Remove the containers a previous agent process left for a task not desired here.
    RemoveOrphans {
        task_id: String,
        containers: Vec<ExistingContainer>,
    },
    /// Forget a finished task the server no longer lists, and its last report.
    Forget { task_id: String },
    /// Nothing to do for an entry the agent cannot read enough of; logged.
    Ignore { task_id: String, error: String },
}

/// The actions that make this node match `desired`, in the order to carry them out: one or
/// none per desired entry, then the removal of unclaimed containers, then stops and forgets of
/// the tasks the server no longer lists (in task-ID order).
///
/// | desired          | known locally   | action                                              |
/// |------------------|-----------------|-----------------------------------------------------|
/// | RUNNING          | no              | `Start` (adopting found containers), or `ReportEnded` NodeLost when it ran before (last status ACTIVATING or later) and no container was found |
/// | RUNNING          | yes             | nothing                                             |
/// | STOPPED          | no              | `ReportEnded` without a stop code (stopped before it started) |
/// | STOPPED          | yes             | `Stop`                                              |
/// | unreadable, RUNNING | no           | as RUNNING, but `ReportEnded` TaskFailedToStart instead of `Start` |
/// | not listed       | active/finished | `Stop` / `Forget`                                   |
pub fn plan(desired: &[DesiredEntry], local: &LocalView) -> Vec<Action> {
    let mut known = local.tasks.clone();
    let mut found = local.found.clone();
    let mut wanted = BTreeSet::new();
    let mut actions = Vec::new();
    for entry in desired {
        let (task_id, status, last_status) = match entry {
            Ok(a) => (&a.task_id, Some(a.desired_status), Some(a.last_status)),
            Err(u) => (&u.task_id, u.desired_status, u.last_status),
        };
        wanted.insert(task_id.clone());
        let Some(status) = status else {
            let error = entry.as_ref().err().map(|u| u.error.clone());
            actions.push(Action::Ignore {
                task_id: task_id.clone(),
                error: error.unwrap_or_default(),
            });
            continue;
        };
        let action = match (known.get(task_id), status) {
            (None, DesiredStatus::Running) => {
                let adopt = found.remove(task_id).unwrap_or_default();
                let ran_before = last_status.is_some_and(TaskStatus::reached_node);
                if adopt.is_empty() && ran_before {
                    // The servers saw it run here, but no container is left: the node lost it
                    // (a host reboot, a crash), not the task's fault, so it does not count
                    // against a service deployment.
                    ended(task_id, vanished())
                } else {
                    match entry {
                        Ok(a) => {
                            known.insert(task_id.clone(), Local::Active);
                            Action::Start {
                                assignment: a.clone(),
                                adopt,
                            }
                        }
                        // A server newer than this agent: refuse the task, say why. (Its found
                        // containers, if any, are neither adopted nor removed.)
                        Err(u) => ended(task_id, unrunnable(&u.error)),
                    }
                }
            }
            // Stopped before this node ever started it.
            (None, DesiredStatus::Stopped) => ended(
                task_id,
                Ended {
                    stop_code: None,
                    reason: None,
                    event: None,
                },
            ),
            (Some(_), DesiredStatus::Stopped) => Action::Stop {
                task_id: task_id.clone(),
                deregistration_delay: entry.as_ref().ok().map(|a| a.deregistration_delay),
            },
            (Some(_), DesiredStatus::Running) => continue,
        };
        if matches!(action, Action::ReportEnded { .. }) {
            known.insert(task_id.clone(), Local::Finished);
        }
        actions.push(action);
    }
    // What the servers do not want on this node any more is removed.
    for (task_id, containers) in found {
        actions.push(Action::RemoveOrphans {
            task_id,
            containers,
        });
    }
    for (task_id, state) in known {
        if wanted.contains(&task_id) {
            continue;
        }
        actions.push(match state {
            Local::Finished => Action::Forget { task_id },
            // The server no longer wants it here.
            Local::Active => Action::Stop {
                task_id,
                deregistration_delay: None,
            },
        });
    }
    actions
}

fn ended(task_id: &str, ended: Ended) -> Action {
    Action::ReportEnded {
        task_id: task_id.to_owned(),
        ended,
    }
}

fn vanished() -> Ended {
    Ended {
        stop_code: Some(StopCode::NodeLost),
        reason: Some("the task's containers vanished while the agent was down".into()),
        event: Some("containers vanished while the agent was down".into()),
    }
}

fn unrunnable(error: &str) -> Ended {
    Ended {
        stop_code: Some(StopCode::TaskFailedToStart),
        reason: Some(format!(
            "this node's agent cannot run the task's definition: {error}"
        )),
        event: None,
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use berth_model::ContainerDefinition;

    use super::*;

    /// Builds the plan's input from a fixture, one item a line:
    ///
    /// - `desired ID DESIRED LAST` — an assignment (`LAST` is the servers' last status);
    /// - `unreadable ID DESIRED|? LAST|? ERROR…` — one the agent cannot read;
    /// - `local ID active|finished` — a task the agent knows;
    /// - `found ID CONTAINER running|exited` — a container a previous agent process left.
    fn parse(fixture: &str) -> (Vec<DesiredEntry>, LocalView) {
        let status = |s: &str| s.parse::<TaskStatus>().ok();
        let desired_status = |s: &str| s.parse::<DesiredStatus>().ok();
        let mut desired = Vec::new();
        let mut local = LocalView::default();
        for line in fixture.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["desired", id, want, last] => desired.push(Ok(Assignment {
                    task_id: (*id).to_owned(),
                    namespace: "default".into(),
                    task_definition: "web:1".parse().expect("a valid reference"),
                    desired_status: desired_status(want).expect("a desired status"),
                    cpu: 256,
                    memory: 64,
                    containers: vec![ContainerDefinition::new("app", "busybox")],
                    last_status: status(last).expect("a task status"),
                    deregistration_delay: 0,
                    ephemeral_storage: Default::default(),
                    secrets: Default::default(),
                })),
                ["unreadable", id, want, last, error @ ..] => desired.push(Err(Unreadable {
                    task_id: (*id).to_owned(),
                    desired_status: desired_status(want),
                    last_status: status(last),
                    error: error.join(" "),
                })),
                ["local", id, state] => {
                    let state = match *state {
                        "active" => Local::Active,
                        "finished" => Local::Finished,
                        other => panic!("unknown local state {other}"),
                    };
                    local.tasks.insert((*id).to_owned(), state);
                }
                ["found", id, container, state] => {
                    local
                        .found
                        .entry((*id).to_owned())
                        .or_default()
                        .push(ExistingContainer {
                            id: format!("{id}-{container}"),
                            task_id: (*id).to_owned(),
                            container_name: (*container).to_owned(),
                            running: *state == "running",
                            exit_code: (*state == "exited").then_some(0),
                        });
                }
                _ => panic!("cannot read fixture line {line:?}"),
            }
        }
        (desired, local)
    }

    /// One line per action.
    fn render(actions: &[Action]) -> String {
        let ids = |cs: &[ExistingContainer]| {
            cs.iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = String::new();
        for a in actions {
            let line = match a {
                Action::Start { assignment, adopt } if adopt.is_empty() => {
                    format!("start {}", assignment.task_id)
                }
                Action::Start { assignment, adopt } => {
                    format!("start {} adopting {}", assignment.task_id, ids(adopt))
                }
                Action::Stop { task_id, .. } => format!("stop {task_id}"),
                Action::ReportEnded { task_id, ended } => format!(
                    "ended {task_id} {} reason={:?} event={:?}",
                    ended.stop_code.map_or("-".to_owned(), |c| c.to_string()),
                    ended.reason.as_deref().unwrap_or("-"),
                    ended.event.as_deref().unwrap_or("-"),
                ),
                Action::RemoveOrphans {
                    task_id,
                    containers,
                } => format!("remove {task_id} {}", ids(containers)),
                Action::Forget { task_id } => format!("forget {task_id}"),
                Action::Ignore { task_id, error } => format!("ignore {task_id}: {error}"),
            };
            let _ = writeln!(out, "{line}");
        }
        out
    }

    #[track_caller]
    fn check(fixture: &str, expected: &str) {
        let (desired, local) = parse(fixture);
        let actual = render(&plan(&desired, &local));
        let expected: String = expected
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(actual, expected, "\nfixture:\n{fixture}\nactual:\n{actual}");
    }

    #[test]
    fn starts_unknown_tasks_and_leaves_known_ones() {
        check(
            "desired t1 RUNNING PENDING
             desired t2 RUNNING RUNNING
             local t2 active",
            "start t1",
        );
    }

    #[test]
    fn an_empty_set_changes_nothing_when_nothing_is_known() {
        check("", "");
    }

    #[test]
    fn stops_tasks_the_server_wants_stopped() {
        check(
            "desired t1 STOPPED RUNNING
             local t1 active",
            "stop t1",
        );
        // Asked again while it stops (or after it finished): asked again, harmlessly.
        check(
            "desired t1 STOPPED STOPPING
             local t1 finished",
            "stop t1",
        );
    }

    #[test]
    fn a_task_stopped_before_it_started_ends_without_a_stop_code() {
        check(
            "desired t1 STOPPED PENDING",
            r#"ended t1 - reason="-" event="-""#,
        );
    }

    #[test]
    fn tasks_not_listed_are_stopped_or_forgotten() {
        check(
            "desired t1 RUNNING RUNNING
             local t1 active
             local t3 finished
             local t2 active",
            "stop t2
             forget t3",
        );
    }

    #[test]
    fn found_containers_are_adopted_by_their_task_and_the_rest_removed() {
        check(
            "desired t1 RUNNING RUNNING
             found t1 app running
             found t1 sidecar exited
             found t9 app running",
            "start t1 adopting t1-app,t1-sidecar
             remove t9 t9-app",
        );
    }

    #[test]
    fn a_task_that_ran_here_but_left_no_container_was_lost_with_the_node() {
        check(
            "desired t1 RUNNING ACTIVATING
             desired t2 RUNNING PENDING",
            r#"ended t1 NodeLost reason="the task's containers vanished while the agent was down" event="containers vanished while the agent was down"
               start t2"#,
        );
    }

    #[test]
    fn an_unreadable_assignment_fails_to_start_and_says_why() {
        check(
            "unreadable t1 RUNNING PENDING unknown field condition",
            r#"ended t1 TaskFailedToStart reason="this node's agent cannot run the task's definition: unknown field condition" event="-""#,
        );
        // It is refused, so its found containers are not adopted (nor removed).
        check(
            "unreadable t1 RUNNING PENDING bad
             found t1 app running",
            r#"ended t1 TaskFailedToStart reason="this node's agent cannot run the task's definition: bad" event="-""#,
        );
        // Lost with the node comes first; stopped before it started needs no definition.
        check(
            "unreadable t1 RUNNING RUNNING bad
             unreadable t2 STOPPED ? bad",
            r#"ended t1 NodeLost reason="the task's containers vanished while the agent was down" event="containers vanished while the agent was down"
               ended t2 - reason="-" event="-""#,
        );
    }

    #[test]
    fn an_unreadable_assignment_of_a_known_task_is_treated_by_its_desired_status() {
        check(
            "unreadable t1 RUNNING RUNNING bad
             unreadable t2 STOPPED RUNNING bad
             local t1 active
             local t2 active",
            "stop t2",
        );
    }

    #[test]
    fn an_unreadable_desired_status_is_ignored_but_keeps_the_task() {
        check(
            "unreadable t1 ? RUNNING desiredStatus: unknown value 7
             local t1 active
             found t1 app running",
            "ignore t1: desiredStatus: unknown value 7
             remove t1 t1-app",
        );
    }

    #[test]
    fn a_task_listed_twice_is_planned_once() {
        check(
            "desired t1 RUNNING PENDING
             desired t1 RUNNING PENDING
             desired t2 STOPPED PENDING
             desired t2 STOPPED PENDING",
            r#"start t1
               ended t2 - reason="-" event="-"
               stop t2"#,
        );
    }

    #[test]
    fn a_set_in_effect_only_repeats_stops() {
        check(
            "desired t1 RUNNING RUNNING
             desired t2 STOPPED STOPPED
             local t1 active
             local t2 finished",
            "stop t2",
        );
    }
}
