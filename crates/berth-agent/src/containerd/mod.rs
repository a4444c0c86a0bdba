//! [`Runtime`] on containerd 1.6's gRPC API (`containerd-client`). See
//! `shared/containerd-notes.md` for the API facts this relies on.
//!
//! By concern: `client` (the connection; the namespace and lease headers every request
//! carries), `pull` and `gc` (images), `containers` (create, start, list, wait, kill, remove),
//! `network` (each task's network namespace, attached by CNI, and its host ports), `exec`, and `stats` (cgroup counters).

mod client;
mod containers;
mod content;
mod exec;
mod gc;
mod image_files;
mod network;
mod pull;
mod stats;

pub use gc::{images_to_remove, ImageUsage};
pub use pull::chain_ids;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::tonic::transport::Channel;
use tokio::sync::Mutex;

use crate::runtime::{
    ContainerSpec, ContainerStats, Created, ExecOutput, ExistingContainer, ExitFuture, ImageInfo,
    Progress, Runtime, RuntimeError, TaskNetwork,
};

const SNAPSHOTTER: &str = "overlayfs";
/// Labels that tie containerd containers to berth tasks.
pub const LABEL_TASK_ID: &str = "dev.berth.task-id";
pub const LABEL_CONTAINER: &str = "dev.berth.container";
/// The cgroup limits set once the container started (JSON of the OCI `LinuxResources`): set
/// again when a restarted agent adopts it, in case the last one stopped in between.
pub const LABEL_LIMITS: &str = "dev.berth.limits";

/// How much of the filesystem holding the agent's data dir images may take when the
/// operator sets no budget (kubelet starts collecting images at 85% of the disk in use; a
/// budget of images alone leaves room for logs, writable layers and the rest).
pub const DEFAULT_IMAGE_SHARE_PERCENT: u64 = 40;

/// The image budget when none is given: [`DEFAULT_IMAGE_SHARE_PERCENT`] of the size of the
/// filesystem holding `dir` (containerd's usually shares it).
pub fn default_image_budget(dir: &std::path::Path) -> std::io::Result<u64> {
    let fs = rustix::fs::statvfs(dir)?;
    let total = fs.f_blocks.saturating_mul(fs.f_frsize);
    Ok(total / 100 * DEFAULT_IMAGE_SHARE_PERCENT)
}

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
    /// Delete unused images, least recently pulled first, while all images take more bytes
    /// ([`default_image_budget`] unless the operator chose).
    pub image_budget: Option<u64>,
    /// The `berth` binary the shim starts as each container's log driver, and the size at
    /// which log files rotate. Without it, containerd appends raw output to the log file.
    pub log_driver: Option<(PathBuf, u64)>,
    /// The init binary (static) containers run under unless their definition turns it off.
    pub init: PathBuf,
    /// The node's task network every task is attached to.
    pub network: crate::cni::NetworkSettings,
}

/// Where Debian's `tini` package installs its static binary.
pub const DEFAULT_INIT: &str = "/usr/bin/tini-static";

/// Drives containerd over its gRPC socket. Made by [`ContainerdRuntime::connect`].
pub struct ContainerdRuntime {
    channel: Channel,
    /// `config.namespace`, checked.
    namespace: client::Namespace,
    config: ContainerdConfig,
    /// One lock per image reference, so concurrent pulls of the same image happen once.
    pull_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    https: oci_client::Client,
    http: oci_client::Client,
    networks: Arc<network::TaskNetworks>,
    /// Each container's pids limit (`None`: no limit).
    pids_limit: Option<i64>,
}

impl ContainerdRuntime {
    /// Limits each container to `limit` processes and threads (0: no limit); the default is
    /// [`crate::spec::DEFAULT_PIDS_LIMIT`].
    #[must_use]
    pub fn with_pids_limit(mut self, limit: u32) -> Self {
        self.pids_limit = (limit > 0).then_some(i64::from(limit));
        self
    }
}

#[async_trait::async_trait]
impl Runtime for ContainerdRuntime {
    async fn ensure_image(
        &self,
        image: &str,
        credentials: Option<&(String, String)>,
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
        let result = self.pull(image, &lease, credentials, progress).await;
        self.delete_lease(lease).await;
        if let (Ok(_), Some(budget)) = (&result, self.config.image_budget) {
            if let Err(e) = self.collect_images(budget, image).await {
                tracing::warn!("collect unused images: {}", berth_model::error_chain(&e));
            }
        }
        result
    }

    async fn read_image_file(
        &self,
        image: &ImageInfo,
        path: &str,
    ) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.image_file(image, path).await
    }

    async fn storage_usage(&self, id: &str) -> Result<u64, RuntimeError> {
        self.snapshot_usage(id).await
    }

    async fn prepare_secrets_dir(&self, dir: &std::path::Path) -> Result<(), RuntimeError> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || crate::secret_files::mount_tmpfs(&dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(RuntimeError::io("mount the tmpfs for secret files"))
    }

    async fn start(&self, c: &ContainerSpec) -> Result<ExitFuture, RuntimeError> {
        self.start_stopped(self.create_stopped(c).await?).await
    }

    async fn create(&self, c: &ContainerSpec) -> Result<Created, RuntimeError> {
        self.create_stopped(c).await
    }

    async fn start_created(&self, created: Created) -> Result<ExitFuture, RuntimeError> {
        self.start_stopped(created).await
    }

    async fn list(&self) -> Result<Vec<ExistingContainer>, RuntimeError> {
        self.list_containers().await
    }

    async fn adopt(&self, id: &str) -> Result<ExitFuture, RuntimeError> {
        self.restore_limits(id).await?;
        Ok(self.wait_for_exit(id))
    }

    async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.exec_in(id, args, timeout).await
    }

    async fn create_network(
        &self,
        task_id: &str,
        ports: &[berth_model::PortMapping],
    ) -> Result<TaskNetwork, RuntimeError> {
        self.create_task_network(task_id, ports).await
    }

    async fn attach_network(
        &self,
        task_id: &str,
        network: &TaskNetwork,
    ) -> Result<Option<std::net::Ipv4Addr>, RuntimeError> {
        self.attach_task_network(task_id, network).await.map(Some)
    }

    async fn task_network(&self, task_id: &str) -> Option<TaskNetwork> {
        self.find_task_network(task_id).await
    }

    async fn remove_network(&self, task_id: &str) -> Result<(), RuntimeError> {
        self.remove_task_network(task_id).await
    }

    async fn remove_stale_networks(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, RuntimeError> {
        self.remove_stale_task_networks(keep).await
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let path = format!("{}/{}", self.config.cgroup_parent.trim_matches('/'), id);
        stats::cgroup_stats(&path).map_err(RuntimeError::io("read container cgroup"))
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        self.kill_task(id, signal, all).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove_container(id).await
    }
}

#[cfg(test)]
mod budget_tests {
    #[test]
    fn the_default_image_budget_is_a_share_of_the_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = rustix::fs::statvfs(dir.path()).expect("statvfs");
        let total = fs.f_blocks * fs.f_frsize;
        let budget = super::default_image_budget(dir.path()).expect("budget");
        assert!(
            budget > 0 && budget <= total / 100 * 40,
            "{budget} of {total}"
        );
        assert!(budget >= total / 100 * 39, "{budget} of {total}");
    }
}
