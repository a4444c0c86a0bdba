//! The client subcommands.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use berth_model::{
    BinpackField, ContainerDefinition, Node, PlacementConstraint, PlacementSpec, PlacementStrategy,
    StopCode, Task, TaskDefinition, TaskDefinitionSpec, TaskStatus,
};
use berth_proto::v1 as pb;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::output::{age, now_ms, render_structured, render_table, structured, table, Format};
use crate::{services, status_error, Client, GlobalArgs};

/// How often `run --wait` asks for the task's state.
const POLL: Duration = Duration::from_millis(100);
/// Exit code of `run --wait` when the task never ran (as `docker run` uses 125).
const EXIT_FAILED_TO_START: i32 = 125;

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
    image: Option<String>,
    /// Run this registered task definition instead of an image.
    #[arg(long, value_name = "FAMILY[:REV]")]
    task_definition: Option<String>,
    /// CPU units (1024 = 1 vCPU).
    #[arg(long, default_value_t = 256)]
    cpu: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Environment variables.
    #[arg(short, long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Task definition family for an image run; derived from the image name when absent.
    #[arg(long)]
    family: Option<String>,
    /// Grace period between SIGTERM and SIGKILL when the task is stopped (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    stop_timeout: Duration,
    /// Placement strategy, in order: binpack:cpu, binpack:memory, spread:node,
    /// spread:attribute:NAME, random.
    #[arg(long, value_name = "TYPE[:FIELD]")]
    placement_strategy: Vec<String>,
    /// Placement constraint: distinctInstance, or a memberOf expression such as
    /// "attribute:zone in [a, b]".
    #[arg(long, value_name = "CONSTRAINT")]
    placement_constraint: Vec<String>,
    /// How many tasks.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Wait for the task to stop, print its output and exit with its exit code.
    #[arg(long)]
    wait: bool,
    /// Command and arguments (replace the image's CMD).
    #[arg(last = true)]
    command: Vec<String>,
}

