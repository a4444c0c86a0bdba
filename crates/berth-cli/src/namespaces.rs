//! `berth namespace create|update|get|delete`: namespaces, their quotas and what their tasks use.

use anyhow::bail;
use berth_model::{format_timestamp, Namespace, Quota, Timestamp, Usage};
use berth_proto::v1 as pb;
use serde::Serialize;

use crate::args::NamespaceCommand;
use crate::output::{age, now_ms, render_list, render_table, Format};
use crate::{Client, GlobalArgs};

pub async fn run(global: &GlobalArgs, command: NamespaceCommand) -> anyhow::Result<()> {
    let mut client = Client::new(global)?;
    match command {
        NamespaceCommand::Create { name, quota } => {
            let quota = quota.apply(Quota::default());
            let req = pb::CreateNamespaceRequest {
                name,
                quota: Some(quota.into()),
            };
            let ns = client
                .request(
                    req,
                    |mut c, req| async move { c.create_namespace(req).await },
                )
                .await?;
            let (ns, _): (Namespace, Usage) = ns.try_into()?;
            println!("namespace/{} created ({})", ns.name, ns.quota);
        }
        NamespaceCommand::Update { name, quota: flags } => {
            // The request carries the whole quota: start from the current one so that limits
            // not named on the command line stay as they are.
            let (current, _) = fetch(&mut client, &name).await?;
            let quota = flags.apply(current.quota);
            let req = pb::UpdateNamespaceRequest {
                name,
                quota: Some(quota.into()),
            };
            let ns = client
                .request(
                    req,
                    |mut c, req| async move { c.update_namespace(req).await },
                )
                .await?;
            let (ns, _): (Namespace, Usage) = ns.try_into()?;
            println!("namespace/{} updated ({})", ns.name, ns.quota);
        }
        NamespaceCommand::Get { name: None } => {
            let list = list(&mut client).await?;
            print!(
                "{}",
                render_namespaces(global.output, &list, false, now_ms())?
            );
        }
        NamespaceCommand::Get { name: Some(name) } => {
            let ns = fetch(&mut client, &name).await?;
            print!(
                "{}",
                render_namespaces(global.output, &[ns], true, now_ms())?
            );
        }
        NamespaceCommand::Delete { name } => {
            let req = pb::DeleteNamespaceRequest { name };
            let ns = client
                .request(
                    req,
                    |mut c, req| async move { c.delete_namespace(req).await },
                )
                .await?;
            println!("namespace/{} deleted", ns.name);
        }
    }
    Ok(())
}

/// Every namespace with its usage, by name.
async fn list(client: &mut Client) -> anyhow::Result<Vec<(Namespace, Usage)>> {
    let answer = client
        .call(|mut c| async move { c.list_namespaces(pb::ListNamespacesRequest {}).await })
        .await?;
    let mut list = answer
        .namespaces
        .into_iter()
        .map(<(Namespace, Usage)>::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    list.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(list)
}

async fn fetch(client: &mut Client, name: &str) -> anyhow::Result<(Namespace, Usage)> {
    match list(client)
        .await?
        .into_iter()
        .find(|(ns, _)| ns.name == name)
    {
        Some(ns) => Ok(ns),
        None => bail!("namespace {name} not found; create it with `berth namespace create {name}`"),
    }
}

/// A namespace as JSON and YAML show it: quota (limits that are set), usage, creation time.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NamespaceJson<'a> {
    name: &'a str,
    quota: Quota,
    usage: Usage,
    /// Null for the implicit `default` namespace.
    created_at: Option<String>,
}

/// `used/limit`, `-` for no limit.
fn used_of<T: std::fmt::Display>(used: impl std::fmt::Display, limit: Option<T>) -> String {
    match limit {
        Some(limit) => format!("{used}/{limit}"),
        None => format!("{used}/-"),
    }
}

pub fn render_namespaces(
    format: Format,
    namespaces: &[(Namespace, Usage)],
    single: bool,
    now: Timestamp,
) -> anyhow::Result<String> {
    let json: Vec<NamespaceJson> = namespaces
        .iter()
        .map(|(ns, usage)| NamespaceJson {
            name: &ns.name,
            quota: ns.quota,
            usage: *usage,
            created_at: (ns.created_at != 0).then(|| format_timestamp(ns.created_at)),
        })
        .collect();
    render_list(format, &json, single, |_| {
        let rows: Vec<Vec<String>> = namespaces
            .iter()
            .map(|(ns, usage)| {
                vec![
                    ns.name.clone(),
                    used_of(usage.cpu, ns.quota.cpu),
                    format!("{} MiB", used_of(usage.memory, ns.quota.memory)),
                    used_of(usage.tasks, ns.quota.tasks),
                    // The implicit `default` namespace has no creation time.
                    if ns.created_at == 0 {
                        "-".to_owned()
                    } else {
                        age(ns.created_at, now)
                    },
                ]
            })
            .collect();
        render_table(&["NAME", "CPU", "MEMORY", "TASKS", "AGE"], &rows)
    })
}
