//! The admin CLI: every `berth` subcommand that is a client of the servers.

mod commands;
mod output;

use std::time::Duration;

use anyhow::Context as _;
use berth_proto::v1::berth_client::BerthClient;
use tonic::transport::{Channel, Endpoint};

pub use commands::Command;
pub use output::Format;

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Server addresses, comma separated; the first that answers is used.
    #[arg(
        long = "server",
        global = true,
        env = "BERTH_SERVER",
        default_value = "127.0.0.1:7400",
        value_delimiter = ','
    )]
    pub servers: Vec<String>,
    /// Namespace of the objects.
    #[arg(short, long, global = true, env = "BERTH_NAMESPACE", default_value = berth_model::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Connects to the first server that answers.
pub async fn connect(servers: &[String]) -> anyhow::Result<BerthClient<Channel>> {
    let mut failures = Vec::new();
    for server in servers {
        let endpoint = Endpoint::from_shared(format!("http://{server}"))
            .with_context(|| format!("invalid server address {server:?}; use host:port"))?
            .connect_timeout(Duration::from_secs(2));
        match endpoint.connect().await {
            Ok(channel) => return Ok(BerthClient::new(channel).max_decoding_message_size(64 << 20)),
            Err(e) => failures.push(format!("{server}: {}", error_chain(&e))),
        }
    }
    anyhow::bail!(
        "cannot reach any berth server ({}); start one with `berth server` or `berth dev`, or point --server / BERTH_SERVER at one",
        failures.join("; ")
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A gRPC error as one sentence for humans.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let hint = match status.code() {
        tonic::Code::Unavailable => " (is the server running and does the cluster have a leader?)",
        _ => "",
    };
    anyhow::anyhow!("{}{hint}", status.message())
}

/// Runs a client command; returns the process exit code.
pub async fn run(global: GlobalArgs, command: Command) -> anyhow::Result<i32> {
    commands::run(global, command).await
}