pub async fn run(global: GlobalArgs, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(args) => run_task(&global, args).await,
        Command::Apply {
            files,
            dry_run,
            wait,
            timeout,
        } => apply(&global, &files, dry_run, wait.then_some(timeout)).await,
        Command::Scale {
            service,
            count,
            wait,
            timeout,
        } => {
            let mut client = Client::new(&global.servers);
            let s = services::scale(&mut client, &global, &service, count).await?;
            println!("service/{} scaled to {}", s.name, s.desired_count);
            if wait && !services::wait(&mut client, &global, &service, None, timeout).await? {
                return Ok(1);
            }
            Ok(0)
        }
        Command::Schema => {
            print!("{}", berth_manifest::json_schema());
            Ok(0)
        }
        Command::Diff { files } => crate::diff::run(&global, read_documents(&files)?).await,
        Command::Delete { files, kind, name } => {
            delete(&global, &files, kind, name).await.map(|()| 0)
        }
        Command::Events {
            watch,
            kinds,
            recent,
        } => crate::events::run(&global, watch, kinds, recent)
            .await
            .map(|()| 0),
        Command::Service(ServiceCommand::Promote { name }) => {
            services::promote(&mut Client::new(&global.servers), &global, &name).await?;
            Ok(0)
        }
        Command::Get { kind, name } => get(&global, &kind, name.as_deref()).await.map(|()| 0),
        Command::Describe { kind, name } => describe(&global, &kind, &name).await.map(|()| 0),
        Command::Logs {
            task,
            follow,
            container,
            tail,
            since,
            timestamps,
        } => {
            let since = match since {
                Some(s) => parse_since(&s)?,
                None => 0,
            };
            let opts = LogOptions {
                follow,
                container: container.unwrap_or_default(),
                tail: tail.unwrap_or(0),
                since,
                timestamps,
            };
            logs(&global, &task, opts).await.map(|()| 0)
        }
        Command::Exec {
            task,
            container,
            timeout,
            command,
        } => {
            let req = pb::ExecTaskRequest {
                namespace: global.namespace.clone(),
                task_id: task,
                container: container.unwrap_or_default(),
                command,
                timeout_secs: u32::try_from(timeout.as_secs().max(1)).unwrap_or(u32::MAX),
            };
            let out = Client::new(&global.servers)
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.exec_task(req).await }
                })
                .await?;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            Ok(out.exit_code)
        }
        Command::Stop { task, reason } => {
            let req = pb::StopTaskRequest {
                namespace: global.namespace.clone(),
                task_id: task,
                reason: reason.unwrap_or_default(),
            };
            let task = Client::new(&global.servers)
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.stop_task(req).await }
                })
                .await?;
            let task: Task = task.try_into()?;
            print_tasks(global.output, &[task], true)?;
            Ok(0)
        }
        Command::Node(cmd) => {
            let (name, status) = match cmd {
                NodeCommand::Drain { name } => (name, pb::NodeStatus::Draining),
                NodeCommand::Activate { name } => (name, pb::NodeStatus::Active),
            };
            let req = pb::UpdateNodeStatusRequest {
                name,
                status: status as i32,
            };
            let node = Client::new(&global.servers)
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.update_node_status(req).await }
                })
                .await?;
            print_nodes(global.output, &[node.try_into()?], true)?;
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Status) => cluster_status(&global).await.map(|()| 0),
        Command::Cluster(ClusterCommand::Add {
            id,
            address,
            learner,
        }) => {
            let req = pb::AddServerRequest {
                id,
                address: address.clone(),
                learner_only: learner,
            };
            Client::new(&global.servers)
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.add_server(req).await }
                })
                .await?;
            let role = if learner { "learner" } else { "voter" };
            println!("server {id} at {address} added as a {role}");
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Remove { id }) => {
            Client::new(&global.servers)
                .call(|mut c| async move { c.remove_server(pb::RemoveServerRequest { id }).await })
                .await?;
            println!("server {id} removed");
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Snapshot(SnapshotCommand::Save { file })) => {
            let mut stream = Client::new(&global.servers)
                .call(|mut c| async move { c.save_snapshot(pb::SaveSnapshotRequest {}).await })
                .await?;
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                data.extend(chunk.map_err(status_error)?.data);
            }
            // Write next to the target, then rename: a crash never leaves half a backup.
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &data).with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, &file).with_context(|| format!("write {}", file.display()))?;
            println!("saved {} bytes to {}", data.len(), file.display());
            Ok(0)
        }
    }
}

/// `--placement-strategy` and `--placement-constraint` flags as a placement spec.
fn placement_flags(strategies: &[String], constraints: &[String]) -> anyhow::Result<PlacementSpec> {
    let strategy = strategies
        .iter()
        .map(|s| {
            Ok(match s.split_once(':') {
                Some(("binpack", "cpu")) => PlacementStrategy::Binpack { field: BinpackField::Cpu },
                Some(("binpack", "memory")) => PlacementStrategy::Binpack { field: BinpackField::Memory },
                Some(("spread", field)) => PlacementStrategy::Spread { field: field.to_owned() },
                None if s == "random" => PlacementStrategy::Random,
                _ => bail!(
                    "--placement-strategy {s:?}: use binpack:cpu, binpack:memory, spread:node, spread:attribute:NAME or random"
                ),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let constraints = constraints
        .iter()
        .map(|c| {
            if c == "distinctInstance" {
                PlacementConstraint::DistinctInstance
            } else {
                PlacementConstraint::MemberOf {
                    expression: c.clone(),
                }
            }
        })
        .collect();
    Ok(PlacementSpec {
        strategy,
        constraints,
    })
}

/// `demo` from `127.0.0.1:5000/team/demo:latest`, made a valid family name.
pub fn family_from_image(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let name = last.split(':').next().unwrap_or(last);
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['-', '_']).to_owned();
    if cleaned.is_empty() {
        "task".to_owned()
    } else {
        cleaned
    }
}

async fn run_task(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<i32> {
    if args.wait && args.count != 1 {
        bail!("--wait follows one task; drop --count or --wait");
    }
    let mut client = Client::new(&global.servers);
    let task_definition = match (&args.image, &args.task_definition) {
        (_, Some(td)) => td.clone(),
        (Some(image), None) => {
            let mut environment = BTreeMap::new();
            for kv in &args.env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env {kv:?} must be KEY=VALUE"))?;
                environment.insert(k.to_owned(), v.to_owned());
            }
            let family = args
                .family
                .clone()
                .unwrap_or_else(|| family_from_image(image));
            let mut container = ContainerDefinition::new(family.clone(), image.clone());
            container.command = args.command.clone();
            container.environment = environment;
            container.stop_timeout =
                u32::try_from(args.stop_timeout.as_secs()).context("--stop-timeout is too long")?;
            let spec = TaskDefinitionSpec {
                meta: Default::default(),
                family,
                cpu: args.cpu,
                memory: args.memory,
                containers: vec![container],
                placement: placement_flags(&args.placement_strategy, &args.placement_constraint)?,
            };
            spec.validate()
                .map_err(|e| anyhow::anyhow!("invalid task: {e}"))?;
            let (def, _) = register(&mut client, &global.namespace, spec).await?;
            format!("{}:{}", def.family, def.revision)
        }
        (None, None) => bail!("give an IMAGE or --task-definition FAMILY[:REV]"),
    };
    // One token for every retry of this call: the cluster creates the tasks once.
    let req = pb::RunTaskRequest {
        namespace: global.namespace.clone(),
        task_definition,
        count: args.count,
        client_token: uuid::Uuid::new_v4().to_string(),
    };
    let tasks = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.run_task(req).await }
        })
        .await?
        .tasks;
    if !args.wait {
        for t in &tasks {
            println!("{}", t.task_id);
        }
        return Ok(0);
    }
    let task_id = tasks
        .first()
        .context("server created no task")?
        .task_id
        .clone();
    eprintln!("{task_id}");
    wait_and_stream(global, &mut client, &task_id).await
}

