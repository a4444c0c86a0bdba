//! `berth events [--watch]`: the events of tasks, services and nodes, from the server's `Watch`
//! stream (a server-side stream, not polling).

use std::collections::{BTreeSet, HashMap};

use berth_model::{Event, Task, TaskStatus};
use berth_proto::v1 as pb;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::output::Format;
use crate::{status_error, Client, GlobalArgs};

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Line {
    #[serde(serialize_with = "rfc3339")]
    at: u64,
    kind: String,
    name: String,
    message: String,
}

/// What the watcher remembers of each object, to print only what is new.
#[derive(Default)]
struct Seen {
    events: BTreeSet<(u64, String)>,
    status: Option<TaskStatus>,
}

/// The object's events and (for tasks) status, converted from the wire.
fn contents(e: &pb::WatchEvent) -> Option<(Vec<Event>, Option<TaskStatus>)> {
    let events =
        |list: &[pb::Event]| -> Vec<Event> { list.iter().cloned().map(Into::into).collect() };
    match e.object.as_ref()? {
        pb::watch_event::Object::Task(t) => {
            let task: Task = t.clone().try_into().ok()?;
            Some((
                task.events.iter().cloned().collect(),
                Some(task.last_status),
            ))
        }
        pb::watch_event::Object::Service(s) => Some((events(&s.events), None)),
        pb::watch_event::Object::Node(n) => Some((events(&n.events), None)),
        pb::watch_event::Object::TaskDefinition(_) => None,
    }
}

fn rfc3339<S: serde::Serializer>(at: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&berth_model::format_timestamp(*at))
}

fn print(format: Format, line: &Line) -> anyhow::Result<()> {
    match format {
        Format::Csv => return Err(crate::output::csv_only()),
        Format::Json => println!("{}", serde_json::to_string(line)?),
        Format::Yaml => print!("---\n{}", serde_yaml_ng::to_string(line)?),
        Format::Table | Format::Wide => println!(
            "{}  {}/{}  {}",
            berth_model::format_timestamp(line.at),
            line.kind,
            line.name,
            line.message
        ),
    }
    Ok(())
}

/// Prints the latest `recent` events, then (with `watch`) every new one as it happens.
pub async fn run(
    global: &GlobalArgs,
    watch: bool,
    kinds: Vec<String>,
    recent: usize,
) -> anyhow::Result<()> {
    let req = pb::WatchRequest {
        namespace: global.namespace.clone(),
        kinds,
        from_revision: 0,
    };
    let mut stream = Client::new(global)?
        .request(req, |mut c, req| async move { c.watch(req).await })
        .await?;
    let mut seen: HashMap<(String, String), Seen> = HashMap::new();
    let mut backlog: Vec<Line> = Vec::new();
    let mut synced = false;
    while let Some(e) = stream.next().await {
        let e = e.map_err(status_error)?;
        let kind =
            pb::watch_event::Type::try_from(e.r#type).unwrap_or(pb::watch_event::Type::Unspecified);
        let key = (e.kind.clone(), e.name.clone());
        match kind {
            pb::watch_event::Type::Synced => {
                backlog.sort_by(|a, b| (a.at, &a.kind, &a.name).cmp(&(b.at, &b.kind, &b.name)));
                let skip = backlog.len().saturating_sub(recent);
                for line in &backlog[skip..] {
                    print(global.output, line)?;
                }
                backlog.clear();
                synced = true;
                if !watch {
                    return Ok(());
                }
            }
            pb::watch_event::Type::Deleted => {
                seen.remove(&key);
                if synced {
                    let line = Line {
                        at: crate::output::now_ms(),
                        kind: e.kind.clone(),
                        name: e.name.clone(),
                        message: "deleted".into(),
                    };
                    print(global.output, &line)?;
                }
            }
            pb::watch_event::Type::Sync | pb::watch_event::Type::Put => {
                let Some((events, status)) = contents(&e) else {
                    continue;
                };
                let entry = seen.entry(key).or_default();
                let mut lines = Vec::new();
                for ev in events {
                    if entry.events.insert((ev.at, ev.message.clone())) {
                        lines.push(Line {
                            at: ev.at,
                            kind: e.kind.clone(),
                            name: e.name.clone(),
                            message: ev.message,
                        });
                    }
                }
                if let Some(status) = status {
                    if synced && entry.status.is_some_and(|old| old != status) {
                        lines.push(Line {
                            at: crate::output::now_ms(),
                            kind: e.kind.clone(),
                            name: e.name.clone(),
                            message: format!(
                                "lastStatus {} -> {status}",
                                entry.status.map_or("-".into(), |s| s.to_string())
                            ),
                        });
                    }
                    entry.status = Some(status);
                }
                if synced {
                    for line in &lines {
                        print(global.output, line)?;
                    }
                } else {
                    backlog.extend(lines);
                }
            }
            pb::watch_event::Type::Unspecified => {}
        }
    }
    anyhow::bail!("the server ended the event stream; run the command again to resume")
}
