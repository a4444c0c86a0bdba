//! [`Runtime`] on containerd 1.6's gRPC API (`containerd-client`). See
//! `shared/containerd-notes.md` for the API facts this relies on.

mod gc;
mod pull;

pub use gc::{images_to_remove, ImageUsage};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteProcessRequest, DeleteRequest as DeleteLeaseRequest,
    DeleteTaskRequest, ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest,
    ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use tokio::sync::Mutex;

use crate::runtime::{
    ContainerSpec, ContainerStats, ExecOutput, ExistingContainer, ExitFuture, ExitStatus,
    ImageInfo, Progress, Runtime, RuntimeError,
};
use crate::spec::build_spec;

pub use pull::chain_ids;

const SNAPSHOTTER: &str = "overlayfs";
const RUNC_V2: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Labels that tie containerd containers to berth tasks.
pub const LABEL_TASK_ID: &str = "dev.berth.task-id";
pub const LABEL_CONTAINER: &str = "dev.berth.container";

#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace this agent owns.
    pub namespace: String,
    /// Registries (`host:port`) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Credentials per registry (`host:port` -> user, password), for basic or token auth.
    pub registry_auth: HashMap<String, (String, String)>,
    /// Parent of every container's cgroup.
    pub cgroup_parent: String,
    /// Where the output of commands run in containers is collected.
    pub exec_dir: PathBuf,
    /// Delete unused images, least recently pulled first, while all images take more bytes.
    pub image_budget: Option<u64>,
    /// The `berth` binary the shim starts as each container's log driver, and the size at
    /// which log files rotate. Without it, containerd appends raw output to the log file.
    pub log_driver: Option<(PathBuf, u64)>,
}

/// Drives containerd over its gRPC socket.
pub struct ContainerdRuntime {
    channel: Channel,
    config: ContainerdConfig,
    /// One lock per image reference, so concurrent pulls of the same image happen once.
    pull_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    https: oci_client::Client,
    http: oci_client::Client,
}

impl ContainerdRuntime {
    pub async fn connect(config: ContainerdConfig) -> Result<Self, RuntimeError> {
        let channel = containerd_client::connect(&config.socket)
            .await
            .map_err(|e| RuntimeError::Connect {
                path: config.socket.clone(),
                detail: format!("{e:#}"),
            })?;
        let registry_client = |protocol| {
            oci_client::Client::new(oci_client::client::ClientConfig {
                protocol,
                ..Default::default()
            })
        };
        Ok(Self {
            channel,
            config,
            pull_locks: Mutex::new(HashMap::new()),
            https: registry_client(oci_client::client::ClientProtocol::Https),
            http: registry_client(oci_client::client::ClientProtocol::Http),
        })
    }

    /// A request in this agent's containerd namespace.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(ns) = self.config.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req
    }

    /// A request that also holds `lease`, so the garbage collector keeps what it creates.
    fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut req = self.req(msg);
        if let Ok(lease) = lease.parse() {
            req.metadata_mut().insert("containerd-lease", lease);
        }
        req
    }

    /// Creates a lease that expires by itself after an hour, should we crash before deleting it.
    async fn create_lease(&self) -> Result<String, RuntimeError> {
        let id = format!("berth-{}", uuid::Uuid::new_v4());
        let expire =
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire.to_string())]);
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(RuntimeError::containerd("create lease"))?;
        Ok(id)
    }

    async fn delete_lease(&self, id: &str) {
        let req = self.req(DeleteLeaseRequest {
            id: id.to_owned(),
            sync: false,
        });
        if let Err(e) = LeasesClient::new(self.channel.clone()).delete(req).await {
            tracing::warn!(lease = id, "delete lease: {e}");
        }
    }

    async fn create_container(&self, c: &ContainerSpec, lease: &str) -> Result<(), RuntimeError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let top = c.image.rootfs_id.clone();
        let prepare = || PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: c.id.clone(),
            parent: top.clone(),
            labels: HashMap::new(),
        };
        let mounts = match snapshots.prepare(self.leased(prepare(), lease)).await {
            Ok(r) => r.into_inner().mounts,
            Err(s) if s.code() == Code::AlreadyExists => {
                // A leftover from a crash: start from a clean snapshot.
                self.remove(&c.id).await?;
                snapshots
                    .prepare(self.leased(prepare(), lease))
                    .await
                    .map_err(RuntimeError::containerd("prepare snapshot"))?
                    .into_inner()
                    .mounts
            }
            Err(s) => return Err(RuntimeError::containerd("prepare snapshot")(s)),
        };
        let spec = build_spec(c, &self.config.cgroup_parent)?;
        let spec_json = serde_json::to_vec(&spec).map_err(|e| RuntimeError::Spec(e.to_string()))?;
        let container = Container {
            id: c.id.clone(),
            labels: HashMap::from([
                (LABEL_TASK_ID.to_owned(), c.task_id.clone()),
                (LABEL_CONTAINER.to_owned(), c.container_name.clone()),
            ]),
            image: c.image.reference.clone(),
            runtime: Some(ContainerRuntime {
                name: RUNC_V2.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.clone(),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(self.leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            ))
            .await
            .map_err(RuntimeError::containerd("create container"))?;
        if let Some(dir) = c.log_path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(RuntimeError::io("create log directory"))?;
        }
        let log_uri = match &self.config.log_driver {
            // The shim runs `berth log-driver MAX:PATH` with the streams on fds 3 and 4.
            Some((bin, max)) => {
                format!(
                    "binary://{}?log-driver={max}:{}",
                    bin.display(),
                    c.log_path.display()
                )
            }
            None => format!("file://{}", c.log_path.display()),
        };
        TasksClient::new(self.channel.clone())
            .create(self.leased(
                CreateTaskRequest {
                    container_id: c.id.clone(),
                    rootfs: mounts,
                    stdout: log_uri.clone(),
                    stderr: log_uri,
                    ..Default::default()
                },
                lease,
            ))
            .await
            .map_err(RuntimeError::containerd("create task"))?;
        Ok(())
    }
}

