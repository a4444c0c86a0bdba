//! Tasks: run, stop, list and describe them; exec and logs are proxied to the task's node.

use berth_model::{ContainerOverride, StopCode, Task};
use berth_proto::v1 as pb;
use berth_proto::v1::agent_api_client::AgentApiClient;
use berth_state::{Command, CommandResult};
use tonic::{Response, Status};

use berth_model::Permission;

use super::{scoped, selector, Answer, BerthService, LogStream, MAX_RUN_COUNT};
use crate::auth::Caller;
use crate::{now_ms, status};

/// A task ID as the API takes it: a UUID (what `RunTask` gives every task).
fn task_id(id: &str) -> Result<(), Status> {
    if uuid::Uuid::try_parse(id).is_ok() {
        return Ok(());
    }
    let shown: String = id.chars().take(64).collect();
    Err(status::invalid(
        "",
        &berth_model::ValidationError::new(
            "taskId",
            format!(
                "{shown:?} is not a task ID; task IDs are UUIDs (`berth get tasks` lists them)"
            ),
        ),
    ))
}

/// An optional text field of at most `max` characters; empty is none.
fn optional(field: &str, value: String, max: usize) -> Result<Option<String>, Status> {
    if value.chars().count() > max {
        let e =
            berth_model::ValidationError::new(field, format!("must be at most {max} characters"));
        return Err(status::invalid("", &e));
    }
    Ok((!value.is_empty()).then_some(value))
}

/// The most bytes of overrides and labels one RunTask may carry over all its tasks (they go
/// into one Raft entry).
const MAX_RUN_EXTRA_BYTES: usize = 256 * 1024;

/// The most labels a call may add to a task, and their sizes (ECS's limits for tags).
const MAX_LABELS: usize = 50;

fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), Status> {
    let bad = |why: String| {
        Err(status::invalid(
            "",
            &berth_model::ValidationError::new("labels", why),
        ))
    };
    if labels.len() > MAX_LABELS {
        return bad(format!(
            "{} labels; a task takes at most {MAX_LABELS}",
            labels.len()
        ));
    }
    for (key, value) in labels {
        if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
            return bad(format!(
                "{key:?}: a label's key has 1-128 characters and its value at most 256"
            ));
        }
    }
    Ok(())
}

