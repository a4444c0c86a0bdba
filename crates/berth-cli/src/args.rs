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
    /// service NAME, nodes.
    Get { kind: String, name: Option<String> },
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
    /// Delete the objects of manifests (-f) or one object (`delete service NAME`): a service
    /// stops its tasks, then disappears.
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
    /// Drain or activate a node.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServiceCommand {
    /// Let a canary deployment's remaining tasks follow now, without waiting for the bake time.
    Promote { name: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCommand {
    /// Stop placing new tasks on the node (running tasks keep running).
    Drain { name: String },
    /// Place tasks on the node again.
    Activate { name: String },
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
