//! Tasks: listing, describing, stopping, running commands in them, and `kind: Task` manifests
//! (one-off tasks run by `apply`, idempotent for an hour through a client token derived from the
//! document, and stopped by `delete -f`).

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::time::Duration;

use berth_model::{Task, TaskDefinitionRef, TaskDefinitionSpec, TaskStatus};
use berth_proto::v1 as pb;

use crate::{Client, GlobalArgs};

/// Runs the document's tasks. Printed: one line per task.
pub async fn apply(
    client: &mut Client,
    namespace: String,
    name: &str,
    task_definition: TaskDefinitionRef,
    template: Option<TaskDefinitionSpec>,
    count: u32,
    dry_run: bool,
) -> anyhow::Result<()> {
    if dry_run {
        println!("task/{name} valid (dry run): would run {count} of {task_definition}");
        return Ok(());
    }
    let reference = match template {
        Some(spec) => {
            let (def, _) = crate::taskdefs::register(client, &namespace, spec).await?;
            format!("{}:{}", def.family, def.revision)
        }
        None => task_definition.to_string(),
    };
    // The same document (same revision, same count) applied again within the token's hour
    // answers the tasks it ran then instead of running more.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&namespace, name, &reference, count).hash(&mut h);
    let client_token = format!("manifest-{name}-{:016x}", h.finish());
    let req = pb::RunTaskRequest {
        namespace,
        task_definition: reference.clone(),
        count,
        client_token,
        ..Default::default()
    };
    let sent_at = crate::output::now_ms();
    let r = client
        .request(req, |mut c, req| async move { c.run_task(req).await })
        .await?;
    for t in r.tasks {
        // Allow for clocks a little apart.
        let earlier = t.created_at + 5_000 < sent_at;
        let verb = if earlier {
            "unchanged (ran before)"
        } else {
            "created"
        };
        println!("task/{} {verb} ({reference})", t.task_id);
    }
    Ok(())
}

/// The tasks of `namespace` that match `selector` (every task when empty), newest first.
pub async fn list(
    client: &mut Client,
    namespace: &str,
    stale: bool,
    selector: &str,
) -> anyhow::Result<Vec<Task>> {
    let whole = Page::default();
    Ok(list_page(client, namespace, stale, selector, &whole)
        .await?
        .tasks)
}

/// Which page of a task list to ask for.
#[derive(Debug, Default)]
pub struct Page {
    /// At most this many tasks; 0: every one.
    pub limit: u32,
    /// The token the page before ended with; empty for the first page.
    pub continue_token: String,
}

/// A page of tasks and where the next one starts.
pub struct Listed {
    pub tasks: Vec<Task>,
    /// Empty when no task follows.
    pub continue_token: String,
    pub remaining: u64,
}

/// The command that prints the page after one that ended with `token`: the same namespace,
/// selector, staleness and output as this one (the token marks where the list stopped, not
/// what it lists).
pub fn next_page_command(global: &GlobalArgs, limit: u32, token: &str) -> String {
    let mut command = String::from("berth get tasks");
    if global.namespace != berth_model::DEFAULT_NAMESPACE {
        command += &format!(" -n {}", shell_word(&global.namespace));
    }
    if let Some(selector) = global.selector.as_deref().filter(|s| !s.is_empty()) {
        command += &format!(" -l {}", shell_word(selector));
    }
    if global.stale {
        command += " --stale";
    }
    if global.output != crate::output::Format::Table {
        let format = clap::ValueEnum::to_possible_value(&global.output)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        command += &format!(" -o {format}");
    }
    if limit > 0 {
        command += &format!(" --limit {limit}");
    }
    command + &format!(" --continue {}", shell_word(token))
}

/// `word` as one word of a POSIX shell: quoted when it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.,=:/".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// One page of the tasks of `namespace` that match `selector`, newest first.
pub async fn list_page(
    client: &mut Client,
    namespace: &str,
    stale: bool,
    selector: &str,
    page: &Page,
) -> anyhow::Result<Listed> {
    let req = pb::ListTasksRequest {
        namespace: namespace.to_owned(),
        stale,
        selector: selector.to_owned(),
        limit: page.limit,
        continue_token: page.continue_token.clone(),
    };
    let list = client
        .request(req, |mut c, req| async move { c.list_tasks(req).await })
        .await?;
    Ok(Listed {
        tasks: berth_proto::try_all(list.tasks)?,
        continue_token: list.continue_token,
        remaining: list.remaining,
    })
}

/// One task of the global namespace.
pub async fn describe(
    client: &mut Client,
    global: &GlobalArgs,
    task_id: &str,
) -> anyhow::Result<Task> {
    let req = pb::DescribeTaskRequest {
        namespace: global.namespace.clone(),
        task_id: task_id.to_owned(),
        stale: global.stale,
    };
    let task = client
        .request(req, |mut c, req| async move { c.describe_task(req).await })
        .await?;
    Ok(task.try_into()?)
}

/// Asks the servers to stop a task, `reason` recorded as its stopped reason; answers the task.
pub async fn stop(
    client: &mut Client,
    namespace: &str,
    task_id: &str,
    reason: String,
) -> anyhow::Result<Task> {
    let req = pb::StopTaskRequest {
        namespace: namespace.to_owned(),
        task_id: task_id.to_owned(),
        reason,
    };
    let task = client
        .request(req, |mut c, req| async move { c.stop_task(req).await })
        .await?;
    Ok(task.try_into()?)
}

/// Stops the document's tasks that still run: those of its family.
pub async fn delete(
    client: &mut Client,
    namespace: &str,
    name: &str,
    family: &str,
) -> anyhow::Result<()> {
    let mut stopped = 0;
    for t in list(client, namespace, false, "").await? {
        if t.task_definition.family != family
            || t.last_status == TaskStatus::Stopped
            || t.group.is_some()
        {
            continue;
        }
        let reason = format!("deleted with its manifest (task/{name})");
        stop(client, namespace, &t.task_id, reason).await?;
        stopped += 1;
    }
    println!("task/{name} deleted ({stopped} running tasks stopping)");
    Ok(())
}

/// `berth exec`: runs `command` in a container of the task, copies its output; answers its exit
/// code.
pub async fn exec(
    global: &GlobalArgs,
    task: String,
    container: Option<String>,
    timeout: Duration,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let req = pb::ExecTaskRequest {
        namespace: global.namespace.clone(),
        task_id: task,
        container: container.unwrap_or_default(),
        command,
        timeout_secs: u32::try_from(timeout.as_secs().max(1)).unwrap_or(u32::MAX),
    };
    let out = Client::new(global)?
        .request(req, |mut c, req| async move { c.exec_task(req).await })
        .await?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    Ok(out.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        global: GlobalArgs,
    }

    fn global(args: &[&str]) -> GlobalArgs {
        Cli::parse_from(std::iter::once("berth").chain(args.iter().copied())).global
    }

    #[test]
    fn the_next_page_command_lists_what_this_one_did() {
        assert_eq!(
            next_page_command(&global(&[]), 50, "t1.17.abc"),
            "berth get tasks --limit 50 --continue t1.17.abc"
        );
        assert_eq!(
            next_page_command(
                &global(&["-n", "team-a", "-l", "app!=web", "--stale", "-o", "json"]),
                10,
                "t1.17.abc"
            ),
            "berth get tasks -n team-a -l 'app!=web' --stale -o json --limit 10 --continue t1.17.abc"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
