//! The client subcommands: `run` hands each to the module that carries it out; `get`,
//! `describe`, `scale`, `delete KIND NAME` and node status changes and removal are here.

use std::time::Duration;

use anyhow::bail;
use berth_model::{Node, NodeStatus};
use berth_proto::v1 as pb;

use crate::args::{Command, NodeCommand, ServiceCommand};
use crate::logs::LogOptions;
use crate::output::Format;
use crate::render::{print_nodes, print_task_details, print_taskdefs, print_tasks};
use crate::{manifests, services, taskdefs, tasks, Client, GlobalArgs};

pub async fn run(global: GlobalArgs, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(args) => crate::run::run_task(&global, args).await,
        Command::Apply {
            files,
            dry_run,
            wait,
            timeout,
        } => manifests::apply(&global, &files, dry_run, wait.then_some(timeout)).await,
        Command::Scale {
            service,
            count,
            wait,
            timeout,
        } => scale(&global, &service, count, wait.then_some(timeout)).await,
        Command::Usage(args) => crate::usage::run(&global, args).await.map(|()| 0),
        Command::Schema => {
            print!("{}", berth_manifest::json_schema());
            Ok(0)
        }
        Command::Diff { files } => {
            crate::diff::run(&global, manifests::read_documents(&files)?).await
        }
        Command::Delete { files, kind, name } => match (kind, name) {
            (Some(kind), Some(name)) => delete(&global, &kind, &name).await,
            _ => manifests::delete(&global, &files).await,
        }
        .map(|()| 0),
        Command::Events {
            watch,
            kinds,
            recent,
        } => crate::events::run(&global, watch, kinds, recent)
            .await
            .map(|()| 0),
        Command::Service(ServiceCommand::Promote { name }) => {
            services::promote(&mut Client::new(&global)?, &global, &name).await?;
            Ok(0)
        }
        Command::Service(ServiceCommand::Redeploy { name }) => {
            services::redeploy(&mut Client::new(&global)?, &global, &name).await?;
            Ok(0)
        }
        Command::Secret(cmd) => crate::secrets::run(&global, cmd).await.map(|()| 0),
        Command::Get {
            kind,
            name,
            limit,
            continue_token,
        } => {
            let page = tasks::Page {
                limit: limit.unwrap_or(0),
                continue_token: continue_token.unwrap_or_default(),
            };
            get(&global, &kind, name.as_deref(), page).await.map(|()| 0)
        }
        Command::Describe { kind, name } => describe(&global, &kind, &name).await.map(|()| 0),
        Command::Logs {
            task,
            follow,
            container,
            tail,
            since,
            timestamps,
        } => {
            let opts = LogOptions::from_flags(follow, container, tail, since, timestamps)?;
            crate::logs::print(&global, &task, opts).await.map(|()| 0)
        }
        Command::Exec {
            task,
            container,
            timeout,
            command,
        } => tasks::exec(&global, task, container, timeout, command).await,
        Command::Stop { task, reason } => {
            let mut client = Client::new(&global)?;
            let namespace = &global.namespace;
            let task =
                tasks::stop(&mut client, namespace, &task, reason.unwrap_or_default()).await?;
            print_tasks(global.output, &[task], true)?;
            Ok(0)
        }
        Command::Node(cmd) => set_node_status(&global, cmd).await.map(|()| 0),
        Command::Token(cmd) => crate::tokens::run(&global, cmd).await.map(|()| 0),
        Command::Namespace(cmd) => crate::namespaces::run(&global, cmd).await.map(|()| 0),
        Command::Cluster(cmd) => crate::cluster::run(&global, cmd).await.map(|()| 0),
    }
}

/// `berth scale`; with `wait`, 1 when the service did not get there.
async fn scale(
    global: &GlobalArgs,
    service: &str,
    count: u32,
    wait: Option<Duration>,
) -> anyhow::Result<i32> {
    let mut client = Client::new(global)?;
    let s = services::scale(&mut client, global, service, count).await?;
    println!("service/{} scaled to {}", s.name, s.desired_count);
    if let Some(timeout) = wait {
        if !services::wait(&mut client, global, service, None, timeout).await? {
            return Ok(1);
        }
    }
    Ok(0)
}

/// `berth delete KIND NAME`: only services can be deleted by name.
async fn delete(global: &GlobalArgs, kind: &str, name: &str) -> anyhow::Result<()> {
    match kind {
        "service" | "services" | "svc" => {
            let mut client = Client::new(global)?;
            services::delete(&mut client, &global.namespace, name).await
        }
        "taskdef" | "taskdefs" | "taskdefinition" | "taskdefinitions" => {
            let mut client = Client::new(global)?;
            taskdefs::deregister(&mut client, &global.namespace, name).await
        }
        "secret" | "secrets" => {
            let mut client = Client::new(global)?;
            crate::secrets::delete(&mut client, global, name).await
        }
        "task" | "tasks" => bail!("use `berth stop {name}` to stop a task"),
        other => bail!(
            "cannot delete kind {other:?}; use service NAME, secret NAME or taskdef FAMILY[:REV]"
        ),
    }
}

