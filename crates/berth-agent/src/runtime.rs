//! The seam between the agent and whatever runs containers: containerd in production,
//! [`crate::FakeRuntime`] in control-plane tests and benchmarks.

use std::path::PathBuf;

use berth_model::PortMapping;
use futures::future::BoxFuture;

pub use crate::cni::PortBinding;

/// What the agent learned about an image when it made sure the image is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The reference as the user wrote it.
    pub reference: String,
    /// The digest of the manifest the reference resolved to.
    pub digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// The image's USER (`uid[:gid]` or a name).
    pub user: Option<String>,
    /// The runtime's name for the unpacked root filesystem (containerd: the top layer's
    /// snapshot chain ID).
    pub rootfs_id: String,
    /// Whether this call fetched the image from the registry (false: it was already present).
    pub pulled: bool,
}

/// Everything needed to create and start one container. Its `Debug` prints the names of the
/// environment variables, never their values (secrets are among them).
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The containerd container ID: `<task id>-<container name>`.
    pub id: String,
    pub task_id: String,
    pub container_name: String,
    pub image: ImageInfo,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups of the process.
    pub additional_gids: Vec<u32>,
    /// Hard CPU limit in CPU units (1024 = 1 vCPU).
    pub cpu_units: u32,
    /// Hard memory limit in MiB.
    pub memory_mib: u32,
    /// Where stdout and stderr go.
    pub log_path: PathBuf,
    /// A network namespace to join (shared by a task's containers); a new one when `None`.
    pub netns: Option<String>,
    /// Run `args` under the runtime's minimal init (PID 1 forwarding signals, reaping zombies).
    pub init: bool,
    /// A resolv.conf to mount read-only at /etc/resolv.conf (the node's service discovery).
    pub resolv_conf: Option<PathBuf>,
    /// Mount the root filesystem read-only.
    pub readonly_root: bool,
    /// Capabilities added to and dropped from the default set (names without `CAP_`; `ALL`
    /// drops every one).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// Resource limits of the process (ECS names).
    pub ulimits: Vec<berth_model::Ulimit>,
    /// Host directories holding secret files, mounted read-only in the container.
    pub secret_mounts: Vec<SecretMount>,
}

/// A directory of secret files on the host and where the container sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub source: PathBuf,
    pub destination: String,
}

impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self
            .env
            .iter()
            .map(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k))
            .collect();
        f.debug_struct("ContainerSpec")
            .field("id", &self.id)
            .field("image", &self.image.reference)
            .field("args", &self.args)
            .field("env", &env)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("readonly_root", &self.readonly_root)
            .field("cap_add", &self.cap_add)
            .field("cap_drop", &self.cap_drop)
            .field("secret_mounts", &self.secret_mounts)
            .finish_non_exhaustive()
    }
}

/// A task's network as the runtime made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNetwork {
    /// The network namespace its containers join.
    pub netns: String,
    /// Its address on the node's task network.
    pub address: Option<std::net::Ipv4Addr>,
    /// Its ports as published on the node.
    pub ports: Vec<PortBinding>,
}

/// A container [`Runtime::create`] made, not started yet.
#[derive(Debug)]
pub struct Created {
    pub spec: ContainerSpec,
    /// The cgroup limits to set once it runs, as the runtime records them (containerd: the
    /// JSON of an OCI `LinuxResources`).
    pub limits: Option<String>,
}

/// How a container's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
    /// The kernel's OOM killer ended it (its cgroup hit the memory limit).
    pub oom_killed: bool,
}

/// A container the runtime already has, found by the labels that tie it to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingContainer {
    pub id: String,
    pub task_id: String,
    pub container_name: String,
    /// Its process is still running.
    pub running: bool,
    /// How it ended, when it did; `None` with `running` false: its process never started (it
    /// was created while the task's network was attached, and the agent stopped then).
    pub exit_code: Option<i32>,
}

/// What a command run inside a container printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Cumulative resource counters of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Working-set memory (usage minus inactive file cache), in bytes.
    pub memory_bytes: u64,
}

/// The largest file [`Runtime::read_image_file`] reads (an image's /etc/passwd is small).
pub const MAX_IMAGE_FILE: u64 = 1 << 20;

/// Receives progress messages of a long operation (a pull), one line each.
pub type Progress<'a> = dyn Fn(String) + Send + Sync + 'a;

