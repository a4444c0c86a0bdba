//! The ingress proxy beside nginx: both in front of the same two busybox httpd tasks, loaded
//! by the same generator in the same run, with the tasks reached directly as the floor.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_tests::{cli_json, http_get, poll, AgentProc, Env, IngressProc, ServerProc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cluster::scratch_dir;
use crate::results::{record_percentiles, Results};

/// The host the ingress rule (and nginx's server block) answers.
const HOST: &str = "bench.local";
/// The service's tasks, and the port their httpd listens on in the container.
const TASKS: usize = 2;
const PORT: u64 = 8080;
/// Connections each load keeps open, each with one request at a time. busybox httpd listens
/// with a backlog of 9 and accepts one connection at a time: with more than about 9 connects
/// pending on one task, SYNs are dropped and retried a second later, which would measure the
/// kernel's retransmission timer rather than the proxies.
const CONNECTIONS: usize = 12;
/// Every load runs WARMUP unmeasured, then MEASURE.
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);
/// The paced loads send this share of the slowest target's closed-loop throughput.
const PACED_SHARE: f64 = 0.25;
/// Bounds on one request and on the requests of one connection in one load.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUESTS: usize = 200_000;
/// The largest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// Requests per second, latencies and errors through berth's ingress and through nginx, both
/// proxying to the same two tasks, and sent to the tasks directly: first closed loops (as fast
/// as each target answers), then loads paced at one rate for all three, for the latency each
/// proxy adds over the direct path; and the elections and failed writes meanwhile.
pub(crate) async fn ingress(results: &mut Results) -> anyhow::Result<()> {
    let env = Env::start_in(scratch_dir("berth-ingress")?).await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "bench").await?;
    let ingress = IngressProc::start(&env, &addr, "edge").await?;
    apply(&env, &addr).await?;
    let backends = backends(&addr).await?;
    eprintln!("tasks at {backends:?}, ingress at {}", ingress.addr);
    routed(&ingress, &backends).await?;
    let watched = crate::cluster::Watched::begin(&[&server]).await?;
    // Without nginx the floor and berth are still measured; the scenario fails at the end.
    let nginx_dir = scratch_dir("berth-nginx")?;
    let nginx = Nginx::start(nginx_dir.path(), &backends).await;
    let mut targets = vec![("direct", backends.clone()), ("berth", vec![ingress.addr])];
    if let Ok(nginx) = &nginx {
        targets.push(("nginx", vec![nginx.addr]));
    }
    // Closed loops first. A target that answered nothing is left out of the paced loads.
    let (mut answered, mut silent) = (Vec::new(), Vec::new());
    for (name, addrs) in targets {
        let measured = load(name, &addrs, None).await?;
        if measured.rps > 0.0 {
            answered.push((name, addrs, measured.rps));
        } else {
            silent.push(name);
        }
        measured.record(results, &format!("ingress.{name}_"));
    }
    let slowest = answered.iter().map(|(_, _, rps)| *rps).reduce(f64::min);
    if let Some(slowest) = slowest {
        let rate = slowest * PACED_SHARE;
        results.insert("ingress.paced_target_rps".into(), rate);
        for (name, addrs, _) in &answered {
            let measured = load(name, addrs, Some(rate)).await?;
            measured.record(results, &format!("ingress.{name}_paced_"));
        }
    }
    for proxy in ["berth", "nginx"] {
        for p in ["p50", "p99"] {
            let key = |target: &str| format!("ingress.{target}_paced_{p}_ms");
            if let (Some(through), Some(direct)) =
                (results.get(&key(proxy)), results.get(&key("direct")))
            {
                let added = through - direct;
                results.insert(format!("ingress.{proxy}_added_{p}_ms"), added);
            }
        }
    }
    if let (Some(berth), Some(nginx)) = (
        results.get("ingress.berth_rps"),
        results.get("ingress.nginx_rps"),
    ) {
        results.insert("ingress.berth_vs_nginx_rps".into(), berth / nginx);
    }
    // The load writes nothing itself; what the server wrote meanwhile (the agent's reports,
    // the controllers' writes) it counted.
    watched.record(results, "ingress", 0).await?;
    nginx.map(drop).context("start nginx for the comparison")?;
    anyhow::ensure!(
        silent.is_empty(),
        "no request answered by {}",
        silent.join(", ")
    );
    Ok(())
}

/// A service of [`TASKS`] busybox httpd tasks behind the ingress rule for [`HOST`]. A CPU each
/// (the agent offers two): with a smaller share the CFS quota would stall them for most of
/// every 100 ms period once spent. No health check: its `wget` execs would load the two cores
/// during the measurement.
async fn apply(env: &Env, addr: &str) -> anyhow::Result<()> {
    let manifest = format!(
        "apiVersion: berth.dev/v1
kind: Service
metadata:
  name: bench
spec:
  desiredCount: {TASKS}
  ingress:
    - host: {HOST}
      containerName: httpd
      containerPort: {PORT}
  template:
    cpu: 1024
    memory: 32
    containers:
      - name: httpd
        image: {image}
        command: [sh, -c, 'mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p {PORT} -h /www']
        portMappings:
          - containerPort: {PORT}
",
        image = env.image
    );
    crate::api::apply_manifest(env, addr, "bench.yaml", &manifest).await
}

