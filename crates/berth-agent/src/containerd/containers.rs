//! Containers: create (snapshot, OCI spec, container, task, log URI) and start them, find the
//! ones a previous agent left, wait for their exits, signal and remove them.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    StartRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_client::tonic::Code;

use super::client::{ok_if_not_found, Lease};
use super::{stats, ContainerdRuntime, LABEL_CONTAINER, LABEL_LIMITS, LABEL_TASK_ID, SNAPSHOTTER};
use crate::runtime::{
    ContainerSpec, Created, ExistingContainer, ExitFuture, ExitStatus, RuntimeError,
};
use crate::spec::{build_spec, lift_cpu_quota, SpecOptions};
use oci_spec::runtime::LinuxResources;

const RUNC_V2: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// `containerd.v1.types.Status.CREATED`: the task exists, its process was never started.
const PROCESS_CREATED: i32 = 1;
/// `containerd.v1.types.Status.STOPPED`.
const PROCESS_STOPPED: i32 = 3;

impl ContainerdRuntime {
    /// Creates the container and its task, stopped, without its CPU quota; answers the cgroup
    /// limits to set once it started ([`lift_cpu_quota`]), as the JSON its label records.
    async fn create_container(
        &self,
        c: &ContainerSpec,
        lease: &Lease,
    ) -> Result<Option<String>, RuntimeError> {
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
                self.remove_container(&c.id).await?;
                snapshots
                    .prepare(self.leased(prepare(), lease))
                    .await
                    .map_err(RuntimeError::containerd("prepare snapshot"))?
                    .into_inner()
                    .mounts
            }
            Err(s) => return Err(RuntimeError::containerd("prepare snapshot")(s)),
        };
        if c.init && !self.config.init.is_file() {
            return Err(RuntimeError::Io {
                op: "find the container init",
                source: std::io::Error::other(format!(
                    "{} is not there: install Debian's tini package (or pass --init-path), or set `init: false` on container {}",
                    self.config.init.display(),
                    c.container_name
                )),
            });
        }
        let mut spec = build_spec(
            c,
            &SpecOptions {
                cgroup_parent: &self.config.cgroup_parent,
                init: &self.config.init,
                pids_limit: self.pids_limit,
            },
        )?;
        let limits = lift_cpu_quota(&mut spec)
            .map(|limits| serde_json::to_string(&limits))
            .transpose()
            .map_err(|error| RuntimeError::SpecJson {
                op: "encode the container's limits",
                error,
            })?;
        let spec_json = serde_json::to_vec(&spec).map_err(|error| RuntimeError::SpecJson {
            op: "encode the OCI runtime spec",
            error,
        })?;
        let mut labels = HashMap::from([
            (LABEL_TASK_ID.to_owned(), c.task_id.clone()),
            (LABEL_CONTAINER.to_owned(), c.container_name.clone()),
        ]);
        if let Some(limits) = &limits {
            labels.insert(LABEL_LIMITS.to_owned(), limits.clone());
        }
        let container = Container {
            id: c.id.clone(),
            labels,
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
        Ok(limits)
    }

    /// Creates the container and its task, its process not started; a failure removes what
    /// was made.
    pub(super) async fn create_stopped(&self, c: &ContainerSpec) -> Result<Created, RuntimeError> {
        let lease = self.create_lease().await?;
        let created = self.create_container(c, &lease).await;
        self.delete_lease(lease).await;
        match created {
            Ok(limits) => Ok(Created {
                spec: c.clone(),
                limits,
            }),
            Err(e) => {
                let _ = self.remove_container(&c.id).await;
                Err(e)
            }
        }
    }

    /// Starts the process of a container [`Self::create_stopped`] made, then sets its limits;
    /// a failure removes the container.
    pub(super) async fn start_stopped(&self, created: Created) -> Result<ExitFuture, RuntimeError> {
        let Created { spec: c, limits } = created;
        // Wait is issued before Start so that no exit can be missed.
        let exit = self.wait_for_exit(&c.id);
        let started = TasksClient::new(self.channel.clone())
            .start(self.req(StartRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
            }))
            .await
            .map_err(RuntimeError::containerd("start task"));
        // The quota set now, before the task is reported running: a failure ends it rather
        // than leave it unthrottled.
        let limited = match (started, limits) {
            (Ok(_), Some(limits)) => self.set_limits(&c.id, limits).await,
            (started, _) => started.map(drop),
        };
        if let Err(e) = limited {
            let _ = self.remove_container(&c.id).await;
            return Err(e);
        }
        Ok(exit)
    }

    /// Sets a started task's cgroup limits, the JSON of an OCI `LinuxResources`: on cgroup v2
    /// by writing its CPU files (microseconds), else through containerd's `Tasks.Update`
    /// (`runc update`: a process, about 10 ms of the start).
    async fn set_limits(&self, id: &str, limits: String) -> Result<(), RuntimeError> {
        let dir = std::path::Path::new(super::stats::CGROUP_ROOT)
            .join(self.config.cgroup_parent.trim_matches('/'))
            .join(id);
        let parsed = || serde_json::from_str::<LinuxResources>(&limits).ok();
        if let Some(resources) = dir.join("cpu.max").is_file().then(parsed).flatten() {
            let written = crate::spec::cgroup_v2_cpu(&resources)
                .into_iter()
                .try_for_each(|(file, value)| std::fs::write(dir.join(file), value));
            return match written {
                Ok(()) => Ok(()),
                // A process that already exited has nothing left to limit.
                Err(_) if self.exits_soon(id).await => Ok(()),
                Err(e) => Err(RuntimeError::io("set the container's CPU limits")(e)),
            };
        }
        let value = limits.into_bytes();
        let updated = TasksClient::new(self.channel.clone())
            .update(self.req(UpdateTaskRequest {
                container_id: id.to_owned(),
                resources: Some(prost_types::Any {
                    type_url: RESOURCES_TYPE_URL.into(),
                    value,
                }),
                annotations: HashMap::new(),
            }))
            .await;
        match updated {
            Ok(_) => Ok(()),
            // A process that already exited (a short command) has nothing left to limit.
            Err(_) if self.exits_soon(id).await => Ok(()),
            Err(s) => Err(RuntimeError::containerd("set the container's CPU quota")(s)),
        }
    }

    /// Sets the limits recorded on a container ([`LABEL_LIMITS`]) again: an agent that adopts
    /// it cannot know whether the one before it stopped between its start and its update.
    /// Containers from before the label have their quota from their spec.
    pub(super) async fn restore_limits(&self, id: &str) -> Result<(), RuntimeError> {
        let container = ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.to_owned() }))
            .await
            .map_err(RuntimeError::containerd("get container"))?
            .into_inner()
            .container;
        let Some(json) = container.and_then(|c| c.labels.get(LABEL_LIMITS).cloned()) else {
            return Ok(());
        };
        serde_json::from_str::<LinuxResources>(&json).map_err(|error| RuntimeError::SpecJson {
            op: "read the container's limits",
            error,
        })?;
        self.set_limits(id, json).await
    }

    /// Whether the container's task has exited, or does within a second: runc refuses an
    /// update once the process is a zombie, a moment before containerd reports it stopped.
    async fn exits_soon(&self, id: &str) -> bool {
        for _ in 0..20 {
            if self.exited(id).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Whether the container's task has exited.
    async fn exited(&self, id: &str) -> bool {
        let req = self.req(GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        match TasksClient::new(self.channel.clone()).get(req).await {
            Ok(r) => r
                .into_inner()
                .process
                .is_some_and(|p| p.status == PROCESS_STOPPED),
            Err(_) => false,
        }
    }

    pub(super) async fn list_containers(&self) -> Result<Vec<ExistingContainer>, RuntimeError> {
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
                    // Created while the task's network was attached, and the agent stopped
                    // before it started it: nothing will ever run or exit there.
                    Some(p) if p.status == PROCESS_CREATED => (false, None),
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

    /// Waits for the container's task to exit, in its own tokio task so the wait is issued at
    /// once. Survives containerd restarts: a broken connection is retried; then reads whether
    /// the kernel OOM-killed it from its cgroup, which exists until the task is deleted.
    pub(super) fn wait_for_exit(&self, id: &str) -> ExitFuture {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let channel = self.channel.clone();
        let id = id.to_owned();
        let namespace = self.namespace.clone();
        let cgroup = format!("{}/{}", self.config.cgroup_parent.trim_end_matches('/'), id);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            let result = loop {
                let req = namespace.request(WaitRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                });
                match TasksClient::new(channel.clone()).wait(req).await {
                    Ok(r) => {
                        let code = i32::try_from(r.into_inner().exit_status).unwrap_or(-1);
                        break Ok(ExitStatus {
                            code,
                            oom_killed: stats::oom_killed(&cgroup),
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
                .unwrap_or(Err(RuntimeError::WaitLost("the container's exit")))
        })
    }

    pub(super) async fn kill_task(
        &self,
        id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), RuntimeError> {
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

    pub(super) async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
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
                self.kill_task(id, 9, true).await?;
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