async fn describe_task(
    client: &mut Client,
    global: &GlobalArgs,
    task_id: &str,
) -> anyhow::Result<Task> {
    let req = pb::DescribeTaskRequest {
        namespace: global.namespace.clone(),
        task_id: task_id.to_owned(),
        stale: global.stale,
    };
    let task = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.describe_task(req).await }
        })
        .await?;
    Ok(task.try_into()?)
}

async fn wait_and_stream(
    global: &GlobalArgs,
    client: &mut Client,
    task_id: &str,
) -> anyhow::Result<i32> {
    let mut last_event = None;
    let task = loop {
        let task = describe_task(client, global, task_id).await?;
        if let Some(e) = task.events.last() {
            if last_event.as_ref() != Some(&e.message) {
                eprintln!("{}: {}", task.last_status, e.message);
                last_event = Some(e.message.clone());
            }
        }
        if task.last_status >= TaskStatus::Running {
            break task;
        }
        tokio::time::sleep(POLL).await;
    };
    if task.started_at.is_some() {
        let opts = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        logs(global, task_id, opts).await?;
    }
    let task = loop {
        let task = describe_task(client, global, task_id).await?;
        if task.is_stopped() {
            break task;
        }
        tokio::time::sleep(POLL).await;
    };
    if task.stop_code == Some(StopCode::TaskFailedToStart) {
        eprintln!(
            "error: task {task_id} failed to start: {}",
            task.stopped_reason.as_deref().unwrap_or("no reason given")
        );
        return Ok(EXIT_FAILED_TO_START);
    }
    Ok(task.exit_code().unwrap_or(1))
}

/// Which output `logs` prints.
#[derive(Debug, Clone, Default)]
struct LogOptions {
    follow: bool,
    container: String,
    tail: u32,
    /// Milliseconds since the epoch; 0 for all.
    since: u64,
    timestamps: bool,
}