impl BerthService {
    pub(super) async fn run_task(
        &self,
        caller: &Caller,
        req: pb::RunTaskRequest,
    ) -> Answer<pb::RunTaskResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Write)?;
        let count = req.count.max(1);
        if count > MAX_RUN_COUNT {
            return Err(status::bad_request(format!(
                "count {count} is too large; run at most {MAX_RUN_COUNT} tasks per call"
            )));
        }
        let def = self
            .task_definition(&namespace, &req.task_definition, false)
            .await?;
        if def.status == berth_model::TaskDefinitionStatus::Inactive {
            // ECS's rule: a deregistered revision keeps running where it runs, but runs no
            // more tasks.
            let why = self.read(false, |s| s.inactive_revision(&def)).await?;
            return Err(status::precondition(why));
        }
        let overrides: Vec<ContainerOverride> = req.overrides.into_iter().map(Into::into).collect();
        ContainerOverride::validate(&overrides, &def).map_err(|e| status::invalid("", &e))?;
        let started_by = optional("startedBy", req.started_by, 128)?;
        let group = optional("group", req.group, 255)?;
        if group.as_deref().is_some_and(|g| g.starts_with("service:")) {
            return Err(status::bad_request(
                "group: `service:` begins the group of a service's tasks; choose another group",
            ));
        }
        check_labels(&req.labels)?;
        // What each task carries beyond its definition, times the tasks, in one Raft entry.
        let extra = ContainerOverride::size(&overrides)
            + req
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let total = extra.saturating_mul(count as usize);
        if total > MAX_RUN_EXTRA_BYTES {
            return Err(status::bad_request(format!(
                "{count} tasks with {extra} bytes of overrides and labels each make {total} bytes; one call may carry {MAX_RUN_EXTRA_BYTES}: run fewer tasks per call"
            )));
        }
        let client_token = (!req.client_token.is_empty()).then_some(req.client_token);
        // The tasks' IDs and what the request adds: each member makes the tasks from the
        // definition (the entry holds an eighth of the tasks' bytes).
        let command = Command::RunTasks {
            namespace,
            task_definition: def.reference(),
            task_ids: (0..count)
                .map(|_| uuid::Uuid::new_v4().to_string())
                .collect(),
            overrides,
            started_by,
            group,
            labels: req.labels.into_iter().collect(),
            client_token,
            at: now_ms(),
        };
        let tasks = self
            .propose(caller, command, |r| match r {
                CommandResult::Tasks(tasks) => Some(tasks),
                _ => None,
            })
            .await?;
        for t in &tasks {
            tracing::debug!(task_id = %t.task_id, namespace = %t.namespace, "task created");
        }
        Ok(Response::new(pb::RunTaskResponse {
            tasks: tasks.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.task_id))]
    pub(super) async fn stop_task(
        &self,
        caller: &Caller,
        req: pb::StopTaskRequest,
    ) -> Answer<pb::Task> {
        let namespace = scoped(caller, req.namespace, Permission::Write)?;
        task_id(&req.task_id)?;
        if req.reason.len() > berth_model::MAX_REASON_BYTES {
            let e = berth_model::ValidationError::new(
                "reason",
                format!(
                    "{} bytes is too long; a stop reason has at most {} bytes",
                    req.reason.len(),
                    berth_model::MAX_REASON_BYTES
                ),
            );
            return Err(crate::status::invalid("", &e));
        }
        let reason = if req.reason.is_empty() {
            "Task stopped by user".to_owned()
        } else {
            req.reason
        };
        let command = Command::StopTask {
            namespace,
            task_id: req.task_id,
            stop_code: StopCode::UserInitiated,
            reason,
            at: now_ms(),
        };
        let task = self
            .propose(caller, command, |r| match r {
                CommandResult::Task(task) => Some(task),
                _ => None,
            })
            .await?;
        Ok(Response::new((*task).into()))
    }

    pub(super) async fn list_tasks(
        &self,
        caller: &Caller,
        req: pb::ListTasksRequest,
    ) -> Answer<pb::ListTasksResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        let selector = selector(&req.selector)?;
        let after = PageKey::parse(&req.continue_token)?;
        let limit = req.limit as usize;
        // From the tasks as published: a long list holds no lock that the applier waits for.
        let view = self.tasks(req.stale).await?;
        let matching = view
            .tasks_in(&namespace)
            .filter(|t| selector.matches(&t.labels));
        let (page, remaining) = page(matching, after.as_ref(), limit);
        let tasks: Vec<Task> = page.into_iter().cloned().collect();
        let continue_token = match tasks.last() {
            Some(last) if remaining > 0 => PageKey::of(last).token(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks
                .into_iter()
                .map(|t| self.usage.fill(t).into())
                .collect(),
            continue_token,
            remaining: remaining as u64,
        }))
    }

    pub(super) async fn describe_task(
        &self,
        caller: &Caller,
        req: pb::DescribeTaskRequest,
    ) -> Answer<pb::Task> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        task_id(&req.task_id)?;
        // From the tasks as published: a read while others come never waits for an entry
        // being applied.
        let tasks = self.tasks(req.stale).await?;
        let task = tasks
            .task(&namespace, &req.task_id)
            .cloned()
            .ok_or_else(|| {
                let removed = tasks.removed_task(&namespace, &req.task_id).cloned();
                missing(removed, &namespace, &req.task_id)
            })?;
        Ok(Response::new(self.usage.fill(task).into()))
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.task_id))]
    pub(super) async fn exec_task(
        &self,
        caller: &Caller,
        req: pb::ExecTaskRequest,
    ) -> Answer<pb::ExecResult> {
        let namespace = scoped(caller, req.namespace, Permission::Exec)?;
        task_id(&req.task_id)?;
        let subject = format!("task {}", req.task_id);
        // The program only: arguments may hold secrets.
        let program = req.command.first().cloned().unwrap_or_default();
        let result = async {
            let mut agent = self.task_agent(&namespace, &req.task_id).await?;
            agent
                .exec(pb::AgentExecRequest {
                    task_id: req.task_id,
                    container: req.container,
                    command: req.command,
                    timeout_secs: req.timeout_secs,
                })
                .await
        }
        .await;
        let outcome = match &result {
            Ok(r) => format!("done: exit code {}", r.get_ref().exit_code),
            Err(e) => format!("failed: {}", e.message()),
        };
        tracing::info!(target: "berth::audit", caller = %caller.who(), %namespace, %subject, %program, "exec {outcome}");
        result
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.task_id))]
    pub(super) async fn task_logs(
        &self,
        caller: &Caller,
        req: pb::TaskLogsRequest,
    ) -> Answer<LogStream> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        task_id(&req.task_id)?;
        let mut agent = self.task_agent(&namespace, &req.task_id).await?;
        let stream = agent
            .logs(pb::AgentLogsRequest {
                task_id: req.task_id,
                follow: req.follow,
                container: req.container,
                tail: req.tail,
                since: req.since,
                timestamps: req.timestamps,
            })
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    /// A client of the agent on the node a task was placed on, for the calls proxied to it.
    async fn task_agent(
        &self,
        namespace: &str,
        task_id: &str,
    ) -> Result<AgentApiClient<tonic::transport::Channel>, Status> {
        let node = self.task_node(namespace, task_id).await?;
        agent_client(&self.dialer, &node).await
    }

    /// The node a task was placed on.
    async fn task_node(&self, namespace: &str, task_id: &str) -> Result<berth_model::Node, Status> {
        let (task, node, removed) = self
            .read(false, |s| {
                let task = s.task(namespace, task_id).cloned();
                let node = task
                    .as_ref()
                    .and_then(|t| t.node.as_deref())
                    .and_then(|n| s.node(n))
                    .cloned();
                (task, node, s.removed_task(namespace, task_id).cloned())
            })
            .await?;
        let task = task.ok_or_else(|| missing(removed, namespace, task_id))?;
        node.ok_or_else(|| {
            status::precondition(format!(
                "task {} has not been placed on a node yet",
                task.task_id
            ))
        })
    }
}