/// Resolves when the container's main process exits.
pub type ExitFuture = BoxFuture<'static, Result<ExitStatus, RuntimeError>>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image} not found: {detail}")]
    ImageNotFound { image: String, detail: String },
    #[error("pull access denied for {image} (give the agent credentials with --registry-auth, or the container repositoryCredentials): {detail}")]
    Unauthorized { image: String, detail: String },
    #[error("registry for {image} unreachable: {detail}")]
    RegistryUnreachable { image: String, detail: String },
    #[error("invalid image {image}: {detail}")]
    InvalidImage { image: String, detail: String },
    #[error("containerd {op}: {status}")]
    Containerd {
        op: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("connect to containerd at {}", path.display())]
    Connect {
        path: PathBuf,
        source: containerd_client::tonic::transport::Error,
    },
    #[error("containerd {what} {value:?} is not a valid identifier; {fix}")]
    InvalidIdentifier {
        what: &'static str,
        value: String,
        fix: &'static str,
    },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("build OCI runtime spec: {0}")]
    Spec(oci_spec::OciSpecError),
    #[error("{op}: {error}")]
    SpecJson {
        op: &'static str,
        error: serde_json::Error,
    },
    #[error("container {id} has no OCI runtime spec")]
    NoSpec { id: String },
    #[error("no container {id}")]
    NoContainer { id: String },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    /// What waited for an exit ended without telling it (it panicked, or was dropped).
    #[error("lost the wait for {0}")]
    WaitLost(&'static str),
    #[error("the command did not finish within {0:?} and was killed")]
    ExecTimeout(std::time::Duration),
    #[error("{path} in image {image} is {size} bytes, more than the {MAX_IMAGE_FILE} read")]
    ImageFileTooLarge {
        image: String,
        path: String,
        size: u64,
    },
    #[error("{0:?} is not a capability")]
    UnknownCapability(String),
    #[error("attach the task's network: {0}")]
    Network(#[from] crate::cni::CniError),
    /// `port` 0: a port for a mapping without a host port.
    #[error("{}", host_port_problem(*port, *protocol, reason))]
    HostPort {
        port: u16,
        protocol: berth_model::Protocol,
        reason: &'static str,
    },
}

fn host_port_problem(port: u16, protocol: berth_model::Protocol, reason: &str) -> String {
    if port == 0 {
        format!("host port for a {protocol} mapping: {reason}")
    } else {
        format!("host port {port}/{protocol} {reason}")
    }
}

impl RuntimeError {
    pub(crate) fn containerd(op: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| RuntimeError::Containerd {
            op,
            status: Box::new(status),
        }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| RuntimeError::Io { op, source }
    }
}

/// Runs containers. Every method is idempotent where it can be: removing what is gone succeeds.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Makes sure `image` is present locally, pulling it when it is not; with `credentials`
    /// (user, password) for its registry, which take precedence over the agent's own.
    async fn ensure_image(
        &self,
        image: &str,
        credentials: Option<&(String, String)>,
        progress: &Progress<'_>,
    ) -> Result<ImageInfo, RuntimeError>;

    /// The content of the regular file at `path` (absolute) in the image's root filesystem,
    /// `None` when there is none. Files over [`MAX_IMAGE_FILE`] are an error.
    async fn read_image_file(
        &self,
        image: &ImageInfo,
        path: &str,
    ) -> Result<Option<Vec<u8>>, RuntimeError>;

    /// The bytes container `id` wrote to its writable layer (0 when it has none).
    async fn storage_usage(&self, id: &str) -> Result<u64, RuntimeError>;

    /// Makes `dir` ready to hold secret files: a tmpfs only root enters for a runtime of real
    /// containers (the agent runs as root), a plain directory for an in-memory one.
    async fn prepare_secrets_dir(&self, dir: &std::path::Path) -> Result<(), RuntimeError>;

    /// Creates and starts a container; the returned future resolves when it exits.
    async fn start(&self, spec: &ContainerSpec) -> Result<ExitFuture, RuntimeError>;

    /// Creates a container without starting its process, for [`Runtime::start_created`]: a
    /// task's first containers are created while its network is attached. A runtime without
    /// the split (the fake) makes nothing here and leaves it all to `start_created`.
    async fn create(&self, spec: &ContainerSpec) -> Result<Created, RuntimeError> {
        Ok(Created {
            spec: spec.clone(),
            limits: None,
        })
    }

    /// Starts a container [`Runtime::create`] made; the returned future resolves when it
    /// exits. A failure removes it, as a failed [`Runtime::start`] does.
    async fn start_created(&self, created: Created) -> Result<ExitFuture, RuntimeError> {
        self.start(&created.spec).await
    }

    /// Every container of this agent (for re-adopting them after a restart).
    async fn list(&self) -> Result<Vec<ExistingContainer>, RuntimeError>;

    /// Watches a running container found by [`Runtime::list`]; resolves when it exits.
    async fn adopt(&self, id: &str) -> Result<ExitFuture, RuntimeError>;

    /// Runs `args` inside the running container `id` (its environment, user and working
    /// directory), killing it after `timeout`.
    async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: std::time::Duration,
    ) -> Result<ExecOutput, RuntimeError>;

    /// Creates the task's network: a network namespace its containers share (as ECS's awsvpc
    /// mode gives a task one network stack), with `ports` held for it on the node (host port
    /// 0: a free one is picked). It may be attached to the node's task network only by
    /// [`Runtime::attach_network`] (then `address` is `None` until that).
    async fn create_network(
        &self,
        task_id: &str,
        ports: &[PortMapping],
    ) -> Result<TaskNetwork, RuntimeError>;

    /// Attaches the namespace [`Runtime::create_network`] made to the node's task network,
    /// publishing its ports; answers the task's address there. The task's first containers
    /// are created meanwhile, and started only after it.
    async fn attach_network(
        &self,
        _task_id: &str,
        network: &TaskNetwork,
    ) -> Result<Option<std::net::Ipv4Addr>, RuntimeError> {
        Ok(network.address)
    }

    /// The network a previous agent process created for the task, for re-adopting it.
    async fn task_network(&self, task_id: &str) -> Option<TaskNetwork>;

    /// Detaches and removes the task's network, releasing its address and ports; gone already
    /// is fine.
    async fn remove_network(&self, task_id: &str) -> Result<(), RuntimeError>;

    /// Removes the networks of every task not in `keep` (left by an agent that died, or by
    /// tasks whose containers are gone), before anything else runs. Answers their task IDs.
    async fn remove_stale_networks(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, RuntimeError>;

    /// The container's resource counters.
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;

    /// Sends `signal` to the container's processes (all of them when `all`).
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError>;

    /// Deletes the container, its task and its snapshot.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
}