/// `--since 10m` (that long ago) or `--since 2026-11-26T10:00:00Z`, as ms since the epoch.
fn parse_since(text: &str) -> anyhow::Result<u64> {
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

async fn logs(global: &GlobalArgs, task: &str, opts: LogOptions) -> anyhow::Result<()> {
    let req = pb::TaskLogsRequest {
        namespace: global.namespace.clone(),
        task_id: task.to_owned(),
        follow: opts.follow,
        container: opts.container,
        tail: opts.tail,
        since: opts.since,
        timestamps: opts.timestamps,
    };
    let mut stream = Client::new(&global.servers)
        .call(|mut c| {
            let req = req.clone();
            async move { c.task_logs(req).await }
        })
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

/// The *.yaml and *.yml files under `dir`, recursively, in path order.
fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            manifest_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

fn read_manifest_sources(files: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut sources = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("read stdin")?;
            sources.push(("<stdin>".to_owned(), text));
            continue;
        }
        let path = Path::new(f);
        if path.is_dir() {
            let mut files = Vec::new();
            manifest_files(path, &mut files)?;
            for p in files {
                let text =
                    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
                sources.push((p.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {f}"))?;
            sources.push((f.clone(), text));
        }
    }
    Ok(sources)
}

/// Registers `spec` as the next revision of its family, or answers the latest one when it is
/// identical; `true` when a revision was created.
pub(crate) async fn register(
    client: &mut Client,
    namespace: &str,
    spec: TaskDefinitionSpec,
) -> anyhow::Result<(pb::TaskDefinition, bool)> {
    let req = pb::RegisterTaskDefinitionRequest {
        namespace: namespace.to_owned(),
        spec: Some(spec.into()),
        reuse_identical: true,
    };
    let r = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.register_task_definition(req).await }
        })
        .await?;
    let def = r
        .task_definition
        .context("server sent no task definition")?;
    Ok((def, r.created))
}

/// Parses every manifest of `files`; nothing is sent when any document is invalid.
fn read_documents(files: &[String]) -> anyhow::Result<Vec<berth_manifest::Document>> {
    let mut documents = Vec::new();
    for (name, text) in read_manifest_sources(files)? {
        documents.extend(berth_manifest::parse(&name, &text)?);
    }
    if documents.is_empty() {
        bail!("no objects found in {}", files.join(", "));
    }
    Ok(documents)
}

async fn apply(
    global: &GlobalArgs,
    files: &[String],
    dry_run: bool,
    wait: Option<Duration>,
) -> anyhow::Result<i32> {
    // Parse and validate everything before storing anything.
    let documents = read_documents(files)?;
    let mut client = Client::new(&global.servers);
    let mut rollouts = Vec::new();
    for d in documents {
        let namespace = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| global.namespace.clone());
        match d.object {
            berth_manifest::Object::TaskDefinition(spec) if dry_run => {
                println!("taskdefinition/{} valid (dry run)", spec.family);
            }
            berth_manifest::Object::TaskDefinition(spec) => {
                let (def, created) = register(&mut client, &namespace, spec).await?;
                let verb = if created { "registered" } else { "unchanged" };
                println!("taskdefinition/{}:{} {verb}", def.family, def.revision);
            }
            berth_manifest::Object::Service { spec, template } => {
                if let Some(applied) =
                    services::apply(&mut client, namespace, *spec, template, dry_run).await?
                {
                    rollouts.push(applied);
                }
            }
            berth_manifest::Object::Task {
                task_definition,
                template,
                count,
            } => {
                crate::tasks::apply(
                    &mut client,
                    namespace,
                    &d.metadata.name,
                    task_definition,
                    template,
                    count,
                    dry_run,
                )
                .await?;
            }
        }
    }
    let Some(timeout) = wait else { return Ok(0) };
    let mut code = 0;
    for r in rollouts {
        let g = GlobalArgs {
            namespace: r.service.namespace.clone(),
            ..global.clone()
        };
        let ok = services::wait(
            &mut client,
            &g,
            &r.service.name,
            r.deployment.as_deref(),
            timeout,
        )
        .await?;
        if ok {
            println!("service/{} rollout complete", r.service.name);
        } else {
            code = 1;
        }
    }
    Ok(code)
}