/// The answer about a task the state does not hold: removed by the retention, when the state
/// still remembers that, or not found.
fn missing(removed: Option<berth_model::RemovedTask>, namespace: &str, task_id: &str) -> Status {
    match removed {
        Some(r) => status::not_found(format!(
            "task {task_id} was removed by retention at {}, with its events and logs: it stopped at {}, and stopped tasks stay visible for the servers' --task-retention",
            berth_model::format_timestamp(r.removed_at),
            berth_model::format_timestamp(r.stopped_at),
        )),
        None => status::not_found(format!("task {task_id} not found in namespace {namespace}")),
    }
}

/// A client of the agent API of `node`.
async fn agent_client(
    dialer: &berth_tls::net::Dialer,
    node: &berth_model::Node,
) -> Result<AgentApiClient<tonic::transport::Channel>, Status> {
    dialer
        .connect(&node.address)
        .await
        .map(AgentApiClient::new)
        .map_err(|e| {
            status::unreachable(format!(
                "node {} at {} is unreachable: {}",
                node.name,
                node.address,
                berth_store::error_chain(&e)
            ))
        })
}

/// A page of `tasks`, newest first: those after `after` (the key the page before ended with),
/// at most `limit` of them (0: every one); and how many come after the page.
fn page<'a>(
    tasks: impl Iterator<Item = &'a Task>,
    after: Option<&PageKey>,
    limit: usize,
) -> (Vec<&'a Task>, usize) {
    let mut matching: Vec<&Task> = tasks
        .filter(|t| after.is_none_or(|k| k.comes_before(t)))
        .collect();
    let newest_first =
        |a: &&Task, b: &&Task| (b.created_at, &b.task_id).cmp(&(a.created_at, &a.task_id));
    let taken = if limit == 0 {
        matching.len()
    } else {
        limit.min(matching.len())
    };
    // A page of a long list: the page's tasks picked out in linear time, only they sorted.
    if taken > 0 && taken < matching.len() {
        matching.select_nth_unstable_by(taken - 1, newest_first);
    }
    let remaining = matching.len() - taken;
    matching.truncate(taken);
    matching.sort_unstable_by(newest_first);
    (matching, remaining)
}