/// The network namespace of a task, as `ip netns` names it.
fn netns_name(task_id: &str) -> String {
    let id: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    format!("berth-{id}")
}

/// Runs `ip ARGS` (iproute2).
async fn ip(args: &[&str]) -> Result<(), RuntimeError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(RuntimeError::io("run ip (install iproute2)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(RuntimeError::Io {
        op: "set up the task's network namespace",
        source: std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    })
}

/// Type URL of an OCI process spec inside a protobuf `Any`.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

impl ContainerdRuntime {
    /// Creates, starts and waits for an exec process; always deletes it (which also waits for
    /// its output to be copied to the files).
    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        out: &std::path::Path,
        err: &std::path::Path,
        timeout: Duration,
    ) -> Result<i32, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .exec(self.req(ExecProcessRequest {
                container_id: id.to_owned(),
                stdin: String::new(),
                stdout: out.display().to_string(),
                stderr: err.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value: process,
                }),
                exec_id: exec_id.to_owned(),
            }))
            .await
            .map_err(RuntimeError::containerd("exec in container"))?;
        let wait_req = self.req(WaitRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        });
        let mut wait_client = TasksClient::new(self.channel.clone());
        let wait = tokio::spawn(async move { wait_client.wait(wait_req).await });
        let started = tasks
            .start(self.req(StartRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            }))
            .await
            .map_err(RuntimeError::containerd("start exec"));
        let result = match started {
            Err(e) => Err(e),
            Ok(_) => match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(Ok(r))) => Ok(i32::try_from(r.into_inner().exit_status).unwrap_or(-1)),
                Ok(Ok(Err(s))) => Err(RuntimeError::containerd("wait for exec")(s)),
                Ok(Err(_)) => Err(RuntimeError::Spec("exec wait task failed".into())),
                Err(_) => {
                    let kill = KillRequest {
                        container_id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        signal: 9,
                        all: false,
                    };
                    let _ = tasks.kill(self.req(kill)).await;
                    Err(RuntimeError::ExecTimeout(timeout))
                }
            },
        };
        let delete = DeleteProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        if let Err(s) = tasks.delete_process(self.req(delete)).await {
            if s.code() != Code::NotFound {
                tracing::debug!(container = id, exec_id, "delete exec process: {s}");
            }
        }
        result
    }
}

/// `containerd.v1.types.Status.STOPPED`.
const PROCESS_STOPPED: i32 = 3;

impl ContainerdRuntime {
    /// Waits for the container's task to exit, in its own tokio task so the wait is issued at
    /// once. Survives containerd restarts: a broken connection is retried; then reads whether
    /// the kernel OOM-killed it from its cgroup, which exists until the task is deleted.
    fn wait_for_exit(&self, id: &str) -> ExitFuture {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let channel = self.channel.clone();
        let id = id.to_owned();
        let ns = self.config.namespace.clone();
        let cgroup = format!("{}/{}", self.config.cgroup_parent.trim_end_matches('/'), id);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            let result = loop {
                let mut req = Request::new(WaitRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                });
                if let Ok(v) = ns.parse() {
                    req.metadata_mut().insert("containerd-namespace", v);
                }
                match TasksClient::new(channel.clone()).wait(req).await {
                    Ok(r) => {
                        let code = i32::try_from(r.into_inner().exit_status).unwrap_or(-1);
                        break Ok(ExitStatus {
                            code,
                            oom_killed: oom_killed(&cgroup),
                        });
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled
                        ) =>
                    {
                        tracing::warn!(container = %id, "wait for task: {s}; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(s) => break Err(RuntimeError::containerd("wait for task")(s)),
                }
            };
            let _ = tx.send(result);
        });
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(RuntimeError::Spec("wait task dropped".into())))
        })
    }
}