/// The address each task publishes its httpd on (`bindIP:hostPort`), once all [`TASKS`] run
/// and answer there.
async fn backends(addr: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let backends = poll(
        "the bench tasks to run",
        Duration::from_secs(120),
        || async {
            let tasks = cli_json(addr, &["get", "tasks"]).await.ok()?;
            let found: Vec<SocketAddr> = tasks
                .as_array()?
                .iter()
                .filter(|t| t["lastStatus"] == "RUNNING" && t["desiredStatus"] == "RUNNING")
                .filter_map(|t| {
                    let binding = t["containers"]
                        .as_array()?
                        .iter()
                        .filter_map(|c| c["networkBindings"].as_array())
                        .flatten()
                        .find(|b| b["containerPort"] == PORT)?;
                    let at = format!("{}:{}", binding["bindIP"].as_str()?, binding["hostPort"]);
                    at.parse().ok()
                })
                .collect();
            (found.len() == TASKS).then_some(found)
        },
    )
    .await?;
    for b in &backends {
        poll(&format!("the task at {b} to answer"), TIMEOUT, || async {
            let (code, _) = http_get(&b.to_string(), HOST, "/").await.ok()?;
            (code == 200).then_some(())
        })
        .await?;
    }
    Ok(backends)
}

/// How long the ingress and nginx may take to answer once started.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the ingress answers 200 for [`HOST`] and has sent requests to every task.
async fn routed(ingress: &IngressProc, backends: &[SocketAddr]) -> anyhow::Result<()> {
    let front = ingress.addr.to_string();
    poll("the ingress to route to every task", TIMEOUT, || async {
        let (code, _) = http_get(&front, HOST, "/").await.ok()?;
        let metrics = ingress.metrics().await.ok()?;
        let tasks = metrics
            .lines()
            .filter(|l| l.starts_with("berth_ingress_task_requests_total{"))
            .count();
        (code == 200 && tasks == backends.len()).then_some(())
    })
    .await
    .with_context(|| format!("see {}", ingress.log.display()))
}

/// What one load measured: requests that completed within its window, per second; their
/// latencies (ms, from writing the request to reading the whole response); failed requests.
struct Measured {
    rps: f64,
    ms: Vec<f64>,
    errors: u64,
}

impl Measured {
    fn record(mut self, results: &mut Results, prefix: &str) {
        results.insert(format!("{prefix}rps"), self.rps);
        results.insert(format!("{prefix}errors"), self.errors as f64);
        record_percentiles(results, prefix, &mut self.ms);
    }
}

/// [`CONNECTIONS`] keep-alive connections, connection `i` to `addrs[i % addrs.len()]`, sending
/// `GET /` for [`WARMUP`] then [`MEASURE`]: back to back (a closed loop), or, with `rate`, each
/// on its own schedule so that together they send `rate` requests a second. A connection that
/// falls behind its schedule sends at once.
async fn load(name: &str, addrs: &[SocketAddr], rate: Option<f64>) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let window = (start + WARMUP)..(start + WARMUP + MEASURE);
    let every = rate.map(|r| Duration::from_secs_f64(CONNECTIONS as f64 / r));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        let mut conn = Conn::new(addrs[i % addrs.len()]);
        let window = window.clone();
        // Paced connections take their turns evenly spread.
        let mut next =
            start + every.map_or(Duration::ZERO, |e| e.mul_f64(i as f64 / CONNECTIONS as f64));
        workers.spawn(async move {
            let (mut ms, mut errors, mut first_error) = (Vec::new(), 0u64, None);
            for _ in 0..MAX_REQUESTS {
                if let Some(every) = every {
                    tokio::time::sleep_until(next.into()).await;
                    next += every;
                }
                let sent = Instant::now();
                if sent >= window.end {
                    break;
                }
                let outcome = tokio::time::timeout(REQUEST_TIMEOUT, conn.get()).await;
                let done = Instant::now();
                let outcome = outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer")));
                if outcome.is_err() {
                    // Whatever the connection was in the middle of, start afresh.
                    conn.stream = None;
                }
                if window.contains(&done) {
                    match outcome {
                        Ok(()) => ms.push((done - sent).as_secs_f64() * 1000.0),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            (ms, errors, first_error)
        });
    }
    let mut all = Measured {
        rps: 0.0,
        ms: Vec::new(),
        errors: 0,
    };
    while let Some(worker) = workers.join_next().await {
        let (ms, errors, first_error) = worker?;
        all.ms.extend(ms);
        all.errors += errors;
        if let Some(e) = first_error {
            eprintln!("{name}: a request failed: {e:#}");
        }
    }
    all.rps = all.ms.len() as f64 / MEASURE.as_secs_f64();
    Ok(all)
}

/// One HTTP/1.1 client connection sending `GET /` for [`HOST`]; it connects again after the
/// server closed it (busybox httpd closes after every response).
struct Conn {
    addr: SocketAddr,
    request: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            request: format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// One request and its whole response, which must be a 200 with a Content-Length.
    async fn get(&mut self) -> anyhow::Result<()> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                self.stream.insert(stream)
            }
        };
        stream.write_all(self.request.as_bytes()).await?;
        self.buf.clear();
        let head_len = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            anyhow::ensure!(
                self.buf.len() < MAX_HEAD,
                "a response head over {MAX_HEAD} bytes"
            );
            let n = stream.read_buf(&mut self.buf).await?;
            anyhow::ensure!(n > 0, "closed before the response");
        };
        let head = Head::parse(std::str::from_utf8(&self.buf[..head_len])?)?;
        let end = head_len + head.content_length;
        while self.buf.len() < end {
            let n = stream.read_buf(&mut self.buf).await?;
            anyhow::ensure!(n > 0, "closed within the body");
        }
        anyhow::ensure!(self.buf.len() == end, "more bytes than the Content-Length");
        if head.close {
            self.stream = None;
        }
        anyhow::ensure!(head.status == 200, "status {}", head.status);
        Ok(())
    }
}

