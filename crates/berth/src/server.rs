//! `berth server`: its flags and the configuration they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use berth_server::{RaftTuning, ServerConfig};

use crate::daemon::DaemonArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
    /// Where the Raft log and state machine live.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// The address every gRPC service listens on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub(crate) listen: SocketAddr,
    /// The address other servers and agents use to reach this one (default: --listen).
    #[arg(long)]
    pub(crate) advertise: Option<String>,
    /// This server's Raft member ID, unique in the cluster (default: the one its data dir holds;
    /// 1 for a new cluster; a free one given by the cluster it joins).
    #[arg(long)]
    pub(crate) node_id: Option<u64>,
    /// Start a new one-member cluster (what a server with no state and no --join does anyway).
    #[arg(long, conflicts_with = "join")]
    pub(crate) bootstrap: bool,
    /// Join the cluster of the server at this address (on first start, with --join-token;
    /// later starts rejoin from their own state).
    #[arg(long, value_name = "ADDR")]
    pub(crate) join: Option<String>,
    /// A join token for servers (`berth cluster token create --role server`): the server
    /// trusts the cluster's CA only if it matches the token, then trades the token for its
    /// certificate.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BERTH_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub(crate) join_token: Option<String>,
    /// Read the join token from this file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    pub(crate) join_token_file: Option<PathBuf>,
    /// With no state, wait to be added with `berth cluster add` instead of bootstrapping (with
    /// --join: get a certificate, but do not ask to be added).
    #[arg(long, conflicts_with = "bootstrap")]
    pub(crate) no_bootstrap: bool,
    /// More names for this server's certificate (DNS names or IP addresses), besides the
    /// --advertise host, localhost and 127.0.0.1.
    #[arg(long = "tls-san", value_name = "NAME")]
    pub(crate) tls_san: Vec<String>,
    /// How long the certificates this server issues live (its own included); they are renewed
    /// after two thirds of it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub(crate) cert_ttl: Duration,
    /// Serve /metrics without a token or client certificate.
    #[arg(long)]
    pub(crate) metrics_public: bool,
    /// Also serve ECS's API here, for the aws CLI and the AWS SDKs (`--endpoint-url`), with
    /// access keys from `berth token create --aws`: plain HTTP on a loopback address, HTTPS
    /// with this server's certificate otherwise.
    #[arg(long, value_name = "ADDR")]
    pub(crate) ecs_listen: Option<SocketAddr>,
    /// The AWS account ID in the ARNs the ECS endpoint answers.
    #[arg(long, value_name = "ID", default_value = berth_server::DEFAULT_ECS_ACCOUNT)]
    pub(crate) ecs_account_id: String,
    /// Start a new cluster from a backup made with `berth cluster snapshot save`.
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    pub(crate) restore: Option<PathBuf>,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub(crate) heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this).
    #[arg(long, default_value_t = 400)]
    pub(crate) election_timeout_ms: u64,
    /// How long a write may wait for a leader and a quorum before failing with UNAVAILABLE.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub(crate) write_timeout: Duration,
    /// A node whose agent is silent this long becomes DOWN and its tasks are lost; agents stop
    /// their own tasks after 80% of it without contact (self-fencing).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub(crate) node_ttl: Duration,
    /// How long a stopped task stays visible (with its events and logs) before it is removed;
    /// also how long an INACTIVE task definition revision nothing uses stays.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub(crate) task_retention: Duration,
    /// How many of each service's latest stopped tasks stay past --task-retention, for
    /// debugging (until newer ones replace them or the service is deleted).
    #[arg(long, default_value_t = 5)]
    pub(crate) keep_stopped_per_service: usize,
    /// A node DOWN this long is removed (as `berth node remove` does).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub(crate) node_retention: Duration,
    /// The length of a bucket of the metering ledger (`berth usage`): the leader closes one,
    /// once, after each such span (between 1s and 1m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
    pub(crate) usage_bucket: Duration,
    /// How long the ledger's closed buckets are kept (the running totals behind the usage
    /// counters of /metrics are kept for good).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
    pub(crate) usage_retention: Duration,
    /// Build a Raft snapshot (and compact the log) after this many entries, or after
    /// --snapshot-log-mib, whichever comes first.
    #[arg(long, default_value_t = 5000)]
    pub(crate) snapshot_every: u64,
    /// Build a Raft snapshot (and compact the log) after this many MiB appended to the log (as
    /// stored, compressed), or after --snapshot-every entries, whichever comes first.
    #[arg(long, default_value_t = 16)]
    pub(crate) snapshot_log_mib: u64,
    /// Log entries kept after a snapshot for followers that are a little behind.
    #[arg(long, default_value_t = 1000)]
    pub(crate) keep_logs: u64,
    /// Answer linearizable reads on the leader from its lease (no round of heartbeats while a
    /// majority acknowledged it within three quarters of the election timeout's maximum).
    /// Assumes the servers' clocks run at about the same rate and every server has the same
    /// --election-timeout-ms.
    #[arg(long)]
    pub(crate) lease_reads: bool,
}

