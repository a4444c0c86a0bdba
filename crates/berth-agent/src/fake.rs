//! An in-memory [`Runtime`] for unit tests and control-plane benchmarks. Never used in place
//! of containerd in end-to-end tests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::runtime::{
    ContainerSpec, ContainerStats, ExecOutput, ExistingContainer, ExitFuture, ExitStatus,
    ImageInfo, PortBinding, Progress, Runtime, RuntimeError, TaskNetwork,
};
use berth_model::PortMapping;

const SIGTERM: u32 = 15;
/// The calls kept: the latest ones (a hollow agent in a soak makes millions).
const CALLS_KEPT: usize = 10_000;

/// Containers run until killed (exit code 128 + signal) unless their image was given an exit
/// code with [`FakeRuntime::exit_with`], or their command is `sleep SECONDS` (then they exit 0
/// after that long, as busybox's would: short tasks for the soak benchmark's hollow agents).
/// The latest calls are recorded.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    missing_images: HashSet<String>,
    /// Task networks cannot be attached.
    unattachable: bool,
    /// Images whose containers exit on SIGKILL only.
    ignore_sigterm: HashSet<String>,
    exit_codes: HashMap<String, i32>,
    running: HashMap<String, (ContainerSpec, tokio::sync::oneshot::Sender<ExitStatus>)>,
    calls: VecDeque<String>,
    /// Exit code of commands run in a container (0 when not set).
    exec_codes: HashMap<String, i32>,
    stats: HashMap<String, ContainerStats>,
    networks: HashMap<String, TaskNetwork>,
    /// Files of images, by image and path.
    image_files: HashMap<(String, String), Vec<u8>>,
    /// Images' USER.
    image_users: HashMap<String, String>,
    /// Bytes each container wrote to its writable layer.
    storage: HashMap<String, u64>,
    /// Credentials each pull was given, by image.
    pull_credentials: HashMap<String, Option<(String, String)>>,
}