/// What the generator reads of a response head.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    content_length: usize,
    /// The server closes the connection after this response.
    close: bool,
}

impl Head {
    fn parse(head: &str) -> anyhow::Result<Self> {
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or_default().split(' ');
        let version = status_line.next().unwrap_or_default();
        let status = status_line
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let (mut content_length, mut close) = (None, version == "HTTP/1.0");
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse().context("bad Content-Length")?);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                anyhow::bail!("a {value} body (the generator reads Content-Length bodies only)");
            }
        }
        Ok(Self {
            status,
            content_length: content_length.context("no Content-Length")?,
            close,
        })
    }
}

/// nginx in the foreground with a prefix of its own, proxying [`HOST`] round-robin to
/// `backends` over kept-alive HTTP/1.1 connections; stopped on drop.
struct Nginx {
    addr: SocketAddr,
    prefix: PathBuf,
    child: Child,
}

impl Nginx {
    async fn start(prefix: &Path, backends: &[SocketAddr]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(prefix)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::fs::write(
            prefix.join("nginx.conf"),
            nginx_conf(prefix, addr, backends),
        )?;
        let out = std::fs::File::create(prefix.join("nginx.out"))?;
        let child = Command::new("nginx")
            .args(Self::args(prefix))
            .args(["-g", "daemon off;"])
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("spawn nginx (apt-get install nginx)")?;
        let nginx = Self {
            addr,
            prefix: prefix.to_owned(),
            child,
        };
        let front = addr.to_string();
        poll("nginx to answer", TIMEOUT, || async {
            let (code, _) = http_get(&front, HOST, "/").await.ok()?;
            (code == 200).then_some(())
        })
        .await
        .with_context(|| {
            let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            format!("nginx's error log: {log}")
        })?;
        Ok(nginx)
    }

    /// Where nginx finds its files: everything under `prefix`.
    fn args(prefix: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "-p".into(),
            prefix.into(),
            "-e".into(),
            prefix.join("error.log").into(),
            "-c".into(),
            prefix.join("nginx.conf").into(),
        ]
    }
}

impl Drop for Nginx {
    /// nginx's workers outlive a master killed with SIGKILL: asks the master to stop them
    /// (`nginx -s stop`) and waits for it to exit (at most 5 s) before the handle kills it.
    fn drop(&mut self) {
        let _ = std::process::Command::new("nginx")
            .args(Self::args(&self.prefix))
            .args(["-s", "stop"])
            .output();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// As one would configure nginx in front of these tasks: one worker per core (as berth's
/// runtime has one thread per core), an access log (berth logs each request too), the
/// `X-Forwarded-*` headers berth sets, and kept-alive upstream connections.
fn nginx_conf(prefix: &Path, listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let p = prefix.display();
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    format!(
        "worker_processes auto;
pid {p}/nginx.pid;
events {{
    worker_connections 1024;
}}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    upstream tasks {{
{servers}        keepalive {CONNECTIONS};
    }}
    server {{
        listen {listen};
        server_name {HOST};
        location / {{
            proxy_pass http://tasks;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::Head;

    fn check(head: &str, expected: Result<Head, &str>) {
        let got = Head::parse(head).map_err(|e| format!("{e:#}"));
        match expected {
            Ok(head) => assert_eq!(got, Ok(head)),
            Err(message) => assert!(got.as_ref().is_err_and(|e| e.contains(message)), "{got:?}"),
        }
    }

    #[test]
    fn response_heads() {
        let head = |status, content_length, close| Head {
            status,
            content_length,
            close,
        };
        check(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
            Ok(head(200, 3, true)),
        );
        check(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 17\r\n\r\n",
            Ok(head(502, 17, false)),
        );
        check(
            "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            Ok(head(200, 0, true)),
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Err("Content-Length bodies only"),
        );
        check("HTTP/1.1 200 OK\r\n\r\n", Err("no Content-Length"));
        check("garbage\r\n\r\n", Err("no status"));
    }
}