/// `berth node drain|activate|remove NAME`.
async fn set_node_status(global: &GlobalArgs, command: NodeCommand) -> anyhow::Result<()> {
    let (name, status) = match command {
        NodeCommand::Drain { name } => (name, NodeStatus::Draining),
        NodeCommand::Activate { name } => (name, NodeStatus::Active),
        NodeCommand::Remove { name } => return remove_node(global, name).await,
    };
    let req = pb::UpdateNodeStatusRequest {
        name,
        status: berth_proto::node_status_to_wire(status),
    };
    let node = Client::new(global)?
        .request(
            req,
            |mut c, req| async move { c.update_node_status(req).await },
        )
        .await?;
    print_nodes(global.output, &[node.try_into()?], true)
}

/// `berth node remove NAME`: the node leaves the cluster and its certificate is revoked.
async fn remove_node(global: &GlobalArgs, name: String) -> anyhow::Result<()> {
    let req = pb::RemoveNodeRequest { name: name.clone() };
    Client::new(global)?
        .request(req, |mut c, req| async move { c.remove_node(req).await })
        .await?;
    println!("node {name} removed; its certificate is revoked");
    Ok(())
}

/// The nodes whose attributes match `--selector`.
async fn list_nodes(client: &mut Client, global: &GlobalArgs) -> anyhow::Result<Vec<Node>> {
    let req = pb::ListNodesRequest {
        stale: global.stale,
        selector: global.selector.clone().unwrap_or_default(),
    };
    let nodes = client
        .request(req, |mut c, req| async move { c.list_nodes(req).await })
        .await?;
    Ok(berth_proto::try_all(nodes.nodes)?)
}

async fn get(
    global: &GlobalArgs,
    kind: &str,
    name: Option<&str>,
    page: tasks::Page,
) -> anyhow::Result<()> {
    let paged = page.limit > 0 || !page.continue_token.is_empty();
    if paged && !(matches!(kind, "tasks" | "task") && name.is_none()) {
        bail!(
            "--limit and --continue page the list of tasks (`berth get tasks`); other kinds \
             are listed whole"
        );
    }
    let mut client = Client::new(global)?;
    let ns = &global.namespace;
    let selector = global.selector.clone().unwrap_or_default();
    match (kind, name) {
        ("tasks" | "task", None) => {
            let listed = tasks::list_page(&mut client, ns, global.stale, &selector, &page).await?;
            print_tasks(global.output, &listed.tasks, false)?;
            if !listed.continue_token.is_empty() {
                // On stderr: -o json and -o yaml stay one document on stdout.
                eprintln!(
                    "{} more; next page: {}",
                    listed.remaining,
                    tasks::next_page_command(global, page.limit, &listed.continue_token)
                );
            }
            Ok(())
        }
        ("tasks" | "task", Some(id)) => {
            let task = tasks::describe(&mut client, global, id).await?;
            print_tasks(global.output, &[task], true)
        }
        ("taskdefs" | "taskdef" | "taskdefinitions" | "taskdefinition", None) => {
            let defs = taskdefs::list(&mut client, ns, "", global.stale, &selector).await?;
            print_taskdefs(global.output, &defs, false)
        }
        ("taskdefs" | "taskdef" | "taskdefinitions" | "taskdefinition", Some(r)) => {
            let def = taskdefs::describe(&mut client, ns, r, global.stale).await?;
            print_taskdefs(global.output, &[def], true)
        }
        ("services" | "service" | "svc", None) => {
            let list = services::list(&mut client, global).await?;
            services::print(global.output, &list, false)
        }
        ("services" | "service" | "svc", Some(name)) => {
            let s = services::fetch(&mut client, global, name).await?;
            services::print(global.output, &[s], true)
        }
        ("secrets" | "secret", name) => crate::secrets::get(&mut client, global, name).await,
        ("endpoints" | "endpoint" | "ep", name) => {
            let list = crate::endpoints::get(&mut client, global, name).await?;
            print!(
                "{}",
                crate::endpoints::render(global.output, &list, name.is_some())?
            );
            Ok(())
        }
        ("nodes" | "node", name) => {
            let mut nodes = list_nodes(&mut client, global).await?;
            if let Some(name) = name {
                nodes.retain(|n| n.name == name);
                if nodes.is_empty() {
                    bail!("node {name} not found");
                }
            }
            print_nodes(global.output, &nodes, name.is_some())
        }
        (other, _) => bail!(
            "unknown kind {other:?}; use tasks, task ID, taskdefs, taskdef FAMILY[:REV], services, service NAME, endpoints [SERVICE], nodes, secrets or secret NAME"
        ),
    }
}

async fn describe(global: &GlobalArgs, kind: &str, name: &str) -> anyhow::Result<()> {
    if global.output != Format::Table && global.output != Format::Wide {
        return get(global, kind, Some(name), tasks::Page::default()).await;
    }
    let mut client = Client::new(global)?;
    match kind {
        "task" | "tasks" => {
            let t = tasks::describe(&mut client, global, name).await?;
            print_task_details(&t);
            Ok(())
        }
        "service" | "services" | "svc" => {
            let s = services::fetch(&mut client, global, name).await?;
            services::describe(&s);
            Ok(())
        }
        _ => get(global, kind, Some(name), tasks::Page::default()).await,
    }
}