impl FakeState {
    fn record(&mut self, call: String) {
        if self.calls.len() == CALLS_KEPT {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pulls of `image` fail as if the registry did not know it.
    pub fn missing_image(&self, image: &str) {
        self.state().missing_images.insert(image.to_owned());
    }

    /// Containers of `image` exit with `code` as soon as they start.
    pub fn exit_with(&self, image: &str, code: i32) {
        self.state().exit_codes.insert(image.to_owned(), code);
    }

    /// Containers of `image` ignore SIGTERM (they exit on SIGKILL).
    pub fn ignore_sigterm(&self, image: &str) {
        self.state().ignore_sigterm.insert(image.to_owned());
    }

    /// Attaching task networks fails from now on, as a CNI plugin's ADD can.
    pub fn refuse_network_attach(&self) {
        self.state().unattachable = true;
    }

    /// Commands run in container `id` exit with `code` from now on.
    pub fn exec_exits_with(&self, id: &str, code: i32) {
        self.state().exec_codes.insert(id.to_owned(), code);
    }

    /// Sets the counters container `id` reports.
    pub fn set_stats(&self, id: &str, stats: ContainerStats) {
        self.state().stats.insert(id.to_owned(), stats);
    }

    /// Gives `image` a file at `path`.
    pub fn image_file(&self, image: &str, path: &str, content: &[u8]) {
        self.state()
            .image_files
            .insert((image.to_owned(), path.to_owned()), content.to_vec());
    }

    /// Gives `image` a USER.
    pub fn image_user(&self, image: &str, user: &str) {
        self.state()
            .image_users
            .insert(image.to_owned(), user.to_owned());
    }

    /// Container `id` has written `bytes` to its writable layer.
    pub fn set_storage(&self, id: &str, bytes: u64) {
        self.state().storage.insert(id.to_owned(), bytes);
    }

    /// The credentials the last pull of `image` was given.
    pub fn pull_credentials(&self, image: &str) -> Option<(String, String)> {
        self.state().pull_credentials.get(image).cloned().flatten()
    }

    /// The spec container `id` was started with, while it runs.
    pub fn spec(&self, id: &str) -> Option<ContainerSpec> {
        self.state().running.get(id).map(|(spec, _)| spec.clone())
    }

    /// Every call so far, as `"op arg"` lines.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.iter().cloned().collect()
    }

    /// IDs of containers that are running.
    pub fn running(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state().running.keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn ensure_image(
        &self,
        image: &str,
        credentials: Option<&(String, String)>,
        _progress: &Progress<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let mut state = self.state();
        state.record(format!("pull {image}"));
        state
            .pull_credentials
            .insert(image.to_owned(), credentials.cloned());
        if state.missing_images.contains(image) {
            return Err(RuntimeError::ImageNotFound {
                image: image.to_owned(),
                detail: "manifest unknown".into(),
            });
        }
        Ok(ImageInfo {
            reference: image.to_owned(),
            digest: format!("sha256:fake-{}", image.len()),
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec![],
            working_dir: None,
            user: state.image_users.get(image).cloned(),
            rootfs_id: format!("fake-rootfs-{image}"),
            pulled: false,
        })
    }

    async fn read_image_file(
        &self,
        image: &ImageInfo,
        path: &str,
    ) -> Result<Option<Vec<u8>>, RuntimeError> {
        let state = self.state();
        Ok(state
            .image_files
            .get(&(image.reference.clone(), path.to_owned()))
            .cloned())
    }

    async fn storage_usage(&self, id: &str) -> Result<u64, RuntimeError> {
        Ok(self.state().storage.get(id).copied().unwrap_or(0))
    }

    async fn prepare_secrets_dir(&self, dir: &std::path::Path) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(dir).map_err(RuntimeError::io("create the secrets directory"))
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<ExitFuture, RuntimeError> {
        let mut state = self.state();
        state.record(format!("start {}", spec.id));
        if let Some(code) = state.exit_codes.get(&spec.image.reference) {
            let status = ExitStatus {
                code: *code,
                oom_killed: false,
            };
            return Ok(Box::pin(async move { Ok(status) }));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        state.running.insert(spec.id.clone(), (spec.clone(), tx));
        let exited = exit_future(rx);
        let Some(after) = sleep_seconds(&spec.args) else {
            return Ok(exited);
        };
        Ok(Box::pin(async move {
            tokio::select! {
                r = exited => r,
                () = tokio::time::sleep(after) => Ok(ExitStatus {
                    code: 0,
                    oom_killed: false,
                }),
            }
        }))
    }

    async fn list(&self) -> Result<Vec<ExistingContainer>, RuntimeError> {
        let state = self.state();
        Ok(state
            .running
            .values()
            .map(|(spec, _)| ExistingContainer {
                id: spec.id.clone(),
                task_id: spec.task_id.clone(),
                container_name: spec.container_name.clone(),
                running: true,
                exit_code: None,
            })
            .collect())
    }

    async fn adopt(&self, id: &str) -> Result<ExitFuture, RuntimeError> {
        let mut state = self.state();
        state.record(format!("adopt {id}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        match state.running.get_mut(id) {
            Some((_, sender)) => *sender = tx,
            None => return Err(RuntimeError::NoContainer { id: id.to_owned() }),
        }
        Ok(exit_future(rx))
    }

    async fn exec(
        &self,
        id: &str,
        args: &[String],
        _timeout: std::time::Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut state = self.state();
        state.record(format!("exec {id} {}", args.join(" ")));
        if !state.running.contains_key(id) {
            return Err(RuntimeError::NotRunning { id: id.to_owned() });
        }
        let exit_code = state.exec_codes.get(id).copied().unwrap_or(0);
        Ok(ExecOutput {
            exit_code,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    async fn create_network(
        &self,
        task_id: &str,
        ports: &[PortMapping],
    ) -> Result<TaskNetwork, RuntimeError> {
        let mut state = self.state();
        state.record(format!("create network {task_id}"));
        let n = u32::try_from(state.networks.len()).unwrap_or(0) + 2;
        let network = TaskNetwork {
            netns: format!("/run/netns/fake-{task_id}"),
            address: Some(std::net::Ipv4Addr::from(0x0a00_0000 + n)),
            ports: ports
                .iter()
                .enumerate()
                .map(|(i, m)| PortBinding {
                    host_port: if m.host_port == 0 {
                        u16::try_from(49_153 + n * 16 + u32::try_from(i).unwrap_or(0))
                            .unwrap_or(u16::MAX)
                    } else {
                        m.host_port
                    },
                    container_port: m.container_port,
                    protocol: m.protocol,
                })
                .collect(),
        };
        state.networks.insert(task_id.to_owned(), network.clone());
        Ok(network)
    }

    async fn attach_network(
        &self,
        task_id: &str,
        network: &TaskNetwork,
    ) -> Result<Option<std::net::Ipv4Addr>, RuntimeError> {
        let mut state = self.state();
        if state.unattachable {
            state.record(format!("attach network {task_id}: refused"));
            return Err(RuntimeError::Io {
                op: "attach the task's network",
                source: std::io::Error::other("the bridge plugin failed"),
            });
        }
        Ok(network.address)
    }

    async fn task_network(&self, task_id: &str) -> Option<TaskNetwork> {
        self.state().networks.get(task_id).cloned()
    }

    async fn remove_network(&self, task_id: &str) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.record(format!("remove network {task_id}"));
        state.networks.remove(task_id);
        Ok(())
    }

    async fn remove_stale_networks(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut state = self.state();
        let mut stale: Vec<String> = state
            .networks
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        stale.sort();
        for id in &stale {
            state.networks.remove(id);
            state.record(format!("remove stale network {id}"));
        }
        Ok(stale)
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let state = self.state();
        if !state.running.contains_key(id) {
            return Err(RuntimeError::NotRunning { id: id.to_owned() });
        }
        Ok(state.stats.get(id).copied().unwrap_or_default())
    }

    async fn kill(&self, id: &str, signal: u32, _all: bool) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.record(format!("kill {id} {signal}"));
        let ignored = |spec: &ContainerSpec| {
            signal == SIGTERM && state.ignore_sigterm.contains(&spec.image.reference)
        };
        if state.running.get(id).is_some_and(|(spec, _)| ignored(spec)) {
            return Ok(());
        }
        if let Some((_, tx)) = state.running.remove(id) {
            let code = 128 + i32::try_from(signal).unwrap_or(0);
            let _ = tx.send(ExitStatus {
                code,
                oom_killed: false,
            });
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.state();
        state.record(format!("remove {id}"));
        // Removed containers are gone (a hollow agent churning short tasks must not keep one
        // entry per task it ever ran).
        state.running.remove(id);
        Ok(())
    }
}

/// How long a container whose command is `sleep SECONDS` runs.
fn sleep_seconds(args: &[String]) -> Option<std::time::Duration> {
    match args {
        [sleep, seconds] if sleep == "sleep" => seconds
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(std::time::Duration::from_secs_f64),
        _ => None,
    }
}

fn exit_future(rx: tokio::sync::oneshot::Receiver<ExitStatus>) -> ExitFuture {
    Box::pin(async move {
        rx.await
            .map_err(|_| RuntimeError::WaitLost("the fake runtime's container"))
    })
}