/// Where a page of tasks ends, newest first: its last task's creation time and ID. The token
/// a client gets back is this key, so a page goes on after the task it ended with even when
/// tasks were created or removed in between (no offset that shifts).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageKey {
    created_at: u64,
    task_id: String,
}

impl PageKey {
    const PREFIX: &'static str = "t1.";

    fn of(task: &Task) -> Self {
        Self {
            created_at: task.created_at,
            task_id: task.task_id.clone(),
        }
    }

    fn token(&self) -> String {
        format!("{}{}.{}", Self::PREFIX, self.created_at, self.task_id)
    }

    /// The key of a continue token; `None` for none.
    fn parse(token: &str) -> Result<Option<Self>, Status> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            let message = format!(
                "continue token {token:?} is not one this API gave: pass the continue token of \
                 the page before as it was, or none for the first page"
            );
            status::invalid(
                "",
                &berth_model::ValidationError::new("continueToken", message),
            )
        };
        let rest = token.strip_prefix(Self::PREFIX).ok_or_else(invalid)?;
        let (created_at, task_id) = rest.split_once('.').ok_or_else(invalid)?;
        let created_at = created_at.parse().map_err(|_| invalid())?;
        if task_id.is_empty() {
            return Err(invalid());
        }
        Ok(Some(Self {
            created_at,
            task_id: task_id.to_owned(),
        }))
    }

    /// Whether `task` comes after this key in the newest-first order: older, or as old with
    /// a lower ID.
    fn comes_before(&self, task: &Task) -> bool {
        (task.created_at, task.task_id.as_str()) < (self.created_at, self.task_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{ContainerDefinition, TaskDefinitionSpec};
    use berth_state::State;

    /// Tasks `t0..tN` created at the times given (some at the same millisecond).
    fn tasks(created: &[u64]) -> Vec<Task> {
        let mut s = State::default();
        s.apply(Command::RegisterTaskDefinition {
            namespace: "default".into(),
            spec: TaskDefinitionSpec::new(
                "web",
                256,
                128,
                vec![ContainerDefinition::new("app", "registry/web:1")],
            ),
            reuse_identical: false,
            at: 1,
        });
        let def = s
            .task_definition("default", &"web:1".parse().expect("ref"))
            .expect("web:1");
        created
            .iter()
            .enumerate()
            .map(|(i, at)| Task::pending(format!("t{i}"), "default", def, *at))
            .collect()
    }

    fn ids(page: &[&Task]) -> Vec<String> {
        page.iter().map(|t| t.task_id.clone()).collect()
    }

    #[test]
    fn pages_list_every_task_once_newest_first_and_go_on_after_their_last_task() {
        let all = tasks(&[10, 30, 20, 30, 40]);
        let (whole, remaining) = page(all.iter(), None, 0);
        assert_eq!(ids(&whole), ["t4", "t3", "t1", "t2", "t0"], "ties by ID");
        assert_eq!(remaining, 0);

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (p, remaining) = page(all.iter(), after.as_ref(), 2);
            seen.extend(ids(&p));
            if remaining == 0 {
                break;
            }
            // The token round-trips through its text, as a client sends it back.
            let token = PageKey::of(p.last().expect("a full page")).token();
            after = PageKey::parse(&token).expect("parses");
        }
        assert_eq!(seen, ids(&whole));

        // A task created between two pages does not shift the next one.
        let (first, _) = page(all.iter(), None, 2);
        let key = PageKey::of(first[1]);
        let mut more = all.clone();
        more.extend(tasks(&[50]).into_iter().map(|mut t| {
            t.task_id = "t9".into();
            t
        }));
        let (second, remaining) = page(more.iter(), Some(&key), 2);
        assert_eq!(ids(&second), ["t1", "t2"]);
        assert_eq!(remaining, 1);
    }

    #[test]
    fn a_continue_token_this_api_did_not_give_is_refused_with_what_to_do() {
        assert_eq!(PageKey::parse("").expect("none"), None);
        for bad in ["abc", "t1.", "t1.x.t3", "t1.12", "t1.12."] {
            let e = PageKey::parse(bad).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("continue token"), "{}", e.message());
        }
    }
}
