//! The command line of the client subcommands, as clap types. Their doc comments are the help
//! text (and `berth cli-reference`).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Run a task from an image or a registered task definition.
    Run(RunArgs),
    /// Register the objects in YAML manifests.
    Apply {
        /// A file, a directory of *.yaml/*.yml files, or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// Validate only; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait until every service's rollout finished; exit 1 when one failed.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        timeout: Duration,
    },
    /// Show what `apply` would change, field by field; exit 1 when something differs.
    Diff {
        /// A file, a directory of *.yaml/*.yml files, or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// List or show objects: tasks, task ID, taskdefs, taskdef FAMILY[:REV], services,
    /// service NAME, endpoints [SERVICE] (where a service's name leads), nodes, secrets,
    /// secret NAME (keys only). Tasks are listed newest first.
    Get {
        kind: String,
        name: Option<String>,
        /// List at most this many tasks (newest first); the command says how to get the
        /// next page.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Go on with the tasks after the page that printed this token (with --limit, one
        /// page more; without, every task left).
        #[arg(long = "continue", value_name = "TOKEN")]
        continue_token: Option<String>,
    },
    /// Show an object in detail: task ID, taskdef FAMILY[:REV], service NAME, node NAME.
    Describe { kind: String, name: String },
    /// Change a service's desired count.
    Scale {
        service: String,
        count: u32,
        /// Wait until the service runs that many tasks.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        timeout: Duration,
    },
    /// Delete the objects of manifests (-f) or one object (`delete service NAME`, `delete
    /// secret NAME`, `delete taskdef FAMILY[:REV]`): a service stops its tasks, then disappears;
    /// a task definition revision becomes INACTIVE (what runs it keeps it).
    Delete {
        /// A file, a directory of *.yaml/*.yml files, or - for stdin.
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
        files: Vec<String>,
        #[arg(required_unless_present = "files", requires = "name")]
        kind: Option<String>,
        name: Option<String>,
    },
    /// Recent events of tasks, services and nodes; with --watch, new ones as they happen.
    Events {
        /// Keep printing new events (a server-side stream).
        #[arg(short, long)]
        watch: bool,
        /// Only these kinds: task, service, node.
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// How many past events to print first.
        #[arg(long, default_value_t = 50)]
        recent: usize,
    },
    /// What tasks requested and used, from the metering ledger: vCPU-seconds and GB-seconds
    /// requested (from the start of each task's image pull to its stop, to the millisecond),
    /// what they used by their nodes' samples, and an estimated cost (-o table, json, yaml or
    /// csv).
    Usage(UsageArgs),
    /// Print the JSON Schema of manifests (for editors: yaml-language-server, VS Code).
    Schema,
    /// Service operations beyond apply/scale/delete.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print a task's output.
    Logs {
        task: String,
        /// Keep printing new output until the task stops.
        #[arg(short, long)]
        follow: bool,
        /// Only this container's output.
        #[arg(long)]
        container: Option<String>,
        /// Only the last N lines of each container.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// Only output since this long ago (`10m`) or this time (RFC 3339).
        #[arg(long, value_name = "DURATION|TIME")]
        since: Option<String>,
        /// Prefix every line with the time it was written.
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Run a command in a running container of a task; exits with the command's exit code.
    Exec {
        task: String,
        /// The container (default: the task's first).
        #[arg(long)]
        container: Option<String>,
        /// Kill the command after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        timeout: Duration,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a task (SIGTERM, then SIGKILL after the stop timeout).
    Stop {
        task: String,
        /// Recorded as the task's stopped reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Inspect the control plane.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Drain, activate or remove a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// API tokens of clients: create, list, revoke (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Namespaces and their quotas (admin).
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Secrets of a namespace: values tasks read as variables or files; never shown back.
    #[command(subcommand)]
    Secret(SecretCommand),
}

/// The flags of `berth usage`.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// Only this service's tasks.
    #[arg(long)]
    pub service: Option<String>,
    /// Every namespace (needs a token for every namespace, as an admin's).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// How far back: a duration (`24h`, `30m`) or a time (RFC 3339); the ledger's closed
    /// bucket (a minute) it falls in counts whole.
    #[arg(long, value_name = "DURATION|TIME", default_value = "24h")]
    pub since: String,
    /// One row per service, namespace, task definition, or task (each task still kept, over
    /// its whole life).
    #[arg(long, value_parser = ["service", "namespace", "taskdef", "task"], default_value = "service")]
    pub by: String,
    /// The price of a vCPU-hour, in US dollars, for the estimate (default: AWS Fargate,
    /// Linux/x86, us-east-1).
    #[arg(long, value_name = "USD", default_value_t = berth_model::Rates::FARGATE.vcpu_hour)]
    pub vcpu_hour_price: f64,
    /// The price of a GB-hour of memory, in US dollars, for the estimate (default: AWS
    /// Fargate, Linux/x86, us-east-1).
    #[arg(long, value_name = "USD", default_value_t = berth_model::Rates::FARGATE.gb_hour)]
    pub gb_hour_price: f64,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SecretCommand {
    /// Create a secret from literals, files or standard input (it must not exist yet).
    Create {
        name: String,
        #[command(flatten)]
        values: SecretValues,
    },
    /// Replace every key of an existing secret. Running tasks keep the values they started
    /// with; `berth service redeploy NAME` replaces a service's tasks.
    Update {
        name: String,
        #[command(flatten)]
        values: SecretValues,
    },
    /// Show a secret's keys, or list the namespace's secrets (never their values).
    Get { name: Option<String> },
    /// List the namespace's secrets and their keys.
    List,
    /// Delete a secret (tasks that reference it no longer start).
    Delete { name: String },
    /// Seal every secret again under a new key of the servers' keyring (admin).
    RotateKey,
}

/// Where a secret's values come from (at least one). Its `Debug` shows no literal value.
#[derive(Clone, clap::Args)]
pub struct SecretValues {
    /// A key and its value (repeatable). The value is visible in the shell's history and the
    /// process list: prefer --from-file or --from-stdin for real secrets.
    #[arg(long, value_name = "KEY=VALUE")]
    pub from_literal: Vec<String>,
    /// A file's content as a key's value; the key is the file's name unless given (repeatable).
    #[arg(long, value_name = "[KEY=]PATH")]
    pub from_file: Vec<String>,
    /// Standard input as the value of KEY.
    #[arg(long, value_name = "KEY")]
    pub from_stdin: Option<String>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServiceCommand {
    /// Let a canary deployment's remaining tasks follow now, without waiting for the bake time.
    Promote { name: String },
    /// Replace every task of a service with a new one of the same revision, in a rolling
    /// deployment (after a secret its tasks read changed, say).
    Redeploy { name: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCommand {
    /// Stop placing new tasks on the node (running tasks keep running).
    Drain { name: String },
    /// Place tasks on the node again.
    Activate { name: String },
    /// Remove the node from the cluster and revoke its certificate: its agent can no longer
    /// connect (join again with a new token).
    Remove { name: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token for namespace -n/--namespace and print it, alone, on the last line
    /// of standard output. It is shown this once: the cluster stores only its hash.
    Create {
        /// viewer: get, describe, logs, events; deployer: also run, apply, scale, stop, delete,
        /// exec (both in their namespace only); admin: everything, in every namespace.
        #[arg(long, value_parser = ["viewer", "deployer", "admin"])]
        role: String,
        /// How long the token works (`12h`, `30d`); without it, until revoked.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// Who or what the token is for.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Also an AWS access key for the ECS endpoint (`berth server --ecs-listen`): prints
        /// `AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` lines instead of the token. The
        /// cluster keeps the secret sealed under its secrets keyring (AWS signatures need the
        /// secret itself), not only as a hash.
        #[arg(long)]
        aws: bool,
    },
    /// List API tokens, oldest first (never their secrets).
    List,
    /// Revoke an API token: calls with it fail from then on.
    Revoke {
        /// The whole token or its ID.
        #[arg(value_name = "TOKEN|ID")]
        token_or_id: String,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token for agents, servers or ingresses and print it, alone, on the last
    /// line of standard output (`berth agent --join-token T`, `berth server --join ADDR
    /// --join-token T`, `berth ingress --join-token T`). It is shown this once.
    Create {
        /// What the token joins: agents, servers or ingresses.
        #[arg(long, value_parser = ["agent", "server", "ingress"])]
        role: String,
        /// How long the token can be used (`1h`, `7d`); without it, until revoked.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        ttl: Option<Duration>,
    },
    /// List join tokens, oldest first (never their secrets).
    List,
    /// Revoke a join token: nothing joins with it from then on (nodes that joined stay).
    Revoke {
        /// The whole token or its ID.
        #[arg(value_name = "TOKEN|ID")]
        token_or_id: String,
    },
}

/// A quota limit on the command line: a number, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<T>(pub Option<T>);

impl<T: std::str::FromStr> std::str::FromStr for Limit<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self(None)),
            _ => s
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| format!("{s:?} is not a number or `none`")),
        }
    }
}

/// The quota flags of `namespace create|update`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct QuotaArgs {
    /// CPU units the namespace's tasks may reserve in all (1024 = 1 vCPU); `none`: no limit.
    #[arg(long, value_name = "UNITS")]
    pub(crate) cpu: Option<Limit<u64>>,
    /// MiB the namespace's tasks may reserve in all; `none`: no limit.
    #[arg(long, value_name = "MIB")]
    pub(crate) memory: Option<Limit<u64>>,
    /// How many tasks may be pending or running at once; `none`: no limit.
    #[arg(long, value_name = "N")]
    pub(crate) tasks: Option<Limit<u32>>,
}

impl QuotaArgs {
    /// `quota` with the limits these flags set.
    pub(crate) fn apply(&self, mut quota: berth_model::Quota) -> berth_model::Quota {
        if let Some(Limit(cpu)) = self.cpu {
            quota.cpu = cpu;
        }
        if let Some(Limit(memory)) = self.memory {
            quota.memory = memory;
        }
        if let Some(Limit(tasks)) = self.tasks {
            quota.tasks = tasks;
        }
        quota
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace, with a quota when limits are given; its tasks, services and task
    /// definitions are invisible to tokens of other namespaces.
    Create {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Change a namespace's quota: the limits given change, the others stay. Work already
    /// admitted keeps running.
    Update {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List namespaces, or show one, with their quotas and what their tasks use.
    Get { name: Option<String> },
    /// Delete a namespace.
    Delete { name: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, commit index and members.
    Status,
    /// Add a server (start it first with `berth server --node-id ID`): it joins as a learner
    /// and becomes a voter once it has caught up.
    Add {
        id: u64,
        /// Its gRPC address, host:port.
        address: String,
        /// Keep it a learner: it receives the log but does not vote.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a server; removing the leader hands leadership to another server.
    Remove { id: u64 },
    /// Backups of the whole state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Join tokens for new agents and servers.
    #[command(subcommand)]
    Token(JoinTokenCommand),
    /// The cluster CA: status, the CAs to trust, rotation.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CaCommand {
    /// The CA's fingerprint and generation, and what a running rotation waits for.
    Status,
    /// Print the CAs clients should trust (PEM): the `ca` of credentials files.
    Get,
    /// Replace the cluster CA without downtime: a new CA, cross-signed by the current one, that
    /// servers and agents move to on their own. Waits until every server and every node that is
    /// not DOWN has moved, then the old CA is no longer trusted. Updates the `ca` of the
    /// credentials file in use; join tokens made before it stop working when it finishes.
    Rotate {
        /// How long to wait for the rotation to finish (0s: do not wait; it goes on anyway).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        wait: Duration,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Write a consistent backup to FILE (restore with `berth server --restore FILE`).
    Save { file: PathBuf },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The image to run (registry/repository:tag or @sha256:digest).
    #[arg(
        required_unless_present = "task_definition",
        conflicts_with = "task_definition"
    )]
    pub(crate) image: Option<String>,
    /// Run this registered task definition instead of an image.
    #[arg(long, value_name = "FAMILY[:REV]")]
    pub(crate) task_definition: Option<String>,
    /// CPU units (1024 = 1 vCPU).
    #[arg(long, default_value_t = 256)]
    pub(crate) cpu: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub(crate) memory: u32,
    /// Environment variables.
    #[arg(short, long = "env", value_name = "K=V")]
    pub(crate) env: Vec<String>,
    /// Task definition family for an image run; derived from the image name when absent.
    #[arg(long)]
    pub(crate) family: Option<String>,
    /// Grace period between SIGTERM and SIGKILL when the task is stopped (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub(crate) stop_timeout: Duration,
    /// Run the process as PID 1 itself, without the minimal init that forwards signals and
    /// reaps zombies (`init: false` in a manifest).
    #[arg(long)]
    pub(crate) no_init: bool,
    /// Publish a container port on the task's node: CONTAINER_PORT (the node picks a free
    /// port) or HOST_PORT:CONTAINER_PORT, with /udp for UDP (repeatable).
    #[arg(short, long = "publish", value_name = "[HOST:]PORT[/PROTO]", value_parser = crate::run::port_mapping)]
    pub(crate) publish: Vec<berth_model::PortMapping>,
    /// Placement strategy, in order: binpack:cpu, binpack:memory, spread:node,
    /// spread:attribute:NAME, random.
    #[arg(long, value_name = "TYPE[:FIELD]")]
    pub(crate) placement_strategy: Vec<String>,
    /// Placement constraint: distinctInstance, or a memberOf expression such as
    /// "attribute:zone in [a, b]".
    #[arg(long, value_name = "CONSTRAINT")]
    pub(crate) placement_constraint: Vec<String>,
    /// How many tasks.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u32,
    /// Wait for the task to stop, print its output and exit with its exit code.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Command and arguments (replace the image's CMD).
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self
            .from_literal
            .iter()
            .map(|l| l.split_once('=').map_or("?", |(k, _)| k))
            .collect();
        f.debug_struct("SecretValues")
            .field("from_literal", &keys)
            .field("from_file", &self.from_file)
            .field("from_stdin", &self.from_stdin)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;
    use crate::GlobalArgs;

    /// The client part of `berth`'s command line.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(subcommand)]
        command: Command,
    }

    fn parse(line: &str) -> Cli {
        Cli::try_parse_from(line.split_whitespace()).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn access_commands_parse() {
        let cli = parse(
            "berth token create -n team-a --role deployer --ttl 30d --token T --credentials c.toml",
        );
        assert_eq!(cli.global.namespace, "team-a");
        assert_eq!(cli.global.token.as_deref(), Some("T"));
        assert_eq!(
            cli.global.credentials.as_deref(),
            Some(std::path::Path::new("c.toml"))
        );
        let Command::Token(TokenCommand::Create { role, ttl, .. }) = cli.command else {
            panic!("token create: {:?}", cli.command)
        };
        assert_eq!(
            (role.as_str(), ttl),
            ("deployer", Some(Duration::from_secs(30 * 86_400)))
        );
        assert!(Cli::try_parse_from(["berth", "token", "create", "--role", "owner"]).is_err());
        let cli = parse("berth cluster token revoke abc --server a:1,b:2");
        assert_eq!(cli.global.servers, ["a:1", "b:2"]);
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Token(JoinTokenCommand::Revoke { .. }))
        ));
        assert!(matches!(
            parse("berth node remove node-1").command,
            Command::Node(NodeCommand::Remove { .. })
        ));
    }

    #[test]
    fn quota_flags_change_only_the_limits_given() {
        let cli = parse("berth namespace update team-a --cpu none --tasks 8");
        let Command::Namespace(NamespaceCommand::Update { name, quota }) = cli.command else {
            panic!("namespace update: {:?}", cli.command)
        };
        assert_eq!(name, "team-a");
        let current = berth_model::Quota {
            cpu: Some(4096),
            memory: Some(8192),
            tasks: Some(4),
        };
        assert_eq!(
            quota.apply(current),
            berth_model::Quota {
                cpu: None,
                memory: Some(8192),
                tasks: Some(8),
            }
        );
        let err = Cli::try_parse_from(["berth", "namespace", "create", "x", "--cpu", "lots"])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("\"lots\" is not a number or `none`"),
            "{err}"
        );
    }
}
