//! `berth cluster ca`: the cluster CA's status, the CAs to trust, and rotating it. A rotation
//! runs on the servers by itself; `rotate` starts it, keeps the credentials file in use
//! trusting what the servers present (both CAs while it runs, the new one after), and waits
//! until it finishes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_model::format_timestamp;
use berth_proto::v1 as pb;
use serde::Serialize;

use crate::args::CaCommand;
use crate::output::{render_structured, Format};
use crate::{Client, GlobalArgs};

/// `berth cluster ca status -o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson<'a> {
    generation: u64,
    fingerprint: &'a str,
    rotating: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_fingerprint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    servers_pending: &'a [u64],
    nodes_pending: &'a [String],
}

fn timestamp(ms: u64) -> Option<String> {
    (ms > 0).then(|| format_timestamp(ms))
}

/// The status as text or JSON/YAML.
pub fn render_status(format: Format, s: &pb::CaStatus) -> anyhow::Result<String> {
    if matches!(format, Format::Json | Format::Yaml) {
        return render_structured(
            format,
            &StatusJson {
                generation: s.generation,
                fingerprint: &s.fingerprint,
                rotating: s.rotating,
                previous_fingerprint: (s.generation > 0).then_some(&s.previous_fingerprint[..]),
                started_at: timestamp(s.started_at),
                finished_at: timestamp(s.finished_at),
                servers_pending: &s.servers_pending,
                nodes_pending: &s.nodes_pending,
            },
        );
    }
    let mut out = format!(
        "CA generation {}, fingerprint {}\n",
        s.generation, s.fingerprint
    );
    if s.rotating {
        out += &format!(
            "rotating since {} (from {}): {}\n",
            timestamp(s.started_at).unwrap_or_default(),
            s.previous_fingerprint,
            waiting_for(s)
        );
    } else if let Some(at) = timestamp(s.finished_at) {
        out += &format!("last rotated {at}\n");
    }
    Ok(out)
}

/// What a running rotation waits for, in words.
fn waiting_for(s: &pb::CaStatus) -> String {
    let mut parts = Vec::new();
    if !s.servers_pending.is_empty() {
        let ids: Vec<String> = s.servers_pending.iter().map(u64::to_string).collect();
        parts.push(format!("servers {}", ids.join(", ")));
    }
    if !s.nodes_pending.is_empty() {
        parts.push(format!("nodes {}", s.nodes_pending.join(", ")));
    }
    if parts.is_empty() {
        "about to finish".to_owned()
    } else {
        format!("waiting for {} to move to the new CA", parts.join(" and "))
    }
}

/// Replaces the `ca` of the credentials file at `path`, keeping everything else.
fn update_credentials(path: &Path, trust: &str) -> anyhow::Result<()> {
    berth_tls::dir::set_credentials_ca(path, trust)
        .with_context(|| format!("update the CA in {}", path.display()))
}

async fn status(client: &mut Client) -> anyhow::Result<pb::CaStatus> {
    client
        .call(|mut c| async move { c.get_ca(pb::GetCaRequest {}).await })
        .await
}

pub async fn run(
    global: &GlobalArgs,
    mut client: Client,
    command: CaCommand,
) -> anyhow::Result<()> {
    match command {
        CaCommand::Status => {
            print!(
                "{}",
                render_status(global.output, &status(&mut client).await?)?
            );
        }
        CaCommand::Get => print!("{}", status(&mut client).await?.trust),
        CaCommand::Rotate { wait } => rotate(global, client, wait).await?,
    }
    Ok(())
}

async fn rotate(global: &GlobalArgs, client: Client, wait: Duration) -> anyhow::Result<()> {
    let mut access = global.access()?;
    let mut client = client;
    let started = client
        .call(|mut c| async move { c.rotate_ca(pb::RotateCaRequest {}).await })
        .await?;
    let generation = started.generation;
    eprintln!(
        "CA rotation {generation} started: new CA {} (replacing {})",
        started.fingerprint, started.previous_fingerprint
    );
    // Trust both CAs from now on: servers that moved present the new one.
    let mut trusted = String::new();
    let mut follow = |client: &mut Client, trust: &str| -> anyhow::Result<()> {
        if trust == trusted {
            return Ok(());
        }
        if let Some(path) = &access.file {
            update_credentials(path, trust)?;
            eprintln!("updated the CA in {}", path.display());
        }
        access.ca = trust.to_owned();
        *client = Client::with_access(&access)?;
        trusted = trust.to_owned();
        Ok(())
    };
    follow(&mut client, &started.trust)?;
    if wait.is_zero() {
        eprintln!("not waiting: follow it with `berth cluster ca status`");
        return Ok(());
    }
    let deadline = Instant::now() + wait;
    let mut said = String::new();
    loop {
        let now = status(&mut client).await?;
        if now.generation != generation || !now.rotating {
            follow(&mut client, &now.trust)?;
            println!(
                "CA rotation {generation} finished: the cluster CA is now {}; create new join tokens (`berth cluster token create`): older ones pinned the old CA",
                now.fingerprint
            );
            return Ok(());
        }
        let waiting = waiting_for(&now);
        if waiting != said {
            eprintln!("{waiting}");
            said = waiting;
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "CA rotation {generation} has not finished after {}: {said}; it goes on by itself (`berth cluster ca status`); a server that is gone for good can be removed with `berth cluster remove ID`, a node with `berth node remove NAME`",
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_says_what_it_waits_for() {
        let s = pb::CaStatus {
            generation: 2,
            fingerprint: "bb".into(),
            previous_fingerprint: "aa".into(),
            rotating: true,
            started_at: 1_800_000_000_000,
            servers_pending: vec![2, 3],
            nodes_pending: vec!["n1".into()],
            ..Default::default()
        };
        assert_eq!(
            render_status(Format::Table, &s).expect("text"),
            "CA generation 2, fingerprint bb\nrotating since 2027-01-15T08:00:00.000Z (from aa): waiting for servers 2, 3 and nodes n1 to move to the new CA\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_status(Format::Json, &s).expect("json")).expect("parse");
        assert_eq!(json["serversPending"], serde_json::json!([2, 3]));
        assert_eq!(json["previousFingerprint"], "aa");
        assert!(json.get("finishedAt").is_none());
        let done = pb::CaStatus {
            rotating: false,
            finished_at: 1_800_000_000_000,
            servers_pending: vec![],
            nodes_pending: vec![],
            ..s
        };
        assert_eq!(
            render_status(Format::Table, &done).expect("text"),
            "CA generation 2, fingerprint bb\nlast rotated 2027-01-15T08:00:00.000Z\n"
        );
    }

    #[test]
    fn the_credentials_file_gets_the_new_ca_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.toml");
        std::fs::write(
            &path,
            "servers = [\"127.0.0.1:7400\"]\nca = \"old\"\ntoken = \"t\"\n",
        )
        .expect("write");
        update_credentials(&path, "old\nnew\n").expect("update");
        let file = crate::credentials::CredentialsFile::parse(
            &std::fs::read_to_string(&path).expect("read"),
        )
        .expect("parse");
        assert_eq!(file.ca.as_deref(), Some("old\nnew\n"));
        assert_eq!(file.token.as_deref(), Some("t"));
        assert_eq!(file.servers, ["127.0.0.1:7400"]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