/// A container's counters from the cgroup it runs in — the numbers containerd's `Tasks.Metrics`
/// reports, read where they live (cgroup v1 controllers, or the v2 unified hierarchy).
fn cgroup_stats(path: &str) -> std::io::Result<ContainerStats> {
    let read = |p: String| std::fs::read_to_string(p);
    let stat_value = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    if let Ok(cpu) = read(format!("/sys/fs/cgroup/cpuacct/{path}/cpuacct.usage")) {
        let usage: u64 = read(format!(
            "/sys/fs/cgroup/memory/{path}/memory.usage_in_bytes"
        ))?
        .trim()
        .parse()
        .unwrap_or(0);
        let stat = read(format!("/sys/fs/cgroup/memory/{path}/memory.stat")).unwrap_or_default();
        return Ok(ContainerStats {
            cpu_ns: cpu.trim().parse().unwrap_or(0),
            memory_bytes: usage.saturating_sub(stat_value(&stat, "total_inactive_file")),
        });
    }
    let cpu = read(format!("/sys/fs/cgroup/{path}/cpu.stat"))?;
    let usage: u64 = read(format!("/sys/fs/cgroup/{path}/memory.current"))?
        .trim()
        .parse()
        .unwrap_or(0);
    let stat = read(format!("/sys/fs/cgroup/{path}/memory.stat")).unwrap_or_default();
    Ok(ContainerStats {
        cpu_ns: stat_value(&cpu, "usage_usec") * 1000,
        memory_bytes: usage.saturating_sub(stat_value(&stat, "inactive_file")),
    })
}