async fn delete(
    global: &GlobalArgs,
    files: &[String],
    kind: Option<String>,
    name: Option<String>,
) -> anyhow::Result<()> {
    let mut client = Client::new(&global.servers);
    if let (Some(kind), Some(name)) = (kind, name) {
        return match kind.as_str() {
            "service" | "services" | "svc" => {
                services::delete(&mut client, &global.namespace, &name).await
            }
            "taskdef" | "taskdefs" | "taskdefinition" | "taskdefinitions" => {
                bail!("task definition revisions are immutable and kept; stop using {name} instead")
            }
            "task" | "tasks" => bail!("use `berth stop {name}` to stop a task"),
            other => bail!("cannot delete kind {other:?}; use service NAME"),
        };
    }
    for d in read_documents(files)? {
        let namespace = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| global.namespace.clone());
        match d.object {
            berth_manifest::Object::Service { spec, .. } => {
                services::delete(&mut client, &namespace, &spec.name).await?;
            }
            berth_manifest::Object::TaskDefinition(spec) => {
                println!(
                    "taskdefinition/{} kept (revisions are immutable)",
                    spec.family
                );
            }
            berth_manifest::Object::Task {
                task_definition, ..
            } => {
                crate::tasks::delete(
                    &mut client,
                    &namespace,
                    &d.metadata.name,
                    &task_definition.family,
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterStatusJson {
    /// The server that answered.
    id: u64,
    leader: Option<u64>,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    snapshot_index: Option<u64>,
    purged_index: Option<u64>,
    members: Vec<MemberJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberJson {
    id: u64,
    address: String,
    role: String,
    match_index: Option<u64>,
}

async fn cluster_status(global: &GlobalArgs) -> anyhow::Result<()> {
    let s = Client::new(&global.servers)
        .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await?;
    let json = ClusterStatusJson {
        id: s.id,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        leader: s.leader,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        members: s
            .members
            .into_iter()
            .map(|m| MemberJson {
                id: m.id,
                address: m.address,
                role: m.role,
                match_index: m.match_index,
            })
            .collect(),
    };
    match global.output {
        Format::Json | Format::Yaml => structured(global.output, &json)?,
        Format::Table | Format::Wide => {
            let leader = json.leader.map_or("none".to_owned(), |l| l.to_string());
            println!(
                "leader: {leader}   term: {}   commit index: {}   applied index: {}   (as server {} sees it)\n",
                json.term, json.commit_index, json.applied_index, json.id
            );
            let rows: Vec<Vec<String>> = json
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.address.clone(),
                        m.role.clone(),
                        m.match_index.map_or("-".to_owned(), |i| i.to_string()),
                    ]
                })
                .collect();
            table(&["ID", "ADDRESS", "ROLE", "MATCH INDEX"], &rows);
        }
    }
    Ok(())
}

fn print_tasks(format: Format, tasks: &[Task], single: bool) -> anyhow::Result<()> {
    print!("{}", render_tasks(format, tasks, single, now_ms())?);
    Ok(())
}

pub(crate) fn render_tasks(
    format: Format,
    tasks: &[Task],
    single: bool,
    now: u64,
) -> anyhow::Result<String> {
    match format {
        Format::Json | Format::Yaml if single => render_structured(format, &tasks[0]),
        Format::Json | Format::Yaml => render_structured(format, &tasks),
        Format::Table | Format::Wide => {
            let wide = format == Format::Wide;
            let rows: Vec<Vec<String>> = tasks
                .iter()
                .map(|t| {
                    let mut row = vec![
                        t.task_id.clone(),
                        t.task_definition.to_string(),
                        t.last_status.to_string(),
                        t.desired_status.to_string(),
                        t.node.clone().unwrap_or_else(|| "-".into()),
                        age(t.created_at, now),
                    ];
                    if wide {
                        row.push(t.exit_code().map_or("-".into(), |c| c.to_string()));
                        row.push(t.stop_code.map_or("-".into(), |c| c.to_string()));
                        row.push(t.stopped_reason.clone().unwrap_or_else(|| "-".into()));
                    }
                    row
                })
                .collect();
            let mut header = vec![
                "TASK ID",
                "TASK DEFINITION",
                "STATUS",
                "DESIRED",
                "NODE",
                "AGE",
            ];
            if wide {
                header.extend(["EXIT", "STOP CODE", "REASON"]);
            }
            Ok(render_table(&header, &rows))
        }
    }
}

fn print_taskdefs(format: Format, defs: &[TaskDefinition], single: bool) -> anyhow::Result<()> {
    print!("{}", render_taskdefs(format, defs, single, now_ms())?);
    Ok(())
}

pub(crate) fn render_taskdefs(
    format: Format,
    defs: &[TaskDefinition],
    single: bool,
    now: u64,
) -> anyhow::Result<String> {
    match format {
        Format::Json | Format::Yaml if single => render_structured(format, &defs[0]),
        Format::Json | Format::Yaml => render_structured(format, &defs),
        Format::Table | Format::Wide => {
            let rows: Vec<Vec<String>> = defs
                .iter()
                .map(|d| {
                    vec![
                        d.family.clone(),
                        d.revision.to_string(),
                        d.status.to_string(),
                        d.cpu.to_string(),
                        d.memory.to_string(),
                        d.containers
                            .iter()
                            .map(|c| c.image.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        age(d.registered_at, now),
                    ]
                })
                .collect();
            Ok(render_table(
                &[
                    "FAMILY", "REVISION", "STATUS", "CPU", "MEMORY", "IMAGES", "AGE",
                ],
                &rows,
            ))
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson<'a> {
    name: &'a str,
    address: &'a str,
    status: berth_model::NodeStatus,
    attributes: &'a BTreeMap<String, String>,
    cpu: berth_model::Resources,
    memory: berth_model::Resources,
}

fn node_json(n: &Node) -> NodeJson<'_> {
    NodeJson {
        name: &n.name,
        address: &n.address,
        status: n.status,
        attributes: &n.attributes,
        cpu: n.cpu,
        memory: n.memory,
    }
}

fn print_nodes(format: Format, nodes: &[Node], single: bool) -> anyhow::Result<()> {
    print!("{}", render_nodes(format, nodes, single)?);
    Ok(())
}

pub(crate) fn render_nodes(format: Format, nodes: &[Node], single: bool) -> anyhow::Result<String> {
    match format {
        Format::Json | Format::Yaml if single => render_structured(format, &node_json(&nodes[0])),
        Format::Json | Format::Yaml => {
            render_structured(format, &nodes.iter().map(node_json).collect::<Vec<_>>())
        }
        Format::Table | Format::Wide => {
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.status.to_string(),
                        n.address.clone(),
                        format!("{}/{}", n.cpu.allocated, n.cpu.total),
                        format!("{}/{} MiB", n.memory.allocated, n.memory.total),
                        n.attributes
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            Ok(render_table(
                &["NAME", "STATUS", "ADDRESS", "CPU", "MEMORY", "ATTRIBUTES"],
                &rows,
            ))
        }
    }
}

async fn get(global: &GlobalArgs, kind: &str, name: Option<&str>) -> anyhow::Result<()> {
    let mut client = Client::new(&global.servers);
    let ns = global.namespace.clone();
    let stale = global.stale;
    match (kind, name) {
        ("tasks" | "task", None) => {
            let selector = global.selector.clone().unwrap_or_default();
            let tasks = crate::tasks::list(&mut client, &ns, stale, &selector).await?;
            print_tasks(global.output, &tasks, false)
        }
        ("tasks" | "task", Some(id)) => {
            let task = describe_task(&mut client, global, id).await?;
            print_tasks(global.output, &[task], true)
        }
        ("taskdefs" | "taskdef" | "taskdefinitions" | "taskdefinition", None) => {
            let req = pb::ListTaskDefinitionsRequest {
                namespace: ns,
                family: String::new(),
                stale,
                selector: global.selector.clone().unwrap_or_default(),
            };
            let defs = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.list_task_definitions(req).await }
                })
                .await?;
            let defs: Vec<TaskDefinition> = defs
                .task_definitions
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?;
            print_taskdefs(global.output, &defs, false)
        }
        ("taskdefs" | "taskdef" | "taskdefinitions" | "taskdefinition", Some(r)) => {
            let req = pb::DescribeTaskDefinitionRequest {
                namespace: ns,
                task_definition: r.to_owned(),
                stale,
            };
            let def = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.describe_task_definition(req).await }
                })
                .await?;
            print_taskdefs(global.output, &[def.try_into()?], true)
        }
        ("services" | "service" | "svc", None) => {
            let list = services::list(&mut client, global).await?;
            services::print(global.output, &list, false)
        }
        ("services" | "service" | "svc", Some(name)) => {
            let s = services::fetch(&mut client, global, name).await?;
            services::print(global.output, &[s], true)
        }
        ("nodes" | "node", name) => {
            let selector = global.selector.clone().unwrap_or_default();
            let nodes = client
                .call(|mut c| {
                    let selector = selector.clone();
                    async move { c.list_nodes(pb::ListNodesRequest { stale, selector }).await }
                })
                .await?;
            let mut nodes: Vec<Node> = nodes
                .nodes
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?;
            if let Some(name) = name {
                nodes.retain(|n| n.name == name);
                if nodes.is_empty() {
                    bail!("node {name} not found");
                }
            }
            print_nodes(global.output, &nodes, name.is_some())
        }
        (other, _) => bail!(
            "unknown kind {other:?}; use tasks, task ID, taskdefs, taskdef FAMILY[:REV], services, service NAME or nodes"
        ),
    }
}