impl ServerArgs {
    pub(crate) fn config(self) -> anyhow::Result<ServerConfig> {
        // `--bootstrap` states the intent explicitly; without `--join` a server with no state
        // bootstraps anyway, and with state it has nothing to bootstrap.
        let _ = self.bootstrap;
        anyhow::ensure!(self.heartbeat_ms > 0, "--heartbeat-ms must be at least 1");
        anyhow::ensure!(
            self.heartbeat_ms * 2 < self.election_timeout_ms,
            "--election-timeout-ms must be more than twice --heartbeat-ms"
        );
        anyhow::ensure!(
            self.cert_ttl >= Duration::from_secs(60),
            "--cert-ttl must be at least a minute"
        );
        let join_token = match (&self.join_token, &self.join_token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("read --join-token-file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        anyhow::ensure!(
            self.join.is_none() || join_token.is_some() || self.data_dir.join("tls").exists(),
            "--join needs --join-token (or --join-token-file): create one on a member with `berth cluster token create --role server`"
        );
        let mut config = ServerConfig::new(self.node_id, self.data_dir, self.listen);
        config.advertise = self.advertise;
        config.join = self.join;
        config.join_token = join_token;
        config.tls_san = self.tls_san;
        config.cert_ttl = self.cert_ttl;
        config.metrics_public = self.metrics_public;
        config.ecs_listen = self.ecs_listen;
        config.ecs_account = self.ecs_account_id;
        config.restore = self.restore;
        config.no_bootstrap = self.no_bootstrap;
        config.node_ttl = self.node_ttl;
        anyhow::ensure!(
            self.task_retention >= Duration::from_secs(1),
            "--task-retention must be at least 1s"
        );
        anyhow::ensure!(
            self.node_retention >= self.node_ttl,
            "--node-retention must be at least --node-ttl"
        );
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        config.retention = berth_server::RetentionPolicy {
            tasks_ms: ms(self.task_retention),
            keep_per_service: self.keep_stopped_per_service,
            nodes_ms: ms(self.node_retention),
        };
        anyhow::ensure!(
            (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.usage_bucket),
            "--usage-bucket must be between 1s and 1m"
        );
        anyhow::ensure!(
            self.usage_retention >= self.usage_bucket,
            "--usage-retention must be at least --usage-bucket"
        );
        config.metering = berth_server::MeteringPolicy {
            bucket_ms: ms(self.usage_bucket),
            keep_ms: ms(self.usage_retention),
        };
        config.raft = RaftTuning {
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            election_timeout: (
                Duration::from_millis(self.election_timeout_ms),
                Duration::from_millis(self.election_timeout_ms * 2),
            ),
            write_timeout: self.write_timeout,
            snapshot_every: self.snapshot_every,
            snapshot_log_bytes: self.snapshot_log_mib << 20,
            keep_logs: self.keep_logs,
            lease_reads: self.lease_reads,
        };
        Ok(config)
    }
}