/// Whether the OOM killer fired in the cgroup at `path` (under the cgroup v1 memory hierarchy,
/// or the v2 unified one).
fn oom_killed(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    let v1 = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{path}/memory.oom_control"));
    let v2 = || std::fs::read_to_string(format!("/sys/fs/cgroup/{path}/memory.events"));
    let text = v1.or_else(|_| v2()).unwrap_or_default();
    text.lines().any(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

fn ok_if_not_found(
    result: Result<(), tonic::Status>,
    op: &'static str,
) -> Result<(), RuntimeError> {
    match result {
        Err(s) if s.code() != Code::NotFound => Err(RuntimeError::containerd(op)(s)),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Runtime for ContainerdRuntime {
    async fn ensure_image(
        &self,
        image: &str,
        progress: &Progress<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let lock = self
            .pull_locks
            .lock()
            .await
            .entry(image.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if let Some(info) = self.local_image(image).await? {
            return Ok(info);
        }
        let lease = self.create_lease().await?;
        let result = self.pull(image, &lease, progress).await;
        self.delete_lease(&lease).await;
        if let (Ok(_), Some(budget)) = (&result, self.config.image_budget) {
            if let Err(e) = self.collect_images(budget, image).await {
                tracing::warn!("collect unused images: {e}");
            }
        }
        result
    }

    async fn start(&self, c: &ContainerSpec) -> Result<ExitFuture, RuntimeError> {
        let lease = self.create_lease().await?;
        let created = self.create_container(c, &lease).await;
        self.delete_lease(&lease).await;
        if let Err(e) = created {
            let _ = self.remove(&c.id).await;
            return Err(e);
        }
        // Wait is issued before Start so that no exit can be missed.
        let exit = self.wait_for_exit(&c.id);
        let started = TasksClient::new(self.channel.clone())
            .start(self.req(StartRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
            }))
            .await
            .map_err(RuntimeError::containerd("start task"));
        if let Err(e) = started {
            let _ = self.remove(&c.id).await;
            return Err(e);
        }
        Ok(exit)
    }

    async fn list(&self) -> Result<Vec<ExistingContainer>, RuntimeError> {
        let containers = ContainersClient::new(self.channel.clone())
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(RuntimeError::containerd("list containers"))?
            .into_inner()
            .containers;
        let mut out = Vec::new();
        for c in containers {
            let (Some(task_id), Some(name)) =
                (c.labels.get(LABEL_TASK_ID), c.labels.get(LABEL_CONTAINER))
            else {
                continue;
            };
            let req = self.req(GetRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
            });
            let (running, exit_code) = match TasksClient::new(self.channel.clone()).get(req).await {
                Ok(r) => match r.into_inner().process {
                    Some(p) if p.status == PROCESS_STOPPED => {
                        (false, Some(i32::try_from(p.exit_status).unwrap_or(-1)))
                    }
                    Some(_) => (true, None),
                    None => (false, None),
                },
                Err(s) if s.code() == Code::NotFound => (false, None),
                Err(s) => return Err(RuntimeError::containerd("get task")(s)),
            };
            out.push(ExistingContainer {
                id: c.id,
                task_id: task_id.clone(),
                container_name: name.clone(),
                running,
                exit_code,
            });
        }
        Ok(out)
    }

    async fn adopt(&self, id: &str) -> Result<ExitFuture, RuntimeError> {
        Ok(self.wait_for_exit(id))
    }

    async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        // The command runs as the container's process does: same env, user, cwd, caps.
        let container = ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.to_owned() }))
            .await
            .map_err(RuntimeError::containerd("get container"))?
            .into_inner()
            .container
            .and_then(|c| c.spec)
            .ok_or_else(|| RuntimeError::Spec(format!("container {id} has no spec")))?;
        let spec: serde_json::Value = serde_json::from_slice(&container.value)
            .map_err(|e| RuntimeError::Spec(format!("read container spec: {e}")))?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        let process =
            serde_json::to_vec(&process).map_err(|e| RuntimeError::Spec(e.to_string()))?;

        let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        tokio::fs::create_dir_all(&self.config.exec_dir)
            .await
            .map_err(RuntimeError::io("create exec directory"))?;
        let out = self.config.exec_dir.join(format!("{exec_id}.out"));
        let err = self.config.exec_dir.join(format!("{exec_id}.err"));
        for f in [&out, &err] {
            tokio::fs::File::create(f)
                .await
                .map_err(RuntimeError::io("create exec output file"))?;
        }
        let result = self
            .run_exec(id, &exec_id, process, &out, &err, timeout)
            .await;
        let output = async {
            let stdout = tokio::fs::read(&out)
                .await
                .map_err(RuntimeError::io("read exec output"))?;
            let stderr = tokio::fs::read(&err)
                .await
                .map_err(RuntimeError::io("read exec output"))?;
            Ok::<_, RuntimeError>((stdout, stderr))
        }
        .await;
        let _ = tokio::fs::remove_file(&out).await;
        let _ = tokio::fs::remove_file(&err).await;
        let exit_code = result?;
        let (stdout, stderr) = output?;
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    async fn create_network(&self, task_id: &str) -> Result<String, RuntimeError> {
        let name = netns_name(task_id);
        ip(&["netns", "add", &name]).await?;
        ip(&["-n", &name, "link", "set", "lo", "up"]).await?;
        Ok(format!("/run/netns/{name}"))
    }

    async fn remove_network(&self, task_id: &str) -> Result<(), RuntimeError> {
        let name = netns_name(task_id);
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            ip(&["netns", "delete", &name]).await?;
        }
        Ok(())
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let path = format!("{}/{}", self.config.cgroup_parent.trim_matches('/'), id);
        cgroup_stats(&path).map_err(RuntimeError::io("read container cgroup"))
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let req = self.req(KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal,
            all,
        });
        match TasksClient::new(self.channel.clone()).kill(req).await {
            // NotFound: no such task; FailedPrecondition: its process already exited.
            Err(s) if !matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                Err(RuntimeError::containerd("kill task")(s))
            }
            _ => Ok(()),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let delete_task = || {
            self.req(DeleteTaskRequest {
                container_id: id.to_owned(),
            })
        };
        match tasks.delete(delete_task()).await {
            // Still running (containerd 1.6 answers "cannot delete a running process" with
            // FailedPrecondition or Unknown): kill it, wait for the exit, then delete.
            Err(s) if s.code() != Code::NotFound => {
                tracing::debug!(container = id, "delete task: {s}; killing it first");
                self.kill(id, 9, true).await?;
                let wait = self.req(WaitRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                });
                let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait(wait)).await;
                ok_if_not_found(tasks.delete(delete_task()).await.map(drop), "delete task")?;
            }
            other => ok_if_not_found(other.map(drop), "delete task")?,
        }
        let remove = self.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_owned(),
        });
        ok_if_not_found(
            SnapshotsClient::new(self.channel.clone())
                .remove(remove)
                .await
                .map(drop),
            "remove snapshot",
        )?;
        let delete = self.req(DeleteContainerRequest { id: id.to_owned() });
        ok_if_not_found(
            ContainersClient::new(self.channel.clone())
                .delete(delete)
                .await
                .map(drop),
            "delete container",
        )
    }
}
