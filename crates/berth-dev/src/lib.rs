//! Local infrastructure for `berth dev` and the end-to-end tests: a private containerd, a
//! local OCI registry (Debian's `docker-registry`), and small images built from
//! `busybox-static` and pushed to it. Every process is killed when its handle is dropped.

mod image;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub use image::{
    build_busybox_image, push_busybox_image, push_busybox_image_as, push_busybox_image_declaring,
    push_busybox_image_with_user, BusyboxImage,
};

/// Finds `program` on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1, found by binding port 0.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `ready` every 20 ms until it answers true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !ready().await {
        if Instant::now() > deadline {
            bail!("{what} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A containerd started with its own root, state dir and socket.
pub struct Containerd {
    pub socket: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts `containerd` from PATH under `dir`, writing its output to `dir/containerd.log`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let program = find_program("containerd").context(
            "containerd is not installed; run `make deps` (apt-get install containerd runc)",
        )?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )
        .context("write containerd config")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .context("create containerd log")?;
        let child = Command::new(program)
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start containerd")?;
        let probe = socket.clone();
        wait_for("containerd", Duration::from_secs(20), || {
            let probe = probe.clone();
            async move { tokio::net::UnixStream::connect(&probe).await.is_ok() }
        })
        .await
        .with_context(|| format!("see {}", dir.join("containerd.log").display()))?;
        Ok(Self {
            socket,
            dir: dir.to_owned(),
            child,
        })
    }

    /// kill -9 containerd, and wait up to a second for it to end (as dropping it does, without
    /// the wait). Its shims and their containers run on.
    pub fn kill(&mut self) {
        if self.child.start_kill().is_ok() {
            let until = std::time::Instant::now() + Duration::from_secs(1);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// kill -9 containerd and start it again on the same root, state and socket (running
    /// containers keep running under their shims).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill containerd")?;
        let _ = std::fs::remove_file(&self.socket);
        let fresh = Self::start(&self.dir).await?;
        *self = fresh;
        Ok(())
    }
}

/// A `docker-registry` serving plain HTTP on a loopback port.
pub struct Registry {
    pub addr: SocketAddr,
    _child: Child,
}

impl Registry {
    /// Starts the registry under `dir`, listening on `addr`.
    pub async fn start(dir: &Path, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_inner(dir, addr, None).await
    }

    /// Starts a registry on a free loopback port that requires `user`/`password` (htpasswd
    /// basic auth; the hash is made with `htpasswd` from apache2-utils).
    pub async fn start_with_password(
        dir: &Path,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let htpasswd = find_program("htpasswd").context(
            "htpasswd is not installed; run `make deps` (apt-get install apache2-utils)",
        )?;
        let out = std::process::Command::new(htpasswd)
            .args(["-Bbn", user, password])
            .output()
            .context("run htpasswd")?;
        anyhow::ensure!(
            out.status.success(),
            "htpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.join("htpasswd");
        std::fs::write(&file, &out.stdout).context("write htpasswd file")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Self::start_inner(dir, addr, Some(&file)).await
    }

    async fn start_inner(
        dir: &Path,
        addr: SocketAddr,
        htpasswd: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let program = find_program("docker-registry").context(
            "docker-registry is not installed; run `make deps` (apt-get install docker-registry)",
        )?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{}",
                dir.join("data").display(),
                htpasswd.map_or(String::new(), |f| format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    f.display()
                )),
            ),
        )
        .context("write registry config")?;
        let log = std::fs::File::create(dir.join("registry.log")).context("create registry log")?;
        let child = Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start docker-registry")?;
        wait_for("registry", Duration::from_secs(20), || registry_ready(addr))
            .await
            .with_context(|| format!("see {}", dir.join("registry.log").display()))?;
        Ok(Self {
            addr,
            _child: child,
        })
    }

    /// Starts a registry on a free loopback port.
    pub async fn start_on_free_port(dir: &Path) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Self::start(dir, addr).await
    }
}

/// Whether an OCI registry answers `GET /v2/` at `addr` (200, or 401 when it needs a login).
pub async fn registry_ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    // 401: it answers, and wants credentials.
    stream.read_exact(&mut head).await.is_ok()
        && head.starts_with(b"HTTP/1.")
        && matches!(&head[9..12], b"200" | b"401")
}
