//! `berth cluster`: Raft's view of the control plane, membership changes and backups (join
//! tokens: `tokens.rs`).

use std::path::Path;

use anyhow::Context as _;
use berth_model::ClusterStatus;
use berth_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::args::{ClusterCommand, SnapshotCommand};
use crate::{status_error, Client, GlobalArgs};

pub async fn run(global: &GlobalArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let mut client = Client::new(global)?;
    match command {
        ClusterCommand::Status => {
            let status: ClusterStatus = client
                .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
                .await?
                .try_into()?;
            print!(
                "{}",
                crate::render::render_cluster_status(global.output, &status)?
            );
        }
        ClusterCommand::Add {
            id,
            address,
            learner,
        } => {
            let req = pb::AddServerRequest {
                id,
                address: address.clone(),
                learner_only: learner,
            };
            client
                .request(req, |mut c, req| async move { c.add_server(req).await })
                .await?;
            let role = if learner { "learner" } else { "voter" };
            println!("server {id} at {address} added as a {role}");
        }
        ClusterCommand::Remove { id } => {
            client
                .call(|mut c| async move { c.remove_server(pb::RemoveServerRequest { id }).await })
                .await?;
            println!("server {id} removed");
        }
        ClusterCommand::Snapshot(SnapshotCommand::Save { file }) => {
            save_snapshot(&mut client, &file).await?;
        }
        ClusterCommand::Token(command) => {
            crate::tokens::run_join(&mut client, global.output, command).await?;
        }
        ClusterCommand::Ca(command) => {
            crate::ca::run(global, client, command).await?;
        }
    }
    Ok(())
}

/// Writes a consistent backup of the whole state to `file`.
async fn save_snapshot(client: &mut Client, file: &Path) -> anyhow::Result<()> {
    let mut stream = client
        .call(|mut c| async move { c.save_snapshot(pb::SaveSnapshotRequest {}).await })
        .await?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend(chunk.map_err(status_error)?.data);
    }
    // Write next to the target, then rename: a crash never leaves half a backup.
    let tmp = file.with_extension("partial");
    std::fs::write(&tmp, &data).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("write {}", file.display()))?;
    println!("saved {} bytes to {}", data.len(), file.display());
    Ok(())
}
