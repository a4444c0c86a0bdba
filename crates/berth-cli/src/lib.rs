//! The admin CLI: every `berth` subcommand that is a client of the servers.

mod args;
mod ca;
mod cluster;
mod commands;
mod credentials;
mod diff;
mod endpoints;
mod events;
#[cfg(test)]
mod golden;
mod logs;
mod manifests;
mod namespaces;
mod output;
mod render;
mod run;
mod secrets;
mod services;
mod taskdefs;
mod tasks;
mod tokens;
mod usage;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::v1::berth_client::BerthClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use args::Command;
pub use credentials::{Access, CredentialsFile, Flags};

pub use output::Format;

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Server addresses, comma separated; the first that answers is used. [env: BERTH_SERVER]
    /// [default: the credentials file's `servers`, else 127.0.0.1:7400]
    #[arg(
        long = "server",
        global = true,
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub servers: Vec<String>,
    /// A credentials file (TOML: `servers`, `ca`, `token`), as a bootstrap server writes
    /// DATA_DIR/admin.toml. [env: BERTH_CREDENTIALS] [default: ~/.config/berth/admin.toml,
    /// which `berth dev` writes]
    #[arg(long, global = true, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// The API token to call with, instead of the credentials file's; it alone decides what
    /// the caller may do. [env: BERTH_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Namespace of the objects.
    #[arg(short, long, global = true, env = "BERTH_NAMESPACE", default_value = berth_model::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Read from the answering server's own state instead of asking the leader (faster,
    /// possibly behind).
    #[arg(long, global = true)]
    pub stale: bool,
    /// Only objects whose labels (node attributes for nodes) match: `key=value,key!=value`.
    #[arg(short = 'l', long = "selector", global = true, value_name = "SELECTOR")]
    pub selector: Option<String>,
}

impl GlobalArgs {
    /// Where to connect and as whom: these flags, the environment and the credentials file.
    pub fn access(&self) -> anyhow::Result<Access> {
        Access::resolve(Flags {
            servers: &self.servers,
            credentials: self.credentials.as_deref(),
            token: self.token.as_deref(),
        })
    }
}

/// Adds the API token to every request as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .context("the API token is not valid in a request header")?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// The client of the Berth service every command calls through: TLS, with the token.
pub type Api = BerthClient<InterceptedService<Channel, Bearer>>;

/// A connection to the cluster that fails over between the given servers: a call that cannot
/// reach a server, or that a server answers with UNAVAILABLE, is retried on the others. Every
/// connection is TLS, trusting only the cluster CA; every request carries the API token.
pub struct Client {
    servers: Vec<String>,
    dialer: berth_tls::net::Dialer,
    bearer: Bearer,
    /// The server last used and its channel.
    current: Option<(usize, Channel)>,
}

/// How many passes over the server list a call makes while no server is reachable.
const PASSES: u32 = 4;

impl Client {
    /// A client for the servers, CA and token that `global`, the environment and the
    /// credentials file name (see the `credentials` module).
    pub fn new(global: &GlobalArgs) -> anyhow::Result<Self> {
        Self::with_access(&global.access()?)
    }

    pub fn with_access(access: &Access) -> anyhow::Result<Self> {
        let trust = berth_tls::tls::Trust::Ca(access.ca.clone());
        // Only servers: a token and a secret's values must not reach whoever else holds a
        // certificate of the cluster and answers at a server's address.
        let config = berth_tls::tls::client_config_for(&trust, None, berth_tls::Role::Server)
            .with_context(|| match &access.file {
                Some(p) => format!("the `ca` of credentials file {}", p.display()),
                None => "the cluster CA certificate".to_owned(),
            })?;
        Ok(Self {
            servers: access.servers.clone(),
            dialer: berth_tls::net::Dialer::new(config)
                .with_connect_timeout(Duration::from_secs(2)),
            bearer: Bearer::new(&access.token)?,
            current: None,
        })
    }

    async fn channel(&mut self, i: usize) -> anyhow::Result<Channel> {
        if let Some((cur, ch)) = &self.current {
            if *cur == i {
                return Ok(ch.clone());
            }
        }
        let server = &self.servers[i];
        let channel = self
            .dialer
            .connect(server)
            .await
            .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
        self.current = Some((i, channel.clone()));
        Ok(channel)
    }

    /// Runs `f` against a server, failing over as described on [`Client`].
    pub async fn call<T, F, Fut>(&mut self, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut(Api) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        anyhow::ensure!(
            !self.servers.is_empty(),
            "no server given; use --server ADDR"
        );
        let n = self.servers.len();
        let mut failures = Vec::new();
        for pass in 0..PASSES {
            let start = self.current.as_ref().map_or(0, |(i, _)| *i);
            let mut answered: Option<tonic::Status> = None;
            for k in 0..n {
                let i = (start + k) % n;
                let channel = match self.channel(i).await {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(format!("{}: {e:#}", self.servers[i]));
                        continue;
                    }
                };
                let client = BerthClient::with_interceptor(channel, self.bearer.clone())
                    .max_decoding_message_size(256 << 20);
                match f(client).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if is_transport_error(&s) => {
                        self.current = None;
                        failures.push(format!("{}: {}", self.servers[i], s.message()));
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        self.current = None;
                        answered.get_or_insert(s);
                    }
                    Err(s) => return Err(status_error(s)),
                }
            }
            // A server that answered UNAVAILABLE already waited for a leader and a quorum.
            if let Some(s) = answered {
                return Err(status_error(s));
            }
            tokio::time::sleep(Duration::from_millis(250) * (pass + 1)).await;
        }
        failures.dedup();
        anyhow::bail!(
            "cannot reach any berth server ({}); start one with `berth server` or `berth dev`, or point --server / BERTH_SERVER at one",
            failures.join("; ")
        )
    }

    /// [`Client::call`] with `req`, cloned for every attempt: `f` gets a client and the request.
    pub async fn request<Req, T, F, Fut>(&mut self, req: Req, mut f: F) -> anyhow::Result<T>
    where
        Req: Clone,
        F: FnMut(Api, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(|c| f(c, req.clone())).await
    }
}

/// Whether a status stands for "the server could not be reached" rather than its answer.
fn is_transport_error(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && (s.source().is_some()
        || s.message().contains("transport error")
        || s.message().contains("connection"))
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
        tonic::Code::Unauthenticated => {
            " (check the token: --token, BERTH_TOKEN or the credentials file's `token`)"
        }
        _ => "",
    };
    anyhow::anyhow!("{}{hint}", status.message())
}

/// The version of the server that answers.
pub async fn server_version(global: &GlobalArgs) -> anyhow::Result<String> {
    let status = Client::new(global)?
        .call(|mut c| async move {
            c.cluster_status(berth_proto::v1::ClusterStatusRequest {})
                .await
        })
        .await?;
    Ok(status.version)
}

/// Runs a client command; returns the process exit code.
pub async fn run(global: GlobalArgs, command: Command) -> anyhow::Result<i32> {
    commands::run(global, command).await
}
