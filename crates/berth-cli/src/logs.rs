//! `berth logs`: a task's output, streamed from the agent through the servers.

use std::io::Write as _;

use anyhow::Context as _;
use berth_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::{status_error, Client, GlobalArgs};

/// Which output `logs` prints.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub container: String,
    pub tail: u32,
    /// Milliseconds since the epoch; 0 for all.
    pub since: u64,
    pub timestamps: bool,
}

impl LogOptions {
    /// The options from `berth logs` flags.
    pub fn from_flags(
        follow: bool,
        container: Option<String>,
        tail: Option<u32>,
        since: Option<String>,
        timestamps: bool,
    ) -> anyhow::Result<Self> {
        let since = match since {
            Some(s) => parse_since(&s)?,
            None => 0,
        };
        Ok(Self {
            follow,
            container: container.unwrap_or_default(),
            tail: tail.unwrap_or(0),
            since,
            timestamps,
        })
    }
}

/// `--since 10m` (that long ago) or `--since 2026-11-26T10:00:00Z`, as ms since the epoch.
pub(crate) fn parse_since(text: &str) -> anyhow::Result<u64> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => std::time::SystemTime::now() - ago,
        Err(_) => humantime::parse_rfc3339_weak(text).with_context(|| {
            format!(
                "--since {text:?} is neither a duration (10m) nor a time (2026-11-26T10:00:00Z)"
            )
        })?,
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Copies the task's output to stdout and stderr, as its containers wrote it.
pub async fn print(global: &GlobalArgs, task: &str, opts: LogOptions) -> anyhow::Result<()> {
    let req = pb::TaskLogsRequest {
        namespace: global.namespace.clone(),
        task_id: task.to_owned(),
        follow: opts.follow,
        container: opts.container,
        tail: opts.tail,
        since: opts.since,
        timestamps: opts.timestamps,
    };
    let mut stream = Client::new(global)?
        .request(req, |mut c, req| async move { c.task_logs(req).await })
        .await?;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(status_error)?;
        if chunk.stderr {
            stderr.write_all(&chunk.data)?;
        } else {
            stdout.write_all(&chunk.data)?;
            stdout.flush()?;
        }
    }
    Ok(())
}