async fn describe(global: &GlobalArgs, kind: &str, name: &str) -> anyhow::Result<()> {
    if global.output != Format::Table && global.output != Format::Wide {
        return get(global, kind, Some(name)).await;
    }
    let mut client = Client::new(&global.servers);
    match kind {
        "task" | "tasks" => {
            let t = describe_task(&mut client, global, name).await?;
            println!("Task ID:          {}", t.task_id);
            println!("Namespace:        {}", t.namespace);
            println!("Task definition:  {}", t.task_definition);
            println!("Group:            {}", t.group.as_deref().unwrap_or("-"));
            println!("Node:             {}", t.node.as_deref().unwrap_or("-"));
            println!("Desired status:   {}", t.desired_status);
            println!("Last status:      {}", t.last_status);
            println!("CPU / memory:     {} units / {} MiB", t.cpu, t.memory);
            println!(
                "Created:          {}",
                berth_model::format_timestamp(t.created_at)
            );
            if let Some(s) = t.started_at {
                println!("Started:          {}", berth_model::format_timestamp(s));
            }
            if let Some(s) = t.stopped_at {
                println!("Stopped:          {}", berth_model::format_timestamp(s));
            }
            if let Some(code) = t.stop_code {
                println!("Stop code:        {code}");
            }
            if let Some(reason) = &t.stopped_reason {
                println!("Stopped reason:   {reason}");
            }
            if let Some(m) = &t.metrics {
                println!(
                    "Usage:            CPU {:.0} units ({:.0}% of {}), memory {:.1} MiB ({:.0}% of {} MiB), sampled {}",
                    m.cpu_units,
                    m.cpu_percent(t.cpu),
                    t.cpu,
                    m.memory_bytes as f64 / (1024.0 * 1024.0),
                    m.memory_percent(t.memory),
                    t.memory,
                    berth_model::format_timestamp(m.sampled_at)
                );
            }
            println!("Containers:");
            for c in &t.containers {
                println!(
                    "  {}  {}  {}  exit={}  health={}{}",
                    c.name,
                    c.image,
                    c.last_status,
                    c.exit_code.map_or("-".into(), |e| e.to_string()),
                    c.health_status,
                    c.reason
                        .as_ref()
                        .map(|r| format!("  reason={r}"))
                        .unwrap_or_default()
                );
                if let Some(d) = &c.image_digest {
                    println!("    image digest: {d}");
                }
            }
            println!("Events:");
            for e in t.events.iter() {
                println!("  {}  {}", berth_model::format_timestamp(e.at), e.message);
            }
            Ok(())
        }
        "service" | "services" | "svc" => {
            let s = services::fetch(&mut client, global, name).await?;
            services::describe(&s);
            Ok(())
        }
        _ => get(global, kind, Some(name)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::family_from_image;

    #[test]
    fn families_from_images() {
        assert_eq!(family_from_image("127.0.0.1:5000/demo:latest"), "demo");
        assert_eq!(
            family_from_image("registry.io/team/web.app@sha256:abc"),
            "web-app"
        );
        assert_eq!(family_from_image("busybox"), "busybox");
    }
}
